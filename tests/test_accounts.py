"""Every job names its credential (issue 17): refused at enqueue when unknown or disabled,
idempotency keys and meetings scoped by it, the work done with its own token, client and
rate governor (one per Zoom account), the cleanup asking Zoom through the meeting's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from job_parts import run_async, run_job
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete, func, select, update

from worker import (
    accounts,
    aio,
    celery_app,
    cleanup,
    credentials,
    db,
    errors,
    fleet_counters,
    jobs,
    meetings,
    metrics,
    models,
    retention,
    token_store,
)
from worker.cli import cli
from worker.config import get_settings
from worker.models import IdempotencyKey
from worker.models import Job as JobRow
from worker.models import Meeting as MeetingRow
from worker.simulator import SimulatorClient

HOST = "host@example.com"
BODY = {"topic": "Standup", "type": 2, "start_time": "2030-01-01T10:00:00Z", "duration": 30}
ACME = {"account_id": "acme-acc", "client_secret": "acme-secret"}
BETA = {"account_id": "beta-acc", "client_secret": "beta-secret"}


@pytest.fixture
def registered(keyed: dict[str, str], sim_client: SimulatorClient) -> dict[str, str]:
    """Credentials "acme" (account acme-acc), "acme-eu" (a second app on acme-acc) and "beta"
    (beta-acc), all known to the simulator."""
    sim_client.configure(
        s2s_clients={
            "acme-client": ACME,
            "acme-eu-client": {**ACME, "client_secret": "acme-eu-secret"},
            "beta-client": BETA,
        }
    )
    credentials.add_s2s(
        "acme", account_id="acme-acc", client_id="acme-client", client_secret="acme-secret"
    )
    credentials.add_s2s(
        "acme-eu", account_id="acme-acc", client_id="acme-eu-client", client_secret="acme-eu-secret"
    )
    credentials.add_s2s(
        "beta", account_id="beta-acc", client_id="beta-client", client_secret="beta-secret"
    )
    return keyed


@pytest.fixture
def runtime(registered: dict[str, str]) -> Iterator[meetings.Runtime]:
    """A worker's runtime in this process (the simulator as Zoom)."""
    built = meetings.Runtime.from_settings(get_settings(), send=celery_app.send)
    yield built
    for account in built.accounts.built() if built.accounts else []:
        account.client.close()
        account.store.close()


def _count(model: Any) -> int:
    with db.sessions(get_settings())() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


# -- refused at enqueue --------------------------------------------------------------------


def test_create_meeting__unknown_account__refused_naming_it_nothing_stored(
    registered: dict[str, str],
) -> None:
    with pytest.raises(errors.AccountRefused) as caught:
        jobs.create_meeting(HOST, BODY, idempotency_key="k-1", account="nobody")

    assert isinstance(caught.value, ValueError)
    assert caught.value.account == "nobody" and caught.value.status == "unknown"
    assert caught.value.field == "account" and "'nobody'" in str(caught.value)
    assert _count(JobRow) == 0 and _count(IdempotencyKey) == 0


def test_create_meetings__disabled_account__refused_nothing_stored(
    registered: dict[str, str],
) -> None:
    credentials.disable("beta")

    with pytest.raises(errors.AccountRefused) as caught:
        jobs.create_meetings([{"user_id": HOST, "meeting": BODY}] * 3, account="beta")

    assert caught.value.status == "disabled" and "beta" in str(caught.value)
    assert _count(JobRow) == 0


def test_account__not_a_name__refused_naming_the_field(registered: dict[str, str]) -> None:
    with pytest.raises(errors.AccountRefused) as caught:
        jobs.create_meeting(HOST, BODY, account="x" * 101)

    assert caught.value.field == "account"
    assert _count(JobRow) == 0


