"""Every job names its credential: ``jobs.account`` and ``meetings.account`` (``default``, the
environment's credential, for every earlier row); idempotency keys are unique per credential
(``jobs`` and ``idempotency_keys``); a registered credential may carry its account's plan and
per-second limits (``credentials.plan``, ``credentials.rate_limits``).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _account() -> sa.Column[str]:
    return sa.Column("account", sa.String(100), server_default="default", nullable=False)


def upgrade() -> None:
    op.add_column("jobs", _account())
    op.add_column("meetings", _account())
    op.add_column("idempotency_keys", _account())
    op.drop_constraint(op.f("uq_jobs_idempotency_key"), "jobs", type_="unique")
    op.create_unique_constraint(
        op.f("uq_jobs_account_idempotency_key"), "jobs", ["account", "idempotency_key"]
    )
    op.drop_constraint(op.f("pk_idempotency_keys"), "idempotency_keys", type_="primary")
    op.create_primary_key(op.f("pk_idempotency_keys"), "idempotency_keys", ["account", "key"])
    op.add_column("credentials", sa.Column("plan", sa.String(16), nullable=True))
    op.add_column("credentials", sa.Column("rate_limits", sa.String(200), nullable=True))


def downgrade() -> None:
    op.drop_column("credentials", "rate_limits")
    op.drop_column("credentials", "plan")
    # Keys named in several accounts cannot all survive: keep the default account's.
    op.execute("DELETE FROM idempotency_keys WHERE account <> 'default'")
    op.drop_constraint(op.f("pk_idempotency_keys"), "idempotency_keys", type_="primary")
    op.create_primary_key(op.f("pk_idempotency_keys"), "idempotency_keys", ["key"])
    op.drop_constraint(op.f("uq_jobs_account_idempotency_key"), "jobs", type_="unique")
    op.execute("UPDATE jobs SET idempotency_key = NULL WHERE account <> 'default'")
    op.create_unique_constraint(op.f("uq_jobs_idempotency_key"), "jobs", ["idempotency_key"])
    op.drop_column("idempotency_keys", "account")
    op.drop_column("meetings", "account")
    op.drop_column("jobs", "account")
