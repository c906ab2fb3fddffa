"""Zoom's event notifications: the endpoint (worker.webhooks), the ledger's side
(worker.webhook_events) and the simulator sending them, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy
import sqlalchemy.orm
import uvicorn
from click.testing import CliRunner
from conftest import WorkerProcess, wait_for
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from worker import celery_app, cleanup, db, errors, jobs, meetings, models, webhook_events, webhooks
from worker.cli import cli
from worker.config import get_settings, load_settings
from worker.models import Meeting as MeetingRow
from worker.models import WebhookEvent as EventRow
from worker.simulator import RunningSimulator, SimulatorClient

pytestmark = pytest.mark.usefixtures("env")

SECRET = "whsec-test-token"  # a test's own secret token
PATH = "/zoom/webhooks"
MEETING_ID = 85_000_000_001
START = datetime(2030, 1, 10, 9, 0, tzinfo=UTC)


class AppClient:
    """Requests to the ASGI app in-process (httpx's ASGITransport); the answer's background
    task (queuing the apply task covering its commit) has run when ``post`` returns."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://zoom") as http:
                return await http.post(path, **kwargs)

        return asyncio.run(send())


class Sent(list[dict[str, Any]]):
    """The apply tasks the endpoint queued, instead of a broker."""

    def __call__(self, name: str, kwargs: dict[str, Any]) -> None:
        assert name == webhooks.APPLY_TASK
        self.append(kwargs)


def _intake(sent: Callable[[str, dict[str, Any]], None], **changes: Any) -> webhooks.Intake:
    values: dict[str, Any] = {
        "secrets": webhooks.SecretBook(default=SecretStr(SECRET)),
        "sessions": db.sessions(get_settings()),
        "send": sent,
        "publish_interval_s": 0.0,
    }
    return webhooks.Intake(**(values | changes))


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
def client(sent: Sent) -> AppClient:
    return AppClient(webhooks.create_app(_intake(sent), PATH))


def _body(event: str, event_ts: int, **obj: Any) -> bytes:
    payload = {"account_id": "sim-account", "operator": "h@example.com"}
    payload["object"] = {"id": MEETING_ID, "uuid": "u==", "host_id": "h", **obj}
    return json.dumps({"event": event, "event_ts": event_ts, "payload": payload}).encode()


def _headers(body: bytes, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256)
    return {
        "x-zm-request-timestamp": timestamp,
        "x-zm-signature": f"v0={digest.hexdigest()}",
        "content-type": "application/json",
    }


def _post(client: AppClient, body: bytes, **header_args: Any) -> httpx.Response:
    return client.post(PATH, content=body, headers=_headers(body, **header_args))


def _apply_all(sent: Sent) -> list[webhook_events.Effect]:
    """What the queued apply task does, if one was queued: apply every stored event not
    applied yet."""
    return webhook_events.apply_pending(db.sessions(get_settings())) if sent else []


def _ours(meeting_id: int = MEETING_ID, **values: Any) -> None:
    row = {
        "meeting_id": meeting_id,
        "user_id": "host@example.com",
        "start_time": START,
        "duration_min": 30,
        "scheduled_end": START + timedelta(minutes=30),
    }
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(insert(MeetingRow), [row | values])


def _ledger(meeting_id: int = MEETING_ID) -> MeetingRow:
    with db.sessions(get_settings())() as session:
        row = session.get(MeetingRow, meeting_id)
        assert row is not None
        return row


def _events() -> list[EventRow]:
    with db.sessions(get_settings())() as session:
        return list(session.execute(select(EventRow).order_by(EventRow.id)).scalars())


# -- the endpoint --------------------------------------------------------------------------


def test_webhooks__url_validation__answers_hmac_of_plain_token(client: AppClient) -> None:
    # Zoom's documented request: {"payload": {"plainToken": ...}, "event_ts", "event"}; the
    # answer is computed here with hashlib, independently of worker.webhooks.
    plain = "qgg8vlvZRS6UYooatFL8Aw"
    body = {"payload": {"plainToken": plain}, "event_ts": 1654503849680}
    body["event"] = "endpoint.url_validation"
    answer = _post(client, json.dumps(body).encode())
    expected = hmac.new(SECRET.encode(), plain.encode(), hashlib.sha256).hexdigest()
    assert answer.status_code == 200
    assert answer.json() == {"plainToken": plain, "encryptedToken": expected}
    assert _events() == []


