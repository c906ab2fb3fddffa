"""``zoom-worker``: the operator's command line.

Every command reads Settings from the environment, like the workers do. A failure the
service itself reports (a :class:`~worker.errors.ZoomWorkerError`) ends the command with its
message and exit code 1, never a traceback; an invalid meeting body ends it with exit code 2
and the field's name. Nothing printed here ever holds a secret, an access token or a
``start_url``: ``token`` and ``doctor`` show the credential's ids and the token's expiry only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from worker import (
    cli_credentials,
    credentials,
    db,
    errors,
    jobs,
    models,
    outage,
    priorities,
    retention,
    schema,
    simulator,
)
from worker import doctor as checks
from worker.cli_credentials import print_fields as _print_fields
from worker.cli_credentials import show_text as _text
from worker.config import Settings, get_settings, parse_rate_limits
from worker.token_store import TokenStatus, TokenStore

STATUSES = (models.QUEUED, models.RUNNING, models.RETRYING, models.WAITING, *models.FINAL_STATUSES)
# The demo's own database and Redis database, so it never touches a real deployment.
DEMO_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/zoom_worker_demo"
DEMO_BROKER_URL = "redis://127.0.0.1:6379/9"


class _Group(click.Group):
    """Turns the service's own errors into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.InvalidMeeting as exc:
            click.echo(f"invalid meeting: {exc.field}: {exc.message}", err=True)
            ctx.exit(2)
        except errors.InvalidCredential as exc:
            click.echo(f"invalid credential: {exc.field}: {exc.message}", err=True)
            ctx.exit(2)
        except errors.ConfigurationError as exc:
            raise click.ClickException(f"invalid configuration: {exc}") from None
        except errors.ZoomWorkerError as exc:
            raise click.ClickException(str(exc)) from None
        except DBAPIError as exc:
            # A stopped database or a schema behind the code: a message, not a traceback.
            cause = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
            raise click.ClickException(
                f"the database failed: {cause} (see `zoom-worker doctor`)"
            ) from None


@click.group(cls=_Group)
def cli() -> None:
    """Create, update and delete Zoom meetings through Celery workers, and look after them."""


