"""The compose files: Zoom's own URLs unless the demo is asked for, ports on loopback, and the
demo simulator's control API closed to anyone without its token."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from addresses import non_loopback_address

from worker import dashboard
from worker.config import Settings
from worker.simulator import SimulatorClient, start_simulator

ROOT = Path(__file__).resolve().parent.parent
BASE = ("-f", "docker-compose.yml")
DEMO = (*BASE, "-f", "docker-compose.demo.yml")
ZOOM_SERVICES = ("migrate", "worker", "beat", "flower")
REAL = {
    "ZOOM_ACCOUNT_ID": "real-account",
    "ZOOM_CLIENT_ID": "real-client",
    "ZOOM_CLIENT_SECRET": "real-secret-not-for-the-simulator",
}

needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (.ci/run installs Debian's)",
)


def _config(files: tuple[str, ...], **variables: str) -> dict[str, Any]:
    """``docker-compose config`` for these files, with only these variables set."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    env |= {"FLOWER_BASIC_AUTH": "ops:pw", **variables}
    result = subprocess.run(
        ["docker-compose", *files, "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Not result.stdout: with real credentials it holds the secret.
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def _published(config: dict[str, Any]) -> list[str]:
    """Every published port as ``host_ip:published`` (Compose v1 prints strings, v2 maps)."""
    ports = [port for service in config["services"].values() for port in service.get("ports", [])]
    return [
        f"{port.get('host_ip', '')}:{port['published']}" if isinstance(port, dict) else port
        for port in ports
    ]


@needs_compose
def test_compose__real_credentials_no_urls__zoom_urls_and_no_simulator() -> None:
    config = _config(BASE, **REAL)

    assert "simulator" not in config["services"]
    for name in ZOOM_SERVICES:
        environment = config["services"][name]["environment"]
        assert environment["ZOOM_API_URL"] == "https://api.zoom.us/v2", name
        assert environment["ZOOM_OAUTH_URL"] == "https://zoom.us/oauth/token", name
        assert environment["ZOOM_CLIENT_SECRET"] == REAL["ZOOM_CLIENT_SECRET"], name
        assert "ZOOM_ALLOW_INSECURE_URLS" not in environment, name


@needs_compose
def test_compose__demo_file__simulator_urls_and_its_own_credentials() -> None:
    config = _config(DEMO, **REAL)  # a real secret in the shell must not reach the simulator

    assert "simulator" in config["services"]
    for name in ZOOM_SERVICES:
        environment = config["services"][name]["environment"]
        assert environment["ZOOM_API_URL"] == "http://simulator:9900/v2", name
        assert environment["ZOOM_OAUTH_URL"] == "http://simulator:9900/oauth/token", name
        assert environment["ZOOM_CLIENT_SECRET"] == "sim-secret", name
        assert environment["ZOOM_ALLOW_INSECURE_URLS"] == "true", name
    assert "simulator" in config["services"]["worker"]["depends_on"]


@needs_compose
@pytest.mark.parametrize("files", [BASE, DEMO], ids=["zoom", "demo"])
def test_compose__published_ports__loopback_unless_opened(files: tuple[str, ...]) -> None:
    default = _published(_config(files))
    opened = _published(_config(files, PUBLISH_HOST="0.0.0.0"))

    assert default and all(port.startswith("127.0.0.1:") for port in default), default
    assert all(port.startswith("0.0.0.0:") for port in opened), opened


PROFILES = (*BASE, "--profile", "monitoring", "--profile", "rabbitmq")


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Target -> host source of a service's bind mounts (Compose v1 prints strings, v2 maps)."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found[volume["target"]] = volume["source"]
        else:
            source, target = volume.split(":")[:2]
            found[target] = source
    return found


@needs_compose
def test_compose__monitoring_and_rabbitmq_profiles__accepted_and_wired() -> None:
    config = _config(PROFILES)
    services = config["services"]

    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    assert services["rabbitmq"]["profiles"] == ["rabbitmq"]
    prometheus = _mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"]
    grafana = _mounts(services["grafana"])
    for source in (prometheus, *grafana.values()):
        assert Path(ROOT, source).exists(), source
    assert Path(grafana["/var/lib/grafana/dashboards/zoom-worker.json"]).name == "zoom-worker.json"
    assert all(port.startswith("127.0.0.1:") for port in _published(config))
    for name in ZOOM_SERVICES:  # the broker stays Redis unless CELERY_BROKER_URL says otherwise
        assert services[name]["environment"]["CELERY_BROKER_URL"] == "redis://redis:6379/0"


def test_monitoring_files__prometheus_scrapes_the_workers_grafana_loads_the_dashboard() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/zoom-worker.yml").read_text()
    )

    (job,) = prometheus["scrape_configs"]
    (target,) = job["dns_sd_configs"]
    assert target["names"] == ["worker"] and "worker" in compose["services"]
    assert target["port"] == Settings.model_fields["METRICS_PORT"].default
    (source,) = datasource["datasources"]
    assert source["uid"] == dashboard.DATASOURCE_UID
    assert source["url"] == "http://prometheus:9090"
    mounted = [v.split(":")[1] for v in compose["services"]["grafana"]["volumes"]]
    dashboards = provider["providers"][0]["options"]["path"]
    assert f"{dashboards}/zoom-worker.json" in mounted


def test_simulator__control_token__required_on_control_api_only() -> None:
    with start_simulator(control_token="demo-token") as sim:
        anonymous = httpx.post(f"{sim.url}/_sim/reset", timeout=10)
        wrong = httpx.get(f"{sim.url}/_sim/stats", headers={"X-Sim-Control-Token": "x"}, timeout=10)
        token = httpx.post(
            sim.oauth_url,
            params={"grant_type": "account_credentials", "account_id": "sim-account"},
            auth=("sim-client", "sim-secret"),
            timeout=10,
        )
        with SimulatorClient(sim.url, control_token="demo-token") as client:
            stats = client.stats()

    assert anonymous.status_code == 403 and wrong.status_code == 403
    assert "demo-token" not in anonymous.text
    assert stats["api_calls"] == 0
    assert token.status_code != 403, "Zoom's side is not behind the control token"


def test_simulator__no_control_token__control_api_loopback_only() -> None:
    address = non_loopback_address()
    with start_simulator(host="0.0.0.0") as sim:
        port = sim.url.rsplit(":", 1)[1]
        remote = httpx.get(f"http://{address}:{port}/_sim/stats", timeout=10)
        remote_api = httpx.get(f"http://{address}:{port}/v2/meetings/1", timeout=10)
        local = httpx.get(f"http://127.0.0.1:{port}/_sim/stats", timeout=10)

    assert remote.status_code == 403
    assert remote_api.status_code == 401, "the API answers as Zoom would: no token, 401"
    assert local.status_code == 200
