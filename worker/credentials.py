"""The credential registry: named Zoom credentials and the OAuth apps users connect through.

A credential has a stable name the application uses (``account="acme"``) and is one of:

- ``s2s``: a Server-to-Server OAuth app (account id, client id, client secret);
- ``user``: one Zoom user's connection to a registered OAuth ("General") app, whose client id,
  client secret and webhook secret token are held once, in ``apps``. The user's tokens come
  from the application's OAuth callback (:meth:`Registry.register_user_authorization`) or from
  a refresh token it already has (:meth:`Registry.add_user`).

The environment's credential (``ZOOM_ACCOUNT_ID``, ...) is the ``default`` one: its secret stays
in the environment, never in the database, so today's configuration works unchanged.

Every secret and token the registry keeps is encrypted with AES-GCM under
``TOKEN_ENCRYPTION_KEY`` (or ``TOKEN_ENCRYPTION_KEY_FILE``), bound to its table, row and column
(:mod:`worker.token_cipher`); storing one without the key is refused before anything is written.
Bad input raises :class:`~worker.errors.InvalidCredential` naming the field, and nothing is
stored. Nothing returned here carries a secret or a token.

:class:`Registry` (:mod:`worker.credential_registry`) is the registry on one database: it
writes the registry's rows; what it returns is in :mod:`worker.credential_view`. This module
is the application's API: one registry per call, built from this process's Settings.
"""

from __future__ import annotations

from worker import db
from worker.config import get_settings

# Re-exported: the registry's public names are worker.credentials.X.
from worker.credential_registry import Registry as Registry  # noqa: PLC0414
from worker.credential_registry import check_limits as check_limits  # noqa: PLC0414
from worker.credential_view import CredentialInfo as CredentialInfo  # noqa: PLC0414
from worker.credential_view import ProbeResult as ProbeResult  # noqa: PLC0414

# -- the application's API: one registry per call, built from this process's Settings ---------


def from_settings() -> Registry:
    """A registry built from this process's Settings (close it, or use it in ``with``)."""
    settings = get_settings()
    return Registry(settings, db.sessions(settings))


def add_s2s(
    name: str,
    *,
    account_id: str,
    client_id: str,
    client_secret: str,
    plan: str | None = None,
    rate_limits: str | None = None,
) -> CredentialInfo:
    """Register a Server-to-Server app under ``name`` (see :meth:`Registry.add_s2s`)."""
    with from_settings() as r:
        return r.add_s2s(
            name,
            account_id=account_id,
            client_id=client_id,
            client_secret=client_secret,
            plan=plan,
            rate_limits=rate_limits,
        )


def add_user(name: str, *, app: str, refresh_token: str) -> CredentialInfo:
    """Register a user's connection from a refresh token (see :meth:`Registry.add_user`)."""
    with from_settings() as r:
        return r.add_user(name, app=app, refresh_token=refresh_token)


def register_user_authorization(
    *, account: str, code: str, redirect_uri: str, app: str | None = None
) -> CredentialInfo:
    """Register a user's connection from an OAuth callback's authorization code."""
    with from_settings() as r:
        return r.register_user_authorization(
            account=account, code=code, redirect_uri=redirect_uri, app=app
        )


def list_credentials() -> list[CredentialInfo]:
    """Every credential: the environment's, then the registered ones by name."""
    with from_settings() as r:
        return r.list_credentials()


def get(name: str) -> CredentialInfo | None:
    """The credential named ``name`` (its ``status`` says whether it can be used), or None."""
    with from_settings() as r:
        return r.get(name)


def rotate(name: str, client_secret: str) -> ProbeResult:
    """Replace a registered S2S app's secret and probe it at once."""
    with from_settings() as r:
        return r.rotate(name, client_secret)


def disable(name: str) -> CredentialInfo:
    """Stop using a registered credential until it is enabled again."""
    with from_settings() as r:
        return r.disable(name)


def remove(name: str) -> None:
    """Forget a registered credential and its token."""
    with from_settings() as r:
        r.remove(name)
