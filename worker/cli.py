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
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import httpx
import psycopg
import redis
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

import worker
from worker import db, errors, jobs, models, simulator, zoom
from worker.config import Settings, get_settings, parse_rate_limits
from worker.token_store import TokenStore

STATUSES = (models.QUEUED, models.RUNNING, models.RETRYING, models.WAITING, *models.FINAL_STATUSES)
# A stopped database or broker must fail `doctor` in seconds, not after the OS's TCP timeout.
CONNECT_TIMEOUT_S = 3
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
    """Create and delete Zoom meetings through Celery workers, and look after them."""


def main() -> None:
    """The ``zoom-worker`` entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cli(prog_name="zoom-worker")


def console() -> Console:
    """A console for stdout; wide when not a terminal, so ids are never wrapped in pipes."""
    out = Console()
    return out if out.is_terminal else Console(width=200)


# -- the schema ------------------------------------------------------------------------


def alembic_config(url: str) -> Config:
    """Alembic's config for the repository's migrations, pointed at ``url``."""
    config = Config(str(Path(worker.__file__).resolve().parent.parent / "alembic.ini"))
    config.attributes["database_url"] = url
    config.attributes["configure_logger"] = False
    return config


def upgrade_database(url: str) -> str:
    """Create the database if missing and migrate it to head; returns the head revision."""
    db.ensure_database(url)
    config = alembic_config(url)
    command.upgrade(config, "head")
    return _head_revision(config)


def _head_revision(config: Config) -> str:
    return ScriptDirectory.from_config(config).get_current_head() or "base"


def _conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _where(url: str) -> str:
    """Host and port of a database or Redis URL, never its password."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "(an unparsable URL)"
    port = parsed.port or (6379 if parsed.drivername.startswith("redis") else 5432)
    return f"{parsed.host or 'localhost'}:{port}"


