"""The credential circuit: its decisions on a row and the database's clock (a table), then
against the simulator: a refused credential stops all calls, a rotated secret closes it, and
its writes never hang behind a frozen lock holder."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from token_parts import close_opened  # noqa: F401 - the autouse fixture, by import
from token_parts import new_client as _client
from token_parts import new_store as _store

from worker import circuit, db, errors, token_store
from worker.config import get_settings
from worker.models import Credential
from worker.simulator import SimulatorClient

NOW = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)

# -- decisions on a row ------------------------------------------------------------------------


def _row(state: str, *, next_probe_in: timedelta | None = None, probes: int = 0) -> Credential:
    return Credential(
        account_id="a",
        client_id="c",
        circuit_state=state,
        circuit_probes=probes,
        circuit_next_probe_at=NOW + next_probe_in if next_probe_in is not None else None,
        circuit_secret_digest="digest",
    )


def _circuit(digest: str = "digest") -> circuit.Circuit:
    return circuit.Circuit(lambda _row: digest)


@pytest.mark.parametrize(
    ("state", "next_probe_in", "digest", "due"),
    [
        (circuit.OPEN, timedelta(minutes=1), "digest", False),
        (circuit.OPEN, timedelta(seconds=-1), "digest", True),
        (circuit.OPEN, timedelta(minutes=1), "rotated", True),
        (circuit.HALF_OPEN, timedelta(minutes=1), "rotated", False),
        (circuit.HALF_OPEN, timedelta(seconds=-1), "digest", True),
    ],
)
def test_circuit__probe_due__by_database_time_or_a_new_secret(
    state: str, next_probe_in: timedelta, digest: str, due: bool
) -> None:
    row = _row(state, next_probe_in=next_probe_in)
    assert _circuit(digest).probe_due(row, NOW) is due


def test_circuit__closed__check_lets_the_fetch_go() -> None:
    row = _row(circuit.CLOSED)
    _circuit().check(row, NOW, locked=True)
    assert row.circuit_state == circuit.CLOSED


def test_circuit__open_not_due__check_raises_with_the_next_probe() -> None:
    row = _row(circuit.OPEN, next_probe_in=timedelta(minutes=3))
    with pytest.raises(errors.CircuitOpen) as caught:
        _circuit().check(row, NOW, locked=True)
    assert caught.value.retry_at == NOW + timedelta(minutes=3)
    assert "rotate its client secret" in caught.value.reason


def test_circuit__due_and_locked__this_process_takes_the_probe() -> None:
    row = _row(circuit.OPEN, next_probe_in=timedelta(seconds=-1))
    _circuit().check(row, NOW, locked=True)
    assert row.circuit_state == circuit.HALF_OPEN and row.circuit_probes == 1
    assert row.circuit_next_probe_at == NOW + timedelta(minutes=2)


def test_circuit__due_not_locked__nothing_changes() -> None:
    row = _row(circuit.OPEN, next_probe_in=timedelta(seconds=-1))
    _circuit().check(row, NOW, locked=False)
    assert row.circuit_state == circuit.OPEN and row.circuit_probes == 0


def test_circuit__probe_refused__backoff_doubles_up_to_fifteen_minutes() -> None:
    refusal = errors.CredentialsRejected("refused", status=401, code=4702)
    waits = []
    row = _row(circuit.CLOSED)
    opened = _circuit().open(row, refusal, NOW)
    waits.append(row.circuit_next_probe_at - NOW)  # type: ignore[operator]
    for _ in range(6):
        _circuit().check(row, row.circuit_next_probe_at, locked=True)  # type: ignore[arg-type]
        _circuit().open(row, refusal, NOW)
        waits.append(row.circuit_next_probe_at - NOW)  # type: ignore[operator]
    assert [int(w.total_seconds() // 60) for w in waits] == [1, 2, 4, 8, 15, 15, 15]
    assert isinstance(opened, errors.CircuitOpen) and "4702" in opened.reason
    assert row.circuit_opened_at == NOW and row.circuit_state == circuit.OPEN


# -- against the simulator -----------------------------------------------------------------------


@pytest.mark.usefixtures("env")
def test_circuit__bad_secret__opens_without_retrying(
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


@pytest.mark.usefixtures("env")
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


def test_circuit__renewal_fetched_by_another_process_refused__opens(
    env: dict[str, str], sim_client: SimulatorClient
) -> None:
    # Processes A and B: B's call is refused, B renews and gets the token A fetched meanwhile,
    # and that one is refused too. One renewal and one retry, then the calls stop.
    store = _store()
    first = store.get()
    token_store._fresh.clear()  # fetched by another process: refusing it only renews
    store.report(first, accepted=False)
    renewed = store.get()
    token_store._fresh.clear()

    with pytest.raises(errors.CircuitOpen) as opened:
        store.report(renewed, accepted=False, renewed=True)

    assert renewed.value != first.value
    assert "renewed token was refused" in str(opened.value)
    assert store.status().circuit_state == circuit.OPEN
    assert sim_client.stats()["tokens_issued"] == 2


def test_circuit__row_locked_by_a_frozen_holder__closing_deferred_not_hanging(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, sim_client: SimulatorClient
) -> None:
    monkeypatch.setenv("ZOOM_TOKEN_LOCK_TIMEOUT", "0.3")
    get_settings.cache_clear()
    store = _store()
    token = store.get()  # fetched here: its first acceptance closes the circuit (a write)
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(text("UPDATE credentials SET circuit_state = 'half_open'"))

    with db.sessions(get_settings())() as holder, holder.begin():
        holder.execute(select(Credential).with_for_update())
        started = time.monotonic()
        # Never raises: the call Zoom accepted may have made a meeting.
        store.report(token, accepted=True)
        waited_s = time.monotonic() - started
    assert waited_s < 5, "the write must give up after ZOOM_TOKEN_LOCK_TIMEOUT"
    assert store.status().circuit_state == circuit.HALF_OPEN

    store.report(token, accepted=True)
    assert store.status().circuit_state == circuit.CLOSED
