"""The credential registry: named S2S credentials and users' connections, their secrets
encrypted under a required key, one refresh of a user's rotating refresh token for many
processes, "needs re-authorization" without a retry loop, and rotation that probes at once."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from token_parts import close_opened  # noqa: F401 - the autouse fixture, by import

from worker import accounts, credentials, db, errors, oauth, token_cipher, token_store
from worker.config import get_settings
from worker.models import App, Credential, TokenRequest
from worker.simulator import RunningSimulator, SimulatorClient

APP_CLIENT, APP_SECRET = "general-client", "general-secret-value"
REDIRECT = "https://app.example.com/zoom/callback"
pytestmark = pytest.mark.usefixtures("env")


@pytest.fixture
def general_app(keyed: dict[str, str], sim: RunningSimulator) -> str:
    """A "General" OAuth app known to the simulator and registered here."""
    sim.simulator.configure(oauth_apps={APP_CLIENT: APP_SECRET})
    with _registry() as registry:
        registry.add_app("general", client_id=APP_CLIENT, client_secret=APP_SECRET)
    return "general"


def _registry() -> credentials.Registry:
    settings = get_settings()
    return credentials.Registry(settings, db.sessions(settings))


def _connect(sim_client: SimulatorClient, name: str, user: str) -> credentials.CredentialInfo:
    code = sim_client.authorize_user(APP_CLIENT, user, REDIRECT)
    return credentials.register_user_authorization(account=name, code=code, redirect_uri=REDIRECT)


def _forget_access_token(name: str) -> None:
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(
            text("UPDATE credentials SET token_ciphertext = NULL WHERE name = :n"), {"n": name}
        )
    token_store.forget_process_tokens()


def _row(name: str) -> Credential:
    with db.sessions(get_settings())() as session:
        return session.scalars(select(Credential).where(Credential.name == name)).one()


# -- users' connections: one refresh for many processes ----------------------------------------


def _child_user_token(
    env: dict[str, str], name: str, ready: Any, rounds: list[Any], out: Any
) -> None:
    os.environ.update(env)
    store = token_store.TokenStore(get_settings(), db.sessions(get_settings()), credential=name)
    ready.put(os.getpid())
    try:
        for start in rounds:
            start.wait(90)
            token_store.forget_process_tokens()
            try:
                out.put(store.get().value[-8:])
            except errors.ZoomWorkerError as exc:
                out.put(f"error: {type(exc).__name__}")
    finally:
        store.close()


@pytest.fixture
def mp() -> Iterator[Any]:
    with multiprocessing.get_context("spawn").Manager() as manager:
        yield manager


@pytest.mark.timeout(300)  # twelve spawned interpreters: slow on a loaded machine
def test_user_token__twelve_processes__one_refresh_and_still_valid(
    keyed: dict[str, str], general_app: str, sim_client: SimulatorClient, mp: Any
) -> None:
    _connect(sim_client, "alice", "alice@example.com")
    ready, rounds, out = mp.Queue(), [mp.Event(), mp.Event()], mp.Queue()
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(target=_child_user_token, args=(keyed, "alice", ready, rounds, out))
        for _ in range(12)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:  # every process has started and built its store: then all at once
        ready.get(timeout=240)
    tails = []
    for start in rounds:  # twice: the refresh token kept by the first round must work
        _forget_access_token("alice")
        start.set()
        tails.append({out.get(timeout=90) for _ in procs})
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0

    for got in tails:
        assert len(got) == 1 and not next(iter(got)).startswith("error"), got
    assert tails[0] != tails[1]
    stats = sim_client.stats()
    assert stats["grants"] == {"authorization_code": 1, "refresh_token": 2}
    assert stats["token_errors"] == 0, "a refresh token was spent twice"
    assert _row("alice").status == "active"


def test_user_token__refresh_refused__marked_once_no_loop(
    general_app: str, sim_client: SimulatorClient
) -> None:
    _connect(sim_client, "bob", "bob@example.com")
    _forget_access_token("bob")
    sim_client.revoke_user("bob@example.com")
    store = token_store.TokenStore(get_settings(), db.sessions(get_settings()), credential="bob")

    for _ in range(3):
        with pytest.raises(errors.CredentialUnavailable) as caught:
            store.get()
        assert caught.value.status == "needs_reauthorization"
    store.close()

    stats = sim_client.stats()
    assert stats["token_errors"] == 1, "one refused refresh, then no more requests"
    info = credentials.get("bob")
    assert info is not None and info.status == "needs_reauthorization"
    assert info.status_reason and "authorize" in info.status_reason
    assert _row("bob").refresh_token_ciphertext is None


def test_user_token__zoom_invalid_request_style__also_needs_reauthorization(
    general_app: str, sim_client: SimulatorClient
) -> None:
    sim_client.configure(grant_error_style="invalid_request")
    _connect(sim_client, "carol", "carol@example.com")
    _forget_access_token("carol")
    sim_client.revoke_user("carol@example.com")
    store = token_store.TokenStore(get_settings(), db.sessions(get_settings()), credential="carol")

    with pytest.raises(errors.CredentialUnavailable):
        store.get()
    store.close()

    assert sim_client.stats()["token_errors"] == 1


def test_register_user_authorization__code_refused__nothing_stored(
    general_app: str, sim_client: SimulatorClient
) -> None:
    code = sim_client.authorize_user(APP_CLIENT, "dan@example.com", REDIRECT)
    credentials.register_user_authorization(account="dan", code=code, redirect_uri=REDIRECT)

    with pytest.raises(errors.InvalidCredential) as caught:  # a code is single use
        credentials.register_user_authorization(account="dan2", code=code, redirect_uri=REDIRECT)

    assert caught.value.field == "code"
    assert credentials.get("dan2") is None
    assert [c.name for c in credentials.list_credentials()] == ["default", "dan"]


def test_register_user_authorization__learns_the_users_account__shares_its_governor(
    general_app: str, sim_client: SimulatorClient
) -> None:
    # Two users of one customer's Zoom account, and that account's own S2S app: Zoom's
    # per-second limits and daily counts are the account's, so all three share them.
    for user in ("fay", "gus"):
        code = sim_client.authorize_user(APP_CLIENT, f"{user}@example.com", REDIRECT, "cust-acc")
        credentials.register_user_authorization(account=user, code=code, redirect_uri=REDIRECT)
    credentials.add_s2s("cust", account_id="cust-acc", client_id="c", client_secret="s")

    assert {_row(name).account_id for name in ("fay", "gus", "cust")} == {"cust-acc"}
    namespaces = {
        accounts.namespace_of(_row(n).account_id, get_settings()) for n in ("fay", "cust")
    }
    assert len(namespaces) == 1


def test_add_user__from_refresh_token__spends_it_and_keeps_the_new_one(
    general_app: str, sim_client: SimulatorClient
) -> None:
    # A refresh token the application holds: obtained here through a code, then handed over.
    code = sim_client.authorize_user(APP_CLIENT, "erin@example.com", REDIRECT)
    settings = get_settings()
    with httpx.Client() as http:
        grant = oauth.exchange_code(
            http,
            settings.ZOOM_OAUTH_URL,
            client_id=APP_CLIENT,
            client_secret=APP_SECRET,
            code=code,
            redirect_uri=REDIRECT,
            timeout_s=5,
        )
    assert grant.refresh_token is not None

    info = credentials.add_user("erin", app="general", refresh_token=grant.refresh_token)

    assert info.kind == "user" and info.app == "general" and info.status == "active"
    with pytest.raises(errors.InvalidCredential) as caught:  # the old one is spent now
        credentials.add_user("erin2", app="general", refresh_token=grant.refresh_token)
    assert caught.value.field == "refresh_token"
    _forget_access_token("erin")
    store = token_store.TokenStore(settings, db.sessions(settings), credential="erin")
    assert store.get().seconds_left() > 0
    store.close()


# -- S2S credentials, encryption, rotation -----------------------------------------------------


def test_add_s2s__without_encryption_key__refused_naming_it_nothing_stored(
    env: dict[str, str],
) -> None:
    with pytest.raises(errors.ConfigurationError) as caught:
        credentials.add_s2s("acme", account_id="a", client_id="c", client_secret="s3cret")

    assert caught.value.setting == "TOKEN_ENCRYPTION_KEY"
    assert "s3cret" not in str(caught.value)
    assert credentials.get("acme") is None


def test_add_s2s__secret_encrypted_and_bound_to_its_row(keyed: dict[str, str]) -> None:
    credentials.add_s2s("acme", account_id="acc-1", client_id="cli-1", client_secret="s3cret-x")
    credentials.add_s2s("beta", account_id="acc-2", client_id="cli-2", client_secret="s3cret-y")

    acme, beta = _row("acme"), _row("beta")
    assert acme.secret_ciphertext and b"s3cret" not in acme.secret_ciphertext
    # A ciphertext moved to another row does not decrypt there.
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(
            text("UPDATE credentials SET secret_ciphertext = :c WHERE name = 'beta'"),
            {"c": acme.secret_ciphertext},
        )
    cipher = token_cipher.TokenCipher.for_row(get_settings(), "credentials", beta.id, "secret")
    assert cipher.decrypt(acme.secret_ciphertext) is None


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("name", {"name": "default"}),
        ("name", {"name": "bad name"}),
        ("account_id", {"account_id": ""}),
        ("client_id", {"client_id": "has space"}),
        ("client_secret", {"client_secret": "  "}),
    ],
)
def test_add_s2s__bad_input__names_the_field(
    keyed: dict[str, str], field: str, kwargs: dict[str, str]
) -> None:
    args = {"name": "acme", "account_id": "a", "client_id": "c", "client_secret": "s"} | kwargs

    with pytest.raises(errors.InvalidCredential) as caught:
        credentials.add_s2s(
            args["name"],
            account_id=args["account_id"],
            client_id=args["client_id"],
            client_secret=args["client_secret"],
        )

    assert caught.value.field == field
    assert [c.name for c in credentials.list_credentials()] == ["default"]


def test_add_s2s__name_taken__refused(keyed: dict[str, str]) -> None:
    credentials.add_s2s("acme", account_id="a", client_id="c", client_secret="s")

    with pytest.raises(errors.InvalidCredential) as caught:
        credentials.add_s2s("acme", account_id="b", client_id="d", client_secret="t")

    assert caught.value.field == "name"


def _acme(sim_client: SimulatorClient, secret: str, zoom_secret: str | None = None) -> None:
    """Register "acme" with ``secret``; the simulator's account knows ``zoom_secret``."""
    client = {"account_id": "acme-acc", "client_secret": zoom_secret or secret}
    sim_client.configure(s2s_clients={"acme-client": client})
    credentials.add_s2s(
        "acme", account_id="acme-acc", client_id="acme-client", client_secret=secret
    )


