"""``zoom-worker credentials ...`` and ``zoom-worker apps ...``: the credential registry
(:mod:`worker.credentials`) on the command line, and the way fields are printed.

Secrets come from a file or from standard input, never from an argument (an argument is seen
in ``ps`` and shell history), and nothing printed here ever holds a secret or a token.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console

from worker import credentials, errors

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _client_secret_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--client-secret-file PATH`` and ``--client-secret-stdin``."""
    command = click.option("--client-secret-stdin", is_flag=True)(command)
    return click.option("--client-secret-file", type=_FILE)(command)


def show_text(value: object) -> str:
    """A value as one table cell: UTC ISO times, "-" for nothing."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds")
    return "-" if value is None else str(value)


def print_fields(rows: list[tuple[str, str]]) -> None:
    """``name  value`` lines, the names aligned."""
    width = max(len(name) for name, _value in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")


def console() -> Console:
    """A console for stdout; wide when not a terminal, so ids are never wrapped in pipes."""
    out = Console()
    return out if out.is_terminal else Console(width=200)


def _secret(field: str, path: Path | None, stdin: bool, *, required: bool = True) -> str | None:
    """The secret from ``--FIELD-file`` or ``--FIELD-stdin`` (exactly one when required)."""
    option = field.replace("_", "-")
    if path is not None and stdin:
        raise click.UsageError(f"give --{option}-file or --{option}-stdin, not both")
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise errors.InvalidCredential(field, f"{path} cannot be read ({exc})") from None
    if stdin:
        return sys.stdin.read().strip()
    if required:
        raise click.UsageError(f"give --{option}-file PATH or --{option}-stdin")
    return None


def _show(info: credentials.CredentialInfo) -> None:
    print_fields(
        [
            ("name", info.name),
            ("kind", info.kind),
            ("account", info.account_id or "-"),
            ("client", info.client_id),
            ("app", show_text(info.app)),
            ("status", info.status),
            ("reason", show_text(info.status_reason)),
            ("limits", _limits_text(info)),
            ("created", show_text(info.created_at)),
        ]
    )


def _limits_text(info: credentials.CredentialInfo) -> str:
    if info.plan is None and info.rate_limits is None:
        return "the settings' (ZOOM_PLAN, ZOOM_RATE_LIMITS)"
    parts = [f"plan {info.plan}" if info.plan else "", info.rate_limits or ""]
    return ", ".join(part for part in parts if part)


def _registry() -> credentials.Registry:
    return credentials.from_settings()


@click.group("credentials")
def credentials_group() -> None:
    """The credentials jobs can run under: S2S apps and users' connections."""


@credentials_group.command("add")
@click.argument("name")
@click.option("--account-id", required=True)
@click.option("--client-id", required=True)
@_client_secret_options
@click.option(
    "--plan",
    type=click.Choice(["free", "pro", "business"]),
    help="The Zoom account's plan: sizes its per-second limits (default: ZOOM_PLAN).",
)
@click.option(
    "--rate-limits",
    help="Per-second caps overriding the plan's, e.g. light=30,medium=20,heavy=10.",
)
def add(
    name: str,
    account_id: str,
    client_id: str,
    client_secret_file: Path | None,
    client_secret_stdin: bool,
    plan: str | None,
    rate_limits: str | None,
) -> None:
    """Register the Server-to-Server app of a Zoom account under NAME."""
    secret = _secret("client_secret", client_secret_file, client_secret_stdin)
    assert secret is not None
    with _registry() as registry:
        info = registry.add_s2s(
            name,
            account_id=account_id,
            client_id=client_id,
            client_secret=secret,
            plan=plan,
            rate_limits=rate_limits,
        )
    _show(info)


@credentials_group.command("add-user")
@click.argument("name")
@click.option("--app", "app_name", required=True, help="The registered app the user authorized.")
@click.option("--refresh-token-stdin", is_flag=True, help="A refresh token (it is spent now).")
@click.option("--code", help="The authorization code of the OAuth callback.")
@click.option("--redirect-uri", help="The redirect URI the code was issued for.")
def add_user(
    name: str, app_name: str, refresh_token_stdin: bool, code: str | None, redirect_uri: str | None
) -> None:
    """Register a user's connection to APP under NAME."""
    with _registry() as registry:
        if refresh_token_stdin and code is None:
            token = _secret("refresh_token", None, True)
            assert token is not None
            info = registry.add_user(name, app=app_name, refresh_token=token)
        elif code is not None and redirect_uri is not None and not refresh_token_stdin:
            info = registry.register_user_authorization(
                account=name, code=code, redirect_uri=redirect_uri, app=app_name
            )
        else:
            raise click.UsageError("give --refresh-token-stdin, or --code and --redirect-uri")
    _show(info)


