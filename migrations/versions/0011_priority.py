"""Job priorities: ``jobs.priority`` (high, normal or bulk; normal for every earlier job).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("priority", sa.String(8), server_default="normal", nullable=False)
    )
    op.create_check_constraint(
        op.f("ck_jobs_priority"), "jobs", "priority IN ('high', 'normal', 'bulk')"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_jobs_priority"), "jobs", type_="check")
    op.drop_column("jobs", "priority")
