"""Notify a job's outcome only to a waiter: ``jobs.awaited`` and the trigger that reads it.

Every ``NOTIFY`` wakes every backend that listens in the database, whatever the channel, and
each wakes in a transaction of its own to read PostgreSQL's notification queue. The outbox
relay listens all the time (on its own channel), so a notification for each finished job
cost the fleet one more transaction per job. A waiter (:mod:`worker.waiting`) now marks the
job it waits for (``awaited``), and the trigger notifies only such jobs.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINAL = "'succeeded', 'failed', 'cancelled'"
TRIGGER = (
    "CREATE TRIGGER jobs_notify_finished AFTER UPDATE OF status ON jobs FOR EACH ROW "
    "WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ({final}){awaited}) "
    "EXECUTE FUNCTION jobs_notify_finished()"
)


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("awaited", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.execute("DROP TRIGGER jobs_notify_finished ON jobs")
    op.execute(TRIGGER.format(final=FINAL, awaited=" AND NEW.awaited"))


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_notify_finished ON jobs")
    op.execute(TRIGGER.format(final=FINAL, awaited=""))
    op.drop_column("jobs", "awaited")
