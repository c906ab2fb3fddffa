"""The shared token: one request for many processes, one renewal for a storm of 401s,
renewal before expiry, encryption at rest, bounded lock waits, the budget and the circuit."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from worker import db, errors, token_store, zoom
from worker.config import get_settings
from worker.models import Credential, TokenRequest
from worker.simulator import SimulatorClient

pytestmark = pytest.mark.usefixtures("env")


_opened: list[token_store.TokenStore | zoom.ZoomClient] = []


def _store() -> token_store.TokenStore:
    store = token_store.TokenStore(get_settings(), db.sessions(get_settings()))
    _opened.append(store)
    return store


def _client(store: token_store.TokenStore) -> zoom.ZoomClient:
    client = zoom.ZoomClient(get_settings().ZOOM_API_URL, zoom.ZoomAuth(store), timeout_s=5)
    _opened.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


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

    assert token.value != first.value, "a token encrypted under the old secret must not be reused"
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


def test_token_store__bad_secret__circuit_opens_without_retrying(
    monkeypatch: pytest.MonkeyPatch, sim_client: SimulatorClient
) -> None:
    monkeypatch.setenv("ZOOM_CLIENT_SECRET", "wrong")
    get_settings.cache_clear()
    store = _store()

    with pytest.raises(errors.CircuitOpen) as first:
        store.get()
    with pytest.raises(errors.CircuitOpen):
        store.get()

    assert "rotate" in first.value.reason and "4702" in first.value.reason
    assert sim_client.stats()["token_requests"] == 1, "an open circuit makes no token request"
    status = store.status()
    assert status.circuit_state == "open" and status.failures_last_day == 1


def test_circuit__fresh_tokens_refused__opens_then_closes_after_rotation(
    monkeypatch: pytest.MonkeyPatch, sim_client: SimulatorClient, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("sim-secret")
    monkeypatch.delenv("ZOOM_CLIENT_SECRET")
    monkeypatch.setenv("ZOOM_CLIENT_SECRET_FILE", str(secret_file))
    get_settings.cache_clear()
    sim_client.configure(refuse_fresh_tokens=True)
    store = _store()
    client = _client(store)

    with pytest.raises(errors.CircuitOpen):
        client.create_meeting("host@example.com", {"topic": "refused"})
    with pytest.raises(errors.CircuitOpen):
        client.create_meeting("host@example.com", {"topic": "refused again"})
    stats = sim_client.stats()
    assert stats["tokens_issued"] == 1 and stats["api_401"] == 1

    sim_client.rotate_secret("rotated")
    secret_file.write_text("rotated")
    meeting = client.create_meeting("host@example.com", {"topic": "after rotation"})

    assert meeting.id > 0
    assert store.status().circuit_state == "closed"
    assert sim_client.stats()["tokens_issued"] == 2


def test_token_status__counts_requests(sim_client: SimulatorClient) -> None:
    store = _store()
    store.invalidate(store.get())
    store.get()
    status = store.status()
    assert status.requests_last_hour == 2 and status.requests_last_day == 2
    assert status.expires_at is not None and status.expires_at > datetime.now(UTC)
    with db.sessions(get_settings())() as session:
        assert session.scalar(select(func.count()).select_from(TokenRequest)) == 2
