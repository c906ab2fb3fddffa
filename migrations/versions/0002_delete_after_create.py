"""A delete job may name its create job instead of a meeting id (waits for or cancels it).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 04:39:03.215024
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("after_job_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_jobs_after_job_id_jobs"),
        "jobs",
        "jobs",
        ["after_job_id"],
        ["id"],
        ondelete="SET NULL",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("fk_jobs_after_job_id_jobs"), "jobs", type_="foreignkey")
    op.drop_column("jobs", "after_job_id")
