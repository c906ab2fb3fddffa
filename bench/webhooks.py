"""Webhooks: how many of Zoom's event notifications the endpoint verifies and stores per
second, and its answer times at 200 requests/s.

``zoom-worker webhooks`` runs as its own process (uvicorn, one event loop) against its own
database ``zoom_worker_bench_webhooks`` (dropped, created and migrated, dropped at the end)
and a broker database that nothing consumes (flushed before and after): each request is
verified (HMAC-SHA256, constant time) and stored (the requests that arrive together in one
multi-row ``INSERT ... ON CONFLICT DO NOTHING`` and one commit), and after the answers one
``webhooks.apply_pending`` task per commit at most is put on the broker. Every event is
distinct and signed before the clock starts.

1. **Throughput**: ``--events`` requests sent as fast as ``--clients`` keep-alive connections
   allow; requests/s of 200 answers.
2. **Latency at a rate**: requests planned open-loop at ``--rate`` per second for
   ``--seconds``; each answer time is counted from the request's *planned* time, so a server
   that falls behind shows its backlog (no coordinated omission); p50/p95/p99, and the rate
   actually answered.
3. **Applying**: the events are ``meeting.updated`` of 500 meetings in the ledger. With
   ``--applier`` (the default) one applier process runs beside the endpoint all along, doing
   what the ``webhooks.apply_pending`` task does (:func:`applier`: apply what is pending,
   else wait 50 ms), so the endpoint shares the cores with the applying as in production;
   reported: how long after the last answer every event was applied. With ``--no-applier``
   the stored events are applied afterwards by this process: events applied per second.

Zoom wants an answer within 3 s; nothing here asserts it.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import redis
from rich.console import Console
from sqlalchemy import create_engine
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import sessionmaker

from bench import harness, report
from worker import db, models, schema, webhook_events

NAME = "webhooks"
TITLE = "Webhooks: events verified and stored per second, p99 at 200/s"
DATABASE = "zoom_worker_bench_webhooks" + harness.DB_SUFFIX
DATABASE_URL = harness.database_url(DATABASE)
SECRET = "bench-webhook-secret"
PATH = "/zoom/webhooks"
PORT = 9811
ZOOM_LIMIT_MS = 3000.0
MEETING_BASE, MEETINGS = 85_000_000_000, 500


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", "--events", type=int, default=3000, help="throughput events")
    parser.add_argument("--clients", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s of the latency run")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the latency run")
    parser.add_argument("--broker-url", default=harness.BROKER_URL, help="flushed before and after")
    parser.add_argument(
        "--workers", type=int, default=1, help="uvicorn processes (WEBHOOK_WORKERS)"
    )
    parser.add_argument("--port", type=int, default=PORT, help="the endpoint's port")
    parser.add_argument(
        "--applier",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="apply the events in a process of its own while they arrive",
    )


def run(args: argparse.Namespace, out: Console) -> dict[str, Any]:
    _reset_database()
    _add_meetings()
    redis.Redis.from_url(args.broker_url).flushdb()
    server = _start_endpoint(args.broker_url, args.port, args.workers)
    applying = _start_applier() if args.applier else None
    try:
        url = f"http://127.0.0.1:{args.port}{PATH}"
        events = _signed(args.jobs, first_ts=1)
        out.print(f"[bold]webhooks[/]: {len(events)} events as fast as {args.clients} clients go")
        throughput = _flood(url, events, args.clients)
        count = round(args.rate * args.seconds)
        out.print(f"[bold]webhooks[/]: {count} events at {args.rate:g}/s, open loop")
        paced = _paced(url, _signed(count, first_ts=10**9), args.rate)
        stored = _stored()
        out.print(f"[bold]webhooks[/]: applying the {stored} stored events")
        applied = _all_applied(stored) if applying else _apply()
    finally:
        for process in (server, applying):
            if process is not None:
                process.terminate()
                process.wait(timeout=20)
        redis.Redis.from_url(args.broker_url).flushdb()
        db.dispose_all()
        _drop_database()
    return _result(args, throughput, paced, stored, applied)


def _start_endpoint(broker_url: str, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": DATABASE_URL,
        "CELERY_BROKER_URL": broker_url,
        "ZOOM_WEBHOOK_SECRET_TOKEN": SECRET,
        "WEBHOOK_WORKERS": str(workers),
    }
    serve = "from worker.cli import main; main()"
    command = [sys.executable, "-c", serve, "webhooks", "--port", str(port)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120  # several uvicorn processes start slowly under load
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}{PATH}", content=b"{}", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("zoom-worker webhooks did not start within 120 s")


def _signed(n: int, first_ts: int) -> list[tuple[bytes, dict[str, str]]]:
    """``n`` distinct meeting.updated events, each with its signed headers."""
    timestamp = str(int(time.time()))
    events = []
    for i in range(n):
        obj = {"id": MEETING_BASE + i % MEETINGS, "uuid": "u==", "host_id": "h", "duration": 30}
        payload = {"account_id": "bench", "operator": "h@example.com", "object": obj}
        body = json.dumps(
            {"event": "meeting.updated", "event_ts": first_ts + i, "payload": payload}
        ).encode()
        digest = hmac.new(SECRET.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256)
        headers = {
            "content-type": "application/json",
            "x-zm-request-timestamp": timestamp,
            "x-zm-signature": f"v0={digest.hexdigest()}",
        }
        events.append((body, headers))
    return events


def _flood(url: str, events: list[tuple[bytes, dict[str, str]]], clients: int) -> dict[str, Any]:
    shares = [events[i::clients] for i in range(clients)]

    def send(share: list[tuple[bytes, dict[str, str]]]) -> list[int]:
        with httpx.Client(timeout=30) as http:
            return [http.post(url, content=b, headers=h).status_code for b, h in share]

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        statuses = [s for result in pool.map(send, shares) for s in result]
    elapsed = time.monotonic() - started
    ok = statuses.count(200)
    return {"events": len(events), "ok": ok, "seconds": elapsed, "per_second": ok / elapsed}


def _paced(url: str, events: list[tuple[bytes, dict[str, str]]], rate: float) -> dict[str, Any]:
    latencies_ms: list[float] = []
    statuses: list[int] = []
    clients = [httpx.Client(timeout=30) for _ in range(64)]

    def send(i: int, at: float) -> None:
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        body, headers = events[i]
        answer = clients[i % len(clients)].post(url, content=body, headers=headers)
        latencies_ms.append((time.monotonic() - at) * 1000)
        statuses.append(answer.status_code)

    start = time.monotonic() + 0.5
    try:
        with ThreadPoolExecutor(64) as pool:
            for i in range(len(events)):
                pool.submit(send, i, start + i / rate)
    finally:
        for client in clients:
            client.close()
    elapsed = time.monotonic() - start
    return {
        "events": len(events),
        "ok": statuses.count(200),
        "answered_per_second": len(statuses) / elapsed,
        "p50_ms": harness.percentile(latencies_ms, 50),
        "p95_ms": harness.percentile(latencies_ms, 95),
        "p99_ms": harness.percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms, default=0.0),
    }


def applier(database_url: str) -> None:
    """Apply stored events as they come, as the ``webhooks.apply_pending`` task does, until
    terminated (``--applier``)."""
    sessions = sessionmaker(create_engine(database_url), expire_on_commit=False)
    while True:
        if not webhook_events.apply_pending(sessions):
            time.sleep(0.05)


def _start_applier() -> subprocess.Popen[bytes]:
    code = f"from bench.webhooks import applier; applier({DATABASE_URL!r})"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)


def _all_applied(stored: int, timeout_s: float = 300.0) -> dict[str, Any]:
    """How long after the last answer the applier has applied every stored event."""
    started = time.monotonic()
    applied = 0
    while time.monotonic() - started < timeout_s:
        with psycopg.connect(DATABASE_URL.replace("+psycopg", "")) as conn:
            row = conn.execute(
                "SELECT count(*) FROM webhook_events WHERE applied_at IS NOT NULL"
            ).fetchone()
        applied = int(row[0]) if row else 0
        if applied >= stored:
            break
        time.sleep(0.1)
    return {"events": applied, "seconds_after_last_answer": time.monotonic() - started}


def _add_meetings() -> None:
    """The events' meetings, in the ledger: applying an event reads and writes its row."""
    start = datetime(2030, 1, 1, tzinfo=UTC)
    meetings = [
        {
            "meeting_id": MEETING_BASE + i,
            "user_id": "host@example.com",
            "start_time": start,
            "duration_min": 30,
            "scheduled_end": start + timedelta(minutes=30),
        }
        for i in range(MEETINGS)
    ]
    sessions = sessionmaker(create_engine(DATABASE_URL), expire_on_commit=False)
    try:
        with sessions() as session, session.begin():
            session.execute(insert(models.Meeting), meetings)
    finally:
        sessions.kw["bind"].dispose()


