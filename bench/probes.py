"""Measuring the fleet from outside: PostgreSQL's and Redis's counters, and /proc.

``pg_stat_database`` is read through the ``postgres`` database, so reading it adds nothing
to the benchmark database's own counts. A backend reports its counters lazily (at most once
a second, and up to 10 s late when it goes idle right after a report); one that exits
reports at once.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import redis
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from bench.harness import BENCH_DB, PG_ADMIN


def xact_count() -> int:
    """Transactions committed and rolled back in the benchmark's database so far."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (BENCH_DB,),
        ).fetchone()
    return int(row[0]) if row else 0


def settled_xact_count(timeout_s: float = 3.0) -> int:
    """The transaction count once it stops moving (backends flush their stats lazily)."""
    last, deadline = xact_count(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = xact_count()
        if now == last:
            return now
        last = now
    return last


def pool_children(parent: int) -> list[int]:
    """The pids whose parent is ``parent`` (a prefork worker's pool processes)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The command name may hold spaces and parentheses: split after the last ')'.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                children.append(int(entry.name))
    return children


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident set (VmHWM) in kB; 0 when it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def unique_kb(pid: int) -> int:
    """The process's private memory now (USS: ``Private_Clean + Private_Dirty`` of
    ``smaps_rollup``) in kB: what it holds that no other process shares; 0 when it is gone."""
    total = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used so far, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / ticks


def redis_calls(url: str) -> int:
    """Commands the Redis server of ``url`` has run so far (``INFO commandstats``, every
    database), the ``INFO`` calls that read them excluded."""
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return sum(int(value["calls"]) for name, value in stats.items() if name != "cmdstat_info")


@contextlib.contextmanager
def counting_commits() -> Iterator[list[int]]:
    """Count the transactions this process commits through SQLAlchemy meanwhile (the
    producers' own: ``[n]``, read after the block)."""
    count = [0]

    def committed(_conn: Connection) -> None:
        count[0] += 1

    event.listen(Engine, "commit", committed)
    try:
        yield count
    finally:
        event.remove(Engine, "commit", committed)
