"""Outcomes as values: ``jobs.gave_up`` replaces matching "gave up" in the error text, and
``jobs.first_failed_at`` starts the give-up budget of transient failures (JOB_GIVE_UP_AFTER).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 00:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("gave_up", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.add_column("jobs", sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=True))
    # Jobs that gave up before this revision said so only in their error text.
    op.execute("UPDATE jobs SET gave_up = true WHERE status = 'failed' AND error LIKE 'gave up%'")


def downgrade() -> None:
    op.drop_column("jobs", "first_failed_at")
    op.drop_column("jobs", "gave_up")
