"""Engine and sessions, one engine per process and database, built from Settings.

Every connection is bounded: ``DATABASE_CONNECT_TIMEOUT`` for connecting (and for waiting on
the pool), TCP keepalives so a vanished server is noticed, ``statement_timeout`` and
``idle_in_transaction_session_timeout`` so neither a stuck statement nor a frozen process
holding a transaction keeps row locks for ever. The engine hides bound parameters from its
error messages, so no meeting body or join URL reaches a log through a database error.
:func:`unavailable_as_infrastructure` turns "PostgreSQL is down, unreachable or timed out"
into :class:`~worker.errors.InfrastructureError` at the producers' boundary.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from worker import errors
from worker.config import Settings

_lock = threading.Lock()
_engines: dict[tuple[str, tuple[Any, ...]], tuple[int, Engine, sessionmaker[Session]]] = {}
# A pooled connection idle longer than this is pinged before use. SQLAlchemy's pool_pre_ping
# pings on every checkout, and each ping is a transaction: it would double the database
# work of a job. A connection that breaks while busy fails one step, which the job's lease
# and the sweeper recover.
PING_AFTER_IDLE_S = 5.0
# What keeps a connection checked out for good (worker.held_connection), to give it back.
_holders: weakref.WeakSet[Any] = weakref.WeakSet()


def get_engine(settings: Settings) -> Engine:
    """The process's engine for ``settings.DATABASE_URL``, rebuilt after a fork."""
    return _get(settings)[0]


def sessions(settings: Settings) -> sessionmaker[Session]:
    """A session factory bound to the process's engine; sessions do not expire on commit."""
    return _get(settings)[1]


def connect_args(settings: Settings) -> dict[str, Any]:
    """libpq parameters bounding every connection (see the module docstring)."""
    statement_ms = int(settings.DATABASE_STATEMENT_TIMEOUT * 1000)
    idle_ms = int(settings.DATABASE_IDLE_IN_TRANSACTION_TIMEOUT * 1000)
    return {
        "connect_timeout": settings.DATABASE_CONNECT_TIMEOUT,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "options": (
            f"-c statement_timeout={statement_ms} -c idle_in_transaction_session_timeout={idle_ms}"
        ),
    }


def _get(settings: Settings) -> tuple[Engine, sessionmaker[Session]]:
    args = connect_args(settings)
    key = (settings.DATABASE_URL, tuple(sorted(args.items())))
    with _lock:
        entry = _engines.get(key)
        if entry is None or entry[0] != os.getpid():
            if entry is not None:
                # Inherited from the parent across a fork: its sockets are the parent's.
                entry[1].dispose(close=False)
            engine = create_engine(
                settings.DATABASE_URL,
                pool_size=5,
                max_overflow=10,
                pool_timeout=settings.DATABASE_CONNECT_TIMEOUT,
                connect_args=args,
                hide_parameters=True,
            )
            event.listen(engine, "checkout", _ping_if_idle)
            event.listen(engine, "checkin", _mark_used)
            event.listen(engine, "connect", _mark_used)  # a new connection needs no ping
            entry = (os.getpid(), engine, sessionmaker(engine, expire_on_commit=False))
            _engines[key] = entry
        return entry[1], entry[2]


def _ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
    if time.monotonic() - record.info.get("used_at", 0.0) < PING_AFTER_IDLE_S:
        return
    try:
        ping(dbapi_connection)
    except psycopg.Error as exc:
        # The pool discards this connection and checks out another one.
        raise DisconnectionError(str(exc)) from exc


def ping(dbapi_connection: Any) -> None:
    """One ``SELECT 1`` on an idle psycopg connection; raises psycopg.Error when it is gone.

    In autocommit: in a transaction, its ``ROLLBACK`` would make psycopg send ``DEALLOCATE
    ALL`` too (a rollback may undo statements prepared in it), a second transaction that
    also drops the hot path's prepared statements."""
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        dbapi_connection.execute("SELECT 1")
    finally:
        if not dbapi_connection.closed:
            dbapi_connection.autocommit = autocommit


def _mark_used(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info["used_at"] = time.monotonic()


def track(held: Any) -> None:
    """Note a holder of a checked-out connection (``worker.held_connection``): its
    ``close()`` gives it back when :func:`dispose_all` runs."""
    _holders.add(held)


def dispose_all() -> None:
    """Close every pooled connection of this process (tests, shutdown)."""
    for held in list(_holders):
        held.close()
    with _lock:
        for _pid, engine, _factory in _engines.values():
            engine.dispose()
        _engines.clear()


def ensure_database(url: str, *, connect_timeout_s: int = 10) -> bool:
    """Create the database named in ``url`` if it does not exist; True when it was created."""
    sa_url = make_url(url)
    name = sa_url.database
    if not name:
        raise errors.ConfigurationError("DATABASE_URL", "names no database")
    admin = sa_url.set(drivername="postgresql", database="postgres")
    conninfo = admin.render_as_string(hide_password=False)
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout_s) as conn:
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


# "The database is unwell", as opposed to "this statement is wrong" (a DataError or an
# IntegrityError is a bug or a bad request, and is not retried as an outage).
UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


@contextlib.contextmanager
def unavailable_as_infrastructure() -> Iterator[None]:
    """Raise :class:`~worker.errors.InfrastructureError` when PostgreSQL is down, unreachable,
    or a connection or statement timed out; the message carries the server's first line only,
    never a statement's parameters."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise errors.InfrastructureError(f"the database failed: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__