def main() -> None:
    """The ``zoom-worker`` entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cli(prog_name="zoom-worker")


def console() -> Console:
    """A console for stdout; wide when not a terminal, so ids are never wrapped in pipes."""
    out = Console()
    return out if out.is_terminal else Console(width=200)


@cli.command()
def migrate() -> None:
    """Create the database if it is missing and upgrade its schema to head."""
    url = get_settings().DATABASE_URL
    revision = schema.upgrade_database(url)
    click.echo(f"database {make_url(url).database} is at revision {revision} (head)")


# -- jobs --------------------------------------------------------------------------------


@cli.command()
@click.argument("user_id")
@click.option("--topic", help="The meeting's topic (at most 200 characters).")
@click.option("--start-time", help="ISO 8601, e.g. 2026-12-01T10:00:00Z.")
@click.option("--duration", type=int, help="Minutes.")
@click.option("--timezone", help="An IANA time zone, e.g. Europe/Paris.")
@click.option("--agenda", help="The meeting's description.")
@click.option(
    "--body",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSON file with Zoom's create-meeting body; the options above override it.",
)
@click.option("--idempotency-key", help="The same key always returns the same job.")
@click.option(
    "--priority",
    type=click.Choice(priorities.PRIORITIES),
    default=priorities.NORMAL,
    show_default=True,
    help="Which queue the job waits in (high for a person waiting, bulk for a backfill).",
)
@click.option(
    "--account",
    help="The credential the job runs under (zoom-worker credentials list); default: the "
    "environment's.",
)
def create(
    user_id: str,
    body: Path | None,
    idempotency_key: str | None,
    priority: str,
    account: str | None,
    **fields: str | int | None,
) -> None:
    """Queue a job that creates a meeting for USER_ID (a Zoom user id or email); prints its id."""
    meeting: dict[str, Any] = {}
    if body is not None:
        try:
            loaded = json.loads(body.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise errors.InvalidMeeting("body", f"{body} is not valid JSON ({exc})") from None
        if not isinstance(loaded, dict):
            raise errors.InvalidMeeting("body", f"{body} must hold a JSON object")
        meeting.update(loaded)
    meeting.update({name: value for name, value in fields.items() if value is not None})
    job_id = jobs.create_meeting(
        user_id, meeting, idempotency_key=idempotency_key, priority=priority, account=account
    )
    click.echo(str(job_id))


@cli.command()
@click.argument("meeting_id", type=int, required=False)
@click.option(
    "--create-job", help="Delete the meeting of this create job (waits for or cancels it)."
)
@click.option("--occurrence-id", help="Delete one occurrence of a recurring meeting.")
@click.option("--idempotency-key", help="The same key always returns the same job.")
@click.option(
    "--priority",
    type=click.Choice(priorities.PRIORITIES),
    default=priorities.NORMAL,
    show_default=True,
    help="Which queue the job waits in (high for a person waiting, bulk for a backfill).",
)
@click.option(
    "--account",
    help="The credential the job runs under (zoom-worker credentials list); default: the "
    "environment's.",
)
def delete(
    meeting_id: int | None,
    create_job: str | None,
    occurrence_id: str | None,
    idempotency_key: str | None,
    priority: str,
    account: str | None,
) -> None:
    """Queue a job that deletes MEETING_ID (only meetings this service created, through the
    credential that created it); prints its id."""
    job_id = jobs.delete_meeting(
        meeting_id,
        occurrence_id,
        idempotency_key,
        create_job_id=create_job,
        priority=priority,
        account=account,
    )
    click.echo(str(job_id))


@cli.command(name="update")
@click.argument("meeting_id", type=int)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    required=True,
    metavar="FIELD=VALUE",
    help="A field to change, as Zoom names it; VALUE is read as JSON when it parses "
    "(30, true, {...}), else as a string. settings.KEY=VALUE changes one setting.",
)
@click.option("--occurrence", "occurrence_id", help="Update one occurrence of a series.")
@click.option("--idempotency-key", help="The same key always returns the same job.")
@click.option(
    "--priority",
    type=click.Choice(priorities.PRIORITIES),
    default=priorities.NORMAL,
    show_default=True,
    help="Which queue the job waits in (high for a person waiting, bulk for a backfill).",
)
@click.option(
    "--account",
    help="The credential the job runs under (zoom-worker credentials list); default: the "
    "environment's.",
)
def update_command(
    meeting_id: int,
    assignments: tuple[str, ...],
    occurrence_id: str | None,
    idempotency_key: str | None,
    priority: str,
    account: str | None,
) -> None:
    """Queue a job that updates MEETING_ID (only meetings this service created); prints its id.

    Updates of one meeting are applied in the order they were queued."""
    changes = parse_assignments(assignments)
    job_id = jobs.update_meeting(
        meeting_id, changes, occurrence_id, idempotency_key, priority=priority, account=account
    )
    click.echo(str(job_id))


def parse_assignments(assignments: tuple[str, ...]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs as an update's changes; ``a.b=v`` sets key ``b`` of object ``a``."""
    changes: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        if not sep or not name:
            raise errors.InvalidMeeting("--set", f"expected FIELD=VALUE, got {assignment!r}")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        *parents, leaf = name.split(".")
        target = changes
        for parent in parents:
            nested = target.setdefault(parent, {})
            if not isinstance(nested, dict):
                raise errors.InvalidMeeting("--set", f"{parent} is set to a value and a field")
            target = nested
        target[leaf] = value
    return changes


@cli.command()
@click.argument("job_id")
def retry(job_id: str) -> None:
    """Run the failed job JOB_ID again under its idempotency key; prints its id.

    A create that may already have made its meeting looks for it first; an instant meeting
    whose outcome is unknown is refused with the reason."""
    click.echo(str(jobs.retry_job(job_id).id))


