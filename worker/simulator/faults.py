"""Scripted faults: the next N calls of one operation answered with a server error.

``error_rate`` draws faults at random; a test that needs "the first update fails twice with
a 5xx, then succeeds" scripts them here instead (``POST /_sim/faults``). A part of
:class:`Simulator`, called under its lock; forgotten on reset.
"""

from __future__ import annotations

from worker.simulator.config import OPERATIONS
from worker.simulator.wire import Reply, error_reply

SERVER_ERRORS = {500: "Internal server error", 502: "Bad gateway", 503: "Service unavailable"}


class ScriptedFaults:
    """How many of the next calls of each operation fail, and with which status."""

    def __init__(self) -> None:
        self._pending: dict[str, list[int]] = {}

    def add(self, operation: str, count: int, status: int) -> None:
        """Answer the next ``count`` calls of ``operation`` with ``status`` (a 5xx), after
        any already scripted; ValueError names a bad argument."""
        if operation not in OPERATIONS:
            raise ValueError(f"operation: one of {OPERATIONS}")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 10_000:
            raise ValueError("count: an integer from 0 to 10000")
        if status not in SERVER_ERRORS:
            raise ValueError(f"status: one of {sorted(SERVER_ERRORS)}")
        self._pending.setdefault(operation, []).extend([status] * count)

    def take(self, operation: str) -> Reply | None:
        """The scripted failure for this call of ``operation``, if one is due."""
        pending = self._pending.get(operation)
        if not pending:
            return None
        status = pending.pop(0)
        return error_reply(status, status, SERVER_ERRORS[status])