def test_webhooks__url_validation_unsigned_or_a_signature_message__refused(
    client: AppClient,
) -> None:
    # Answering either would hand out HMAC(secret, anything): a signature for a forged event.
    forged = _body("meeting.deleted", 10)
    message = f"v0:{int(time.time())}:".encode() + forged
    body = {"event": "endpoint.url_validation", "event_ts": 1, "payload": {}}
    body["payload"] = {"plainToken": message.decode()}
    unsigned = client.post(PATH, content=json.dumps(body).encode())
    signed = _post(client, json.dumps(body).encode())
    assert (unsigned.status_code, signed.status_code) == (401, 400)
    assert "encryptedToken" not in unsigned.text + signed.text


def test_webhooks__wrong_signature__refused_and_nothing_changes(
    client: AppClient, sent: Sent
) -> None:
    _ours()
    body = _body("meeting.deleted", 1_000)
    answer = _post(client, body, secret="not-the-secret")
    tampered = client.post(PATH, content=body.replace(b"1000", b"1001"), headers=_headers(body))
    assert (answer.status_code, tampered.status_code) == (401, 401)
    assert _events() == [] and sent == []
    assert _ledger().state == models.LIVE


def test_webhooks__old_timestamp__refused_and_nothing_changes(
    client: AppClient, sent: Sent
) -> None:
    _ours()
    answer = _post(client, _body("meeting.deleted", 1_000), at=time.time() - 301)
    assert answer.status_code == 401
    assert _events() == [] and sent == []
    assert _ledger().state == models.LIVE


def test_webhooks__replayed_event__stored_once_and_applied_once(
    client: AppClient, sent: Sent
) -> None:
    _ours()
    body = _body("meeting.ended", 2_000, type=2)
    first, replay = _post(client, body), _post(client, body)
    assert (first.json(), replay.json()) == ({"stored": True}, {"stored": False})
    assert len(sent) == 1
    assert _apply_all(sent) == [webhook_events.Effect.ENDED]
    assert webhook_events.apply_pending(db.sessions(get_settings())) == []
    assert webhook_events.apply(db.sessions(get_settings()), _events()[0].id) is None
    assert [e.effect for e in _events()] == ["ended"]


def test_webhooks__oversized_or_malformed_body__413_or_400(client: AppClient) -> None:
    big = b'{"event": "x", "pad": "' + b"a" * webhooks.MAX_BODY_BYTES + b'"}'
    assert _post(client, big).status_code == 413
    assert _post(client, b"{not json").status_code == 400
    assert _post(client, b"[1, 2]").status_code == 400
    assert _post(client, b'{"event": "meeting.deleted"}').status_code == 400  # no event_ts
    assert _events() == []


def test_webhooks__second_account__verified_with_its_own_secret(sent: Sent) -> None:
    book = webhooks.SecretBook(
        default=SecretStr(SECRET), by_account={"other-account": SecretStr("other-secret")}
    )
    app = webhooks.create_app(_intake(sent, secrets=book), PATH)
    body = _body("meeting.started", 3_000).replace(b"sim-account", b"other-account")
    test_client = AppClient(app)
    assert _post(test_client, body).status_code == 401
    assert _post(test_client, body, secret="other-secret").status_code == 200
    assert [e.account_id for e in _events()] == ["other-account"]


