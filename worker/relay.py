"""The outbox relay: sends the outbox's rows (:mod:`worker.outbox`) to the broker within
moments of their commit.

Protocol
--------
Where it runs: a thread in the main process of every ``celery worker`` (started when the
worker is ready), so it runs wherever workers run, and needs no process of its own.

1. **One sender.** A relay takes the PostgreSQL advisory lock :data:`LOCK_KEY` with
   ``pg_try_advisory_lock`` on a connection of its own (autocommit). Without it, it stands
   by and tries again every ``OUTBOX_SCAN_SECONDS``. PostgreSQL frees the lock when the
   holder's connection ends, so when its worker dies or stops, another takes over.
2. **Woken at commit.** The holder runs ``LISTEN`` on :data:`worker.outbox.CHANNEL` before
   its first pass, so a row committed after that pass wakes it; one committed before is
   found by the pass.
3. **Send.** Each pass sends every unsent row (:func:`worker.outbox.send_pending`), then
   the holder sleeps until a notification or ``OUTBOX_SCAN_SECONDS`` pass: the periodic scan
   is the safety net for a notification missed while it reconnected. A broker that refuses
   leaves the rows for the next pass.

The sweep (``jobs.sweep``, on beat) sends pending rows too; rows are locked with
``SKIP LOCKED``, so the two never send one row at the same time.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

import psycopg

from worker import db, outbox, waiting
from worker.config import Settings
from worker.outbox import SendMany

log = logging.getLogger(__name__)

# One key for the whole fleet: the first 8 bytes of a digest of the relay's name.
LOCK_KEY = int.from_bytes(
    hashlib.blake2b(b"zoom-worker:outbox.relay", digest_size=8).digest(), signed=True
)

# How often a sleeping relay looks whether it was asked to stop.
STOP_CHECK_S = 0.5


class Relay:
    """A relay for these settings, publishing with ``send_many``; :meth:`start` runs it in a
    daemon thread until :meth:`stop`."""

    def __init__(self, settings: Settings, send_many: SendMany) -> None:
        self.settings = settings
        self.send_many = send_many
        self.scan_s = settings.OUTBOX_SCAN_SECONDS
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.holding = threading.Event()

    def start(self) -> Relay:
        self._thread = threading.Thread(target=self.run, name="outbox-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def run(self) -> None:
        """Relay until stopped, reconnecting after a failure (see the module's protocol)."""
        while not self._stop.is_set():
            try:
                self._hold_and_relay()
            except Exception as exc:  # the database or the broker failed; try again shortly
                log.warning("relay.failed retrying in %.0fs: %s", self.scan_s, db.first_line(exc))
            finally:
                self.holding.clear()
            self._stop.wait(self.scan_s)

    def _hold_and_relay(self) -> None:
        with psycopg.connect(
            waiting.conninfo(self.settings), autocommit=True, **db.connect_args(self.settings)
        ) as connection:
            locked = connection.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
            if not locked or not locked[0]:
                return  # another relay sends; stand by
            log.info("relay.started holding the outbox lock")
            self.holding.set()
            connection.execute(f"LISTEN {outbox.CHANNEL}")
            sessions = db.sessions(self.settings)
            while not self._stop.is_set():
                outbox.send_pending(sessions, self.send_many)
                self._sleep(connection)

    def _sleep(self, connection: psycopg.Connection[tuple[object, ...]]) -> None:
        """Until a notification, ``OUTBOX_SCAN_SECONDS``, or :meth:`stop` (looked at every
        :data:`STOP_CHECK_S`, so a worker's shutdown does not wait for the scan)."""
        deadline = time.monotonic() + self.scan_s
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            for _ in connection.notifies(timeout=min(remaining, STOP_CHECK_S), stop_after=1):
                return
