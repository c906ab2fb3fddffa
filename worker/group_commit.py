"""Group commit for an asyncio server: the rows of many requests in one transaction.

Protocol
--------
- :class:`GroupCommit`: a request hands its item to :meth:`GroupCommit.submit` and awaits
  its result. Items that arrive while a write is under way gather into the next group: the
  first item to arrive when no write is running starts one at once (an idle server adds no
  wait), and each write takes everything gathered so far (at most ``max_group``) in ONE call
  of ``write`` in a worker thread, which writes them in one transaction (one multi-row
  INSERT, one commit). Every submitter of a group is answered when that call returns, with
  its own result, or with the call's exception: nothing is answered before it is committed.
  One write is in flight at a time, so the busier the server, the larger the groups and the
  fewer the commits (PostgreSQL's WAL flush is paid once per group).
- :class:`Debounce`: after a commit, :meth:`Debounce.request` asks for one run of ``run``
  (publishing one task message for everything committed so far). Requests that arrive
  while a run waits for its turn share that run; runs are at least ``min_interval_s``
  apart; and no request is ever missed: each is covered by a run that *starts* after it.

Both keep their state on the event loop they are used from, and start afresh on a new loop
(one uvicorn process has one loop; an in-process test client may run one per request).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    answer: asyncio.Future[R]


@dataclass
class GroupCommit(Generic[T, R]):
    """Writes submitted items in groups; ``write`` gets a group and returns one result per
    item, in order, or raises (every item of the group then gets that exception)."""

    write: Callable[[Sequence[T]], Sequence[R]]
    max_group: int = 500
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    _gathered: list[_Pending[T, R]] = field(default_factory=list, init=False, repr=False)
    _writer: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    async def submit(self, item: T) -> R:
        """The result of writing ``item``, once the group holding it is committed."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new loop: the old one's state died with it
            self._loop, self._gathered, self._writer = loop, [], None
        pending = _Pending[T, R](item, loop.create_future())
        self._gathered.append(pending)
        if self._writer is None:
            self._writer = loop.create_task(self._write_groups())
        return await pending.answer

    async def _write_groups(self) -> None:
        try:
            while self._gathered:
                group = self._gathered[: self.max_group]
                del self._gathered[: self.max_group]
                await self._write_one(group)
        finally:
            self._writer = None

    async def _write_one(self, group: list[_Pending[T, R]]) -> None:
        try:
            results = await asyncio.to_thread(self.write, [p.item for p in group])
        except Exception as exc:  # every request of the group answers it (e.g. 503)
            for pending in group:
                if not pending.answer.done():
                    pending.answer.set_exception(exc)
            return
        if len(results) != len(group):
            error = RuntimeError(f"write returned {len(results)} results for {len(group)} items")
            for pending in group:
                if not pending.answer.done():
                    pending.answer.set_exception(error)
            return
        for pending, result in zip(group, results, strict=True):
            if not pending.answer.done():  # a request whose client went away is cancelled
                pending.answer.set_result(result)


@dataclass
class Debounce:
    """Runs ``run`` (in a worker thread) for the requests made since its last run, at most
    once per ``min_interval_s``; ``run`` handles its own failures (an exception is logged)."""

    run: Callable[[], None]
    min_interval_s: float = 0.05
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    _next: asyncio.Future[None] | None = field(default=None, init=False, repr=False)
    _runner: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _last_run: float = field(default=float("-inf"), init=False, repr=False)

    async def request(self) -> None:
        """Return once a run that started after this call has finished."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._next, self._runner = loop, None, None
        if self._next is None:
            self._next = loop.create_future()
        if self._runner is None:
            self._runner = loop.create_task(self._run_while_asked())
        await asyncio.shield(self._next)

    async def _run_while_asked(self) -> None:
        try:
            while self._next is not None:
                wait = self._last_run + self.min_interval_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)  # requests made meanwhile share this run
                covered, self._next = self._next, None
                try:
                    await asyncio.to_thread(self.run)
                except Exception:
                    log.exception("debounce.run_failed")
                finally:
                    self._last_run = time.monotonic()
                    covered.set_result(None)
        finally:
            self._runner = None
