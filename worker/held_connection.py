"""The ledger's hot path on one connection a worker process keeps: claim, fence, outcome.

A job's claim, fence and outcome are one autocommit statement each (:mod:`worker.ledger`).
Checking a connection out of SQLAlchemy's pool for each of them, switching it to autocommit
and back, and compiling the statement's cache key cost more CPU than the statements
themselves. So each process keeps one pooled connection checked out (:class:`HeldConnection`):

- the claim, the fence and the common outcomes run on its psycopg connection directly, in
  autocommit, as SQL compiled once (:class:`RawStatement`: the same SQL and parameters
  SQLAlchemy would send, so psycopg prepares it on the server after a few runs, as before;
  the engine's ``before_cursor_execute`` and ``after_cursor_execute`` listeners still see
  it): one round trip each, where a transaction takes three (BEGIN, the statement, COMMIT);
- the rest (an outcome with its ``on_done`` notification, an update's, a lost claim's
  meeting) runs in a transaction on the same SQLAlchemy connection (:meth:`HeldConnection.begin`).

One thread at a time uses it; another thread meanwhile checks out a pooled connection of its
own, as every statement used to. A connection idle longer than ``db.PING_AFTER_IDLE_S`` is
pinged before use, as the pool's checkout does; one that fails is invalidated and dropped
(the statement's error is raised as SQLAlchemy's, as before: the job's retry and the lease
recover it), and the next use checks out a new one. After a fork the child takes its own.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from worker import db


class RawStatement:
    """A Core statement compiled once for ``engine``'s dialect: its SQL text, and the
    parameters its literals bound (merged with each run's own: one for each ``bindparam``
    the statement names without a value), converted as SQLAlchemy would (psycopg adapts
    every type these statements bind: only a Boolean's check runs in Python)."""

    def __init__(self, statement: ClauseElement, engine: Engine) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        assert isinstance(compiled, SQLCompiler)
        # Compiled with a placeholder for each run's own (the SQL does not depend on them).
        per_run = {name for name, bind in compiled.binds.items() if bind.required}
        state = compiled.construct_expanded_state(dict.fromkeys(per_run))
        if state.processors:
            raise ValueError("a hot statement expands a parameter at each run")
        processors: dict[str, Callable[[Any], Any]] = {}
        for name, process in compiled._bind_processors.items():
            if not callable(process):
                raise ValueError("a hot statement binds a tuple")
            processors[name] = process
        self.sql = state.statement
        self.constants = {
            name: processors[name](value) if name in processors else value
            for name, value in state.parameters.items()
            if name not in per_run
        }
        self._processors = [(name, processors[name]) for name in per_run if name in processors]

    def parameters(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters of one run with ``values``."""
        parameters = {**self.constants, **values}
        for name, process in self._processors:
            parameters[name] = process(parameters[name])
        return parameters


class HeldConnection:
    """One pooled connection this process keeps checked out for the ledger's hot path."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        # The held connection and the process that took it, in a box its finalizer shares.
        self._box: list[Any] = [None, os.getpid()]
        self._used_at = 0.0
        weakref.finalize(self, _give_back, self._box)
        db.track(self)

    @property
    def _conn(self) -> Connection | None:
        conn: Connection | None = self._box[0]
        return conn

    @_conn.setter
    def _conn(self, conn: Connection | None) -> None:
        self._box[0] = conn

    @contextlib.contextmanager
    def connection(self) -> Iterator[tuple[Connection, bool]]:
        """The held connection (and True), or, while another thread has it, a connection
        checked out for this use (and False). Nothing is begun on it."""
        if not self._lock.acquire(blocking=False):
            with self._engine.connect() as conn:
                yield conn, False
            return
        try:
            conn = self._take()
            try:
                yield conn, True
            except sa_exc.DBAPIError as exc:
                if exc.connection_invalidated or isinstance(exc, db.UNAVAILABLE):
                    self._drop(invalidate=True)
                raise
            finally:
                self._used_at = time.monotonic()
        finally:
            self._lock.release()

    def run(self, statement: RawStatement, values: Mapping[str, Any]) -> Any:
        """Run one statement in autocommit; its first row (attributes by column name) or
        None. A database error is raised as SQLAlchemy's (hiding the parameters)."""
        parameters = statement.parameters(values)
        with self.connection() as (conn, _):
            driver = conn.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            try:
                driver.autocommit = True
                try:
                    with driver.cursor(row_factory=namedtuple_row) as cursor:
                        # Engine events see the statement as they see SQLAlchemy's own.
                        before = conn.dispatch.before_cursor_execute
                        if before:
                            before(conn, cursor, statement.sql, parameters, None, False)
                        cursor.execute(statement.sql, parameters)
                        after = conn.dispatch.after_cursor_execute
                        if after:
                            after(conn, cursor, statement.sql, parameters, None, False)
                        return cursor.fetchone()
                finally:
                    if not driver.closed:
                        driver.autocommit = False
            except psycopg.Error as exc:
                gone = self._engine.dialect.is_disconnect(
                    exc,  # type: ignore[arg-type]  # psycopg's Error is the DBAPI's
                    conn.connection,
                    None,
                )
                if gone:
                    # As SQLAlchemy does on a disconnect: every connection of the pool made
                    # before now is replaced at its next checkout (the server went away).
                    self._engine.pool._invalidate(conn.connection, exc)
                raise sa_exc.DBAPIError.instance(
                    statement.sql,
                    parameters,
                    exc,
                    psycopg.Error,
                    hide_parameters=True,
                    connection_invalidated=gone,
                    dialect=self._engine.dialect,
                ) from exc

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction on the held connection (or on one checked out meanwhile), committed
        at the end of the block, rolled back when it raises."""
        with self.connection() as (conn, _), conn.begin():
            yield conn

    def close(self) -> None:
        """Give the connection back to the pool (tests, shutdown)."""
        with self._lock:
            self._drop(invalidate=False)

    def _take(self) -> Connection:
        if self._box[1] != os.getpid():
            # Inherited across a fork: the parent's socket; the child checks out its own.
            self._box[:] = [None, os.getpid()]
        conn = self._conn
        if conn is not None and time.monotonic() - self._used_at >= db.PING_AFTER_IDLE_S:
            try:
                db.ping(conn.connection.driver_connection)
            except psycopg.Error:
                self._drop(invalidate=True)
                conn = None
        if conn is None or conn.closed or conn.invalidated:
            self._drop(invalidate=False)
            conn = self._conn = self._engine.connect()
        return conn

    def _drop(self, *, invalidate: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(sa_exc.SQLAlchemyError, psycopg.Error):
            if invalidate and not conn.invalidated:
                conn.invalidate()
            conn.close()


def _give_back(box: list[Any]) -> None:
    """A HeldConnection was collected: its connection goes back to the pool (not the
    parent's, inherited across a fork)."""
    conn, pid = box
    box[0] = None
    if conn is not None and pid == os.getpid():
        with contextlib.suppress(sa_exc.SQLAlchemyError, psycopg.Error):
            conn.close()
