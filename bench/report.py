"""Showing a benchmark's result: a table on the console, a JSON file and a PNG bar chart.

Every benchmark returns one JSON-ready dict holding its ``rows`` (metric, this service, the
baseline, the ideal or target, all as display strings) and its ``panels`` (bar charts: one bar
per side, reference lines for the ideal and the target). This module turns them into
``bench/results/<name>.json`` and ``<name>.png``; :func:`write_summary` puts every panel of
every benchmark into ``summary.png``. Nothing here judges a number: the reader compares.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from rich.console import Console
from rich.table import Table

from bench.harness import RESULTS

COLUMNS = ("metric", "this service", "baseline", "ideal / target")
SIDE_COLORS = ("#2b6cb0", "#dd8452")
LINE_STYLES = ("-", "--", ":")


@dataclass(frozen=True)
class Panel:
    """One bar chart: a bar per label, and horizontal reference lines (value, label)."""

    title: str
    ylabel: str
    labels: list[str]
    values: list[float]
    lines: list[tuple[float, str]] = field(default_factory=list)
    fmt: str = "{:.0f}"


def finish(name: str, result: dict[str, Any], out: Console) -> dict[str, Any]:
    """Print the table, write the JSON and the chart; return the result."""
    columns = tuple(result.get("columns", COLUMNS))
    print_table(str(result.get("title", name)), result["rows"], out, columns)
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{name}.json"
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    panels = [Panel(**panel) for panel in result["panels"]]
    png_path = RESULTS / f"{name}.png"
    draw(panels, str(result.get("title", name)), png_path)
    out.print(f"wrote {_shown(json_path)} and {_shown(png_path)}")
    return result


def print_table(
    title: str, rows: list[list[str]], out: Console, columns: tuple[str, ...] = COLUMNS
) -> None:
    """Rows of (metric, this service, baseline, ideal/target), or of ``columns``, as a table."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def panel(
    title: str,
    ylabel: str,
    bars: dict[str, float],
    lines: dict[str, float] | None = None,
    fmt: str = "{:.0f}",
) -> dict[str, Any]:
    """A panel as JSON-ready data (labels and values in the order given)."""
    reference = [(value, label) for label, value in (lines or {}).items()]
    return asdict(Panel(title, ylabel, list(bars), list(bars.values()), reference, fmt))


def draw(panels: list[Panel], title: str, path: Path, columns: int = 2) -> None:
    """Draw the panels on a grid and save the PNG."""
    columns = min(columns, len(panels)) or 1
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, item in zip(flat, panels, strict=False):
        _draw_panel(ax, item)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle(title, fontsize=13)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _draw_panel(ax: Axes, item: Panel) -> None:
    # Two bars are two sides in two colours; more are one side's figures in one colour.
    many = len(item.labels) > 2
    colors = [SIDE_COLORS[0 if many else n] for n in range(len(item.labels))]
    bars = ax.bar(item.labels, item.values, color=colors, width=0.6)
    ax.bar_label(bars, labels=[item.fmt.format(v) for v in item.values], padding=2)
    top = max([*item.values, *(value for value, _label in item.lines), 0.0])
    for n, (value, label) in enumerate(item.lines):
        style = LINE_STYLES[n % len(LINE_STYLES)]
        ax.axhline(value, color="#c53030", linestyle=style, linewidth=1.4, label=label)
    if item.lines:
        ax.legend(loc="best", fontsize=8, framealpha=0.9)
    ax.set_ylim(0, top * 1.25 if top > 0 else 1)
    ax.set_title(item.title, fontsize=10)
    ax.set_ylabel(item.ylabel)
    ax.spines[["top", "right"]].set_visible(False)


def write_summary(results: dict[str, dict[str, Any]], extra: dict[str, Any], out: Console) -> None:
    """``summary.json`` (every result) and ``summary.png`` (every panel), after ``all``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = {**extra, "benchmarks": results}
    path = RESULTS / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    panels = []
    for name, result in results.items():
        for item in result.get("panels", []):
            panels.append(Panel(**{**item, "title": f"{name}: {item['title']}"}))
    png = RESULTS / "summary.png"
    if panels:
        draw(panels, "zoom-worker benchmarks (one run, this machine)", png, columns=3)
    out.print(f"wrote {_shown(path)} and {_shown(png)}")


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
