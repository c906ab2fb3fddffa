"""``zoom-worker``: the operator's command line.

Every command reads Settings from the environment, like the workers do. A failure the
service itself reports (a :class:`~worker.errors.ZoomWorkerError`) ends the command with its
message and exit code 1, never a traceback; an invalid meeting body ends it with exit code 2
and the field's name. Nothing printed here ever holds a secret, an access token or a
``start_url``: ``token`` and ``doctor`` show the credential's ids and the token's expiry only.

The jobs commands (``create``, ``delete``, ``update``, ``retry``, ``cancel``, ``job``, ``jobs``)
are in :mod:`worker.cli_jobs`, ``credentials`` and ``apps`` in :mod:`worker.cli_credentials`;
all are registered on :func:`cli` here.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import click
import httpx
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from worker import (
    cli_credentials,
    cli_jobs,
    credentials,
    db,
    errors,
    outage,
    retention,
    schema,
    simulator,
)
from worker import doctor as checks
from worker.cli_credentials import console
from worker.cli_credentials import print_fields as _print_fields
from worker.cli_credentials import show_text as _text
from worker.cli_jobs import parse_assignments as parse_assignments  # noqa: PLC0414 - tests use it
from worker.config import Settings, get_settings, parse_rate_limits
from worker.token_store import TokenStatus, TokenStore

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


@cli.command()
def migrate() -> None:
    """Create the database if it is missing and upgrade its schema to head."""
    url = get_settings().DATABASE_URL
    revision = schema.upgrade_database(url)
    click.echo(f"database {make_url(url).database} is at revision {revision} (head)")


# -- retention -------------------------------------------------------------------------


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


# The `credentials` and `apps` groups, and the jobs commands (create ... jobs), live apart.
cli.add_command(cli_credentials.credentials_group)
cli.add_command(cli_credentials.apps_group)
for _command in (
    cli_jobs.create,
    cli_jobs.delete,
    cli_jobs.update_command,
    cli_jobs.retry,
    cli_jobs.cancel,
    cli_jobs.show_job,
    cli_jobs.list_jobs,
):
    cli.add_command(_command)


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