def test_task_by_name__unknown_account__recorded_rejected_with_the_reason(
    registered: dict[str, str],
) -> None:
    kwargs = {"user_id": HOST, "meeting": BODY, "account": "nobody"}

    job_id = jobs.record_received(jobs.CREATE, kwargs, str(uuid.uuid4()))

    job = jobs.get_job(job_id)
    assert job is not None and job.status == "failed"
    assert job.error is not None and "'nobody'" in job.error and "account" in job.error


def test_cli_create__unknown_account__exits_naming_it(registered: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["create", HOST, "--topic", "t", "--account", "nobody"])

    assert result.exit_code != 0
    assert "nobody" in result.output
    assert _count(JobRow) == 0


# -- scoped by the credential --------------------------------------------------------------


def test_idempotency_key__two_accounts__two_jobs_each_returned_again(
    registered: dict[str, str],
) -> None:
    default = jobs.create_meeting(HOST, BODY, idempotency_key="booking-42")
    acme = jobs.create_meeting(HOST, BODY, idempotency_key="booking-42", account="acme")
    acme_again = jobs.create_meeting(HOST, BODY, idempotency_key="booking-42", account="acme")

    assert default != acme and acme == acme_again
    with db.sessions(get_settings())() as session:
        rows = dict(session.execute(select(JobRow.id, JobRow.account)).all())
    assert rows == {default: "default", acme: "acme"}


def test_idempotency_key__same_key_another_body_in_one_account__conflict(
    registered: dict[str, str],
) -> None:
    jobs.create_meeting(HOST, BODY, idempotency_key="booking-7", account="acme")

    with pytest.raises(errors.IdempotencyConflict):
        jobs.create_meeting(HOST, {**BODY, "topic": "Other"}, "booking-7", account="acme")
    assert jobs.create_meeting(HOST, {**BODY, "topic": "Other"}, "booking-7", account="beta")


