"""Cleanup: what one run does to each kind of meeting, and its Zoom calls per deleted meeting.

Serves the simulator in this process and runs :func:`worker.cleanup.cleanup_stale` in it (no
Celery, no governor: an open gate), on its own database ``zoom_worker_bench_cleanup`` (dropped
and migrated at the start) so it never touches the other benchmarks' or a deployment's. The
meetings are made through the API with the simulator's clock moved back, so that Zoom and the
ledger agree on when each ended.
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from rich.console import Console
from sqlalchemy import insert, select

from bench import harness, report
from worker import cleanup, db, marker, meetings, schema, simulator, zoom
from worker.config import get_settings
from worker.demo import environment
from worker.models import Job as JobRow
from worker.models import Meeting as MeetingRow
from worker.token_store import TokenStore

NAME = "cleanup"
TITLE = "Cleanup: Zoom is asked before each delete; calls per deleted meeting"
PG_ADMIN = harness.PG_ADMIN
DATABASE = "zoom_worker_bench_cleanup" + harness.DB_SUFFIX
DATABASE_URL = harness.database_url(DATABASE)
BODY = {"topic": "Bench", "type": 2, "duration": 30, "agenda": "Bench"}
DAY = 86400
STALE = timedelta(hours=3)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=500, help="stale meetings in the big run")


def run(args: argparse.Namespace, out: Console) -> dict[str, Any]:
    with (
        simulator.start_simulator(simulator.SimulatorConfig(daily_create_limit=10**6)) as sim,
        environment({**sim.worker_env(), "DATABASE_URL": DATABASE_URL, "METRICS_PORT": "0"}),
        simulator.SimulatorClient(sim.url) as control,
    ):
        _reset_database()
        settings = get_settings()
        store = TokenStore(settings, db.sessions(settings))
        client = zoom.ZoomClient(settings.ZOOM_API_URL, zoom.ZoomAuth(store), timeout_s=10)
        runtime = meetings.Runtime(settings, client, meetings.OpenGate(), store)
        try:
            cases = _cases(runtime, control)
            big = _stale_run(runtime, control, args.jobs)
        finally:
            client.close()
            store.close()
            db.dispose_all()
    per_deleted = big["calls"] / max(1, big["deleted"])
    rows = [[name, outcome, "", expected] for name, (outcome, expected) in cases.items()]
    rows += [
        [f"{args.jobs} stale meetings: deleted", str(big["deleted"]), "", str(args.jobs)],
        ["Zoom calls in that run", str(big["calls"]), "", f"<= {2 * args.jobs}"],
        ["  of which GET / DELETE", "{get} / {delete}".format(**big["calls_by_operation"]), "", ""],
        ["calls per deleted meeting", f"{per_deleted:.2f}", "", "<= 2"],
        ["run time (s)", f"{big['seconds']:.1f}", "", ""],
    ]
    return {
        "title": TITLE,
        "rows": rows,
        "cases": {name: outcome for name, (outcome, _) in cases.items()},
        "stale_run": big | {"calls_per_deleted": round(per_deleted, 3)},
        "panels": [
            report.panel(
                "Zoom calls per deleted meeting",
                "calls",
                {"cleanup": per_deleted},
                {"goal": 2},
                "{:.2f}",
            )
        ],
    }


def _reset_database() -> None:
    db.dispose_all()
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    schema.upgrade_database(DATABASE_URL)


def _made(runtime: meetings.Runtime, control: Any, days_ago: float, body: dict[str, Any]) -> int:
    """A meeting made ``days_ago`` days ago (the simulator's clock moved back), in the ledger
    as stale."""
    control.advance_clock(-days_ago * DAY)
    try:
        meeting_id = runtime.client.create_meeting("bench@example.com", {**BODY, **body}).id
    finally:
        control.advance_clock(days_ago * DAY)
    _ledger([meeting_id])
    return meeting_id


def _ledger(ids: list[int]) -> None:
    end = datetime.now(UTC) - STALE
    rows = [{"meeting_id": i, "user_id": "bench@example.com", "scheduled_end": end} for i in ids]
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(insert(MeetingRow), rows)


def _cases(runtime: meetings.Runtime, control: Any) -> dict[str, tuple[str, str]]:
    """One meeting of each kind, one cleanup run; what became of each."""

    def weekly(days_ago: float) -> dict[str, Any]:
        day = (datetime.now(UTC) - timedelta(days=days_ago)).isoweekday() % 7 + 1
        return {"type": 8, "recurrence": {"type": 2, "weekly_days": str(day), "end_times": 3}}

    made = {
        "one-off, ended 3 h ago": (_made(runtime, control, 0.13, {}), "deleted"),
        "weekly x3, first ended": (_made(runtime, control, 8, weekly(8)), "kept"),
        "weekly x3, last ended": (_made(runtime, control, 30, weekly(30)), "deleted"),
        "no fixed time (type 3)": (_made(runtime, control, 1, {"type": 3}), "kept"),
        "series with no end": (
            _made(runtime, control, 1, {"type": 8, "recurrence": {"type": 1, "end_times": 0}}),
            "kept",
        ),
    }
    moved = _made(runtime, control, 0.13, {})
    control.update_meeting(moved, {"start_time": "2099-01-05T10:00:00Z"})
    made["moved later by the host"] = (moved, "kept")
    started = _made(runtime, control, 0.13, {})
    control.set_meeting_status(started, "started")
    made["in progress"] = (started, "kept")
    gone = _made(runtime, control, 0.13, {})
    runtime.client.delete_meeting(gone)
    made["deleted in Zoom already"] = (gone, "gone, no delete")
    job_id = uuid.uuid4()
    job_marker = marker.for_job(job_id)
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(
            insert(JobRow).values(
                id=job_id,
                kind="create",
                status="failed",
                user_id="bench@example.com",
                body=BODY,
                marker=job_marker,
                maybe_sent=True,
                finished_at=datetime.now(UTC),
            )
        )
    orphan = runtime.client.create_meeting(
        "bench@example.com",
        {**BODY, "start_time": "2099-01-05T10:00:00Z", "agenda": f"Bench\n\n{job_marker}"},
    ).id
    made["orphan of a failed create"] = (orphan, "deleted")
    calls = control.stats()["api_calls"]
    cleanup.cleanup_stale(runtime)
    asked = control.stats()["api_calls"] - calls
    in_sim = {m["id"]: m["deleted"] for m in control.meetings()}
    with db.sessions(get_settings())() as session:
        states = dict(session.execute(select(MeetingRow.meeting_id, MeetingRow.state)).all())
    outcome = {}
    for name, (meeting_id, expected) in made.items():
        if name == "deleted in Zoom already":
            seen = "gone, no delete" if states.get(meeting_id) == "deleted" else "?"
        else:
            seen = "deleted" if in_sim.get(meeting_id) else "kept"
        outcome[name] = (seen, expected)
    outcome[f"calls for these {len(made)}"] = (str(asked), "")
    return outcome


def _stale_run(runtime: meetings.Runtime, control: Any, count: int) -> dict[str, Any]:
    control.advance_clock(-STALE.total_seconds() - 1800)
    try:
        ids = [
            runtime.client.create_meeting(f"h{i % 20}@example.com", BODY).id for i in range(count)
        ]
    finally:
        control.advance_clock(STALE.total_seconds() + 1800)
    _ledger(ids)
    before = control.stats()
    started = time.monotonic()
    result = cleanup.cleanup_stale(runtime)
    seconds = time.monotonic() - started
    after = control.stats()
    by_operation = {
        op: n - before["calls_by_operation"].get(op, 0)
        for op, n in after["calls_by_operation"].items()
    }
    return {
        "meetings": count,
        "deleted": result.deleted,
        "kept": result.kept,
        "calls": after["api_calls"] - before["api_calls"],
        "calls_by_operation": {op: n for op, n in by_operation.items() if n},
        "seconds": round(seconds, 2),
    }