@cli.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel the queued or waiting job JOB_ID before it reaches Zoom; prints its id.

    A running job, or a create that may already have made its meeting, is refused with the
    reason and the way out (delete the meeting with ``delete --create-job JOB_ID``)."""
    click.echo(str(jobs.cancel_job(job_id).id))


@cli.command()
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
def prune(dry_run: bool) -> None:
    """Delete finished jobs, token requests and applied webhook events older than
    JOB_RETENTION_DAYS, and idempotency
    keys older than IDEMPOTENCY_KEY_DAYS whose job is gone (what beat does every
    PRUNE_INTERVAL_MINUTES)."""
    report = retention.prune(get_settings(), dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {report.jobs} jobs, {report.token_requests} token requests, "
        f"{report.idempotency_keys} idempotency keys, {report.webhook_events} webhook events"
    )


def _json_value(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


@cli.command("job")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show_job(job_id: str, as_json: bool) -> None:
    """Show one job: status, meeting, error, attempts and times."""
    job = jobs.get_job(job_id)
    if job is None:
        raise click.ClickException(f"no job {job_id}")
    fields = asdict(job)
    if as_json:
        click.echo(json.dumps(fields, default=_json_value))
        return
    _print_fields([(name, _text(value)) for name, value in fields.items()])


@cli.command("jobs")
@click.option("--status", type=click.Choice(STATUSES), help="Only jobs in this status.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
def list_jobs(status: str | None, limit: int) -> None:
    """The most recently updated jobs, and how many jobs are in each status."""
    table = Table(title="jobs, most recently updated first")
    for name in ("id", "status", "kind", "user", "topic", "meeting", "attempts", "updated"):
        table.add_column(name, no_wrap=name in {"id", "status", "meeting", "updated"})
    for job in jobs.list_jobs(status, limit=limit):
        cells = (job.id, job.status, job.kind, job.user_id, job.topic, job.meeting_id)
        table.add_row(*map(_text, (*cells, job.attempts, job.updated_at)))
    out = console()
    out.print(table)
    counts = jobs.count_by_status()
    out.print("  ".join(f"{name}: {counts.get(name, 0)}" for name in STATUSES))


# -- the token -----------------------------------------------------------------------------


@cli.command()
def token() -> None:
    """Each credential's shared token: never the token or the secret."""
    settings = get_settings()
    with credentials.from_settings() as registry:
        names = [info.name for info in registry.list_credentials()]
    if not names:
        settings.require_credentials()  # names the missing setting
    with httpx.Client() as http:
        for index, name in enumerate(names):
            store = TokenStore(settings, db.sessions(settings), http=http, credential=name)
            if index:
                click.echo("")
            _print_token(store.status(), settings)


def _print_token(status: TokenStatus, settings: Settings) -> None:
    expires = "no token stored"
    if status.expires_at is not None:
        left_s = int((status.expires_at - datetime.now(UTC)).total_seconds())
        expires = f"{_text(status.expires_at)} ({'in' if left_s > 0 else 'expired'} {abs(left_s)}s)"
    error = f"{status.last_error} ({_text(status.last_error_at)})" if status.last_error else "-"
    hour, day = status.requests_last_hour, status.requests_last_day
    state = (
        status.status if not status.status_reason else f"{status.status}: {status.status_reason}"
    )
    _print_fields(
        [
            (
                "credential",
                f"{status.name} ({status.kind}): account {status.account_id or '-'}, "
                f"client {status.client_id}",
            ),
            ("status", state),
            ("expires at", expires),
            ("fetched at", _text(status.fetched_at)),
            ("tokens fetched", f"{hour} last hour, {day} last day"),
            ("failed requests", f"{status.failures_last_day} last day"),
            ("circuit", f"{status.circuit_state}: {status.circuit_reason or 'Zoom accepts it'}"),
            ("next probe", _text(status.next_probe_at)),
            ("zoom outage", outage.OutageBreaker.from_settings(settings).describe()),
            ("last error", error),
        ]
    )


@cli.command()
def doctor() -> None:
    """Check settings, database, schema, broker, credentials, token and API, in that order."""
    failed, total = checks.run_checks(console())
    if failed:
        raise click.ClickException(f"{failed} of {total} checks failed")


cli.add_command(cli_credentials.credentials_group)
cli.add_command(cli_credentials.apps_group)


# -- Zoom's event notifications (issue 14) -----------------------------------------------------