def test_s2s_credential__own_account__own_token_and_budget(
    keyed: dict[str, str], sim_client: SimulatorClient
) -> None:
    _acme(sim_client, "acme-secret")
    settings = get_settings()
    acme = token_store.TokenStore(settings, db.sessions(settings), credential="acme")
    default = token_store.TokenStore(settings, db.sessions(settings))

    assert acme.get().value != default.get().value
    assert acme.status().requests_last_hour == 1 and default.status().requests_last_hour == 1
    assert sim_client.stats()["tokens_by_client"] == {"acme-client": 1, "sim-client": 1}
    acme.close()
    default.close()


def test_rotate__refused_credential__probes_at_once_and_closes_circuit(
    keyed: dict[str, str], sim_client: SimulatorClient
) -> None:
    _acme(sim_client, "old-secret", zoom_secret="new-secret")  # rotated in Zoom meanwhile
    settings = get_settings()
    store = token_store.TokenStore(settings, db.sessions(settings), credential="acme")
    with pytest.raises(errors.CircuitOpen) as opened:
        store.get()
    assert "credentials rotate acme" in opened.value.reason
    store.close()

    result = credentials.rotate("acme", "new-secret")

    assert result.ok, result.detail
    assert _row("acme").circuit_state == "closed"


def test_disable_then_remove__no_token_then_gone(keyed: dict[str, str]) -> None:
    credentials.add_s2s("acme", account_id="a", client_id="c", client_secret="s")

    credentials.disable("acme")
    settings = get_settings()
    store = token_store.TokenStore(settings, db.sessions(settings), credential="acme")
    with pytest.raises(errors.CredentialUnavailable) as caught:
        store.get()
    store.close()
    assert caught.value.status == "disabled"
    credentials.remove("acme")

    assert credentials.get("acme") is None
    with db.sessions(settings)() as session:
        assert session.scalars(select(TokenRequest)).all() == []
        assert session.scalars(select(App)).all() == []
    with pytest.raises(errors.InvalidCredential):
        token_store.TokenStore(settings, db.sessions(settings), credential="acme")