def test_webhooks__logs__hold_no_secret_nor_signature(
    client: AppClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    _ours()
    body = _body("meeting.started", 4_000)
    headers = _headers(body)
    client.post(PATH, content=body, headers=headers)
    _post(client, body, secret="wrong")
    assert SECRET not in caplog.text
    assert headers["x-zm-signature"].removeprefix("v0=") not in caplog.text


# -- applying events -------------------------------------------------------------------------


def test_webhooks__events_twice_and_out_of_order__right_final_state(
    client: AppClient, sent: Sent
) -> None:
    _ours()
    moved = START + timedelta(days=1)
    stamp = moved.isoformat().replace("+00:00", "Z")
    events = [
        _body("meeting.updated", 10, duration=90),  # older: sets what no newer update set
        _body("meeting.updated", 30, start_time=stamp, topic="Moved"),
        _body("meeting.started", 40),
        _body("meeting.updated", 20, topic="Renamed", duration=45),  # duration is 45 at last
        _body("meeting.ended", 50, type=2),
    ]
    for index in (1, 4, 3, 2, 0, 4, 1, 2):  # out of order, some twice
        assert _post(client, events[index]).status_code == 200
        _apply_all(sent)
        sent.clear()
    row = _ledger()
    assert row.state == models.ENDED  # the started event (older) did not bring it back
    assert (row.topic, row.start_time, row.duration_min) == ("Moved", moved, 45)
    assert row.scheduled_end == moved + timedelta(minutes=45)
    assert len(_events()) == 5


def test_webhooks__deleted_then_older_started__stays_deleted(client: AppClient, sent: Sent) -> None:
    _ours()
    for body in (_body("meeting.deleted", 20), _body("meeting.started", 10)):
        _post(client, body)
    assert _apply_all(sent) == [webhook_events.Effect.DELETED, webhook_events.Effect.UNCHANGED]
    assert _ledger().state == models.DELETED


def test_webhooks__ended_then_older_started_in_one_batch__started_is_stale(
    client: AppClient, sent: Sent
) -> None:
    # One apply transaction: the second event must see what the first one did.
    _ours()
    for body in (_body("meeting.ended", 50, type=2), _body("meeting.started", 40)):
        assert _post(client, body).status_code == 200
    assert _apply_all(sent) == [webhook_events.Effect.ENDED, webhook_events.Effect.STALE]
    assert _ledger().state == models.ENDED


def test_webhooks__foreign_meeting__stored_and_ignored(client: AppClient, sent: Sent) -> None:
    _post(client, _body("meeting.deleted", 10))  # MEETING_ID is not in the ledger
    assert _apply_all(sent) == [webhook_events.Effect.FOREIGN]
    with db.sessions(get_settings())() as session:
        assert session.get(MeetingRow, MEETING_ID) is None


def test_webhooks__occurrence_deleted__series_stays_and_only_that_occurrence_is_gone(
    client: AppClient, sent: Sent
) -> None:
    _ours()
    _post(client, _body("meeting.deleted", 10, occurrences=[{"occurrence_id": "1700000000000"}]))
    assert _apply_all(sent) == [webhook_events.Effect.OCCURRENCES_DELETED]
    assert _ledger().state == models.LIVE
    with db.sessions(get_settings())() as session:
        assert webhook_events.is_gone(session, MEETING_ID, "1700000000000")
        assert not webhook_events.is_gone(session, MEETING_ID, "1700000600000")
        assert not webhook_events.is_gone(session, MEETING_ID, None)


def test_webhooks__meeting_gone__delete_job_succeeds_without_a_call(
    client: AppClient, sent: Sent, sim_client: SimulatorClient
) -> None:
    _ours()
    _post(client, _body("meeting.deleted", 10))
    _apply_all(sent)
    job_id = jobs.delete_meeting(MEETING_ID)
    work = meetings.Runtime.from_settings(get_settings(), send=celery_app.send)
    try:
        claim = work.ledger.claim(job_id)
        assert claim is not None
        assert meetings.run(claim, work) is None
    finally:
        work.client.close()
        work.store.close()
    job = jobs.get_job(job_id)
    assert job is not None and job.status == models.SUCCEEDED
    assert "delete" not in sim_client.stats()["calls_by_operation"]


def test_webhooks__crash_after_storing__beat_sweep_applies_the_event(
    start_worker: Callable[..., WorkerProcess], start_beat: Callable[..., WorkerProcess]
) -> None:
    # The event is committed and answered, then its apply task never reaches the broker
    # (the endpoint's process died between its commit and its publish): beat's sweep
    # queues the apply task, and a worker applies the event.
    _ours()
    broken = _intake(lambda name, kwargs: (_ for _ in ()).throw(ConnectionError("broker down")))
    down = AppClient(webhooks.create_app(broken, PATH))
    assert _post(down, _body("meeting.deleted", 10)).status_code == 200
    assert _events()[0].applied_at is None
    start_worker(concurrency=1)
    start_beat(SWEEP_INTERVAL_SECONDS="0.5")
    wait_for(
        lambda: _ledger().state == models.DELETED,
        timeout=60,
        what="beat's sweep applies the stored event",
        details=lambda: [(e.event, e.applied_at, e.effect) for e in _events()],
    )
    assert [e.effect for e in _events()] == ["deleted"]


class Commits:
    """Counts the commits and the INSERTs into webhook_events on this process's engine."""

    def __init__(self) -> None:
        self.commits = 0
        self.inserts = 0

    def commit(self, _connection: Any) -> None:
        self.commits += 1

    def execute(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.inserts += statement.lstrip().upper().startswith("INSERT INTO WEBHOOK_EVENTS")


def test_webhooks__burst_of_concurrent_requests__n_rows_in_fewer_than_n_transactions(
    sent: Sent,
) -> None:
    n = 40
    bodies = [_body("meeting.updated", 1_000 + i, topic=f"T{i}") for i in range(n)]
    bodies.append(bodies[0])  # a duplicate in the same burst is stored once
    app = webhooks.create_app(_intake(sent), PATH)

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://zoom") as http:
            posts = [http.post(PATH, content=b, headers=_headers(b)) for b in bodies]
            return await asyncio.gather(*posts)

    engine = db.get_engine(get_settings())
    counted = Commits()
    sqlalchemy.event.listen(engine, "commit", counted.commit)
    sqlalchemy.event.listen(engine, "before_cursor_execute", counted.execute)
    try:
        answers = asyncio.run(burst())
    finally:
        sqlalchemy.event.remove(engine, "commit", counted.commit)
        sqlalchemy.event.remove(engine, "before_cursor_execute", counted.execute)
    assert [a.status_code for a in answers] == [200] * (n + 1)
    assert sum(a.json()["stored"] for a in answers) == n
    assert len({e.event_ts for e in _events()}) == len(_events()) == n
    assert 1 <= counted.commits < n // 4, counted.commits
    assert counted.inserts == counted.commits
    assert 1 <= len(sent) < n // 4  # one apply task per commit at most, not one per event
    assert len(webhook_events.apply_pending(db.sessions(get_settings()))) == n


def test_webhooks__database_down__every_request_of_the_group_answered_503(sent: Sent) -> None:
    # Zoom retries only 5xx answers: an event that could not be stored must not get a 200.
    down = sqlalchemy.create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/nowhere", connect_args={"connect_timeout": 2}
    )
    app = webhooks.create_app(_intake(sent, sessions=sqlalchemy.orm.sessionmaker(down)), PATH)
    bodies = [_body("meeting.started", 100 + i) for i in range(5)]

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://zoom") as http:
            return await asyncio.gather(
                *(http.post(PATH, content=b, headers=_headers(b)) for b in bodies)
            )

    try:
        answers = asyncio.run(burst())
    finally:
        down.dispose()
    assert [a.status_code for a in answers] == [503] * 5
    assert sent == [] and _events() == []


def test_webhook_events__two_appliers_at_once__each_event_applied_once_newest_topic_wins() -> None:
    for i in range(3):
        _ours(MEETING_ID + i)
    sessions = db.sessions(get_settings())
    with sessions() as session, session.begin():
        for i in range(300):
            body = json.loads(_body("meeting.updated", 10 + i, topic=f"T{i}"))
            body["payload"]["object"]["id"] = MEETING_ID + i % 4  # the 4th is not ours
            webhook_events.store(session, webhook_events.Event.parse(body))
    results: list[list[webhook_events.Effect]] = []
    appliers = [
        threading.Thread(target=lambda: results.append(webhook_events.apply_pending(sessions, 20)))
        for _ in range(2)
    ]
    for applier in appliers:
        applier.start()
    for applier in appliers:
        applier.join(timeout=60)
    assert sum(len(r) for r in results) == 300
    assert all(e.applied_at is not None for e in _events())
    assert sum(e.effect == "foreign" for e in _events()) == 75
    assert [_ledger(MEETING_ID + i).topic for i in range(3)] == ["T296", "T297", "T298"]


# -- end to end: the simulator sends, a real worker applies, the cleanup makes no call ---------


@pytest.fixture
def endpoint() -> Iterator[str]:
    """The endpoint served by uvicorn on 127.0.0.1, queuing to the test's broker."""
    intake = _intake(celery_app.send)
    config = uvicorn.Config(
        webhooks.create_app(intake, PATH), host="127.0.0.1", port=0, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="uvicorn started")
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}{PATH}"
    server.should_exit = True
    thread.join(timeout=10)


