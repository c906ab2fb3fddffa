"""The schema: Alembic's config for the repository's migrations, and upgrading a database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import worker
from worker import db


def alembic_config(url: str) -> Config:
    """Alembic's config for the repository's migrations, pointed at ``url``."""
    config = Config(str(Path(worker.__file__).resolve().parent.parent / "alembic.ini"))
    config.attributes["database_url"] = url
    config.attributes["configure_logger"] = False
    return config


def upgrade_database(url: str) -> str:
    """Create the database if missing and migrate it to head; returns the head revision."""
    db.ensure_database(url)
    config = alembic_config(url)
    command.upgrade(config, "head")
    return head_revision(config)


def head_revision(config: Config) -> str:
    """The newest revision among the migrations."""
    return ScriptDirectory.from_config(config).get_current_head() or "base"
