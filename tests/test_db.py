"""Every database conversation is bounded (issue 10, point 5): a blackholed server fails
within ``DATABASE_CONNECT_TIMEOUT`` as InfrastructureError, statement and
idle-in-transaction timeouts are set on every session, and errors never carry parameters."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy.exc
from sqlalchemy import text

from worker import admission, db, errors, jobs
from worker.config import get_settings
from worker.models import Job as JobRow

BODY = {"topic": "Standup", "type": 2, "start_time": "2030-01-07T10:00:00Z", "duration": 30}
CONNECT_TIMEOUT_S = 2
# Generous: the bound under test is "about the connect timeout", not "about two minutes".
SLACK_S = 8


@pytest.fixture
def blackholed_port() -> Iterator[int]:
    """A listening socket that never accepts and never answers: the kernel completes the
    TCP handshake (or drops the SYN once the backlog is full), and PostgreSQL's startup
    packet is never read, like a server behind a firewall that swallows packets."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    yield server.getsockname()[1]
    server.close()


def test_db__create_meeting_blackholed_server__infrastructure_error_within_connect_timeout(
    env: dict[str, str], blackholed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{blackholed_port}/zoom_worker"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DATABASE_CONNECT_TIMEOUT", str(CONNECT_TIMEOUT_S))
    get_settings.cache_clear()

    started = time.monotonic()
    with pytest.raises(errors.InfrastructureError) as raised:
        jobs.create_meeting("host@example.com", BODY, idempotency_key="blackholed")
    elapsed_s = time.monotonic() - started

    print(f"\nblackholed create_meeting: InfrastructureError after {elapsed_s:.2f}s")
    assert elapsed_s < CONNECT_TIMEOUT_S + SLACK_S, f"took {elapsed_s:.1f}s"
    assert "the database failed" in str(raised.value)


def test_db__stopped_server__get_job_raises_infrastructure_error(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/zoom_worker")
    get_settings.cache_clear()

    with pytest.raises(errors.InfrastructureError):
        jobs.get_job(uuid.uuid4())
    with pytest.raises(errors.InfrastructureError):
        jobs.list_jobs()


def test_db__session__statement_and_idle_timeouts_and_keepalives_applied(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_STATEMENT_TIMEOUT", "7")
    monkeypatch.setenv("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "9.5")
    get_settings.cache_clear()

    with db.sessions(get_settings())() as session:
        statement = session.execute(text("SHOW statement_timeout")).scalar_one()
        idle = session.execute(text("SHOW idle_in_transaction_session_timeout")).scalar_one()
        connection = session.connection().connection.dbapi_connection
        assert connection is not None
        parameters = connection.info.get_parameters()  # type: ignore[attr-defined]

    assert statement == "7s"
    assert idle == "9500ms"
    assert parameters["keepalives"] == "1"
    assert parameters["connect_timeout"] == "10"


def test_db__statement_over_timeout__cancelled_as_infrastructure_error(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_STATEMENT_TIMEOUT", "0.3")
    get_settings.cache_clear()

    started = time.monotonic()
    with (
        pytest.raises(errors.InfrastructureError) as raised,
        db.unavailable_as_infrastructure(),
        db.sessions(get_settings())() as session,
    ):
        session.execute(text("SELECT pg_sleep(30)"))

    assert "statement timeout" in str(raised.value)
    assert time.monotonic() - started < 20


def test_db__failing_insert__error_text_carries_no_parameters(env: dict[str, str]) -> None:
    secret_topic = "TOPIC-" + "x" * 300  # over the column's 200 characters
    row = JobRow(
        id=uuid.uuid4(),
        kind="create",
        topic=secret_topic,
        body={"password": "pw-never-logged"},
        user_id="host@example.com",
    )

    with pytest.raises(sqlalchemy.exc.DataError) as raised:
        admission.insert(row, get_settings())

    text_of_error = f"{raised.value}\n{raised.value!r}"
    assert "value too long" in text_of_error
    assert "TOPIC-" not in text_of_error
    assert "pw-never-logged" not in text_of_error
    assert "[SQL parameters hidden due to hide_parameters=True]" in text_of_error