def test_webhooks__meeting_deleted_by_someone_else__marked_gone_and_cleanup_makes_no_call(
    endpoint: str,
    sim: RunningSimulator,
    sim_client: SimulatorClient,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker(concurrency=1)
    sim_client.configure(webhook_url=endpoint, webhook_secret_token=SECRET)
    work = meetings.Runtime.from_settings(get_settings(), send=celery_app.send)
    try:
        meeting = work.client.create_meeting("host@example.com", {"topic": "Stale", "type": 2})
        _ours(meeting.id, scheduled_end=datetime.now(UTC) - timedelta(hours=3))
        sim_client.delete_meeting(meeting.id)  # "someone else", in Zoom's web page
        wait_for(
            lambda: _ledger(meeting.id).state == models.DELETED,
            timeout=90,
            what="the webhook marks the meeting deleted",
            details=lambda: [(e.event, e.effect) for e in _events()],
        )
        before = dict(sim_client.stats()["calls_by_operation"])
        report = cleanup.cleanup_stale(work)
    finally:
        work.client.close()
        work.store.close()
    assert sim_client.stats()["calls_by_operation"] == before  # no GET, no DELETE
    assert (report.deleted, report.already_gone) == (0, 0)
    assert sim.simulator.webhooks.counts()["webhooks_failed"] == 0
    assert {e.event for e in _events()} == {"meeting.created", "meeting.deleted"}


# -- the operator's commands -----------------------------------------------------------------


def test_cli__events__lists_the_last_events_and_their_effect(client: AppClient, sent: Sent) -> None:
    _ours()
    _post(client, _body("meeting.deleted", 10))
    _apply_all(sent)
    _post(client, _body("meeting.started", 5))
    result = CliRunner().invoke(cli, ["events"], catch_exceptions=False)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    started = next(line for line in lines if "meeting.started" in line)
    deleted = next(line for line in lines if "meeting.deleted" in line)
    assert "not applied yet" in started and "deleted" in deleted
    assert lines.index(started) < lines.index(deleted)  # newest first
    assert str(MEETING_ID) in deleted


def test_cli__webhooks_without_secret__refuses_naming_the_variable() -> None:
    result = CliRunner().invoke(cli, ["webhooks", "--port", "0"])
    assert result.exit_code == 1
    assert "ZOOM_WEBHOOK_SECRET_TOKEN" in result.output


def test_webhooks__simulator_moves_and_ends_a_meeting__ledger_follows(
    endpoint: str, sim_client: SimulatorClient, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker(concurrency=1)
    sim_client.configure(webhook_url=endpoint, webhook_secret_token=SECRET)
    work = meetings.Runtime.from_settings(get_settings(), send=celery_app.send)
    try:
        stamp = START.isoformat().replace("+00:00", "Z")
        body = {"topic": "Planning", "type": 2, "start_time": stamp, "duration": 30}
        meeting = work.client.create_meeting("host@example.com", body)
    finally:
        work.client.close()
        work.store.close()
    _ours(meeting.id)
    moved = START + timedelta(days=2)
    sim_client.update_meeting(meeting.id, {"start_time": moved.isoformat(), "duration": 50})
    wait_for(
        lambda: _ledger(meeting.id).scheduled_end == moved + timedelta(minutes=50),
        timeout=90,
        what="the webhook moves the cleanup's date",
        details=lambda: [(e.event, e.effect) for e in _events()],
    )
    sim_client.set_meeting_status(meeting.id, "started")
    sim_client.set_meeting_status(meeting.id, "ended")
    wait_for(lambda: _ledger(meeting.id).state == models.ENDED, timeout=90, what="it ended")
    row = _ledger(meeting.id)
    assert (row.start_time, row.duration_min) == (moved, 50)
    assert [e.event for e in _events()] == [
        "meeting.created",
        "meeting.updated",
        "meeting.started",
        "meeting.ended",
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ZOOM_WEBHOOK_MAX_AGE", "-7.5"),
        ("ZOOM_WEBHOOK_MAX_AGE", "soon"),
        ("ZOOM_WEBHOOK_PATH", "zoom/webhooks"),
        ("ZOOM_WEBHOOK_PATH", "/zoom webhooks"),
    ],
)
def test_config__invalid_webhook_setting__stops_naming_the_variable(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    monkeypatch.setenv("ZOOM_WEBHOOK_SECRET_TOKEN", "not-to-be-echoed")
    with pytest.raises(errors.ConfigurationError) as caught:
        load_settings()
    assert caught.value.setting == name
    assert value not in str(caught.value) and "not-to-be-echoed" not in str(caught.value)


def test_webhooks__app_of_each_uvicorn_worker__built_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With WEBHOOK_WORKERS > 1 each uvicorn process builds its app with this factory.
    monkeypatch.setenv("ZOOM_WEBHOOK_SECRET_TOKEN", SECRET)
    get_settings.cache_clear()
    app = AppClient(webhooks.app_from_environment())
    body = _body("meeting.started", 1234)

    answers = [_post(app, body).status_code, _post(app, body, secret="wrong").status_code]

    assert answers == [200, 401]
    assert [e.event_ts for e in _events()] == [1234]
