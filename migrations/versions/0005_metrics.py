"""What the metrics read without scanning jobs: finished-job counts kept by triggers, and a
partial index for the oldest queued or retrying job.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 00:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Only finished jobs are counted here; the others are counted in the (status, ...) index, which
# holds only as many of them as are waiting or running. A row's count is spread over 16 shards
# by the writing backend's pid, so two workers finishing jobs at once rarely wait on one row.
STATUS_CHANGED = """
CREATE FUNCTION jobs_count_status_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    counted CONSTANT text[] := ARRAY['succeeded', 'failed'];
    backend_shard CONSTANT integer := pg_backend_pid() % 16;
BEGIN
    IF OLD.status = ANY (counted) THEN
        INSERT INTO job_status_counts AS c (status, shard, jobs)
        VALUES (OLD.status, backend_shard, -1)
        ON CONFLICT ON CONSTRAINT pk_job_status_counts DO UPDATE SET jobs = c.jobs - 1;
    END IF;
    IF NEW.status = ANY (counted) THEN
        INSERT INTO job_status_counts AS c (status, shard, jobs)
        VALUES (NEW.status, backend_shard, 1)
        ON CONFLICT ON CONSTRAINT pk_job_status_counts DO UPDATE SET jobs = c.jobs + 1;
    END IF;
    RETURN NULL;
END
$$
"""
# Inserts and deletes are counted once per statement, over its transition table ("changed"):
# a bulk delete of old jobs costs one aggregate, not one write per row.
ROWS_CHANGED = """
CREATE FUNCTION jobs_count_rows_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_status_counts AS c (status, shard, jobs)
    SELECT status, pg_backend_pid() % 16,
           CASE WHEN TG_OP = 'DELETE' THEN -count(*) ELSE count(*) END
    FROM changed WHERE status IN ('succeeded', 'failed') GROUP BY status
    ON CONFLICT ON CONSTRAINT pk_job_status_counts DO UPDATE SET jobs = c.jobs + EXCLUDED.jobs;
    RETURN NULL;
END
$$
"""
TRUNCATED = """
CREATE FUNCTION jobs_count_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_status_counts;
    RETURN NULL;
END
$$
"""
TRIGGERS = {
    "jobs_count_status_changed": "AFTER UPDATE OF status ON jobs FOR EACH ROW "
    "WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION jobs_count_status_changed()",
    "jobs_count_inserted": "AFTER INSERT ON jobs REFERENCING NEW TABLE AS changed "
    "FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_rows_changed()",
    "jobs_count_deleted": "AFTER DELETE ON jobs REFERENCING OLD TABLE AS changed "
    "FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_rows_changed()",
    "jobs_count_truncated": "AFTER TRUNCATE ON jobs FOR EACH STATEMENT "
    "EXECUTE FUNCTION jobs_count_truncated()",
}
FUNCTIONS = ("jobs_count_status_changed", "jobs_count_rows_changed", "jobs_count_truncated")


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
    for function in (STATUS_CHANGED, ROWS_CHANGED, TRUNCATED):
        op.execute(function)
    for name, definition in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {definition}")
    op.execute(
        "INSERT INTO job_status_counts (status, shard, jobs) "
        "SELECT status, 0, count(*) FROM jobs WHERE status IN ('succeeded', 'failed') "
        "GROUP BY status"
    )


def downgrade() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON jobs")
    for function in FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}()")
    op.drop_index("ix_jobs_created_at_pending", table_name="jobs")
    op.drop_table("job_status_counts")
