"""Rate: 200 creates against Zoom capped at 10 calls/s, with and without the fleet governor.

The simulator accepts 10 calls per second in every category and answers 429 beyond, counting
in a sliding second and, in a second run, in fixed wall-clock seconds (``rate_window``; Zoom
does not say which it uses); the workers are told the same caps (``ZOOM_RATE_LIMITS``).
(a) is this service with the governor (``RATE_GOVERNOR=true``): each call takes a permit from
Redis first, once per window model. (b) is the same service without it
(``RATE_GOVERNOR=false``, sliding window): calls go straight out and a 429 is waited out with
exponential backoff and jitter from 1 s, the nearest thing to Celery's own ``autoretry_for``
with ``retry_backoff``. 2 workers x 8 processes on each side; ``--latency`` makes Zoom answer
that much later.

Completion time is the ledger's last ``finished_at`` minus its first ``created_at``; the span
at Zoom's side is the first to the last create the simulator accepted, as it saw them; the
ideal of both is jobs / cap (20 s). The share of 429s is the simulator's
``api_429 / api_calls``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Literal

from rich.console import Console

from bench import harness, report, workload
from worker import simulator

NAME = "rate"
TITLE = "Rate: creates against a 10 calls/s cap, with and without the governor"
TARGET_RATIO = 1.05
TARGET_429_SHARE = 0.01


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=200, help="creates per side (200)")
    parser.add_argument("--cap", type=int, default=10, help="calls/s in every category")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8, help="processes per worker")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per side")
    parser.add_argument("--latency", type=float, default=0.0, help="Zoom's answer delay, s")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the side without the governor"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="jobs run first, unmeasured (one per process)"
    )
    harness.add_broker_argument(parser)


def run(args: argparse.Namespace, out: Console) -> dict[str, Any]:
    fleet = harness.Fleet(args.workers, args.concurrency)
    ideal_s = args.jobs / args.cap
    sides = {}
    runs: list[tuple[str, bool, Literal["sliding", "fixed"]]] = [
        ("governor", True, "sliding"),
        ("governor_fixed", True, "fixed"),
    ]
    if not args.no_baseline:
        runs.append(("no_governor", False, "sliding"))
    for label, governor, window in runs:
        out.print(f"[bold]rate[/]: RATE_GOVERNOR={str(governor).lower()}, {window} window, {fleet}")
        sides[label] = _side(args, fleet, governor, window, out)
    ours, fixed = sides["governor"], sides["governor_fixed"]
    other = sides.get("no_governor") or _NOT_RUN
    target_s = ideal_s * TARGET_RATIO
    result: dict[str, Any] = {
        "name": NAME,
        "title": TITLE,
        "machine": harness.machine(),
        "params": vars(args),
        "ours": ours,
        "ours_fixed_window": fixed,
        "baseline": other,
        "ideal": {"completion_s": ideal_s},
        "targets": {"completion_s": target_s, "share_429": TARGET_429_SHARE},
        "rows": [
            [
                "span at Zoom's side (sliding window)",
                _span(ours, ideal_s),
                _span(other, ideal_s),
                f"{ideal_s:.0f}s ideal, <= {target_s:.1f}s",
            ],
            [
                "span at Zoom's side (fixed window)",
                _span(fixed, ideal_s),
                "-",
                f"{ideal_s:.0f}s ideal, <= {target_s:.1f}s",
            ],
            [
                "completion time (sliding / fixed window)",
                f"{_time(ours, ideal_s)} / {_time(fixed, ideal_s)}",
                _time(other, ideal_s),
                f"{ideal_s:.0f}s ideal",
            ],
            [
                "429 share of API calls (sliding / fixed window)",
                f"{ours['share_429']:.1%} ({ours['api_429']}) / "
                f"{fixed['share_429']:.1%} ({fixed['api_429']})",
                f"{other['share_429']:.1%} ({other['api_429']})",
                f"< {TARGET_429_SHARE:.0%}",
            ],
            ["API calls", str(ours["api_calls"]), str(other["api_calls"]), str(args.jobs)],
            [
                "first create done after",
                f"{ours['first_done_s']:.1f}s",
                f"{other['first_done_s']:.1f}s",
                "-",
            ],
            [
                "steady rate after the first 10%",
                f"{ours['steady_per_s']:.1f}/s",
                f"{other['steady_per_s']:.1f}/s",
                f"{args.cap}/s (governor: cap x RATE_HEADROOM / (1 + RATE_ARRIVAL_SPREAD_S))",
            ],
            [
                "peak calls in any 1 s (Zoom's view; sliding / fixed window)",
                f"{ours['peak_any_second']} / {fixed['peak_any_second']}",
                str(other["peak_any_second"]),
                str(args.cap),
            ],
            ["re-queues (deferrals)", str(ours["deferrals"]), str(other["deferrals"]), "-"],
            ["reserved slots missed (re-reserved)", str(ours["slots_missed"]), "-", "0"],
            [
                "creates succeeded / failed",
                f"{ours['succeeded']} / {ours['failed']}",
                f"{other['succeeded']} / {other['failed']}",
                f"{args.jobs} / 0",
            ],
        ],
    }
    result["panels"] = [
        report.panel(
            f"first to last of {args.jobs} creates, at Zoom's side",
            "seconds",
            {
                "governor, sliding window": ours["span_s"],
                "governor, fixed window": fixed["span_s"],
                "without governor": other["span_s"],
            },
            {f"ideal {ideal_s:.0f}s": ideal_s, f"target {TARGET_RATIO}x": target_s},
            fmt="{:.1f}s",
        ),
        report.panel(
            "share of calls answered 429",
            "% of API calls",
            {
                "governor, sliding window": 100 * ours["share_429"],
                "governor, fixed window": 100 * fixed["share_429"],
                "without governor": 100 * other["share_429"],
            },
            {f"target < {TARGET_429_SHARE:.0%}": 100 * TARGET_429_SHARE},
            fmt="{:.1f}%",
        ),
    ]
    return result


def _side(
    args: argparse.Namespace,
    fleet: harness.Fleet,
    governor: bool,
    window: Literal["sliding", "fixed"],
    out: Console,
) -> dict[str, Any]:
    caps = {category: args.cap for category in simulator.RATE_CATEGORIES}
    config = simulator.SimulatorConfig(
        rate_limits=caps,
        rate_window=window,
        latency_s=args.latency,
    )
    settings = {
        "ZOOM_RATE_LIMITS": ",".join(f"{name}={cap}" for name, cap in caps.items()),
        "RATE_GOVERNOR": "true" if governor else "false",
    }
    with harness.service(config, fleet, out, args.broker, **settings) as svc:
        svc.warm_up(fleet.processes if args.warmup is None else args.warmup)
        enqueued_at = time.time()
        svc.enqueue_many(args.jobs)
        done, waited_s = svc.wait_final(args.jobs, args.timeout)
        stats, ledger = svc.stats(), svc.ledger()
        category = config.category_for("create")
        arrivals = [t for t in svc.sim.simulator.accepted_calls(category) if t >= enqueued_at]
    first = min(job["created_at"] for job in ledger)
    ends = sorted(
        (job["finished_at"] - first).total_seconds() for job in ledger if job["finished_at"]
    )
    completion_s = ends[-1] if ends and done >= args.jobs else waited_s
    # Past the cold start (each pool process builds its client and reads the token on its
    # first job), how fast jobs finish: the governor's share of the cap, or less.
    skip = len(ends) // 10
    steady = (len(ends) - 1 - skip) / (ends[-1] - ends[skip]) if len(ends) > skip + 1 else 0.0
    succeeded = sum(job["status"] == "succeeded" for job in ledger)
    calls = int(stats["api_calls"])
    return {
        "window": window,
        "span_s": arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0,
        "peak_any_second": workload.peak_any_second(arrivals),
        "completion_s": completion_s,
        "complete": done >= args.jobs,
        "first_done_s": ends[0] if ends else 0.0,
        "steady_per_s": steady,
        "final": done,
        "api_calls": calls,
        "api_429": stats["api_429"],
        "share_429": stats["api_429"] / calls if calls else 0.0,
        "max_calls_per_second": stats["max_calls_per_second"],
        "deferrals": sum(job["deferrals"] for job in ledger),
        # With the governor, a job defers once for its slot; each further deferral means its
        # re-run came too late for the slot (USE_WITHIN_S) and it queued again at the back.
        "slots_missed": sum(max(0, job["deferrals"] - 1) for job in ledger),
        "succeeded": succeeded,
        "failed": len(ledger) - succeeded,
    }


def _time(side: dict[str, Any], ideal_s: float) -> str:
    text = f"{side['completion_s']:.1f}s ({side['completion_s'] / ideal_s:.2f}x)"
    return text if side["complete"] else f"> {text}, {side['final']} done"


def _span(side: dict[str, Any], ideal_s: float) -> str:
    if not side["complete"]:
        return "-"
    return f"{side['span_s']:.2f}s ({side['span_s'] / ideal_s:.3f}x)"


# The side without the governor, when --no-baseline skips it.
_NOT_RUN: dict[str, Any] = {
    "span_s": 0.0,
    "completion_s": 0.0,
    "complete": False,
    "final": 0,
    "share_429": 0.0,
    "api_429": 0,
    "api_calls": 0,
    "first_done_s": 0.0,
    "steady_per_s": 0.0,
    "peak_any_second": 0,
    "deferrals": 0,
    "succeeded": 0,
    "failed": 0,
}
