"""Tokens: how many tokens the fleet fetches when Zoom kills every token now and then.

The same creates (240 by default) go through 12 processes on each side while a thread of
this process watches the simulator's ``meetings_created`` and kills every token at 60, 120
and 180 meetings. (a) is this service: 2 celery workers x 6 processes sharing the row-locked
token. (b) is the seed's naive flow (:func:`bench.baselines.naive_tokens`): 12 plain
processes sharing an unlocked Redis key. The ideal is one token at the start and one per
kill. Zoom answers each API call after ``--zoom-latency`` seconds (50 ms by default, so a
kill lands while calls are in flight, as it would in production).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

from bench import baselines, harness, report
from worker import simulator

NAME = "tokens"
TITLE = "Tokens fetched while Zoom kills every token now and then"
TIMEOUT_S = 180.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=240, help="creates per side (240)")
    parser.add_argument("--kill-every", type=int, default=60, help="meetings between kills")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=6, help="processes per worker")
    parser.add_argument("--zoom-latency", type=float, default=0.05, help="seconds per API call")
    parser.add_argument(
        "--token-tolerance",
        type=int,
        default=None,
        help="a new token kills all but the newest N (Zoom before 2023); default: none",
    )


class Killer(threading.Thread):
    """Kills every token each time ``meetings_created`` passes another ``every`` meetings."""

    def __init__(self, sim: simulator.Simulator, every: int, jobs: int) -> None:
        super().__init__(name="token-killer", daemon=True)
        self._sim, self._every, self._jobs = sim, every, jobs
        self.stopped = threading.Event()
        self.killed_at: list[int] = []  # meetings_created when each kill was made

    def run(self) -> None:
        next_at = self._every
        while not self.stopped.is_set() and next_at < self._jobs:
            created = int(self._sim.stats()["meetings_created"])
            if created >= next_at:
                self._sim.invalidate_tokens()
                self.killed_at.append(created)
                next_at += self._every
            else:
                self.stopped.wait(0.002)


@contextmanager
def killing(sim: simulator.Simulator, every: int, jobs: int) -> Iterator[Killer]:
    killer = Killer(sim, every, jobs)
    killer.start()
    try:
        yield killer
    finally:
        killer.stopped.set()
        killer.join(timeout=5)


def run(args: argparse.Namespace, out: Console) -> dict[str, Any]:
    fleet = harness.Fleet(args.workers, args.concurrency)
    config = simulator.SimulatorConfig(
        latency_s=args.zoom_latency, token_tolerance=args.token_tolerance
    )
    out.print(f"[bold]tokens[/]: (a) this service, {fleet}")
    ours = _ours(args, fleet, config, out)
    out.print(f"[bold]tokens[/]: (b) naive flow, {fleet.processes} plain processes")
    naive = _naive(args, fleet.processes, config)
    planned = (args.jobs - 1) // args.kill_every
    ideal = 1 + planned
    result: dict[str, Any] = {
        "name": NAME,
        "title": f"Tokens: {args.jobs} creates by {fleet.processes} processes, every token "
        f"killed each {args.kill_every} meetings",
        "machine": harness.machine(),
        "params": {**vars(args), "processes": fleet.processes, "kills_planned": planned},
        "ours": ours,
        "naive": naive,
        "ideal": {"tokens": ideal},
        "rows": [
            ["tokens fetched", str(ours["tokens"]), str(naive["tokens"]), f"{ideal} (1 + kills)"],
            ["401s received", str(ours["api_401"]), str(naive["api_401"]), "-"],
            ["kills made (at meeting)", _kills(ours), _kills(naive), str(planned)],
            [
                "creates succeeded / failed",
                f"{ours['succeeded']} / {ours['failed']}",
                f"{naive['succeeded']} / {naive['failed']}",
                f"{args.jobs} / 0",
            ],
            ["wall time", f"{ours['wall_s']:.1f}s", f"{naive['wall_s']:.1f}s", "-"],
        ],
    }
    result["panels"] = [
        report.panel(
            "tokens fetched",
            "token requests",
            {"this service": ours["tokens"], "naive per-process": naive["tokens"]},
            {f"ideal: 1 + {planned} kills = {ideal}": ideal},
        ),
        report.panel(
            "401s received",
            "API calls answered 401",
            {"this service": ours["api_401"], "naive per-process": naive["api_401"]},
        ),
    ]
    return result


def _ours(
    args: argparse.Namespace, fleet: harness.Fleet, config: simulator.SimulatorConfig, out: Console
) -> dict[str, Any]:
    with (
        harness.service(config, fleet, out, ZOOM_RATE_LIMITS=harness.UNCAPPED) as svc,
        killing(svc.sim.simulator, args.kill_every, args.jobs) as killer,
    ):
        started = time.monotonic()
        svc.enqueue_many(args.jobs)
        done, _waited = svc.wait_final(args.jobs, TIMEOUT_S)
        wall_s = time.monotonic() - started
        stats, ledger = svc.stats(), svc.ledger()
    succeeded = sum(job["status"] == "succeeded" for job in ledger)
    return {
        "tokens": stats["tokens_issued"],
        "token_requests": stats["token_requests"],
        "api_401": stats["api_401"],
        "api_calls": stats["api_calls"],
        "meetings_created": stats["meetings_created"],
        "killed_at": killer.killed_at,
        "succeeded": succeeded,
        "failed": len(ledger) - succeeded,
        "final": done,
        "wall_s": wall_s,
    }


def _naive(
    args: argparse.Namespace, processes: int, config: simulator.SimulatorConfig
) -> dict[str, Any]:
    harness.reset_redis()
    with (
        simulator.start_simulator(config) as sim,
        killing(sim.simulator, args.kill_every, args.jobs) as killer,
    ):
        counts = baselines.naive_tokens(
            args.jobs, processes, sim.api_url, sim.oauth_url, harness.GOVERNOR_URL
        )
        stats = sim.simulator.stats()
    return {
        "tokens": stats["tokens_issued"],
        "token_requests": stats["token_requests"],
        "tokens_counted_by_processes": counts["fetched"],
        "api_401": stats["api_401"],
        "api_calls": stats["api_calls"],
        "meetings_created": stats["meetings_created"],
        "killed_at": killer.killed_at,
        "succeeded": args.jobs - counts["failed"],
        "failed": counts["failed"],
        "wall_s": counts["wall_s"],
    }


def _kills(side: dict[str, Any]) -> str:
    points = side["killed_at"]
    return f"{len(points)} ({', '.join(map(str, points))})" if points else "0"