@cli.command()
def migrate() -> None:
    """Create the database if it is missing and upgrade its schema to head."""
    url = get_settings().DATABASE_URL
    revision = upgrade_database(url)
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
def create(
    user_id: str, body: Path | None, idempotency_key: str | None, **fields: str | int | None
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
    click.echo(str(jobs.create_meeting(user_id, meeting, idempotency_key=idempotency_key)))


@cli.command()
@click.argument("meeting_id", type=int, required=False)
@click.option(
    "--create-job", help="Delete the meeting of this create job (waits for or cancels it)."
)
@click.option("--occurrence-id", help="Delete one occurrence of a recurring meeting.")
@click.option("--idempotency-key", help="The same key always returns the same job.")
def delete(
    meeting_id: int | None,
    create_job: str | None,
    occurrence_id: str | None,
    idempotency_key: str | None,
) -> None:
    """Queue a job that deletes MEETING_ID (only meetings this service created); prints its id."""
    job_id = jobs.delete_meeting(
        meeting_id, occurrence_id, idempotency_key, create_job_id=create_job
    )
    click.echo(str(job_id))


def _text(value: object) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds")
    return "-" if value is None else str(value)


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
    """The shared token's status: never the token or the secret."""
    settings = get_settings()
    with httpx.Client() as http:
        status = TokenStore(settings, db.sessions(), http=http).status()
    expires = "no token stored"
    if status.expires_at is not None:
        left_s = int((status.expires_at - datetime.now(UTC)).total_seconds())
        expires = f"{_text(status.expires_at)} ({'in' if left_s > 0 else 'expired'} {abs(left_s)}s)"
    error = f"{status.last_error} ({_text(status.last_error_at)})" if status.last_error else "-"
    hour, day = status.requests_last_hour, status.requests_last_day
    _print_fields(
        [
            ("credential", f"account {status.account_id}, client {status.client_id}"),
            ("expires at", expires),
            ("fetched at", _text(status.fetched_at)),
            ("tokens fetched", f"{hour} last hour, {day} last day"),
            ("failed requests", f"{status.failures_last_day} last day"),
            ("circuit", f"{status.circuit_state}: {status.circuit_reason or 'Zoom accepts it'}"),
            ("next probe", _text(status.next_probe_at)),
            ("last error", error),
        ]
    )


def _print_fields(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _value in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")


# -- doctor ----------------------------------------------------------------------------------


class CheckFailed(Exception):
    """Raised by a doctor check; the message is the cause, in words."""


class _Doctor:
    """The checks, in order; each returns what it found or raises CheckFailed."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.store: TokenStore | None = None
        self.fetched: zoom.AccessToken | None = None
        self.http = httpx.Client()

    def settings_load(self) -> str:
        get_settings.cache_clear()
        self.settings = get_settings()
        return "every setting is valid"

    def database(self) -> str:
        url = self._settings().DATABASE_URL
        try:
            with psycopg.connect(_conninfo(url), connect_timeout=CONNECT_TIMEOUT_S) as conn:
                version = conn.info.server_version
        except psycopg.OperationalError as exc:
            # psycopg says 'connection failed: connection to server at "h", port p failed: X'.
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            cause = first.rsplit("failed: ", 1)[-1].removeprefix("FATAL:").strip()
            raise CheckFailed(f"PostgreSQL at {_where(url)} is not reachable: {cause}") from None
        return f"PostgreSQL {version // 10000}.{version % 100} at {_where(url)}"

    def migrations(self) -> str:
        url = self._settings().DATABASE_URL
        head = _head_revision(alembic_config(url))
        with psycopg.connect(_conninfo(url), connect_timeout=CONNECT_TIMEOUT_S) as conn:
            try:
                rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
            except psycopg.errors.UndefinedTable:
                raise CheckFailed("the schema is missing: run `zoom-worker migrate`") from None
        current = ", ".join(row[0] for row in rows) or "none"
        if current != head:
            raise CheckFailed(f"at revision {current}, head is {head}: run `zoom-worker migrate`")
        return f"at head ({head})"

    def broker(self) -> str:
        settings = self._settings()
        urls = dict.fromkeys([settings.CELERY_BROKER_URL, settings.redis_url])
        timeouts = {
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": CONNECT_TIMEOUT_S,
        }
        for url in urls:
            try:
                with redis.Redis.from_url(url, **timeouts) as client:
                    client.ping()
            except (redis.RedisError, ValueError) as exc:
                raise CheckFailed(f"Redis at {_where(url)} is not reachable: {exc}") from None
        return "Redis at " + ", ".join(_where(url) for url in urls)

    def credentials(self) -> str:
        settings = self._settings()
        account_id, client_id = settings.require_credentials()
        settings.read_client_secret()  # a secret file that cannot be read fails here
        return f"account {account_id}, client {client_id}"

    def token(self) -> str:
        self.store = TokenStore(self._settings(), db.sessions(), http=self.http)
        try:
            self.fetched = got = self.store.get()
        except errors.CircuitOpen as exc:
            raise CheckFailed(_refused(exc)) from None
        except errors.CredentialsRejected as exc:
            raise CheckFailed(f"Zoom refused the credentials: {exc.describe()}") from None
        except errors.ZoomError as exc:
            raise CheckFailed(f"no token: {exc.describe()}") from None
        left = timedelta(seconds=int(got.seconds_left()))
        return f"a token valid for {left} more (shared store)"

    def api(self) -> str:
        settings = self._settings()
        assert self.store is not None
        client = zoom.ZoomClient(
            settings.ZOOM_API_URL, zoom.ZoomAuth(self.store), timeout_s=CONNECT_TIMEOUT_S * 3
        )
        try:
            # Meeting 0 never exists: "not found" proves the API is reachable and authorized.
            client.get_meeting(0)
        except (errors.RateLimited, errors.ZoomClientError) as exc:
            if self.fetched is not None and self.fetched.fetched_here:
                # The token check fetched it, so ZoomAuth saw a stored copy: closing a
                # half-open circuit is up to us.
                self.store.accepted(self.fetched)
            return f"{settings.ZOOM_API_URL} answered ({type(exc).__name__}, as expected)"
        except errors.CircuitOpen as exc:
            raise CheckFailed(_refused(exc)) from None
        except errors.ZoomError as exc:
            raise CheckFailed(f"{settings.ZOOM_API_URL}: {exc.describe()}") from None
        finally:
            client.close()
        return f"{settings.ZOOM_API_URL} answered"

    def _settings(self) -> Settings:
        if self.settings is None:
            raise CheckFailed("skipped: the settings did not load")
        return self.settings


def _refused(exc: errors.CircuitOpen) -> str:
    reason = exc.reason.removeprefix("Zoom refused the credential: ")
    return f"Zoom refused the credentials: {reason} (next probe {_text(exc.retry_at)})"


@cli.command()
def doctor() -> None:
    """Check settings, database, schema, broker, credentials, token and API, in that order."""
    doc = _Doctor()
    checks: list[tuple[str, Callable[[], str], tuple[str, ...]]] = [
        ("settings load", doc.settings_load, ()),
        ("database reachable", doc.database, ("settings load",)),
        ("migrations at head", doc.migrations, ("database reachable",)),
        ("broker reachable", doc.broker, ("settings load",)),
        ("credentials configured", doc.credentials, ("settings load",)),
        ("token fetched", doc.token, ("migrations at head", "credentials configured")),
        ("API reachable and authorized", doc.api, ("token fetched",)),
    ]
    out = console()
    failed: set[str] = set()
    for name, check, needs in checks:
        missing = [need for need in needs if need in failed]
        try:
            if missing:
                raise CheckFailed(f"skipped: {missing[0]} failed")
            found = check()
        except (CheckFailed, errors.ZoomWorkerError) as exc:
            failed.add(name)
            out.print(Text.assemble(("FAIL", "bold red"), f" {name}: {exc}"))
        else:
            out.print(Text.assemble(("OK", "bold green"), f"   {name}: {found}"))
    doc.http.close()
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(checks)} checks failed")


# -- the simulator and the demo ----------------------------------------------------------------


_RATE = click.FloatRange(0, 1)


@cli.command("simulator")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=9900, show_default=True)
@click.option("--rate-limit", help="Per-second caps, e.g. light=30,medium=20,heavy=10.")
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
