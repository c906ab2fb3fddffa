"""The shared token: one request for many processes, one renewal for a storm of 401s,
renewal before expiry, encryption at rest, bounded lock waits and requests, the budget of
grants, failed requests paced, and expiry on the database's clock (the circuit has
test_circuit.py)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import WorkerProcess, wait_for
from sqlalchemy import func, select, text
from token_parts import close_opened  # noqa: F401 - the autouse fixture, by import
from token_parts import new_client as _client
from token_parts import new_store as _store

from worker import circuit, db, errors, jobs, oauth, token_budget, token_store, zoom
from worker.config import get_settings
from worker.models import Credential, TokenRequest
from worker.simulator import SimulatorClient

pytestmark = pytest.mark.usefixtures("env")


def _token_rows() -> list[TokenRequest]:
    with db.sessions(get_settings())() as session:
        return list(session.scalars(select(TokenRequest).order_by(TokenRequest.id)))


# -- processes ------------------------------------------------------------------------------


def _child_get_token(env: dict[str, str], start: Any, out: Any) -> None:
    os.environ.update(env)
    store = _store()
    start.wait(30)
    out.put(store.get().value[-8:])


def _child_call_after_kill(env: dict[str, str], warmed: Any, go: Any, out: Any) -> None:
    os.environ.update(env)
    store = _store()
    client = _client(store)
    meeting = client.create_meeting("host@example.com", {"topic": "warm-up"})
    warmed.put(meeting.id)
    go.wait(30)
    out.put(client.get_meeting(meeting.id).id == meeting.id)


def _processes(count: int, target: Any, *args: Any) -> list[multiprocessing.process.BaseProcess]:
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=target, args=args) for _ in range(count)]
    for proc in procs:
        proc.start()
    return procs


@pytest.fixture
def mp() -> Iterator[Any]:
    with multiprocessing.get_context("spawn").Manager() as manager:
        yield manager


def test_token_store__concurrent_processes__fetch_once(
    env: dict[str, str], sim_client: SimulatorClient, mp: Any
) -> None:
    start, out = mp.Event(), mp.Queue()
    procs = _processes(12, _child_get_token, env, start, out)
    start.set()
    tails = {out.get(timeout=60) for _ in procs}
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0

    assert len(tails) == 1, "every process must use the same token"
    assert sim_client.stats()["tokens_issued"] == 1
    assert [row.outcome for row in _token_rows()] == ["ok"]


def test_token_store__storm_of_401s__one_renewal(
    env: dict[str, str], sim_client: SimulatorClient, mp: Any
) -> None:
    warmed, go, out = mp.Queue(), mp.Event(), mp.Queue()
    procs = _processes(12, _child_call_after_kill, env, warmed, go, out)
    for _ in procs:
        warmed.get(timeout=60)
    assert sim_client.stats()["tokens_issued"] == 1
    sim_client.invalidate_tokens()
    go.set()
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)

    stats = sim_client.stats()
    assert results == [True] * 12
    assert stats["tokens_issued"] == 2, "twelve 401s must cause exactly one renewal"
    assert stats["api_401"] == 12
    assert [row.reason for row in _token_rows()] == ["missing", "missing"]


def test_token_store__threads_of_one_process__one_request(sim_client: SimulatorClient) -> None:
    store = _store()
    barrier = threading.Barrier(16)
    seen: list[str] = []

    def run() -> None:
        barrier.wait()
        seen.append(store.get().value)

    threads = [threading.Thread(target=run) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(set(seen)) == 1 and len(seen) == 16
    assert sim_client.stats()["tokens_issued"] == 1


# -- expiry, encryption, rotation --------------------------------------------------------------


def test_token_store__expiring_soon__renewed_before_expiry(sim_client: SimulatorClient) -> None:
    sim_client.configure(token_lifetime_s=3)
    store = _store()
    client = _client(store)
    meeting = client.create_meeting("host@example.com", {"topic": "renewal"})
    first = store.get()

    deadline = datetime.now(UTC) + timedelta(seconds=20)
    while sim_client.stats()["tokens_issued"] < 2:
        assert datetime.now(UTC) < deadline, "the token was never renewed"
        client.get_meeting(meeting.id)

    rows = _token_rows()
    assert [row.reason for row in rows] == ["missing", "expiring"]
    assert rows[1].requested_at < first.expires_at, "renewed only after it expired"
    assert sim_client.stats()["api_401"] == 0


def test_token_store__at_rest__encrypted_and_hashed(sim_client: SimulatorClient) -> None:
    token = _store().get()
    with db.sessions(get_settings())() as session:
        row = session.scalars(select(Credential)).one()
    assert row.token_ciphertext is not None
    assert token.value.encode() not in row.token_ciphertext
    assert row.token_sha256 and row.token_sha256 != token.value
    assert "secure" in repr(token) and token.value not in repr(token)


def test_token_store__secret_rotated__stored_token_ignored(
    sim_client: SimulatorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _store().get()
    sim_client.rotate_secret("rotated-secret")
    monkeypatch.setenv("ZOOM_CLIENT_SECRET", "rotated-secret")
    get_settings.cache_clear()
    token_store.forget_process_tokens()

    token = _store().get()

    reused = token.value == first.value  # compared, never printed
    assert not reused, "a token encrypted under the old secret must not be reused"
    assert sim_client.stats()["tokens_issued"] == 2


def test_token_store__secret_file__reread_at_each_request(
    sim_client: SimulatorClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("sim-secret\n")
    monkeypatch.delenv("ZOOM_CLIENT_SECRET")
    monkeypatch.setenv("ZOOM_CLIENT_SECRET_FILE", str(secret_file))
    get_settings.cache_clear()
    store = _store()
    first = store.get()

    sim_client.rotate_secret("new-secret")
    secret_file.write_text("new-secret")
    store.invalidate(first)
    second = store.get()

    assert second.value != first.value
    assert [row.outcome for row in _token_rows()] == ["ok", "ok"]


# -- failures ------------------------------------------------------------------------------------


def test_token_store__row_lock_not_granted__infrastructure_error(
    monkeypatch: pytest.MonkeyPatch, sim_client: SimulatorClient
) -> None:
    monkeypatch.setenv("ZOOM_TOKEN_LOCK_TIMEOUT", "0.3")
    get_settings.cache_clear()
    store = _store()
    store.get()
    token_store.forget_process_tokens()
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(text("UPDATE credentials SET token_ciphertext = NULL"))
    with db.sessions(get_settings())() as holder, holder.begin():
        holder.execute(select(Credential).with_for_update())
        with pytest.raises(errors.TokenStoreBusy) as caught:
            _store().get()
    assert isinstance(caught.value, errors.InfrastructureError)
    assert not isinstance(caught.value, errors.CredentialsRejected | errors.CircuitOpen)
    assert "ZOOM_TOKEN_LOCK_TIMEOUT" in str(caught.value)


def test_token_store__budget_spent__no_more_requests(
    monkeypatch: pytest.MonkeyPatch, sim_client: SimulatorClient
) -> None:
    monkeypatch.setenv("ZOOM_TOKEN_BUDGET_PER_HOUR", "2")
    get_settings.cache_clear()
    store = _store()
    store.invalidate(store.get())
    store.invalidate(store.get())

    with pytest.raises(errors.TokenBudgetExhausted) as caught:
        store.get()

    assert "ZOOM_TOKEN_BUDGET_PER_HOUR=2" in str(caught.value)
    assert caught.value.retry_at > datetime.now(UTC) + timedelta(minutes=59)
    assert sim_client.stats()["token_requests"] == 2


def test_token_status__counts_requests(sim_client: SimulatorClient) -> None:
    store = _store()
    store.invalidate(store.get())
    store.get()
    status = store.status()
    assert status.requests_last_hour == 2 and status.requests_last_day == 2
    assert status.expires_at is not None and status.expires_at > datetime.now(UTC)
    with db.sessions(get_settings())() as session:
        assert session.scalar(select(func.count()).select_from(TokenRequest)) == 2


# -- a failing token endpoint: grants budgeted, failures paced, the valid token kept ----------


def _settings(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


def _get_or_none(store: token_store.TokenStore) -> oauth.AccessToken | None:
    try:
        return store.get()
    except errors.TokenRequestFailed:
        return None


def test_token_store__failed_request__next_one_waits_without_asking(
    monkeypatch: pytest.MonkeyPatch, sim_client: SimulatorClient
) -> None:
    _settings(monkeypatch, ZOOM_TOKEN_BACKOFF_MIN="30", ZOOM_TOKEN_BACKOFF_MAX="60")
    sim_client.configure(token_endpoint_down=True)
    store = _store()

    with pytest.raises(errors.TokenRequestFailed) as first:
        store.get()
    with pytest.raises(errors.TokenRequestFailed) as second:
        _store().get()

    assert first.value.status == 503
    assert second.value.retry_at is not None
    assert second.value.retry_at > datetime.now(UTC) + timedelta(seconds=20)
    assert isinstance(second.value, errors.ZoomError) and not second.value.status
    assert sim_client.stats()["token_requests"] == 1, "the fleet waits instead of asking"


def test_token_store__endpoint_fails_beyond_the_budget__recovers_without_exhausting_it(
    monkeypatch: pytest.MonkeyPatch, sim_client: SimulatorClient
) -> None:
    _settings(
        monkeypatch,
        ZOOM_TOKEN_BUDGET_PER_HOUR="2",
        ZOOM_TOKEN_BACKOFF_MIN="0.05",
        ZOOM_TOKEN_BACKOFF_MAX="0.2",
    )
    sim_client.configure(token_endpoint_down=True)
    store = _store()
    wait_for(
        lambda: _get_or_none(store) is None and sim_client.stats()["token_errors"] >= 6,
        timeout=30,
    )
    sim_client.configure(token_endpoint_down=False)

    token = wait_for(lambda: _get_or_none(store), timeout=10)

    assert token.seconds_left() > 3000
    outcomes = [row.outcome for row in _token_rows()]
    assert outcomes.count("error") >= 6 and outcomes[-1] == "ok"
    assert sim_client.stats()["tokens_issued"] == 1
    assert store.status().failures_last_day >= 6


def test_token_store__renewal_fails__still_valid_token_served_until_it_expires(
    monkeypatch: pytest.MonkeyPatch, sim_client: SimulatorClient
) -> None:
    _settings(monkeypatch, ZOOM_TOKEN_BACKOFF_MIN="0.05", ZOOM_TOKEN_BACKOFF_MAX="0.05")
    sim_client.configure(token_lifetime_s=4)  # renewed in its last 2 s (half its life)
    store = _store()
    first = store.get()
    sim_client.configure(token_endpoint_down=True)

    wait_for(lambda: first.seconds_left() < 1.5, timeout=10)
    served = store.get()
    assert sim_client.stats()["token_errors"] >= 1, "a renewal must have been tried"
    wait_for(lambda: first.seconds_left() < 0, timeout=10)

    assert served.value == first.value
    with pytest.raises(errors.TokenRequestFailed):
        store.get()


# -- one clock per decision ---------------------------------------------------------------------


def _shift_host_clock(monkeypatch: pytest.MonkeyPatch, by: timedelta) -> None:
    """This host's wall clock is off by ``by`` for every module that decides about tokens."""

    class Shifted(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + by

    for module in (token_store, token_budget, circuit, oauth, zoom):
        monkeypatch.setattr(module, "datetime", Shifted, raising=False)


def test_token_store__host_clock_lags__expiry_judged_on_database_clock(
    monkeypatch: pytest.MonkeyPatch, sim_client: SimulatorClient
) -> None:
    first = _store().get()
    token_store.forget_process_tokens()
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(
            text(
                "UPDATE credentials SET token_expires_at = now() - interval '1 minute', "
                "token_fetched_at = now() - interval '61 minutes'"
            )
        )
    _shift_host_clock(monkeypatch, -timedelta(hours=2))

    token = _store().get()

    reused = token.value == first.value  # compared, never printed
    assert not reused, "a token expired on the database's clock was used"
    assert sim_client.stats()["tokens_issued"] == 2


def test_token_store__host_clock_ahead__budget_window_on_database_clock(
    monkeypatch: pytest.MonkeyPatch, sim_client: SimulatorClient
) -> None:
    _settings(monkeypatch, ZOOM_TOKEN_BUDGET_PER_HOUR="2")
    _shift_host_clock(monkeypatch, timedelta(hours=2))
    store = _store()
    store.invalidate(store.get())
    store.invalidate(store.get())

    with pytest.raises(errors.TokenBudgetExhausted):
        store.get()
    assert sim_client.stats()["token_requests"] == 2


# -- bounded waits -------------------------------------------------------------------------------


def _run_in_thread(call: Any) -> tuple[BaseException | None, float]:
    """What ``call`` raised (None if nothing) and how long it took; at most 10 s waited."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert outcome, "the call was still waiting after 10 s"
    return outcome[0], time.monotonic() - started


def test_token_store__row_locked_by_a_frozen_holder__invalidate_raises_busy_not_hangs(
    monkeypatch: pytest.MonkeyPatch, sim_client: SimulatorClient
) -> None:
    _settings(monkeypatch, ZOOM_TOKEN_LOCK_TIMEOUT="0.3")
    store = _store()
    token = store.get()

    with db.sessions(get_settings())() as holder, holder.begin():
        holder.execute(select(Credential).with_for_update())
        raised, waited_s = _run_in_thread(lambda: store.invalidate(token))

    assert isinstance(raised, errors.TokenStoreBusy), raised
    assert waited_s < 5


@contextlib.contextmanager
def _trickling_endpoint(every_s: float, pieces: int) -> Iterator[str]:
    """An HTTP server that answers 200 at once, then its body one byte every ``every_s``."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            conn.sendall(head + f"Content-Length: {pieces + 2}\r\n\r\n{{".encode())
            for _ in range(pieces):
                if stop.wait(every_s):
                    return
                with contextlib.suppress(OSError):
                    conn.sendall(b" ")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/oauth/token"
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def test_token_store__trickling_token_endpoint__gives_up_in_total_time_and_frees_the_row(
    monkeypatch: pytest.MonkeyPatch, sim_client: SimulatorClient
) -> None:
    with _trickling_endpoint(every_s=0.2, pieces=100) as url:
        _settings(monkeypatch, ZOOM_OAUTH_URL=url, ZOOM_TOKEN_REQUEST_TIMEOUT="1")
        started = time.monotonic()
        with pytest.raises(errors.ZoomUnreachable):
            _store().get()
        took_s = time.monotonic() - started

    assert took_s < 5, f"a 20 s trickle held the token request for {took_s:.1f}s"
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(select(Credential).with_for_update(nowait=True)).one()
    assert [row.outcome for row in _token_rows()] == ["error"]


# -- the fleet -------------------------------------------------------------------------------------


@pytest.mark.fleet
@pytest.mark.timeout(300)
def test_token_store__token_endpoint_5xx_30_times__fleet_resumes_without_budget_exhaustion(
    env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    sim_client: SimulatorClient,
) -> None:
    # Attempts are made generous: how many a job spends on a token fault is the job policy's
    # business (meetings.py); this test is about the token store.
    settings = {
        "ZOOM_TOKEN_BACKOFF_MIN": "0.05",
        "ZOOM_TOKEN_BACKOFF_MAX": "0.5",
        "JOB_MAX_ATTEMPTS": "100",
        "RETRY_BACKOFF_MAX": "1",
    }
    sim_client.configure(token_endpoint_down=True)
    workers = [start_worker(concurrency=2, **settings) for _ in range(2)]
    # One host per job: today every attempt takes a create permit before it asks for the
    # token, so a host's daily create count (100) would be spent by the outage's attempts.
    created = [jobs.create_meeting(f"host{n}@example.com", _fleet_body(n)) for n in range(20)]

    wait_for(lambda: sim_client.stats()["token_errors"] >= 30, timeout=150)
    sim_client.configure(token_endpoint_down=False)
    recovered = time.monotonic()
    done = wait_for(
        lambda: _all_succeeded(created),
        timeout=60,
        interval=0.2,
        what="every job succeeded after the token endpoint recovered",
        details=lambda: Counter((j.status, j.attempts, j.error) for j in jobs.jobs_for(created)),
    )
    resumed_s = time.monotonic() - recovered

    stats = sim_client.stats()
    print(
        f"token outage: {stats['token_errors']} failed token requests, resumed in {resumed_s:.1f}s"
    )
    assert len(done) == 20 and stats["meetings_created"] == 20
    assert stats["tokens_issued"] == 1 and stats["token_errors"] >= 30
    logs = "".join(worker.log() for worker in workers)
    assert "TokenBudgetExhausted" not in logs and "budget_exhausted" not in logs
    assert not any("budget" in (job.error or "") for job in jobs.jobs_for(created))


def _fleet_body(n: int) -> dict[str, Any]:
    return {"topic": f"Token outage {n}", "type": 2, "start_time": "2026-12-01T10:00:00Z"}


def _all_succeeded(ids: list[Any]) -> list[jobs.Job] | None:
    found = jobs.jobs_for(ids)
    failed = [job for job in found if job.status == "failed"]
    assert not failed, f"a job failed: {failed[0].error}"
    return found if all(job.status == "succeeded" for job in found) else None
