"""Running work in the test's own process: one job through a runtime (claim, then the work),
and a coroutine on a fresh event loop."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from worker import aio, jobs, meetings

T = TypeVar("T")


def run_job(runtime: meetings.Runtime, job_id: uuid.UUID) -> jobs.Job:
    """Claim the job and do its work here, as a worker's task would; the job afterwards."""
    claim = runtime.ledger.claim(job_id)
    assert claim is not None, f"job {job_id} could not be claimed"
    meetings.run(claim, runtime)
    job = jobs.get_job(job_id)
    assert job is not None
    return job


def run_async(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` on a fresh event loop, closing the loop's connections after it."""

    async def main() -> T:
        try:
            return await work()
        finally:
            await aio.dispose()

    return asyncio.run(main())
