"""``zoom-worker webhooks``: the HTTP endpoint for Zoom's event notifications (Starlette).

Protocol (Zoom's, see "Using webhooks" in Zoom's developer docs)
-----------------------------------------------------------------
Zoom POSTs a JSON body ``{"event", "event_ts", "payload": {"account_id", "object", ...}}``
to the endpoint path (``ZOOM_WEBHOOK_PATH``) with two headers:
``x-zm-request-timestamp`` (seconds) and
``x-zm-signature: v0=<hex HMAC-SHA256 of "v0:{timestamp}:{raw body}" under the secret token>``.

- Every request must carry a valid signature, compared in constant time, and a timestamp no
  further than ``ZOOM_WEBHOOK_MAX_AGE`` from now: else 401, and nothing is stored (a replay
  of an old request is refused; one inside the window is a duplicate).
- ``endpoint.url_validation`` (``payload.plainToken``) is answered 200 with ``plainToken`` and
  ``encryptedToken``, the hex HMAC-SHA256 of ``plainToken`` under the secret token. Zoom
  revalidates every 72 hours and disables the subscription after 6 failures. It is verified
  like any event, and ``plainToken`` must be URL-safe characters: otherwise anyone could ask
  for the HMAC of ``"v0:{timestamp}:{body}"``, a valid signature of a forged event.
- A body over :data:`MAX_BODY_BYTES` is 413, one that is not a JSON object 400.
- A verified event is stored once and answered 200 as soon as it is committed: the requests
  that arrive together are stored in one multi-row INSERT and one commit (group commit,
  :mod:`worker.group_commit`; :func:`worker.webhook_events.store_many`). Zoom retries only
  answers >= 500, so a database that cannot store the event answers 503.
- After the answers, one ``webhooks.apply_pending`` task is queued for all the events
  committed since the last one (at most one per ``publish_interval_s``, never per request);
  it applies them in arrival order. Beat queues the same task every
  ``SWEEP_INTERVAL_SECONDS``, so an event whose task was lost (a crash between the commit
  and the publish, a broker down) is still applied.

The secret is looked up by ``payload.account_id`` (:class:`SecretBook`), so a second app's
secret is one more entry, not a rewrite. Nothing secret is logged: no header, no body, no token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker import group_commit, webhook_events
from worker.celery_app import WEBHOOKS_APPLY_TASK
from worker.config import Settings

log = logging.getLogger(__name__)

APPLY_TASK = WEBHOOKS_APPLY_TASK
MAX_BODY_BYTES = 64 * 1024  # Zoom's meeting events are a few KiB
# Zoom's plainToken is URL-safe base64 (e.g. "qgg8vlvZRS6UYooatFL8Aw"); never a "v0:..." message.
PLAIN_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
TIMESTAMP_HEADER = "x-zm-request-timestamp"
SIGNATURE_HEADER = "x-zm-signature"


@dataclass(frozen=True)
class SecretBook:
    """The webhook secret tokens: one per Zoom account (app), and a default for the rest.

    ``endpoint.url_validation`` carries no ``account_id`` and is answered with the default.
    """

    default: SecretStr | None = None
    by_account: Mapping[str, SecretStr] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBook:
        return cls(default=settings.ZOOM_WEBHOOK_SECRET_TOKEN)

    def secret_for(self, account_id: str | None) -> bytes | None:
        """The secret token that signs ``account_id``'s events, or None if there is none."""
        secret = self.by_account.get(account_id or "", self.default)
        return None if secret is None else secret.get_secret_value().encode()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``x-zm-signature`` Zoom sends for ``body`` at ``timestamp``."""
    message = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret, message, hashlib.sha256).hexdigest()


def encrypted_token(secret: bytes, plain_token: str) -> str:
    """The ``encryptedToken`` of Zoom's URL validation: hex HMAC-SHA256 of ``plain_token``."""
    return hmac.new(secret, plain_token.encode(), hashlib.sha256).hexdigest()


def verified(
    secret: bytes, headers: Mapping[str, str], body: bytes, *, max_age_s: float, now: float
) -> bool:
    """Whether ``body`` carries Zoom's signature under ``secret`` and a fresh timestamp."""
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    offered = headers.get(SIGNATURE_HEADER, "")
    if not timestamp.isdigit() or abs(now - int(timestamp)) > max_age_s:
        return False
    return hmac.compare_digest(offered.encode(), sign(secret, timestamp, body).encode())


