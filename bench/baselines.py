"""The token baseline the service is measured against, run in plain processes of its own
(``bench overhead``'s bare Celery task is :mod:`bench.bare_app`).

``naive_tokens``: the seed's per-process flow. Each of N processes creates its share of the
meetings with httpx directly, reading the cached token from a shared store (a Redis key)
without any lock, and fetching and saving a new token when the key is empty or after a 401,
then retrying. Nothing stops twelve processes that see the same 401 from fetching twelve
tokens: that is the behaviour being measured.

It starts its clock on a shared ``go`` event once every process is up, so process start-up
is never measured. The processes import only httpx, redis and
:func:`worker.oauth.request_token`.
"""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.synchronize import Event
from typing import Any

import httpx
import redis

from bench.workload import host, new_body
from worker import oauth

ACCOUNT = {"account_id": "sim-account", "client_id": "sim-client", "client_secret": "sim-secret"}
MAX_TRIES = 20
START_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 300.0


def _fetch_token(http: httpx.Client, oauth_url: str) -> str:
    grant = oauth.request_token(http, oauth_url, timeout_s=30.0, **ACCOUNT)
    return grant.token.value


def _naive_process(
    numbers: list[int],
    api_url: str,
    oauth_url: str,
    store_url: str,
    key: str,
    ready: Any,
    go: Event,
    results: Any,
) -> None:
    store = redis.Redis.from_url(store_url, decode_responses=True)
    fetched = unauthorized = failed = 0
    with httpx.Client(base_url=api_url.rstrip("/") + "/", timeout=30.0) as http:

        def fetch_and_save() -> str:
            nonlocal fetched
            fetched += 1
            token = _fetch_token(http, oauth_url)
            store.set(key, token)  # last writer wins; no lock, as in the seed
            return token

        ready.put(True)
        go.wait()
        for number in numbers:
            cached = store.get(key)
            token = cached if isinstance(cached, str) and cached else fetch_and_save()
            for _try in range(MAX_TRIES):
                response = http.post(
                    f"users/{host(number)}/meetings",
                    json=new_body(number),
                    headers={"Authorization": f"Bearer {token}"},
                )
                if response.status_code != httpx.codes.UNAUTHORIZED:
                    break
                unauthorized += 1
                token = fetch_and_save()
            if response.status_code != httpx.codes.CREATED:
                failed += 1
    results.put({"fetched": fetched, "unauthorized": unauthorized, "failed": failed})


def naive_tokens(
    jobs: int, processes: int, api_url: str, oauth_url: str, store_url: str
) -> dict[str, Any]:
    """Run the naive flow; returns the processes' own counts and the wall time."""
    key = "bench:naive:token"
    redis.Redis.from_url(store_url).delete(key)
    shares = [list(range(n, jobs, processes)) for n in range(processes)]
    return _run_processes(
        [(share, api_url, oauth_url, store_url, key) for share in shares], _naive_process
    )


def _run_processes(arguments: list[tuple[Any, ...]], target: Any) -> dict[str, Any]:
    """Spawn one process per argument tuple, release them together once all are up, and
    add up what they report (``elapsed_s``: the longest)."""
    context = multiprocessing.get_context("spawn")
    ready, go, results = context.Queue(), context.Event(), context.Queue()
    children = [
        context.Process(target=target, args=(*args, ready, go, results), daemon=True)
        for args in arguments
    ]
    try:
        for child in children:
            child.start()
        for _child in children:
            ready.get(timeout=START_TIMEOUT_S)
        started = time.perf_counter()
        go.set()
        reports = [results.get(timeout=RUN_TIMEOUT_S) for _ in children]
        wall_s = time.perf_counter() - started
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
                child.join()
    total: dict[str, Any] = {"wall_s": wall_s}
    for report in reports:
        for name, value in report.items():
            total[name] = (
                max(total.get(name, 0), value)
                if name == "elapsed_s"
                else (total.get(name, 0) + value)
            )
    return total
