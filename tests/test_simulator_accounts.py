"""The simulator's several accounts (each S2S client its own account, limits and daily counts)
and a "General" app's user OAuth: single-use codes and rotating, single-use refresh tokens."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from worker.simulator import RunningSimulator, SimulatorClient, SimulatorConfig, start_simulator

GENERAL = ("general-client", "general-secret")
REDIRECT = "https://app.example.com/cb"
ACME = {"acme-client": {"account_id": "acme-acc", "client_secret": "acme-secret"}}


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    config = SimulatorConfig(oauth_apps={GENERAL[0]: GENERAL[1]}, s2s_clients=ACME)
    with start_simulator(config) as running:
        yield running


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, verify=False) as client:
        yield client


@pytest.fixture
def control(sim: RunningSimulator) -> Iterator[SimulatorClient]:
    with SimulatorClient(sim.url) as client:
        yield client


def _grant(http: httpx.Client, sim: RunningSimulator, **form: str) -> httpx.Response:
    return http.post(sim.oauth_url, auth=GENERAL, data=form)


def _s2s(http: httpx.Client, sim: RunningSimulator, client: str, secret: str, account: str) -> str:
    form = {"grant_type": "account_credentials", "account_id": account}
    response = http.post(sim.oauth_url, auth=(client, secret), data=form)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _get(http: httpx.Client, sim: RunningSimulator, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return http.get(f"{sim.api_url}/meetings/1", headers=headers).status_code


def test_simulator__refresh_token__rotates_and_spending_one_twice_is_invalid_grant(
    http: httpx.Client, sim: RunningSimulator, control: SimulatorClient
) -> None:
    code = control.authorize_user(GENERAL[0], "alice@example.com", REDIRECT)
    first = _grant(http, sim, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)
    again = _grant(http, sim, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)
    refresh = first.json()["refresh_token"]
    rotated = _grant(http, sim, grant_type="refresh_token", refresh_token=refresh)
    spent_twice = _grant(http, sim, grant_type="refresh_token", refresh_token=refresh)
    latest = _grant(
        http, sim, grant_type="refresh_token", refresh_token=rotated.json()["refresh_token"]
    )

    assert first.status_code == 200 and _get(http, sim, first.json()["access_token"]) == 404
    assert again.status_code == 400, "an authorization code is single use"
    assert rotated.status_code == 200 and rotated.json()["refresh_token"] != refresh
    assert spent_twice.status_code == 400
    assert spent_twice.json() == {"reason": "Invalid Token!", "error": "invalid_grant"}
    assert latest.status_code == 200, "the latest refresh token still works"


def test_simulator__code_with_another_redirect_uri__refused(
    http: httpx.Client, sim: RunningSimulator, control: SimulatorClient
) -> None:
    code = control.authorize_user(GENERAL[0], "bob@example.com", REDIRECT)

    response = _grant(
        http, sim, grant_type="authorization_code", code=code, redirect_uri=REDIRECT + "x"
    )

    assert response.status_code == 400
    assert response.json()["reason"] == "Redirect URI mismatch."


def test_simulator__revoked_user__refresh_invalid_request_style(
    http: httpx.Client, sim: RunningSimulator, control: SimulatorClient
) -> None:
    control.configure(grant_error_style="invalid_request")
    code = control.authorize_user(GENERAL[0], "carol@example.com", REDIRECT)
    granted = _grant(http, sim, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)

    assert control.revoke_user("carol@example.com") == 1
    response = _grant(
        http, sim, grant_type="refresh_token", refresh_token=granted.json()["refresh_token"]
    )

    assert response.json() == {"reason": "Invalid Token!", "error": "invalid_request"}


def test_simulator__two_accounts__own_rate_limits_daily_counts_and_refusal(
    http: httpx.Client, sim: RunningSimulator, control: SimulatorClient
) -> None:
    control.configure(account_rate_limits={"acme-acc": {"light": 3}}, daily_create_limit=1)
    main = _s2s(http, sim, "sim-client", "sim-secret", "sim-account")
    acme = _s2s(http, sim, "acme-client", "acme-secret", "acme-acc")
    wrong = http.post(
        sim.oauth_url,
        auth=("acme-client", "acme-secret"),
        data={"grant_type": "account_credentials", "account_id": "sim-account"},
    )

    creates = [
        http.post(
            f"{sim.api_url}/users/host@example.com/meetings",
            headers={"Authorization": f"Bearer {t}"},
            json={"topic": "t"},
        ).status_code
        for t in (main, acme)
    ]
    acme_calls = [_get(http, sim, acme) for _ in range(8)]
    main_calls = [_get(http, sim, main) for _ in range(8)]
    control.configure(refused_accounts=["acme-acc"])
    refused = (_get(http, sim, acme), _get(http, sim, main))

    assert wrong.status_code == 400 and wrong.json()["code"] == 4704
    assert acme_calls[:2] == [404, 404] and 429 in acme_calls
    assert main_calls == [404] * 8, "another account's limits are its own"
    assert creates == [201, 201], "daily counts are per account"
    assert refused == (401, 404)
    stats = control.stats()
    assert stats["tokens_by_client"] == {"sim-client": 1, "acme-client": 1}
    assert stats["accounts"]["acme-acc"]["max_calls_per_second"]["light"] == 3
