"""The credential registry on one database (:class:`Registry`): it reads the credentials and
writes the registry's rows of ``credentials`` (a user's first grant through
:mod:`worker.token_grants`) and, through :mod:`worker.oauth_apps`, ``apps``; the token store
writes the token's columns after that. What the registry holds and guarantees, and the
application's API over it: :mod:`worker.credentials`.
"""

from __future__ import annotations

import functools
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from worker import (
    accounts,
    credential_view,
    db,
    errors,
    oauth,
    oauth_apps,
    token_budget,
    token_cipher,
    token_grants,
    token_store,
    zoom,
)
from worker.config import Settings
from worker.credential_view import CredentialInfo, ProbeResult
from worker.models import (
    ACTIVE,
    DEFAULT_CREDENTIAL,
    DISABLED,
    S2S,
    USER,
    App,
    Credential,
)

log = logging.getLogger("worker.credentials")  # the registry logs under its API's name


class Registry:
    """The registry on one database; ``http`` reaches Zoom's token endpoint and API."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        http: httpx.Client | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._http = http or httpx.Client(headers={"User-Agent": "zoom-worker"})

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------

    def list_credentials(self) -> list[CredentialInfo]:
        """The environment's credential (when configured) then the registered ones, by name."""
        found = [self._default()] if self._settings.has_credentials else []
        with self._sessions() as session:
            rows = session.execute(
                select(Credential, App.name)
                .outerjoin(App, App.id == Credential.app_id)
                .where(Credential.name != DEFAULT_CREDENTIAL)
                .order_by(Credential.name)
            ).all()
        return found + [credential_view.info(row, app) for row, app in rows]

    def get(self, name: str) -> CredentialInfo | None:
        """The credential named ``name``, or None."""
        if name == DEFAULT_CREDENTIAL:
            return self._default() if self._settings.has_credentials else None
        with self._sessions() as session:
            found = session.execute(
                select(Credential, App.name)
                .outerjoin(App, App.id == Credential.app_id)
                .where(Credential.name == name)
            ).one_or_none()
        return None if found is None else credential_view.info(*found)

    # -- S2S credentials --------------------------------------------------------------------

    def add_s2s(
        self,
        name: str,
        *,
        account_id: str,
        client_id: str,
        client_secret: str,
        plan: str | None = None,
        rate_limits: str | None = None,
    ) -> CredentialInfo:
        """Register a Server-to-Server app under ``name``; its secret is stored encrypted.

        ``plan`` (``free``, ``pro``, ``business``) and ``rate_limits``
        (``light=30,medium=20,heavy=10``) size its account's per-second limits; without them
        the settings' (``ZOOM_PLAN``, ``ZOOM_RATE_LIMITS``) apply (:mod:`worker.accounts`)."""
        oauth_apps.check_name(name)
        oauth_apps.check("account_id", account_id, oauth_apps.ID)
        oauth_apps.check("client_id", client_id, oauth_apps.ID)
        oauth_apps.check_secret("client_secret", client_secret)
        check_limits(plan, rate_limits)
        with self._storing() as session:
            row = Credential(
                name=name,
                kind=S2S,
                account_id=account_id,
                client_id=client_id,
                plan=plan,
                rate_limits=rate_limits or None,
            )
            oauth_apps.insert(session, row)
            row.secret_ciphertext = self._cipher("credentials", row.id, "secret").encrypt(
                client_secret
            )
        return self._must_get(name)

    def rotate(self, name: str, client_secret: str) -> ProbeResult:
        """Replace a registered S2S app's secret, then probe it at once: the first call Zoom
        accepts closes its circuit (the jobs it holds resume)."""
        oauth_apps.check_secret("client_secret", client_secret)
        with self._storing() as session:
            row = self._locked(session, name)
            if row.kind != S2S:
                raise errors.InvalidCredential(
                    "name", f"{name!r} is a user's connection: rotate its app (apps rotate)"
                )
            row.secret_ciphertext = self._cipher("credentials", row.id, "secret").encrypt(
                client_secret
            )
            _new_secret_version(row)
        return self.probe(name)

    # -- users' connections -----------------------------------------------------------------

    def add_user(self, name: str, *, app: str, refresh_token: str) -> CredentialInfo:
        """Register a user's connection from a refresh token the application already has.

        The token is spent at once (Zoom rotates it), so the application must stop using it:
        from now on the registry holds the connection's only valid refresh token. Refused by
        Zoom: InvalidCredential (field ``refresh_token``) and nothing is stored."""
        oauth_apps.check_secret("refresh_token", refresh_token)
        grant = functools.partial(oauth.refresh_user_token, refresh_token=refresh_token)
        return self._add_user(name, app, "refresh_token", grant)

    def register_user_authorization(
        self, *, account: str, code: str, redirect_uri: str, app: str | None = None
    ) -> CredentialInfo:
        """Register ``account`` from an OAuth callback: exchange its authorization ``code``
        (with the ``redirect_uri`` the user was sent through) for the user's tokens. ``app``
        may be left out when one app is registered. Nothing is stored if Zoom refuses."""
        oauth_apps.check_secret("code", code)
        parts = urllib.parse.urlsplit(redirect_uri)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise errors.InvalidCredential("redirect_uri", "an absolute http(s) URL is required")
        grant = functools.partial(oauth.exchange_code, code=code, redirect_uri=redirect_uri)
        return self._add_user(account, app, "code", grant)

    def _add_user(
        self,
        name: str,
        app_name: str | None,
        field: str,
        grant: Callable[..., oauth.TokenGrant],
    ) -> CredentialInfo:
        oauth_apps.check_name(name)
        with self._storing() as session:
            app = oauth_apps.find(session, app_name)
            row = Credential(
                name=name, kind=USER, app_id=app.id, account_id="", client_id=app.client_id
            )
            # Inserted (and so locked) before Zoom is asked: a taken name never costs the code.
            oauth_apps.insert(session, row)
            requested_at = session.scalars(select(func.clock_timestamp())).one()
            started = time.monotonic()
            try:
                granted = grant(
                    self._http,
                    self._settings.ZOOM_OAUTH_URL,
                    client_id=app.client_id,
                    client_secret=oauth_apps.secret(self._settings, app),
                    timeout_s=self._settings.ZOOM_TOKEN_REQUEST_TIMEOUT,
                )
            except errors.GrantRefused as exc:
                raise errors.InvalidCredential(field, f"Zoom refused it: {exc.describe()}") from exc
            token_budget.TokenBudget(self._settings).record(
                session, row.id, requested_at, "authorize", None, time.monotonic() - started
            )
            # The user's Zoom account: its rate limits and daily counts are shared with every
            # other credential of that account (worker.accounts); "" when Zoom does not say.
            row.account_id = self._user_account_id(granted.token) or ""
            grants = token_grants.Grants(
                name, USER, row.account_id, app.client_id, row.id, self._settings
            )
            grants.store(row, granted, requested_at)
        return self._must_get(name)

    def _user_account_id(self, token: oauth.AccessToken) -> str | None:
        settings = self._settings
        account_id = oauth.user_account_id(
            self._http, settings.ZOOM_API_URL, token, timeout_s=settings.ZOOM_HTTP_TIMEOUT
        )
        if account_id is None:
            log.warning("credentials.account_unknown Zoom did not say the user's account")
        return account_id

    # -- any registered credential ----------------------------------------------------------

    def disable(self, name: str) -> CredentialInfo:
        """Stop using a credential (no token is asked for it) until :meth:`enable`."""
        self._set_status(name, DISABLED, "disabled by an operator (zoom-worker credentials)")
        return self._must_get(name)

    def enable(self, name: str) -> CredentialInfo:
        """Use a disabled credential again."""
        self._set_status(name, ACTIVE, None)
        return self._must_get(name)

    def remove(self, name: str) -> None:
        """Forget a registered credential, its token and its token-request records."""
        with self._writing() as session:
            self._locked(session, name)
            session.execute(delete(Credential).where(Credential.name == name))

    def probe(self, name: str) -> ProbeResult:
        """Fetch a token for ``name`` (a due probe if its circuit is open) and make one light
        call with it; Zoom accepting it closes the circuit."""
        store = token_store.TokenStore(
            self._settings, self._sessions, http=self._http, credential=name
        )
        client = zoom.ZoomClient(self._settings.ZOOM_API_URL, zoom.ZoomAuth(store), timeout_s=15)
        try:
            # Meeting 0 never exists: "not found" proves the token is accepted.
            client.get_meeting(0)
        except (errors.RateLimited, errors.ZoomClientError):
            return ProbeResult(True, "Zoom accepts the credential")
        except errors.ZoomWorkerError as exc:
            detail = exc.describe() if isinstance(exc, errors.ZoomError) else str(exc)
            return ProbeResult(False, detail)
        finally:
            client.close()
        return ProbeResult(True, "Zoom accepts the credential")

    # -- apps -------------------------------------------------------------------------------

    def add_app(
        self,
        name: str,
        *,
        client_id: str,
        client_secret: str,
        webhook_secret_token: str | None = None,
    ) -> oauth_apps.AppInfo:
        """Register an OAuth app that users connect through; its secrets are held once."""
        with self._storing() as session:
            return oauth_apps.add(
                session, self._settings, name, client_id, client_secret, webhook_secret_token
            )

    def list_apps(self) -> list[oauth_apps.AppInfo]:
        """The registered OAuth apps, by name."""
        with self._sessions() as session:
            return oauth_apps.list_all(session)

    def rotate_app(
        self,
        name: str,
        *,
        client_secret: str | None = None,
        webhook_secret_token: str | None = None,
    ) -> oauth_apps.AppInfo:
        """Replace an app's client secret and/or webhook secret token; a new client secret
        makes its users' circuits probe at once."""
        if client_secret is None and webhook_secret_token is None:
            raise errors.InvalidCredential("client_secret", "give a new secret to rotate")
        for field, value in (
            ("client_secret", client_secret),
            ("webhook_secret_token", webhook_secret_token),
        ):
            if value is not None:
                oauth_apps.check_secret(field, value)
        with self._storing() as session:
            app = oauth_apps.find(session, name, lock=True)
            oauth_apps.seal(self._settings, app, client_secret, webhook_secret_token)
            app.updated_at = func.now()
            if client_secret is not None:
                session.execute(
                    update(Credential)
                    .where(Credential.app_id == app.id)
                    .values(secret_version=Credential.secret_version + 1)
                )
            session.flush()
            return oauth_apps.info(app)

    # -- internals --------------------------------------------------------------------------

    def _default(self) -> CredentialInfo:
        account_id, client_id = self._settings.require_credentials()
        return CredentialInfo(
            DEFAULT_CREDENTIAL, S2S, account_id, client_id, None, ACTIVE, None, None
        )

    def _cipher(self, table: str, row_id: int, column: str) -> token_cipher.TokenCipher:
        return token_cipher.TokenCipher.for_row(self._settings, table, row_id, column)

    def _set_status(self, name: str, status: str, reason: str | None) -> None:
        with self._writing() as session:
            row = self._locked(session, name)
            row.status, row.status_reason = status, reason
            row.status_changed_at = func.now()

    def _must_get(self, name: str) -> CredentialInfo:
        found = self.get(name)
        assert found is not None
        return found

    @staticmethod
    def _locked(session: Session, name: str) -> Credential:
        if name == DEFAULT_CREDENTIAL:
            raise errors.InvalidCredential(
                "name", "the default credential comes from the environment (ZOOM_CLIENT_SECRET)"
            )
        row = session.scalars(
            select(Credential).where(Credential.name == name).with_for_update()
        ).one_or_none()
        if row is None:
            raise errors.InvalidCredential("name", f"no credential is named {name!r}")
        return row

    @contextmanager
    def _storing(self) -> Iterator[Session]:
        """A transaction that will store a secret: the encryption key is checked first."""
        token_cipher.require_key(self._settings)
        with self._writing() as session:
            yield session

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        with db.unavailable_as_infrastructure(), self._sessions() as session, session.begin():
            yield session


def check_limits(plan: str | None, rate_limits: str | None) -> None:
    """Refuse (InvalidCredential naming the field) a bad plan or per-second limits."""
    try:
        accounts.limits_of(plan, None)
    except ValueError as exc:
        raise errors.InvalidCredential("plan", str(exc)) from None
    if rate_limits:
        try:
            accounts.limits_of(None, rate_limits)
        except ValueError as exc:
            raise errors.InvalidCredential("rate_limits", str(exc)) from None


def _new_secret_version(row: Credential) -> None:
    # A new secret: the circuit probes at once, and no token of the old one is kept.
    row.secret_version += 1
    row.token_ciphertext = row.token_sha256 = row.token_expires_at = None
