"""`zoom-worker`: the job commands read the ledger, `token` and `doctor` never print a secret,
`doctor` names the cause of each failure quickly, and `demo` runs the whole pipeline."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from click.testing import CliRunner, Result
from conftest import JOB_QUEUE, PG_ADMIN, redis_url

from worker import db, jobs, token_store
from worker.cli import cli
from worker.config import get_settings

MEETING = {"topic": "Standup", "type": 2, "start_time": "2030-01-07T10:00:00Z", "duration": 30}


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# -- jobs ---------------------------------------------------------------------------------


def test_job_json__queued_job__prints_one_object(env: dict[str, str]) -> None:
    job_id = jobs.create_meeting("host@example.com", MEETING, idempotency_key="cli-1")

    result = _invoke("job", str(job_id), "--json")

    assert result.exit_code == 0, result.output
    fields = json.loads(result.stdout)
    assert fields["id"] == str(job_id)
    assert fields["status"] == "queued"
    assert fields["kind"] == "create"
    assert fields["user_id"] == "host@example.com"
    assert fields["topic"] == "Standup"
    assert fields["meeting_id"] is None
    assert fields["attempts"] == 0
    assert fields["created_at"].endswith("+00:00")


def test_create__priority_high__the_job_is_high(env: dict[str, str]) -> None:
    result = _invoke(
        "create", "host@example.com", "--topic", "Standup", "--start-time",
        "2030-01-07T10:00:00Z", "--duration", "30", "--priority", "high",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    job = jobs.get_job(result.stdout.strip())
    assert job is not None and job.priority == "high"


def test_create__unknown_priority__exit_2_naming_the_option(env: dict[str, str]) -> None:
    result = _invoke("create", "host@example.com", "--topic", "Standup", "--priority", "urgent")

    assert result.exit_code == 2
    assert "--priority" in result.output and jobs.count_by_status() == {}


def test_job__unknown_id__exits_1_naming_it(env: dict[str, str]) -> None:
    unknown = uuid.uuid4()

    result = _invoke("job", str(unknown))

    assert result.exit_code == 1
    assert f"no job {unknown}" in result.output


def test_jobs__status_queued__lists_the_job_and_counts(env: dict[str, str]) -> None:
    job_id = jobs.create_meeting("host@example.com", MEETING)

    result = _invoke("jobs", "--status", "queued")

    assert result.exit_code == 0, result.output
    assert str(job_id) in result.stdout
    assert "Standup" in result.stdout
    assert "queued: 1" in result.stdout


def test_jobs__stopped_database__exits_1_with_a_message(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/zoom_worker")
    get_settings.cache_clear()

    result = _invoke("jobs")

    assert result.exit_code == 1
    assert "the database failed:" in result.output
    assert "Traceback" not in result.output


def test_create__options__queues_a_job_and_prints_its_id(env: dict[str, str]) -> None:
    result = _invoke(
        "create", "host@example.com", "--topic", "Review", "--start-time",
        "2030-01-07T10:00:00Z", "--duration", "45", "--idempotency-key", "cli-create",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    job = jobs.get_job(result.stdout.strip())
    assert job is not None
    assert (job.status, job.topic, job.idempotency_key) == ("queued", "Review", "cli-create")


def test_create__invalid_body__exits_2_naming_the_field_and_stores_nothing(
    env: dict[str, str], broker: redis.Redis, tmp_path: Path
) -> None:
    body = tmp_path / "meeting.json"
    body.write_text(json.dumps({**MEETING, "topic": "x" * 201}))

    result = _invoke("create", "host@example.com", "--body", str(body))

    assert result.exit_code == 2
    assert "invalid meeting: topic:" in result.output
    assert jobs.count_by_status() == {}
    assert broker.llen(JOB_QUEUE) == 0


def test_delete__meeting_not_created_here__exits_2(env: dict[str, str]) -> None:
    result = _invoke("delete", "85746065432")

    assert result.exit_code == 2
    assert "invalid meeting: meeting_id:" in result.output
    assert jobs.count_by_status() == {}


# -- token ----------------------------------------------------------------------------------


def test_token__after_a_fetch__shows_status_never_the_token_or_secret(
    env: dict[str, str],
) -> None:
    with httpx.Client() as http:
        token = token_store.TokenStore(get_settings(), db.sessions(get_settings()), http=http).get()

    result = _invoke("token")

    assert result.exit_code == 0, result.output
    assert "account sim-account, client sim-client" in result.output
    assert "1 last hour, 1 last day" in result.output
    assert "closed" in result.output
    assert "sim-secret" not in result.output
    assert token.value not in result.output


# -- doctor ---------------------------------------------------------------------------------


def test_doctor__against_the_simulator__every_check_passes(env: dict[str, str]) -> None:
    result = _invoke("doctor")

    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output
    assert len(re.findall(r"^OK ", result.output, re.MULTILINE)) == 7
    assert "sim-secret" not in result.output


def test_doctor__wrong_secret__fails_saying_zoom_refused_the_credentials(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOOM_CLIENT_SECRET", "wrong")
    get_settings.cache_clear()

    result = _invoke("doctor")

    assert result.exit_code == 1
    assert "OK   credentials configured" in result.output
    assert "FAIL token fetched: Zoom refused the credentials:" in result.output
    assert "FAIL API reachable and authorized: skipped" in result.output
    assert "wrong" not in result.output.replace("FAIL", "")
    assert "sim-secret" not in result.output


def test_doctor__secret_fixed_after_a_refusal__passes_and_closes_the_circuit(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOOM_CLIENT_SECRET", "wrong")
    assert _invoke("doctor").exit_code == 1
    monkeypatch.setenv("ZOOM_CLIENT_SECRET", "sim-secret")
    get_settings.cache_clear()
    token_store.forget_process_tokens()

    result = _invoke("doctor")

    assert result.exit_code == 0, result.output
    assert re.search(r"^circuit\s+closed", _invoke("token").output, re.MULTILINE)


def test_doctor__stopped_database__fails_quickly_and_clearly(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/zoom_worker")
    get_settings.cache_clear()
    started = time.monotonic()

    result = _invoke("doctor")

    assert result.exit_code == 1
    assert time.monotonic() - started < 15
    assert "FAIL database reachable: PostgreSQL at 127.0.0.1:1 is not reachable" in result.output
    assert "FAIL migrations at head: skipped" in result.output
    assert "OK   broker reachable" in result.output


def test_doctor__invalid_setting__fails_naming_the_variable(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOB_LEASE_SECONDS", "soon")

    result = _invoke("doctor")

    assert result.exit_code == 1
    assert "FAIL settings load: JOB_LEASE_SECONDS" in result.output
    assert "soon" not in result.output


# -- demo -------------------------------------------------------------------------------------


@pytest.mark.fleet
@pytest.mark.timeout(300)
def test_demo__no_faults__every_job_succeeds_without_duplicates() -> None:
    name = f"zoom_worker_demo_{secrets.token_hex(4)}"
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    command = [
        str(Path(sys.executable).with_name("zoom-worker")), "demo", "--jobs", "12",
        "--workers", "1", "--concurrency", "2", "--no-faults",
        "--database-url", f"{base}/{name}", "--broker-url", redis_url(8),
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=280, check=False)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"meetings made in the simulator\W+12\b", result.stdout), result.stdout
    assert re.search(r"duplicates\W+0\b", result.stdout), result.stdout
    assert re.search(r"jobs succeeded\W+18\b", result.stdout), result.stdout
    assert re.search(r"meetings deleted\W+6\b", result.stdout), result.stdout
    assert "demo passed: 12 creates, 12 made, 0 duplicates" in result.stdout