def _apply() -> dict[str, Any]:
    """Apply every stored event in this process (``--no-applier``)."""
    sessions = sessionmaker(create_engine(DATABASE_URL), expire_on_commit=False)
    try:
        started = time.monotonic()
        effects = webhook_events.apply_pending(sessions, most=10**9)
        elapsed = time.monotonic() - started
    finally:
        sessions.kw["bind"].dispose()
    return {"events": len(effects), "seconds": elapsed, "per_second": len(effects) / elapsed}


def _stored() -> int:
    with psycopg.connect(DATABASE_URL.replace("+psycopg", "")) as conn:
        row = conn.execute("SELECT count(*) FROM webhook_events").fetchone()
        return int(row[0]) if row else 0


def _reset_database() -> None:
    _drop_database()
    schema.upgrade_database(DATABASE_URL)


def _drop_database() -> None:
    with psycopg.connect(harness.PG_ADMIN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


def _result(
    args: argparse.Namespace,
    throughput: dict[str, Any],
    paced: dict[str, Any],
    stored: int,
    applied: dict[str, Any],
) -> dict[str, Any]:
    rows = [
        ["events verified and stored per second", f"{throughput['per_second']:.0f}", "", ""],
        [f"answers 200 at full speed ({args.clients} clients)", str(throughput["ok"]), "", ""],
        [
            f"p50 / p95 at {args.rate:g}/s, ms",
            f"{paced['p50_ms']:.1f}/{paced['p95_ms']:.1f}",
            "",
            "",
        ],
        [f"p99 at {args.rate:g}/s, ms", f"{paced['p99_ms']:.1f}", "", f"< {ZOOM_LIMIT_MS:.0f}"],
        [f"answered per second (planned {args.rate:g})", f"{paced['answered_per_second']:.0f}"]
        + [""] * 2,
        ["rows stored (every event once)", str(stored), "", ""],
    ]
    if "per_second" in applied:
        rows.append(["events applied per second (one applier)", f"{applied['per_second']:.0f}"])
    else:
        applied_row = f"{applied['events']} in {applied['seconds_after_last_answer']:.1f} s"
        rows.append(["applied alongside; all applied after the last answer", applied_row])
    rows[-1] += ["", ""]
    return {
        "name": NAME,
        "title": TITLE,
        "machine": harness.machine(),
        "throughput": throughput,
        "paced": paced,
        "stored": stored,
        "applied": applied,
        "rows": rows,
        "panels": [
            report.panel(
                f"answer time at {args.rate:g} requests/s",
                "ms",
                {k: paced[f"{k}_ms"] for k in ("p50", "p95", "p99")},
                fmt="{:.1f}",
            ),
            report.panel("throughput", "events/s", {"stored": throughput["per_second"]}),
        ],
    }
