"""worker.group_commit: requests gathered into groups while a write is under way, and a
debounced run that never misses a request (asyncio only, no services)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from worker.group_commit import Debounce, GroupCommit


def test_group_commit__items_arriving_during_a_write__written_together_next() -> None:
    groups: list[list[int]] = []
    first_write_started, release_first = threading.Event(), threading.Event()

    def write(items: Sequence[int]) -> list[int]:
        groups.append(list(items))
        if len(groups) == 1:
            first_write_started.set()
            assert release_first.wait(10)
        return [item * 10 for item in items]

    writer = GroupCommit(write)

    async def scenario() -> list[int]:
        first = asyncio.ensure_future(writer.submit(0))
        await asyncio.to_thread(first_write_started.wait, 10)
        rest = [asyncio.ensure_future(writer.submit(i)) for i in range(1, 8)]
        await asyncio.sleep(0)  # every one of them is waiting for the write under way
        release_first.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(scenario())

    assert results == [i * 10 for i in range(8)]  # each submitter gets its own result
    assert groups == [[0], [1, 2, 3, 4, 5, 6, 7]]


def test_group_commit__write_fails__every_submitter_of_the_group_gets_the_error() -> None:
    def write(items: Sequence[int]) -> list[int]:
        raise ConnectionError("database down")

    writer = GroupCommit(write)

    async def scenario() -> list[BaseException | int]:
        return await asyncio.gather(*(writer.submit(i) for i in range(3)), return_exceptions=True)

    outcomes = asyncio.run(scenario())

    assert [type(o) for o in outcomes] == [ConnectionError] * 3


def test_group_commit__write_returns_too_few_results__nobody_is_answered_a_wrong_one() -> None:
    writer = GroupCommit(lambda items: [1])

    async def scenario() -> list[BaseException | int]:
        return await asyncio.gather(*(writer.submit(i) for i in range(2)), return_exceptions=True)

    outcomes = asyncio.run(scenario())

    assert all(isinstance(o, RuntimeError) for o in outcomes)


def test_debounce__request_during_a_run__covered_by_a_run_that_starts_after_it() -> None:
    runs: list[str] = []
    in_first_run, release_first = threading.Event(), threading.Event()

    def run() -> None:
        runs.append("run")
        if len(runs) == 1:
            in_first_run.set()
            assert release_first.wait(10)

    debounce = Debounce(run, min_interval_s=0.0)

    async def scenario() -> int:
        first = asyncio.ensure_future(debounce.request())
        await asyncio.to_thread(in_first_run.wait, 10)
        # A commit made now is not covered by the run under way (it started before).
        second = [asyncio.ensure_future(debounce.request()) for _ in range(5)]
        await asyncio.sleep(0)
        release_first.set()
        await asyncio.gather(first, *second)
        return len(runs)

    assert asyncio.run(scenario()) == 2  # the five later requests share one second run


@pytest.mark.parametrize("failing", [True, False])
def test_debounce__requests_in_the_interval_share_one_run__a_failed_run_releases_waiters(
    failing: bool,
) -> None:
    runs: list[str] = []

    def run() -> None:
        runs.append("run")
        if failing:
            raise ConnectionError("broker down")

    debounce = Debounce(run, min_interval_s=0.2)

    async def scenario() -> None:
        await debounce.request()  # the first runs at once
        await asyncio.gather(*(debounce.request() for _ in range(20)))  # after the interval

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))

    assert len(runs) == 2
