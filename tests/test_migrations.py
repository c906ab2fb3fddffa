"""The migrations build the schema the models describe, and downgrade cleanly."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect

ROOT = Path(__file__).resolve().parent.parent


def _config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    config.attributes["configure_logger"] = False
    return config


def test_migrations__head__match_models(database_url: str) -> None:
    command.check(_config(database_url))  # raises if the models and the schema differ
    engine = create_engine(database_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"credentials", "token_requests", "jobs", "meetings"} <= tables


def test_migrations__downgrade_then_upgrade(database_url: str) -> None:
    config = _config(database_url)
    command.downgrade(config, "base")
    engine = create_engine(database_url)
    try:
        assert "jobs" not in inspect(engine).get_table_names()
        command.upgrade(config, "head")
        assert "jobs" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
