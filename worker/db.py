"""Engine and sessions, one engine per process, built from Settings on first use."""

from __future__ import annotations

import os
import threading

import psycopg
from psycopg import sql
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from worker import errors
from worker.config import get_settings

_lock = threading.Lock()
_engines: dict[str, tuple[int, Engine, sessionmaker[Session]]] = {}
# Pre-ping makes a restarted database invisible to application code, at the cost of one
# extra transaction per checkout. Worker processes turn it off (see worker.tasks): a job
# whose step meets a dropped connection is finished by the sweeper after its lease.
_pre_ping = True


def set_pre_ping(enabled: bool) -> None:
    """Choose whether engines built from now on in this process ping on checkout."""
    global _pre_ping  # noqa: PLW0603 - a per-process switch, set once at process start
    _pre_ping = enabled


def get_engine(url: str | None = None) -> Engine:
    """The process's engine for ``url`` (default: ``DATABASE_URL``), rebuilt after a fork."""
    return _get(url)[0]


def sessions(url: str | None = None) -> sessionmaker[Session]:
    """A session factory bound to the process's engine; sessions do not expire on commit."""
    return _get(url)[1]


def _get(url: str | None) -> tuple[Engine, sessionmaker[Session]]:
    url = url or get_settings().DATABASE_URL
    with _lock:
        entry = _engines.get(url)
        if entry is None or entry[0] != os.getpid():
            if entry is not None:
                # Inherited from the parent across a fork: its sockets are the parent's.
                entry[1].dispose(close=False)
            engine = create_engine(url, pool_pre_ping=_pre_ping, pool_size=5, max_overflow=10)
            entry = (os.getpid(), engine, sessionmaker(engine, expire_on_commit=False))
            _engines[url] = entry
        return entry[1], entry[2]


def dispose_all() -> None:
    """Close every pooled connection of this process (tests, shutdown)."""
    with _lock:
        for _pid, engine, _factory in _engines.values():
            engine.dispose()
        _engines.clear()


def ensure_database(url: str | None = None) -> bool:
    """Create the database named in ``url`` if it does not exist; True when it was created."""
    sa_url = make_url(url or get_settings().DATABASE_URL)
    name = sa_url.database
    if not name:
        raise errors.ConfigurationError("DATABASE_URL", "names no database")
    admin = sa_url.set(drivername="postgresql", database="postgres")
    conninfo = admin.render_as_string(hide_password=False)
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if exists:
                return False
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg.errors.DuplicateDatabase:
                return False
            return True
    except psycopg.OperationalError as exc:
        raise errors.InfrastructureError(
            f"PostgreSQL at {sa_url.host}:{sa_url.port or 5432} is not reachable: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        ) from exc
