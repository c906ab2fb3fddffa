"""Each job keeps a digest of the request its idempotency key was sent with.

Revision ID: 0004
Revises: 0002 (to be re-pointed at 0003 when the branches are merged)
Create Date: 2026-12-02 00:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("request_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "request_digest")
