"""Settings: defaults that work on one machine, and errors that name the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker import errors
from worker.celery_app import celery_config
from worker.config import PLAN_RATE_LIMITS, load_settings, parse_rate_limits


def test_settings__defaults__match_the_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DATABASE_URL",
        "CELERY_BROKER_URL",
        "ZOOM_API_URL",
        "ZOOM_OAUTH_URL",
        "ZOOM_PLAN",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.DATABASE_URL == "postgresql+psycopg://postgres@127.0.0.1:5432/zoom_worker"
    assert settings.CELERY_BROKER_URL == "redis://127.0.0.1:6379/0"
    assert settings.ZOOM_API_URL == "https://api.zoom.us/v2"
    assert settings.ZOOM_TOKEN_REFRESH_MARGIN == 60
    assert settings.JOB_LEASE_SECONDS == 300
    assert settings.rate_limits == PLAN_RATE_LIMITS["pro"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ZOOM_TOKEN_REFRESH_MARGIN", "soon"),
        ("ZOOM_PLAN", "enterprise-deluxe"),
        ("JOB_LEASE_SECONDS", "-1"),
        ("ZOOM_RATE_LIMITS", "light=lots"),
        ("ZOOM_RATE_LIMITS", "ultra=3"),
    ],
)
def test_settings__invalid_value__error_names_variable_not_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    monkeypatch.setenv("ZOOM_CLIENT_SECRET", "do-not-echo-me")
    with pytest.raises(errors.ConfigurationError) as caught:
        load_settings()
    assert caught.value.setting == name
    assert str(caught.value).startswith(name)
    assert "do-not-echo-me" not in str(caught.value)


def test_settings__rate_limits_override_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOOM_PLAN", "free")
    monkeypatch.setenv("ZOOM_RATE_LIMITS", "heavy=10")
    assert load_settings().rate_limits == {"light": 4, "medium": 2, "heavy": 10}


def test_parse_rate_limits__all_categories() -> None:
    assert parse_rate_limits("light=30, medium=20,heavy=10") == {
        "light": 30,
        "medium": 20,
        "heavy": 10,
    }


def test_settings__missing_credentials__named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "ZOOM_ACCOUNT_ID",
        "ZOOM_CLIENT_ID",
        "ZOOM_CLIENT_SECRET",
        "ZOOM_CLIENT_SECRET_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ZOOM_ACCOUNT_ID", "acc")
    with pytest.raises(errors.ConfigurationError) as caught:
        load_settings().require_credentials()
    assert caught.value.setting == "ZOOM_CLIENT_ID"


def test_settings__backoff_above_visibility_timeout__refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RETRY_BACKOFF_MAX", "7200")
    with pytest.raises(errors.ConfigurationError) as caught:
        load_settings()
    assert "CELERY_VISIBILITY_TIMEOUT" in str(caught.value)


def test_worker__credential_half_set__refuses_to_start_naming_variable() -> None:
    # None of the three set is a fleet of registered credentials (test_accounts_fleet); some
    # of them set is a mistake, named.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOOM_")}
    env["ZOOM_ACCOUNT_ID"] = ""
    env["ZOOM_CLIENT_ID"] = "the-client-id"
    result = _start_worker(env)
    assert result.returncode != 0
    assert "invalid configuration: ZOOM_ACCOUNT_ID: is not set" in result.stderr


@pytest.mark.parametrize("name", ["ZOOM_OAUTH_URL", "ZOOM_API_URL"])
def test_settings__http_zoom_url_on_network_host__refused_naming_variable(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "http://zoom.example.com/oauth/token")
    monkeypatch.setenv("ZOOM_CLIENT_SECRET", "do-not-echo-me")
    monkeypatch.delenv("ZOOM_ALLOW_INSECURE_URLS", raising=False)
    with pytest.raises(errors.ConfigurationError) as caught:
        load_settings()
    assert caught.value.setting == name
    assert str(caught.value).startswith(f"{name}: must be an https:// URL")
    assert "do-not-echo-me" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "allow", "accepted"),
    [
        ("https://zoom.us/oauth/token", "false", True),
        ("http://127.0.0.1:9900/oauth/token", "false", True),
        ("http://[::1]:9900/oauth/token", "false", True),
        ("http://localhost:9900/oauth/token", "false", True),
        ("http://simulator:9900/oauth/token", "false", False),
        ("http://simulator:9900/oauth/token", "true", True),
        ("ftp://zoom.us/oauth/token", "true", False),
        ("zoom.us/oauth/token", "false", False),
    ],
)
def test_settings__zoom_url_schemes__https_or_loopback_or_allowed(
    monkeypatch: pytest.MonkeyPatch, url: str, allow: str, accepted: bool
) -> None:
    monkeypatch.setenv("ZOOM_OAUTH_URL", url)
    monkeypatch.setenv("ZOOM_ALLOW_INSECURE_URLS", allow)
    if accepted:
        settings = load_settings()
        assert url == settings.ZOOM_OAUTH_URL
    else:
        with pytest.raises(errors.ConfigurationError, match=r"^ZOOM_OAUTH_URL: "):
            load_settings()


def test_worker__http_oauth_url_on_network_host__refuses_to_start_naming_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOOM_")}
    env.update(
        ZOOM_ACCOUNT_ID="acc",
        ZOOM_CLIENT_ID="client",
        ZOOM_CLIENT_SECRET="do-not-echo-me",
        ZOOM_OAUTH_URL="http://zoom.example.com/oauth/token",
    )
    result = _start_worker(env)
    assert result.returncode != 0
    # Celery reads the settings while parsing its options, before worker_init: the process
    # still ends with one line naming the variable, not a traceback.
    assert result.stderr.strip().splitlines() == [
        "zoom-worker: invalid configuration: ZOOM_OAUTH_URL: must be an https:// URL: "
        "http:// is accepted only for a loopback host, or with ZOOM_ALLOW_INSECURE_URLS=true "
        "(a simulator on a private network)"
    ]
    assert "do-not-echo-me" not in result.stderr + result.stdout


def _start_worker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `celery -A worker worker` with ``env`` until it exits (an invalid setting ends it)."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--concurrency", "1"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_celery_config__task_events_off__neither_workers_nor_producers_send_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert celery_config(load_settings())["worker_send_task_events"], "on by default (Flower)"
    monkeypatch.setenv("CELERY_TASK_EVENTS", "false")

    config = celery_config(load_settings())

    assert not config["worker_send_task_events"] and not config["task_send_sent_event"]
