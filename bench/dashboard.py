"""The Grafana dashboard's JSON, and the README's picture of it drawn without Grafana.

    python -m bench.dashboard json      # writes deploy/grafana/zoom-worker.json
    python -m bench.dashboard picture   # a demo run, scraped; writes deploy/grafana/zoom-worker.png

No Grafana server runs on the project's machines, so the picture is drawn with matplotlib
from the dashboard's own queries (``worker.dashboard.evaluate`` over the same figures a
Prometheus would scrape): one panel per dashboard row, its first panel. The demo run is a
real fleet (the benchmark harness: its own database and Redis databases, the simulator with
rate limits, 5xx answers and lost replies, two workers) fed in waves, its metrics endpoint
scraped every :data:`SCRAPE_S` seconds.
"""

from __future__ import annotations

import argparse
import math
import socket
import time
from pathlib import Path

import httpx
import matplotlib
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from bench import harness
from worker import dashboard, simulator

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "grafana"
JSON_PATH = DEPLOY / "zoom-worker.json"
PNG_PATH = DEPLOY / "zoom-worker.png"
SCRAPE_S = 2.0
# (seconds after the start, creates enqueued then)
WAVES = ((0.0, 120), (40.0, 60), (70.0, 40))
RUN_S = 110.0
# The simulator's limits and faults, and the fleet's own caps: enough to show every row.
LIMITS = {"light": 8, "medium": 4, "heavy": 2}
DAILY_CAP = 8  # creates per host per day: 20 hosts, so the later waves wait for 00:00 UTC


def write_json(out: Console) -> None:
    JSON_PATH.write_text(dashboard.render(), encoding="utf-8")
    out.print(f"wrote {JSON_PATH}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _scrape(url: str) -> dashboard.Scrape:
    text = httpx.get(url, timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def demo_run(out: Console) -> list[tuple[float, dashboard.Scrape]]:
    """Run the demo fleet for RUN_S seconds; the scrapes, timed from its start."""
    port = _free_port()
    config = simulator.SimulatorConfig(
        rate_limits=LIMITS, error_rate=0.03, reply_lost_rate=0.02, latency_s=0.05
    )
    settings = {
        "METRICS_PORT": str(port),
        "ZOOM_RATE_LIMITS": ",".join(f"{k}={v}" for k, v in LIMITS.items()),
        "ZOOM_DAILY_CREATE_LIMIT": str(DAILY_CAP),
    }
    scrapes: list[tuple[float, dashboard.Scrape]] = []
    with harness.service(config, harness.Fleet(2, 3), out, **settings) as svc:
        started = time.monotonic()
        waves = list(WAVES)
        numbers = iter(range(10_000))
        while (elapsed := time.monotonic() - started) < RUN_S:
            while waves and waves[0][0] <= elapsed:
                _, count = waves.pop(0)
                for _ in range(count):
                    svc.enqueue(next(numbers))
                out.print(f"{elapsed:5.1f}s: {count} creates enqueued")
            scrapes.append((elapsed, _scrape(f"http://127.0.0.1:{port}/metrics")))
            time.sleep(max(0.0, SCRAPE_S - (time.monotonic() - started - elapsed)))
    return scrapes


def draw(scrapes: list[tuple[float, dashboard.Scrape]], path: Path) -> None:
    """One panel per dashboard row (its first panel), from the dashboard's own queries."""
    times = [at for at, _ in scrapes]
    figure, axes = plt.subplots(len(dashboard.ROWS), 1, figsize=(10, 2.6 * len(dashboard.ROWS)))
    for axis, row in zip(axes, dashboard.ROWS, strict=True):
        panel = row.panels[0]
        for query in panel.queries:
            for legend, values in sorted(dashboard.evaluate(query, scrapes).items()):
                if not all(math.isnan(v) for v in values):
                    axis.plot(times, values, label=legend, linewidth=1.5)
        axis.set_title(f"{row.title}: {panel.title}", loc="left", fontsize=10)
        axis.set_ylabel(_UNITS.get(panel.unit, panel.unit), fontsize=8)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="upper right", ncol=3)
    axes[-1].set_xlabel("seconds into the demo run")
    figure.suptitle(
        "zoom-worker dashboard, drawn from its queries over a scraped demo run (not Grafana)",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


_UNITS = {"short": "", "s": "seconds", "reqps": "answers/s"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__)
    parser.add_argument("what", choices=["json", "picture"])
    args = parser.parse_args(argv)
    out = Console()
    if args.what == "json":
        write_json(out)
        return 0
    scrapes = demo_run(out)
    draw(scrapes, PNG_PATH)
    out.print(f"wrote {PNG_PATH} from {len(scrapes)} scrapes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