@cli.command("webhooks")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=9810, show_default=True)
@click.option(
    "--workers", type=click.IntRange(1, 64), help="uvicorn processes (default WEBHOOK_WORKERS)"
)
def run_webhooks(host: str, port: int, workers: int | None) -> None:
    """Serve Zoom's event notifications on ZOOM_WEBHOOK_PATH until interrupted."""
    from worker import celery_app, webhooks  # noqa: PLC0415 - only this command serves

    settings = get_settings()
    if settings.ZOOM_WEBHOOK_SECRET_TOKEN is None:
        raise errors.ConfigurationError("ZOOM_WEBHOOK_SECRET_TOKEN", "is not set")
    click.echo(f"Zoom webhooks: http://{host}:{port}{settings.ZOOM_WEBHOOK_PATH}")
    processes = workers or settings.WEBHOOK_WORKERS
    webhooks.serve(settings, host, port, send=celery_app.send, workers=processes)


@cli.command("events")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
def list_events(limit: int) -> None:
    """The last events Zoom sent, newest first, and what each did to the ledger."""
    from worker import webhook_events  # noqa: PLC0415

    table = Table(title="Zoom events, newest first")
    for name in ("id", "event", "event time", "meeting", "account", "received", "effect"):
        table.add_column(name, no_wrap=True)
    for e in webhook_events.recent(db.sessions(get_settings()), limit=limit):
        effect = e.effect or "not applied yet"
        cells = (e.id, e.event, e.event_ts, e.meeting_id, e.account_id, e.received_at, effect)
        table.add_row(*map(_text, cells))
    console().print(table)


# -- the simulator and the demo ----------------------------------------------------------------


_RATE = click.FloatRange(0, 1)


@cli.command("simulator")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=9900, show_default=True)
@click.option("--rate-limit", help="Per-second caps, e.g. light=30,medium=20,heavy=10.")
@click.option(
    "--rate-window",
    type=click.Choice(["sliding", "fixed"]),
    default="sliding",
    show_default=True,
    help="How the caps count: any 1 s span, or each wall-clock second.",
)
@click.option("--token-lifetime", "token_lifetime_s", type=click.IntRange(1), default=3600)
@click.option("--error-rate", type=_RATE, default=0.0, help="Share of calls answered 5xx.")
@click.option("--reply-lost-rate", type=_RATE, default=0.0, help="Share of creates unanswered.")
@click.option("--drop-rate", type=_RATE, default=0.0, help="Share of calls dropped unanswered.")
@click.option("--latency", "latency_s", type=click.FloatRange(0), default=0.0, help="Seconds.")
@click.option("--seed", type=int, help="Seed of the fault draws, for a repeatable run.")
def run_simulator(host: str, port: int, rate_limit: str | None, **switches: Any) -> None:
    """Serve the built-in Zoom simulator (OAuth and Meetings API) until interrupted.

    Its credentials: account sim-account, client sim-client, secret sim-secret.
    """
    try:
        limits = parse_rate_limits(rate_limit) if rate_limit else None
        config = simulator.SimulatorConfig(rate_limits=limits, **switches)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    base = f"http://{host}:{port}"
    click.echo(f"Zoom simulator: ZOOM_API_URL={base}/v2 ZOOM_OAUTH_URL={base}/oauth/token")
    try:
        simulator.serve_forever(config, host, port)
    except KeyboardInterrupt:
        click.echo("simulator stopped")
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc.strerror}") from None


@cli.command("demo")
@click.option("--jobs", type=click.IntRange(1, 10_000), default=60, show_default=True)
@click.option("--workers", type=click.IntRange(1, 32), default=2, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--faults/--no-faults", default=True, help="5xx, lost replies, rate limits.")
@click.option("--database-url", default=DEMO_DATABASE_URL, show_default=True)
@click.option("--broker-url", default=DEMO_BROKER_URL, show_default=True, help="Flushed first.")
@click.option("--timeout", "phase_timeout_s", type=click.FloatRange(1), default=300.0)
def run_demo(**options: Any) -> None:
    """Run the whole pipeline end to end on the simulator, with its own database and broker.

    Starts the simulator, WORKERS celery workers and beat, creates JOBS meetings, deletes half
    of them, and prints what happened. Exits 0 when every job succeeded with no duplicate.
    """
    from worker import demo  # noqa: PLC0415 - demo imports this module (upgrade_database)

    if not demo.run(demo.DemoOptions(**options), console()).passed:
        raise SystemExit(1)
