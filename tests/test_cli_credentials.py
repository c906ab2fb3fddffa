"""`zoom-worker credentials ...` and `apps ...`: the registry on the command line, with no
secret or token ever printed, bad input refused naming the field, and `token` per credential."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result
from conftest import ENCRYPTION_KEY

from worker.cli import cli
from worker.simulator import SimulatorClient

SECRET, NEW_SECRET = "acme-secret-1f2e3d", "acme-secret-rotated-9a8b"
APP_SECRET, WEBHOOK_TOKEN = "app-secret-77aa", "webhook-token-55cc"


def _fields(output: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in output.splitlines() if line.strip())


def _invoke(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=stdin, catch_exceptions=False)


def test_credentials_cli__add_list_show_rotate_disable_remove__no_secret_printed(
    keyed: dict[str, str], sim_client: SimulatorClient, tmp_path: Path
) -> None:
    sim_client.configure(
        s2s_clients={"acme-client": {"account_id": "acme-acc", "client_secret": SECRET}}
    )
    new_secret_file = tmp_path / "secret"
    new_secret_file.write_text(NEW_SECRET + "\n")
    base = ("credentials", "add", "acme", "--account-id", "acme-acc", "--client-id", "acme-client")
    results = [_invoke(*base, "--client-secret-stdin", stdin=SECRET + "\n")]
    results.append(_invoke("credentials", "list"))
    results.append(_invoke("credentials", "show", "acme"))
    results.append(_invoke("token"))
    sim_client.configure(
        s2s_clients={"acme-client": {"account_id": "acme-acc", "client_secret": NEW_SECRET}}
    )
    results.append(
        _invoke("credentials", "rotate", "acme", "--client-secret-file", str(new_secret_file))
    )
    results.append(_invoke("credentials", "disable", "acme"))
    results.append(_invoke("credentials", "remove", "acme"))
    results.append(_invoke("credentials", "show", "acme"))

    assert [r.exit_code for r in results] == [0, 0, 0, 0, 0, 0, 0, 1], [r.output for r in results]
    listed, shown, token, rotated, disabled = (r.output for r in results[1:6])
    assert "default" in listed and "acme" in listed and "acme-acc" in listed
    assert _fields(shown)["status"] == "active" and _fields(shown)["kind"] == "s2s"
    assert "acme (s2s)" in token and "default (s2s)" in token
    assert "Zoom accepts the credential" in rotated
    assert _fields(disabled)["status"] == "disabled"
    assert "no credential is named 'acme'" in results[-1].output
    everything = "".join(r.output for r in results)
    for secret in (SECRET, NEW_SECRET, ENCRYPTION_KEY):
        assert secret not in everything


def test_credentials_cli__bad_input__exit_2_naming_the_field(keyed: dict[str, str]) -> None:
    taken = _invoke(
        *("credentials", "add", "default", "--account-id", "a", "--client-id", "c"),
        "--client-secret-stdin",
        stdin=SECRET,
    )
    no_secret = _invoke("credentials", "add", "x", "--account-id", "a", "--client-id", "c")
    empty = _invoke(
        *("credentials", "add", "x", "--account-id", "a", "--client-id", "c"),
        "--client-secret-stdin",
        stdin="\n",
    )

    assert taken.exit_code == 2 and "invalid credential: name:" in taken.output
    assert no_secret.exit_code == 2 and "--client-secret-stdin" in no_secret.output
    assert empty.exit_code == 2 and "client_secret: is empty" in empty.output
    assert SECRET not in taken.output
    listed = _invoke("credentials", "list").output.split()
    assert listed == ["default", "s2s", "sim-account", "sim-client", "active"]


def test_credentials_cli__no_encryption_key__refused_naming_it(env: dict[str, str]) -> None:
    result = _invoke(
        *("credentials", "add", "acme", "--account-id", "a", "--client-id", "c"),
        "--client-secret-stdin",
        stdin=SECRET,
    )

    assert result.exit_code == 1
    assert "TOKEN_ENCRYPTION_KEY" in result.output
    assert SECRET not in result.output
    assert "acme" not in _invoke("credentials", "list").output


def test_apps_cli__add_then_user_by_code__no_secret_or_token_printed(
    keyed: dict[str, str], sim_client: SimulatorClient, tmp_path: Path
) -> None:
    sim_client.configure(oauth_apps={"gen-client": APP_SECRET})
    webhook_file = tmp_path / "webhook"
    webhook_file.write_text(WEBHOOK_TOKEN)
    redirect = "https://app.example.com/cb"
    code = sim_client.authorize_user("gen-client", "alice@example.com", redirect)

    results = [
        _invoke(
            *("apps", "add", "general", "--client-id", "gen-client", "--client-secret-stdin"),
            *("--webhook-secret-token-file", str(webhook_file)),
            stdin=APP_SECRET,
        ),
        _invoke("apps", "list"),
        _invoke(
            *("credentials", "add-user", "alice", "--app", "general"),
            *("--code", code, "--redirect-uri", redirect),
        ),
        _invoke("token"),
    ]

    assert [r.exit_code for r in results] == [0, 0, 0, 0], [r.output for r in results]
    assert "webhook secret token held" in results[1].output
    added = _fields(results[2].output)
    assert added["kind"] == "user" and added["app"] == "general" and added["status"] == "active"
    assert "alice (user)" in results[3].output
    everything = "".join(r.output for r in results)
    for secret in (APP_SECRET, WEBHOOK_TOKEN, code, ENCRYPTION_KEY):
        assert secret not in everything