@credentials_group.command("list")
def list_credentials() -> None:
    """Every credential: name, kind, account, client and status."""
    with _registry() as registry:
        for info in registry.list_credentials():
            click.echo(
                f"{info.name:<20} {info.kind:<5} {info.account_id or '-':<24} "
                f"{info.client_id:<24} {info.status}"
            )


@credentials_group.command("show")
@click.argument("name")
def show(name: str) -> None:
    """One credential (never its secret or tokens)."""
    with _registry() as registry:
        info = registry.get(name)
    if info is None:
        raise click.ClickException(f"no credential is named {name!r}")
    _show(info)


@credentials_group.command("rotate")
@click.argument("name")
@_client_secret_options
def rotate(name: str, client_secret_file: Path | None, client_secret_stdin: bool) -> None:
    """Replace NAME's client secret and probe it at once; exits 1 if Zoom still refuses it."""
    secret = _secret("client_secret", client_secret_file, client_secret_stdin)
    assert secret is not None
    with _registry() as registry:
        result = registry.rotate(name, secret)
    if not result.ok:
        raise click.ClickException(f"secret replaced, but the probe failed: {result.detail}")
    click.echo(f"{name}: secret replaced; {result.detail}")


@credentials_group.command("disable")
@click.argument("name")
def disable(name: str) -> None:
    """Stop using NAME (no token is asked for it)."""
    with _registry() as registry:
        _show(registry.disable(name))


@credentials_group.command("enable")
@click.argument("name")
def enable(name: str) -> None:
    """Use the disabled NAME again."""
    with _registry() as registry:
        _show(registry.enable(name))


@credentials_group.command("remove")
@click.argument("name")
def remove(name: str) -> None:
    """Forget NAME, its token and its token-request records."""
    with _registry() as registry:
        registry.remove(name)
    click.echo(f"{name}: removed")


@click.group("apps")
def apps_group() -> None:
    """The OAuth ("General") apps users connect through."""


@apps_group.command("add")
@click.argument("app")
@click.option("--client-id", required=True)
@_client_secret_options
@click.option("--webhook-secret-token-file", type=_FILE, help="The app's event Secret Token.")
def add_app(
    app: str,
    client_id: str,
    client_secret_file: Path | None,
    client_secret_stdin: bool,
    webhook_secret_token_file: Path | None,
) -> None:
    """Register the OAuth app APP."""
    secret = _secret("client_secret", client_secret_file, client_secret_stdin)
    webhook = _secret("webhook_secret_token", webhook_secret_token_file, False, required=False)
    assert secret is not None
    with _registry() as registry:
        info = registry.add_app(
            app, client_id=client_id, client_secret=secret, webhook_secret_token=webhook
        )
    click.echo(f"{info.name}: client {info.client_id} registered")


@apps_group.command("list")
def list_apps() -> None:
    """The registered apps: name, client id, whether a webhook secret token is held."""
    with _registry() as registry:
        for info in registry.list_apps():
            webhook = "webhook secret token held" if info.has_webhook_secret_token else "-"
            click.echo(f"{info.name:<20} {info.client_id:<24} {webhook}")


@apps_group.command("rotate")
@click.argument("app")
@_client_secret_options
@click.option("--webhook-secret-token-file", type=_FILE)
def rotate_app(
    app: str,
    client_secret_file: Path | None,
    client_secret_stdin: bool,
    webhook_secret_token_file: Path | None,
) -> None:
    """Replace APP's client secret and/or webhook secret token."""
    secret = _secret("client_secret", client_secret_file, client_secret_stdin, required=False)
    webhook = _secret("webhook_secret_token", webhook_secret_token_file, False, required=False)
    with _registry() as registry:
        info = registry.rotate_app(app, client_secret=secret, webhook_secret_token=webhook)
    click.echo(f"{info.name}: rotated")
