"""The registered OAuth ("General") apps users connect through, and the registry's checks of
what an operator or application gives it.

An app's client id is held once, with its client secret and webhook secret token encrypted
(AES-GCM under ``TOKEN_ENCRYPTION_KEY``, bound to the row: :mod:`worker.token_cipher`). This
module writes the ``apps`` table, inside the transactions of :mod:`worker.credentials`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker import errors, token_cipher
from worker.config import Settings
from worker.models import DEFAULT_CREDENTIAL, App, Credential

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
ID = re.compile(r"[^\s]{1,200}")


@dataclass(frozen=True)
class AppInfo:
    """A registered OAuth app: its name and client id, never its secrets."""

    name: str
    client_id: str
    has_webhook_secret_token: bool
    created_at: datetime


def add(
    session: Session,
    settings: Settings,
    name: str,
    client_id: str,
    client_secret: str,
    webhook_secret_token: str | None,
) -> AppInfo:
    """Insert an app (InvalidCredential naming the field on bad input or a taken name)."""
    check_name(name)
    check("client_id", client_id, ID)
    check_secret("client_secret", client_secret)
    if webhook_secret_token is not None:
        check_secret("webhook_secret_token", webhook_secret_token)
    app = App(name=name, client_id=client_id, client_secret_ciphertext=b"")
    insert(session, app)
    seal(settings, app, client_secret, webhook_secret_token)
    return info(app)


def seal(settings: Settings, app: App, secret: str | None, webhook: str | None) -> None:
    """Encrypt new secrets onto the app's row (each bound to its row and column)."""
    if secret is not None:
        cipher = token_cipher.TokenCipher.for_row(settings, "apps", app.id, "client_secret")
        app.client_secret_ciphertext = cipher.encrypt(secret)
    if webhook is not None:
        cipher = token_cipher.TokenCipher.for_row(settings, "apps", app.id, "webhook_secret_token")
        app.webhook_secret_ciphertext = cipher.encrypt(webhook)


def find(session: Session, name: str | None, *, lock: bool = False) -> App:
    """The app named ``name`` (None: the only one registered); InvalidCredential ``app``."""
    query = select(App).where(App.name == name) if name is not None else select(App).limit(2)
    apps = list(session.scalars(query.with_for_update() if lock else query))
    if name is None and len(apps) != 1:
        raise errors.InvalidCredential("app", "name the app (more or fewer than one exist)")
    if not apps:
        raise errors.InvalidCredential("app", f"no app is named {name!r}")
    return apps[0]


def list_all(session: Session) -> list[AppInfo]:
    """Every registered app, by name."""
    return [info(app) for app in session.scalars(select(App).order_by(App.name))]


def secret(settings: Settings, app: App) -> str:
    """A registered app's client secret, decrypted."""
    cipher = token_cipher.TokenCipher.for_row(settings, "apps", app.id, "client_secret")
    return cipher.open(app.client_secret_ciphertext)


def info(app: App) -> AppInfo:
    """The app as the registry shows it."""
    return AppInfo(
        app.name, app.client_id, app.webhook_secret_ciphertext is not None, app.created_at
    )


# -- the registry's input ----------------------------------------------------------------------


def insert(session: Session, row: Credential | App) -> None:
    """Add a new row, refusing a taken name (InvalidCredential ``name``) before any secret
    is encrypted or any grant spent."""
    what = "an app" if isinstance(row, App) else "a credential"
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        raise errors.InvalidCredential("name", f"{what} named {row.name!r} exists") from None


def check_name(name: str) -> None:
    """A registered name: letters, digits, ``_.-``, at most 100; never ``default``."""
    check("name", name, NAME)
    if name == DEFAULT_CREDENTIAL:
        raise errors.InvalidCredential("name", "'default' is the environment's credential")


def check(field: str, value: str, pattern: re.Pattern[str]) -> None:
    """``value`` matches ``pattern`` whole, else InvalidCredential naming ``field``."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise errors.InvalidCredential(field, f"must match {pattern.pattern}")


def check_secret(field: str, value: str) -> None:
    """A secret or token: one non-empty line without spaces (its value is never echoed)."""
    if not isinstance(value, str) or not value.strip():
        raise errors.InvalidCredential(field, "is empty")
    if any(c.isspace() for c in value.strip()) or len(value) > 2000:
        raise errors.InvalidCredential(field, "must be one line without spaces, at most 2000")
