"""What the metrics read without scanning jobs: finished-job counts kept by triggers, and a
partial index for the oldest queued or retrying job.

Revision ID: 0007
Revises: 0002
Create Date: 2026-12-02 00:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One function for every change of a job's status: take one from the old status's count and
# add one to the new one's, for the finished statuses only (jobs in the other statuses are
# counted through the (status, ...) index, which only holds as many of them as are waiting).
# The shard is the backend's pid: two workers finishing jobs at once rarely share a row.
COUNT_FUNCTION = """
CREATE FUNCTION jobs_count_finished() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    counted CONSTANT text[] := ARRAY['succeeded', 'failed'];
    backend_shard CONSTANT integer := pg_backend_pid() % 16;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status = ANY (counted) THEN
        INSERT INTO job_status_counts AS c (status, shard, jobs) VALUES (OLD.status, backend_shard, -1)
        ON CONFLICT ON CONSTRAINT pk_job_status_counts DO UPDATE SET jobs = c.jobs - 1;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status = ANY (counted) THEN
        INSERT INTO job_status_counts AS c (status, shard, jobs) VALUES (NEW.status, backend_shard, 1)
        ON CONFLICT ON CONSTRAINT pk_job_status_counts DO UPDATE SET jobs = c.jobs + 1;
    END IF;
    RETURN NULL;
END
$$
"""
CLEAR_FUNCTION = """
CREATE FUNCTION jobs_count_clear() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_status_counts;
    RETURN NULL;
END
$$
"""
TRIGGERS = (
    "CREATE TRIGGER jobs_count_inserted_deleted AFTER INSERT OR DELETE ON jobs "
    "FOR EACH ROW EXECUTE FUNCTION jobs_count_finished()",
    "CREATE TRIGGER jobs_count_status_changed AFTER UPDATE OF status ON jobs "
    "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
    "EXECUTE FUNCTION jobs_count_finished()",
    "CREATE TRIGGER jobs_count_truncated AFTER TRUNCATE ON jobs "
    "FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_clear()",
)


def upgrade() -> None:
    op.create_table(
        "job_status_counts",
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("shard", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("jobs", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("status", "shard", name=op.f("pk_job_status_counts")),
    )
    op.create_index(
        "ix_jobs_created_at_pending",
        "jobs",
        ["created_at"],
        postgresql_where=sa.text("status IN ('queued', 'retrying')"),
    )
    # No job may finish between the count below and the triggers taking over.
    op.execute("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
    op.execute(COUNT_FUNCTION)
    op.execute(CLEAR_FUNCTION)
    for trigger in TRIGGERS:
        op.execute(trigger)
    op.execute(
        "INSERT INTO job_status_counts (status, shard, jobs) "
        "SELECT status, 0, count(*) FROM jobs WHERE status IN ('succeeded', 'failed') "
        "GROUP BY status"
    )


def downgrade() -> None:
    for name in (
        "jobs_count_truncated",
        "jobs_count_status_changed",
        "jobs_count_inserted_deleted",
    ):
        op.execute(f"DROP TRIGGER {name} ON jobs")
    op.execute("DROP FUNCTION jobs_count_clear()")
    op.execute("DROP FUNCTION jobs_count_finished()")
    op.drop_index("ix_jobs_created_at_pending", table_name="jobs")
    op.drop_table("job_status_counts")
