"""What one credential's token request is, for the token store (:mod:`worker.token_store`).

A credential is named. ``default`` is the environment's S2S app (``ZOOM_ACCOUNT_ID``,
``ZOOM_CLIENT_ID``, the secret or its file, re-read at each request): its row is made on first
use, as before the registry existed. Every other name is a registered credential
(:mod:`worker.credentials`), read from its row at each request while the row is locked:

- ``s2s``: an ``account_credentials`` grant with the row's own client secret;
- ``user``: a ``refresh_token`` grant with the app's client id and secret. Zoom rotates the
  refresh token at every refresh and the spent one dies, so the new one is put on the row
  (:meth:`Grants.keep`) in the transaction that stores the new access token, under the row
  lock: no two processes ever spend one refresh token, and a refresh token is never lost to a
  rollback that Zoom did not see. A refused one (:class:`~worker.errors.GrantRefused`) marks
  the connection ``needs_reauthorization`` (:meth:`Grants.refused`): no request is made for it
  again until the user authorizes the app anew.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, sessionmaker

from worker import circuit, errors, oauth, oauth_apps, token_cipher
from worker.config import Settings
from worker.models import (
    ACTIVE,
    DEFAULT_CREDENTIAL,
    NEEDS_REAUTHORIZATION,
    S2S,
    USER,
    App,
    Credential,
)

REAUTHORIZE_ADVICE = (
    "Zoom refused this user's refresh token (spent, revoked, or expired), so no retry can "
    "help: the user must authorize the app again, then the application registers the new "
    "authorization (worker.credentials.register_user_authorization, or `zoom-worker "
    "credentials add-user`)."
)


@dataclass(frozen=True)
class Grants:
    """One credential as the token store sees it: its identity, the row it is kept on, the
    ciphers of its token, and how a token is asked for."""

    name: str
    kind: str
    account_id: str
    client_id: str
    row_id: int | None  # None: the environment's row, made on first use
    settings: Settings

    @classmethod
    def load(cls, settings: Settings, sessions: sessionmaker[Session], name: str) -> Grants:
        """The credential named ``name``; InvalidCredential (field ``account``) when unknown."""
        if name == DEFAULT_CREDENTIAL:
            account_id, client_id = settings.require_credentials()
            return cls(name, S2S, account_id, client_id, None, settings)
        with sessions() as session:
            row = session.scalars(select(Credential).where(Credential.name == name)).one_or_none()
        if row is None:
            raise errors.InvalidCredential("account", f"no credential is named {name!r}")
        return cls(name, row.kind, row.account_id, row.client_id, row.id, settings)

    @property
    def registered(self) -> bool:
        return self.row_id is not None

    def where(self) -> tuple[ColumnElement[bool], ...]:
        """The statement's condition for this credential's row."""
        if self.row_id is not None:
            return (Credential.id == self.row_id,)
        return (
            Credential.name == DEFAULT_CREDENTIAL,
            Credential.account_id == self.account_id,
            Credential.client_id == self.client_id,
        )

    def cipher(self) -> token_cipher.TokenCipher:
        """The cipher of the access token on the row."""
        if self.row_id is None:
            return token_cipher.TokenCipher.for_environment(
                self.settings, self.account_id, self.client_id
            )
        return token_cipher.TokenCipher.for_row(self.settings, "credentials", self.row_id, "token")

    def circuit(self) -> circuit.Circuit:
        """The credential's circuit; a registered one notices rotations by its secret version."""
        if self.row_id is None:
            settings = self.settings
            return circuit.Circuit(lambda _row: token_cipher.secret_digest(settings))
        advice = circuit.REGISTERED_ADVICE.format(name=self.name)
        return circuit.Circuit(lambda row: f"version {row.secret_version}", advice)

    def check_usable(self, row: Credential) -> None:
        """Raise CredentialUnavailable when the row is disabled or needs re-authorization."""
        if row.status != ACTIVE:
            raise errors.CredentialUnavailable(self.name, row.status, row.status_reason or "")

    def request(self, session: Session, row: Credential, http: httpx.Client) -> oauth.TokenGrant:
        """Ask Zoom for a token with the secrets of the locked ``row`` (a user's: its app's)."""
        settings = self.settings
        timeout_s = settings.ZOOM_TOKEN_REQUEST_TIMEOUT
        if self.row_id is None:
            secret = settings.read_client_secret()
        elif row.kind == S2S:
            secret = self._row_cipher("secret").open(row.secret_ciphertext)
        if row.kind == S2S:
            return oauth.request_token(
                http,
                settings.ZOOM_OAUTH_URL,
                account_id=row.account_id,
                client_id=row.client_id,
                client_secret=secret,
                timeout_s=timeout_s,
            )
        app = session.get(App, row.app_id)
        assert app is not None  # the foreign key holds while the row is locked
        return oauth.refresh_user_token(
            http,
            settings.ZOOM_OAUTH_URL,
            client_id=app.client_id,
            client_secret=oauth_apps.secret(settings, app),
            refresh_token=self._row_cipher("refresh_token").open(row.refresh_token_ciphertext),
            timeout_s=timeout_s,
        )

    def store(self, row: Credential, grant: oauth.TokenGrant, requested_at: datetime) -> None:
        """Put a first grant on a new row: its access token, its life counted on the
        database's clock from ``requested_at`` (never longer), and its refresh token."""
        token = dataclasses.replace(
            grant.token,
            fetched_at=requested_at,
            expires_at=requested_at + timedelta(seconds=grant.expires_in_s),
        )
        self.cipher().write(row, token)
        self.keep(row, grant)
        row.scope = grant.scope

    def keep(self, row: Credential, grant: oauth.TokenGrant) -> None:
        """Put a user's new refresh token on the row (committed with the access token)."""
        if row.kind == USER and grant.refresh_token is not None:
            row.refresh_token_ciphertext = self._row_cipher("refresh_token").encrypt(
                grant.refresh_token
            )

    def refused(
        self, row: Credential, error: errors.GrantRefused, now: datetime
    ) -> errors.CredentialUnavailable:
        """Mark the locked row "needs re-authorization"; returns the error to raise."""
        row.status = NEEDS_REAUTHORIZATION
        row.status_reason = f"{error.describe()}. {REAUTHORIZE_ADVICE}"
        row.status_changed_at = now
        row.refresh_token_ciphertext = None
        return errors.CredentialUnavailable(self.name, row.status, row.status_reason)

    def _row_cipher(self, column: str) -> token_cipher.TokenCipher:
        assert self.row_id is not None
        return token_cipher.TokenCipher.for_row(self.settings, "credentials", self.row_id, column)
