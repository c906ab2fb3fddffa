"""Update jobs: their order per meeting, and which fields our own updates set (issue 14).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNFINISHED = "seq IS NOT NULL AND status NOT IN ('succeeded', 'failed', 'cancelled')"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.add_column(
        "meetings",
        sa.Column("update_seq", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column(
        "meetings",
        sa.Column("field_updated_ts", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.create_index(
        "ix_jobs_meeting_id_seq",
        "jobs",
        ["meeting_id", "seq"],
        postgresql_where=sa.text(UNFINISHED),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_meeting_id_seq", table_name="jobs")
    op.drop_column("meetings", "field_updated_ts")
    op.drop_column("meetings", "update_seq")
    op.drop_column("jobs", "seq")
