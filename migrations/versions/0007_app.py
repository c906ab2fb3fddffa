"""Cancelled jobs, a NOTIFY when a job finishes, and retention: the idempotency keys' own table
and the indexes pruning needs.

- ``cancelled`` is a final status: the metrics triggers of 0005 count it like the others.
- ``jobs_notify_finished``: each job reaching a final status sends ``pg_notify`` on
  ``zoom_worker_job_finished`` with its id, delivered at commit (``worker.waiting`` listens).
- ``idempotency_keys``: every key in use, copied from ``jobs`` here and written with each new
  job since, so a key outlives its pruned job (``worker.retention``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 01:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "zoom_worker_job_finished"

# The functions of 0005, with the finished statuses spelled in one place for each.
STATUS_CHANGED = """
CREATE OR REPLACE FUNCTION jobs_count_status_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    counted CONSTANT text[] := ARRAY[{statuses}];
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
ROWS_CHANGED = """
CREATE OR REPLACE FUNCTION jobs_count_rows_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_status_counts AS c (status, shard, jobs)
    SELECT status, pg_backend_pid() % 16,
           CASE WHEN TG_OP = 'DELETE' THEN -count(*) ELSE count(*) END
    FROM changed WHERE status IN ({statuses}) GROUP BY status
    ON CONFLICT ON CONSTRAINT pk_job_status_counts DO UPDATE SET jobs = c.jobs + EXCLUDED.jobs;
    RETURN NULL;
END
$$
"""
BEFORE = "'succeeded', 'failed'"
AFTER = "'succeeded', 'failed', 'cancelled'"

NOTIFY = f"""
CREATE FUNCTION jobs_notify_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', NEW.id::text);
    RETURN NULL;
END
$$
"""
NOTIFY_TRIGGER = (
    "CREATE TRIGGER jobs_notify_finished AFTER UPDATE OF status ON jobs FOR EACH ROW "
    f"WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ({AFTER})) "
    "EXECUTE FUNCTION jobs_notify_finished()"
)


def upgrade() -> None:
    op.execute(STATUS_CHANGED.format(statuses=AFTER))
    op.execute(ROWS_CHANGED.format(statuses=AFTER))
    op.execute(NOTIFY)
    op.execute(NOTIFY_TRIGGER)
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("request_digest", sa.String(length=64), nullable=True),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(
        op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"], unique=False
    )
    op.execute(
        "INSERT INTO idempotency_keys (key, kind, request_digest, job_id, created_at) "
        "SELECT idempotency_key, kind, request_digest, id, created_at FROM jobs "
        "WHERE idempotency_key IS NOT NULL"
    )
    op.create_index(
        "ix_jobs_finished_at",
        "jobs",
        ["finished_at"],
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    )
    op.create_index("ix_jobs_after_job_id", "jobs", ["after_job_id"])
    op.create_index("ix_meetings_job_id", "meetings", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_meetings_job_id", table_name="meetings")
    op.drop_index("ix_jobs_after_job_id", table_name="jobs")
    op.drop_index("ix_jobs_finished_at", table_name="jobs")
    op.drop_index(op.f("ix_idempotency_keys_created_at"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.execute("DROP TRIGGER jobs_notify_finished ON jobs")
    op.execute("DROP FUNCTION jobs_notify_finished()")
    # Cancelled jobs were counted; 0005's functions no longer count them.
    op.execute("DELETE FROM job_status_counts WHERE status = 'cancelled'")
    op.execute(STATUS_CHANGED.format(statuses=BEFORE))
    op.execute(ROWS_CHANGED.format(statuses=BEFORE))