@dataclass
class Intake:
    """What the endpoint needs, built once: the secrets, the database (written in groups by
    ``writer``) and the task sender (one apply task per commit at most: ``publisher``)."""

    secrets: SecretBook
    sessions: sessionmaker[Session]
    send: Callable[[str, dict[str, Any]], None]
    max_age_s: float = 300.0
    clock: Callable[[], float] = time.time
    # One apply task per this many seconds at most, however many events were committed.
    publish_interval_s: float = 0.05
    writer: group_commit.GroupCommit[webhook_events.Event, int | None] = field(init=False)
    publisher: group_commit.Debounce = field(init=False)

    def __post_init__(self) -> None:
        self.writer = group_commit.GroupCommit(self.store_group)
        self.publisher = group_commit.Debounce(self.notify, self.publish_interval_s)

    def store_group(self, events: Sequence[webhook_events.Event]) -> list[int | None]:
        """Store ``events`` in one transaction; each one's row id, None for a duplicate."""
        with self.sessions() as session, session.begin():
            return webhook_events.store_many(session, events)

    def notify(self) -> None:
        """Queue the application of what is stored; a broker that fails leaves it to the
        sweep (beat queues the same task every ``SWEEP_INTERVAL_SECONDS``)."""
        try:
            self.send(APPLY_TASK, {})
        except Exception as exc:  # the rows are stored: the sweep applies them
            log.warning("webhook.not_queued %s", type(exc).__name__)


def create_app(intake: Intake, path: str = "/zoom/webhooks") -> Starlette:
    """The ASGI app serving ``path`` (POST only)."""

    async def receive(request: Request) -> Response:
        body = await _read_body(request)
        if body is None:
            return _error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the body is not JSON")
        if not isinstance(parsed, dict):
            return _error(400, "the body is not a JSON object")
        payload = parsed.get("payload")
        account_id = payload.get("account_id") if isinstance(payload, dict) else None
        secret = intake.secrets.secret_for(account_id if isinstance(account_id, str) else None)
        if secret is None or not verified(
            secret, request.headers, body, max_age_s=intake.max_age_s, now=intake.clock()
        ):
            log.warning("webhook.refused the signature or its timestamp is not valid")
            return _error(401, "the signature or its timestamp is not valid")
        if parsed.get("event") == webhook_events.URL_VALIDATION:
            return _validation(secret, payload)
        return await _event(intake, parsed)

    return Starlette(routes=[Route(path, receive, methods=["POST"])])


async def _read_body(request: Request) -> bytes | None:
    """The raw body, or None once it passes MAX_BODY_BYTES (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _validation(secret: bytes, payload: object) -> Response:
    plain = payload.get("plainToken") if isinstance(payload, dict) else None
    if not isinstance(plain, str) or not PLAIN_TOKEN.fullmatch(plain):
        return _error(400, "payload.plainToken: 1 to 256 URL-safe characters are required")
    log.info("webhook.url_validation answered")
    return JSONResponse({"plainToken": plain, "encryptedToken": encrypted_token(secret, plain)})


async def _event(intake: Intake, parsed: Mapping[str, Any]) -> Response:
    try:
        event = webhook_events.Event.parse(parsed)
    except ValueError as exc:
        return _error(400, str(exc))
    try:
        event_id = await intake.writer.submit(event)
    except SQLAlchemyError as exc:
        # 5xx: Zoom delivers it again later (at about +5, +20 and +60 minutes).
        log.error("webhook.not_stored event=%s %s", event.event, type(exc).__name__)
        return _error(503, "the event could not be stored")
    if event_id is None:
        log.info("webhook.duplicate event=%s meeting_id=%s", event.event, event.meeting_id)
        return JSONResponse({"stored": False})
    log.info(
        "webhook.stored event_id=%s event=%s meeting_id=%s", event_id, event.event, event.meeting_id
    )
    # After the answer has gone: the apply task covering this commit (shared, debounced).
    return JSONResponse({"stored": True}, background=BackgroundTask(intake.publisher.request))


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def serve(
    settings: Settings,
    host: str,
    port: int,
    send: Callable[[str, dict[str, Any]], None],
    workers: int = 1,
) -> None:
    """Serve the endpoint with uvicorn until interrupted (``zoom-worker webhooks``); with
    ``workers`` > 1, that many processes share the port, each building its own app from the
    environment (:func:`app_from_environment`)."""
    import uvicorn  # noqa: PLC0415 - only the serving process needs it

    # access_log off: a request line is noise here, and never carries more than the path.
    options: dict[str, Any] = {"host": host, "port": port, "access_log": False}
    if workers > 1:
        target = f"{__name__}:app_from_environment"
        uvicorn.run(target, factory=True, workers=workers, log_level="info", **options)
        return
    uvicorn.run(_app(settings, send), log_level="info", **options)


def app_from_environment() -> Starlette:
    """The app for one of several uvicorn worker processes: Settings from the environment,
    tasks sent with the Celery app's producer pool (an edge, like the CLI)."""
    from worker import celery_app  # noqa: PLC0415 - the serving process only
    from worker.config import get_settings  # noqa: PLC0415

    return _app(get_settings(), celery_app.send)


def _app(settings: Settings, send: Callable[[str, dict[str, Any]], None]) -> Starlette:
    from worker import db  # noqa: PLC0415

    intake = Intake(
        secrets=SecretBook.from_settings(settings),
        sessions=db.sessions(settings),
        send=send,
        max_age_s=settings.ZOOM_WEBHOOK_MAX_AGE,
    )
    return create_app(intake, settings.ZOOM_WEBHOOK_PATH)
