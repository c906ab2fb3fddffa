"""Several Zoom accounts in one fleet, with real worker processes (issue 17): one account's
refused credential holds only its own jobs, and each account keeps to its own rate limits."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import WorkerProcess, wait_for

from worker import credentials, jobs
from worker.simulator import SimulatorClient

pytestmark = [pytest.mark.fleet]

NAMES = ("alpha", "bravo", "charlie")


def _body(n: int) -> dict[str, Any]:
    return {"topic": f"Account job {n}", "type": 2, "start_time": "2030-12-01T10:00:00Z"}


def _client(name: str, secret: str | None = None) -> dict[str, str]:
    return {"account_id": f"{name}-acc", "client_secret": secret or f"{name}-secret"}


def _register(name: str, rate_limits: str | None = None) -> None:
    credentials.add_s2s(
        name,
        account_id=f"{name}-acc",
        client_id=f"{name}-client",
        client_secret=f"{name}-secret",
        rate_limits=rate_limits,
    )


def _enqueue(name: str, first: int, count: int) -> list[Any]:
    requests = [
        {"user_id": f"{name}{n % 4}@example.com", "meeting": _body(n)}
        for n in range(first, first + count)
    ]
    return jobs.create_meetings(requests, account=name)


def _statuses(ids: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs.jobs_for(ids):
        counts[job.status] = counts.get(job.status, 0) + 1
    return counts


def test_accounts__one_refused_mid_run__others_finish_it_holds_then_resumes_after_rotate(
    keyed: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    start_beat: Callable[..., WorkerProcess],
    sim_client: SimulatorClient,
) -> None:
    sim_client.configure(s2s_clients={f"{n}-client": _client(n) for n in NAMES})
    for name in NAMES:
        _register(name)
    overrides = {**keyed, "SWEEP_INTERVAL_SECONDS": "1"}
    workers = [start_worker(concurrency=4, **overrides), start_worker(concurrency=4, **overrides)]
    start_beat(**overrides)
    first = {name: _enqueue(name, 0, 15) for name in NAMES}
    wait_for(
        lambda: all(_statuses(ids) == {"succeeded": 15} for ids in first.values()),
        timeout=60,
        interval=0.2,
    )

    # Zoom now refuses every token of charlie's account (its app's ownership moved).
    sim_client.configure(refused_accounts=["charlie-acc"])
    second = {name: _enqueue(name, 15, 25) for name in NAMES}
    started = time.monotonic()
    wait_for(
        lambda: all(_statuses(second[n]) == {"succeeded": 25} for n in ("alpha", "bravo")),
        timeout=60,
        interval=0.2,
        details=lambda: {n: _statuses(ids) for n, ids in second.items()},
    )
    others_s = time.monotonic() - started
    wait_for(lambda: _statuses(second["charlie"]) == {"waiting": 25}, timeout=30, interval=0.2)
    held = jobs.jobs_for(second["charlie"])
    refused = sim_client.stats()

    sim_client.configure(
        refused_accounts=[],
        s2s_clients={
            **{f"{n}-client": _client(n) for n in ("alpha", "bravo")},
            "charlie-client": _client("charlie", "charlie-rotated"),
        },
    )
    probe = credentials.rotate("charlie", "charlie-rotated")
    wait_for(
        lambda: _statuses(second["charlie"]) == {"succeeded": 25},
        timeout=30,
        interval=0.2,
        details=lambda: _statuses(second["charlie"]),
    )

    print(f"\nalpha and bravo finished 50 jobs in {others_s:.1f}s while charlie was refused")
    assert probe.ok, probe.detail
    assert all(j.error and "credentials rotate charlie" in j.error for j in held), held[0].error
    # charlie's first token, the one renewal after Zoom refused it, and at most one more: a
    # process with no charlie token in memory yet may adopt that renewal before anyone used
    # it, and its refusal renews once (the retry's refusal then opens the circuit).
    assert refused["tokens_by_client"]["charlie-client"] <= 3, "an open circuit asks no more"
    stats = sim_client.stats()
    assert stats["meetings_created"] == 3 * 40
    # A call in flight when the refusal began may have spent one attempt (a 401 on a token
    # another process renewed); the other accounts never noticed anything.
    others = [j for n in ("alpha", "bravo") for j in jobs.jobs_for(second[n])]
    assert [(j.attempts, j.error) for j in others if j.attempts != 1] == []
    assert [j.attempts for j in jobs.jobs_for(second["charlie"]) if j.attempts > 2] == []
    logs = "".join(w.log() for w in workers)
    assert "charlie-rotated" not in logs and "charlie-secret" not in logs


def test_accounts__capped_5_and_20_per_second_side_by_side__no_429s(
    keyed: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    sim_client: SimulatorClient,
) -> None:
    caps = {"alpha": 5, "bravo": 20}
    sim_client.configure(
        s2s_clients={f"{n}-client": _client(n) for n in caps},
        account_rate_limits={
            f"{n}-acc": {"light": cap, "medium": cap, "heavy": cap} for n, cap in caps.items()
        },
    )
    for name, cap in caps.items():
        _register(name, rate_limits=f"light={cap},medium={cap},heavy={cap}")
    # Paced for a loaded test machine, as in test_governor (bench accounts: the default's).
    paced = {**keyed, "RATE_ARRIVAL_SPREAD_S": "0.2"}
    start_worker(concurrency=8, **paced)
    start_worker(concurrency=8, **paced)
    ids = {"alpha": _enqueue("alpha", 0, 25), "bravo": _enqueue("bravo", 0, 80)}

    wait_for(
        lambda: all(_statuses(ids[n]) == {"succeeded": len(ids[n])} for n in caps),
        timeout=60,
        interval=0.2,
        details=lambda: {n: _statuses(i) for n, i in ids.items()},
    )

    stats = sim_client.stats()
    peaks = {n: stats["accounts"][f"{n}-acc"]["max_calls_per_second"] for n in caps}
    print(f"\npeak calls per second by account: {peaks}")
    assert stats["api_429"] == 0, f"{stats['api_429']} of {stats['api_calls']} answered 429"
    assert stats["meetings_created"] == 105


def test_accounts__no_environment_credential__registered_jobs_run_default_jobs_wait(
    keyed: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    sim_client: SimulatorClient,
) -> None:
    # A SaaS fleet: every job runs with a customer's registered credential, none with the
    # environment's, which is left unset.
    sim_client.configure(s2s_clients={"alpha-client": _client("alpha")})
    _register("alpha")
    unset = dict.fromkeys(
        ("ZOOM_ACCOUNT_ID", "ZOOM_CLIENT_ID", "ZOOM_CLIENT_SECRET", "ZOOM_CLIENT_SECRET_FILE"), ""
    )
    worker = start_worker(concurrency=2, **{**keyed, **unset})
    ids = _enqueue("alpha", 0, 5)
    stray = jobs.create_meeting("host@example.com", _body(99))  # account left out by mistake

    wait_for(lambda: _statuses(ids) == {"succeeded": 5}, timeout=60, interval=0.2)
    held = wait_for(
        lambda: next((j for j in jobs.jobs_for([stray]) if j.status == "waiting"), None),
        timeout=30,
        what="the default job waiting",
    )
    assert held.error and "configuration error" in held.error and "ZOOM_ACCOUNT_ID" in held.error
    assert "worker.no_environment_credential" in worker.log()
    assert sim_client.stats()["meetings_created"] == 5