def test_create__runs_with_its_own_credential__meeting_recorded_under_it(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    job = run_job(runtime, jobs.create_meeting(HOST, BODY, account="acme"))

    assert job.status == "succeeded", job.error
    assert job.account == "acme"
    with db.sessions(get_settings())() as session:
        meeting = session.get(MeetingRow, job.meeting_id)
    assert meeting is not None and meeting.account == "acme"
    stats = sim_client.stats()
    assert stats["tokens_by_client"] == {"acme-client": 1}
    assert any(stats["accounts"]["acme-acc"]["max_calls_per_second"].values())
    assert not any(stats["max_calls_per_second"].values()), "no call on the main account"


def test_delete__through_another_account__refused_then_through_its_own__deleted(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    created = run_job(runtime, jobs.create_meeting(HOST, BODY, account="acme"))
    assert created.meeting_id is not None

    for other in (None, "beta", "acme-eu"):
        with pytest.raises(errors.InvalidMeeting) as caught:
            jobs.delete_meeting(created.meeting_id, account=other)
        assert caught.value.field == "account" and "'acme'" in str(caught.value)
    with pytest.raises(errors.InvalidMeeting):
        jobs.delete_meeting(create_job_id=created.id, account="beta")
    with pytest.raises(errors.InvalidMeeting):
        jobs.update_meeting(created.meeting_id, {"topic": "Moved"}, account="beta")
    assert _count(JobRow) == 1
    deleted = run_job(runtime, jobs.delete_meeting(created.meeting_id, account="acme"))

    assert deleted.status == "succeeded", deleted.error
    assert sim_client.stats()["meetings_deleted"] == 1


def test_task_by_name__delete_through_another_account__recorded_rejected(
    runtime: meetings.Runtime,
) -> None:
    created = run_job(runtime, jobs.create_meeting(HOST, BODY, account="acme"))
    kwargs = {"meeting_id": created.meeting_id, "account": "beta"}

    job = jobs.get_job(jobs.record_received(jobs.DELETE, kwargs, str(uuid.uuid4())))

    assert job is not None and job.status == "failed"
    assert job.error is not None and "created through account 'acme'" in job.error


def test_cleanup__stale_meetings__each_deleted_through_its_own_credential(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    # Made three hours ago (Zoom starts a meeting without a start time "now").
    sim_client.advance_clock(-3 * 3600)
    try:
        for name in ("acme", "beta"):
            job = run_job(
                runtime, jobs.create_meeting(HOST, {"topic": name, "duration": 30}, account=name)
            )
            assert job.status == "succeeded", job.error
    finally:
        sim_client.advance_clock(3 * 3600)
    with db.sessions(get_settings())() as session, session.begin():
        # beta's first in the page: its refusal must not stop acme's.
        for name, hours in (("beta", 3), ("acme", 2)):
            session.execute(
                update(MeetingRow)
                .where(MeetingRow.account == name)
                .values(scheduled_end=func.now() - timedelta(hours=hours))
            )
    sim_client.configure(refused_accounts=["beta-acc"])

    report = cleanup.cleanup_stale(runtime)

    with db.sessions(get_settings())() as session:
        states = dict(session.execute(select(MeetingRow.account, MeetingRow.state)).all())
    assert states == {"acme": models.DELETED, "beta": models.LIVE}, report
    # beta's credential is refused: its meeting is never asked about through another's.
    assert sim_client.stats()["meetings_deleted"] == 1
    assert report.stopped is not None


# -- one rate governor per Zoom account -------------------------------------------------------


def test_gates__two_credentials_of_one_account_share_one__another_account_its_own(
    runtime: meetings.Runtime,
) -> None:
    acme, acme_eu, beta = (runtime.account(name) for name in ("acme", "acme-eu", "beta"))

    assert acme.gate is acme_eu.gate and acme.gate is not beta.gate
    assert acme.store is not acme_eu.store
    assert runtime.account("default").gate is runtime.gate
    with pytest.raises(errors.InvalidCredential):
        runtime.account("nobody")


def test_credential_limits__plan_and_explicit_caps__size_its_governor(
    registered: dict[str, str],
) -> None:
    credentials.add_s2s(
        "gamma",
        account_id="gamma-acc",
        client_id="gamma-client",
        client_secret="gamma-secret",
        plan="business",
        rate_limits="medium=5",
    )
    with pytest.raises(errors.InvalidCredential) as caught:
        credentials.add_s2s("delta", account_id="d", client_id="d", client_secret="s", plan="gold")
    settings = get_settings()
    built = meetings.Runtime.from_settings(settings, send=celery_app.send)
    gate = built.account("gamma").gate

    assert caught.value.field == "plan" and credentials.get("delta") is None
    assert credentials.get("gamma") is not None
    assert isinstance(gate, accounts.gate.FleetGate)
    headroom = settings.RATE_HEADROOM
    assert gate.governor.limits == {
        "light": 80 * headroom,
        "medium": 5 * headroom,
        "heavy": 40 * headroom,
    }
    assert gate.governor.namespace == accounts.namespace_of("gamma-acc", settings) != "zw:rl"


# -- metrics ---------------------------------------------------------------------------------


def test_metrics__held_jobs_usability_tokens_by_account__labels_bounded_by_the_registry(
    registered: dict[str, str],
) -> None:
    store = token_store.TokenStore(get_settings(), db.sessions(get_settings()), credential="acme")
    store.get()
    store.close()
    acme = [jobs.create_meeting(HOST, BODY, account="acme") for _ in range(2)]
    ghost = jobs.create_meeting(HOST, BODY, account="beta")
    with db.sessions(get_settings())() as session, session.begin():
        held = {"status": models.WAITING, "held_for": "credentials"}
        session.execute(update(JobRow).where(JobRow.id.in_(acme)).values(**held))
        # A job whose credential was removed since: its name is not a label value.
        session.execute(update(JobRow).where(JobRow.id == ghost).values(account="gone", **held))
        session.execute(
            update(models.Credential)
            .where(models.Credential.name == "beta")
            .values(circuit_state="open")
        )
    counters = fleet_counters.FleetCounters.from_url(get_settings().redis_url)
    registry = CollectorRegistry()
    registry.register(metrics.FleetCollector(get_settings(), counters, None, cache_s=0))

    text = generate_latest(registry).decode()

    found = {
        (sample.name, sample.labels.get("account")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("zoom_worker_account_")
    }
    assert found == {
        ("zoom_worker_account_jobs_held", "default"): 0,
        ("zoom_worker_account_jobs_held", "acme"): 2,
        ("zoom_worker_account_jobs_held", "acme-eu"): 0,
        ("zoom_worker_account_jobs_held", "beta"): 0,
        ("zoom_worker_account_usable", "acme"): 1,
        ("zoom_worker_account_usable", "acme-eu"): 1,
        ("zoom_worker_account_usable", "beta"): 0,
        ("zoom_worker_account_token_requests_last_hour", "acme"): 1,
        ("zoom_worker_account_token_requests_last_hour", "acme-eu"): 0,
        ("zoom_worker_account_token_requests_last_hour", "beta"): 0,
    }
    counters.client.close()


# -- doctor ----------------------------------------------------------------------------------


def test_doctor__registered_credentials__disabled_listed_refused_s2s_fails_naming_it(
    registered: dict[str, str],
) -> None:
    credentials.disable("acme-eu")
    listed = CliRunner().invoke(cli, ["doctor"])
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(
            update(models.Credential)
            .where(models.Credential.name == "beta")
            .values(circuit_state="open", circuit_reason="Zoom refused the credential")
        )

    refused = CliRunner().invoke(cli, ["doctor"])

    assert listed.exit_code == 0, listed.output
    assert "OK   registered credentials: 3 registered, 2 usable; acme-eu disabled" in listed.output
    assert refused.exit_code == 1
    assert "FAIL registered credentials: Zoom refuses beta: Zoom refused the credential" in (
        refused.output
    )
    assert "beta-secret" not in refused.output + listed.output


# -- retention ---------------------------------------------------------------------------------


def test_prune__same_key_in_two_accounts__only_the_expired_accounts_key_pruned(
    registered: dict[str, str],
) -> None:
    old = jobs.create_meeting(HOST, BODY, idempotency_key="booking-9", account="acme")
    recent = jobs.create_meeting(HOST, BODY, idempotency_key="booking-9", account="beta")
    with db.sessions(get_settings())() as session, session.begin():
        # Both jobs were pruned already (JOB_RETENTION_DAYS shorter than IDEMPOTENCY_KEY_DAYS);
        # acme's key is past IDEMPOTENCY_KEY_DAYS, beta's is a day old.
        session.execute(delete(JobRow))
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.account == "acme")
            .values(created_at=func.now() - timedelta(days=100))
        )
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.account == "beta")
            .values(created_at=func.now() - timedelta(days=1))
        )

    report = retention.prune(get_settings())

    assert report.idempotency_keys == 1
    with db.sessions(get_settings())() as session:
        left = session.execute(select(IdempotencyKey.account, IdempotencyKey.job_id)).all()
    assert left == [("beta", recent)]
    assert jobs.create_meeting(HOST, BODY, "booking-9", account="beta") == recent
    assert jobs.create_meeting(HOST, BODY, "booking-9", account="acme") != old


# -- the asyncio twins -----------------------------------------------------------------------


def test_aio__account_named__recorded_under_it_unknown_refused(registered: dict[str, str]) -> None:
    job_id = run_async(lambda: aio.create_meeting(HOST, BODY, "k-1", account="acme"))
    again = run_async(lambda: aio.create_meeting(HOST, BODY, "k-1", account="beta"))
    with pytest.raises(errors.AccountRefused):
        run_async(lambda: aio.create_meetings([{"user_id": HOST, "meeting": BODY}], account="x"))

    job = jobs.get_job(job_id)
    assert job is not None and job.account == "acme" and again != job_id
    assert _count(JobRow) == 2
