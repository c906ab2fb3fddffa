"""``zoom-worker doctor``: the checks an operator runs first, in order, each in words.

Settings, database, migrations at head, the broker (through Celery's own connection, Redis
or RabbitMQ) and the governor's Redis, credentials, a token through the shared store, the
API, and each registered credential's state (from the registry, no call to Zoom): a
Server-to-Server app Zoom refuses fails the check, since only an operator can rotate it; a
user's connection that needs re-authorization or a disabled credential is listed, not failed
(the customer or the operator chose it). A check whose prerequisite failed is skipped. Nothing shown
holds a secret or a token.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import kombu.exceptions
import psycopg
import redis
from celery import Celery
from rich.console import Console
from rich.text import Text
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from worker import celery_app, db, errors, redis_client, schema, zoom
from worker.config import Settings, broker_kind, get_settings
from worker.models import ACTIVE, DEFAULT_CREDENTIAL, S2S, Credential
from worker.token_store import CLOSED, TokenStore

# A stopped database or broker must fail in seconds, not after the OS's TCP timeout.
CONNECT_TIMEOUT_S = 3


def _conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _where(url: str, service: str | None = None) -> str:
    """Host and port of a database, Redis or AMQP URL (and a RabbitMQ vhost), or the
    Sentinels and their master's name (``service``), never its password."""
    if url.startswith(("redis", "sentinel:", "unix:")):
        return redis_client.describe(url, service)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "(an unparsable URL)"
    if broker_kind(url) == "rabbitmq":
        return f"{parsed.host or 'localhost'}:{parsed.port or 5672}/{parsed.database or ''}"
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class CheckFailed(Exception):
    """Raised by a doctor check; the message is the cause, in words."""


class _Doctor:
    """The checks, in order; each returns what it found or raises CheckFailed."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.store: TokenStore | None = None
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
            first = _first_line(exc)
            cause = first.rsplit("failed: ", 1)[-1].removeprefix("FATAL:").strip()
            raise CheckFailed(f"PostgreSQL at {_where(url)} is not reachable: {cause}") from None
        return f"PostgreSQL {version // 10000}.{version % 100} at {_where(url)}"

    def migrations(self) -> str:
        url = self._settings().DATABASE_URL
        head = schema.head_revision(schema.alembic_config(url))
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
        """The broker through Celery's own connection (with our transport options), then
        the governor's Redis on its own: the failure names which of the two is down."""
        settings = self._settings()
        name = "RabbitMQ" if settings.broker_kind == "rabbitmq" else "Redis"
        where = _where(settings.CELERY_BROKER_URL, settings.REDIS_SENTINEL_MASTER)
        probe = Celery("zoom-worker-doctor", set_as_current=False)
        probe.conf.update(
            broker_url=settings.CELERY_BROKER_URL,
            broker_transport_options=celery_app.transport_options(settings),
            broker_connection_timeout=CONNECT_TIMEOUT_S,
        )
        try:
            with probe.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=CONNECT_TIMEOUT_S)
        except (kombu.exceptions.OperationalError, OSError) as exc:
            raise CheckFailed(
                f"the broker ({name} at {where}, CELERY_BROKER_URL) is not reachable: "
                f"{_first_line(exc)}"
            ) from None
        timeouts = {
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": CONNECT_TIMEOUT_S,
        }
        governor = _where(settings.redis_url)
        try:
            with redis_client.connect(settings.redis_url, **timeouts) as client:
                client.ping()
        except (redis.RedisError, ValueError) as exc:
            raise CheckFailed(
                f"the rate governor's Redis at {governor} (REDIS_URL) is not reachable: "
                f"{_first_line(exc)}"
            ) from None
        return f"{name} at {where} (broker), Redis at {governor} (rate governor)"

    def credentials(self) -> str:
        settings = self._settings()
        account_id, client_id = settings.require_credentials()
        settings.read_client_secret()  # a secret file that cannot be read fails here
        return f"account {account_id}, client {client_id}"

    def token(self) -> str:
        self.store = TokenStore(self._settings(), db.sessions(get_settings()), http=self.http)
        try:
            got = self.store.get()
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
            # ZoomAuth has reported the token accepted (closing a half-open circuit).
            return f"{settings.ZOOM_API_URL} answered ({type(exc).__name__}, as expected)"
        except errors.CircuitOpen as exc:
            raise CheckFailed(_refused(exc)) from None
        except errors.ZoomError as exc:
            raise CheckFailed(f"{settings.ZOOM_API_URL}: {exc.describe()}") from None
        finally:
            client.close()
        return f"{settings.ZOOM_API_URL} answered"

    def registered(self) -> str:
        """The registered credentials' state; "" when none is registered (nothing shown)."""
        settings = self._settings()
        names = db.sessions(settings)
        with names() as session:
            found = list(
                session.scalars(
                    select(Credential.name)
                    .where(Credential.name != DEFAULT_CREDENTIAL)
                    .order_by(Credential.name)
                )
            )
        refused: list[str] = []
        notes: list[str] = []
        for name in found:
            status = TokenStore(settings, names, http=self.http, credential=name).status()
            if status.status != ACTIVE:
                notes.append(f"{name} {status.status.replace('_', ' ')}")
            elif status.circuit_state != CLOSED:
                reason = status.circuit_reason or "refused"
                text = f"{name}: {reason} (next probe {_when(status.next_probe_at)})"
                (refused if status.kind == S2S else notes).append(text)
        if not found:
            return ""
        if refused:
            raise CheckFailed("Zoom refuses " + "; ".join(refused))
        usable = len(found) - len(notes)
        listed = f"; {', '.join(notes)}" if notes else ""
        return f"{len(found)} registered, {usable} usable{listed}"

    def _settings(self) -> Settings:
        if self.settings is None:
            raise CheckFailed("skipped: the settings did not load")
        return self.settings


def _refused(exc: errors.CircuitOpen) -> str:
    reason = exc.reason.removeprefix("Zoom refused the credential: ")
    return f"Zoom refused the credentials: {reason} (next probe {_when(exc.retry_at)})"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else "-"


def run_checks(out: Console) -> tuple[int, int]:
    """Run every check, printing OK or FAIL with the cause; returns (failed, total)."""
    doc = _Doctor()
    checks: list[tuple[str, Callable[[], str], tuple[str, ...]]] = [
        ("settings load", doc.settings_load, ()),
        ("database reachable", doc.database, ("settings load",)),
        ("migrations at head", doc.migrations, ("database reachable",)),
        ("broker reachable", doc.broker, ("settings load",)),
        ("credentials configured", doc.credentials, ("settings load",)),
        ("token fetched", doc.token, ("migrations at head", "credentials configured")),
        ("API reachable and authorized", doc.api, ("token fetched",)),
        # Shown only when credentials are registered and the database could be read.
        ("registered credentials", doc.registered, ("migrations at head",)),
    ]
    optional = {"registered credentials"}
    failed: set[str] = set()
    total = 0
    for name, check, needs in checks:
        missing = [need for need in needs if need in failed]
        if missing and name in optional:
            continue
        total += 1
        try:
            if missing:
                raise CheckFailed(f"skipped: {missing[0]} failed")
            found = check()
        except (CheckFailed, errors.ZoomWorkerError) as exc:
            failed.add(name)
            out.print(Text.assemble(("FAIL", "bold red"), f" {name}: {exc}"))
        else:
            if not found and name in optional:
                total -= 1
                continue
            out.print(Text.assemble(("OK", "bold green"), f"   {name}: {found}"))
    doc.http.close()
    return len(failed), total
