"""``python -m bench <name>``: run one benchmark, or ``all`` of them in sequence.

``all`` runs each with its defaults (``--scale`` multiplies every job count), keeps going
when one fails (its error is recorded), and writes ``summary.json`` and ``summary.png``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from rich.console import Console

from bench import (
    accounts,
    cleanup,
    enqueue,
    harness,
    latency,
    overhead,
    priority,
    rate,
    report,
    scrape,
    tokens,
    updates,
    webhooks,
)

BENCHMARKS: dict[str, ModuleType] = {
    module.NAME: module
    for module in (
        tokens,
        accounts,
        rate,
        priority,
        overhead,
        latency,
        cleanup,
        scrape,
        enqueue,
        webhooks,
        updates,
    )
}


def parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line, and each benchmark's own sub-parser (``all`` reads their defaults)."""
    main = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = main.add_subparsers(dest="command", required=True, metavar="NAME")
    subparsers = {}
    for name, module in BENCHMARKS.items():
        sub = commands.add_parser(name, help=module.TITLE, description=module.__doc__)
        module.add_arguments(sub)
        subparsers[name] = sub
    every = commands.add_parser("all", help="every benchmark in sequence, then a summary")
    every.add_argument("--scale", type=float, default=1.0, help="multiply every job count")
    return main, subparsers


def run_one(name: str, args: argparse.Namespace, out: Console) -> dict[str, Any]:
    """Run a benchmark and write its table, JSON and chart."""
    started = time.monotonic()
    result = BENCHMARKS[name].run(args, out)
    result["duration_s"] = round(time.monotonic() - started, 1)
    broker = getattr(args, "broker", "redis")
    if broker != "redis":  # beside the Redis figures, not over them
        result["title"] = f"{result.get('title', name)} (broker: {broker})"
        return report.finish(f"{name}-{broker}", result, out)
    return report.finish(name, result, out)


def run_all(scale: float, subparsers: dict[str, argparse.ArgumentParser], out: Console) -> int:
    """Every benchmark with its defaults; a failure is recorded and the others still run."""
    started, results, failed = time.monotonic(), {}, 0
    for name, sub in subparsers.items():
        args = sub.parse_args([])
        args.jobs = max(1, round(args.jobs * scale))
        if hasattr(args, "kill_every"):  # the same number of kills at any scale
            args.kill_every = max(1, round(args.kill_every * scale))
        try:
            results[name] = run_one(name, args, out)
        except Exception as exc:  # one broken benchmark must not lose the others' numbers
            failed += 1
            out.print(f"[red]{name} failed[/]: {exc}", highlight=False)
            traceback.print_exc()
            results[name] = {"name": name, "error": f"{type(exc).__name__}: {exc}"}
    extra = {
        "ran_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": harness.machine(),
        "scale": scale,
        "total_s": round(time.monotonic() - started, 1),
    }
    report.write_summary(results, extra, out)
    out.print(f"all benchmarks took {extra['total_s']:.0f}s")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main_parser, subparsers = parser()
    args = main_parser.parse_args(argv)
    out = Console()
    if not out.is_terminal:  # a log file: wide enough that the tables never wrap
        out = Console(width=120)
    if args.command == "all":
        return run_all(args.scale, subparsers, out)
    run_one(args.command, args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
