"""Several Zoom accounts: the credential registry (named credentials, user connections) and
the registered OAuth apps.

- ``apps``: a registered OAuth ("General") app, its client secret and webhook secret token
  encrypted.
- ``credentials`` gains a name (``default`` for the environment's credential, so existing rows
  keep working), a kind (``s2s`` or ``user``), the app of a user's connection, the encrypted
  secret or refresh token, a secret version and a status. The unique (account_id, client_id)
  becomes unique (name, account_id, client_id), and a registered name is unique by itself.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tz() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("client_id", sa.String(length=200), nullable=False),
        sa.Column("client_secret_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("webhook_secret_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", _tz(), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", _tz(), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apps")),
        sa.UniqueConstraint("name", name=op.f("uq_apps_name")),
    )
    columns = [
        sa.Column("name", sa.String(length=100), server_default="default", nullable=False),
        sa.Column("kind", sa.String(length=8), server_default="s2s", nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=True),
        sa.Column("secret_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("refresh_token_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("secret_version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("status", sa.String(length=24), server_default="active", nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("status_changed_at", _tz(), nullable=True),
        sa.Column("created_at", _tz(), server_default=sa.func.now(), nullable=False),
    ]
    for column in columns:
        op.add_column("credentials", column)
    op.create_foreign_key(
        op.f("fk_credentials_app_id_apps"),
        "credentials",
        "apps",
        ["app_id"],
        ["id"],
        ondelete="RESTRICT",
    )
    op.drop_constraint("uq_credentials_account_id_client_id", "credentials", type_="unique")
    op.create_unique_constraint(
        op.f("uq_credentials_name_account_id_client_id"),
        "credentials",
        ["name", "account_id", "client_id"],
    )
    op.create_index(
        "ix_credentials_name_registered",
        "credentials",
        ["name"],
        unique=True,
        postgresql_where=sa.text("name <> 'default'"),
    )


def downgrade() -> None:
    # Registered credentials have no place in the old schema.
    op.execute("DELETE FROM credentials WHERE name <> 'default'")
    op.drop_index("ix_credentials_name_registered", table_name="credentials")
    op.drop_constraint(
        op.f("uq_credentials_name_account_id_client_id"), "credentials", type_="unique"
    )
    op.create_unique_constraint(
        "uq_credentials_account_id_client_id", "credentials", ["account_id", "client_id"]
    )
    op.drop_constraint(op.f("fk_credentials_app_id_apps"), "credentials", type_="foreignkey")
    for name in (
        "created_at",
        "status_changed_at",
        "status_reason",
        "status",
        "secret_version",
        "refresh_token_ciphertext",
        "secret_ciphertext",
        "app_id",
        "kind",
        "name",
    ):
        op.drop_column("credentials", name)
    op.drop_table("apps")
