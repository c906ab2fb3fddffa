"""The simulator's switches: :class:`SimulatorConfig` and the checks run when one is made."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_SCOPES = (
    "meeting:write:meeting:admin meeting:read:meeting:admin "
    "meeting:delete:meeting:admin meeting:read:list_meetings:admin"
)
RATE_CATEGORIES = ("light", "medium", "heavy")
# The control API (/_sim/...) asks for this header when the simulator has a control token
# (SIMULATOR_CONTROL_TOKEN for `zoom-worker simulator`); without one it answers loopback only.
CONTROL_TOKEN_HEADER = "X-Sim-Control-Token"  # noqa: S105 - a header name
CONTROL_TOKEN_ENV = "SIMULATOR_CONTROL_TOKEN"  # noqa: S105 - a variable name
OPERATIONS = ("create", "delete", "get", "list", "update")


def _default_categories() -> dict[str, str]:
    # "create" is absent on purpose: it follows ``create_category`` unless set here.
    return {"delete": "light", "get": "light", "list": "medium", "update": "light"}


@dataclass
class SimulatorConfig:
    """Every switch of the simulator; the defaults behave like a healthy Zoom Pro account.

    Instances are validated on creation (``ValueError`` names the switch) and never changed
    in place by the simulator: :meth:`Simulator.configure` swaps in a new one.
    """

    account_id: str = "sim-account"
    client_id: str = "sim-client"
    # A well-known default of a local simulator, not a credential.
    client_secret: str = field(default="sim-secret", repr=False)
    # More S2S apps, each of its own account: client id -> {"account_id", "client_secret"}.
    s2s_clients: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    # "General" OAuth apps users connect through: client id -> client secret.
    oauth_apps: dict[str, str] = field(default_factory=dict, repr=False)
    # How a spent refresh token or code is refused: "invalid_grant" (OAuth's word) or
    # "invalid_request" with "Invalid Token!" (what Zoom's forum shows).
    grant_error_style: Literal["invalid_grant", "invalid_request"] = "invalid_grant"
    # Per-second caps of one account (account id -> category -> calls), else ``rate_limits``.
    account_rate_limits: dict[str, dict[str, int]] = field(default_factory=dict)
    # Accounts whose tokens are all answered 401 code 124 (as refuse_fresh_tokens, one account).
    refused_accounts: set[str] = field(default_factory=set)
    token_lifetime_s: int = 3600
    scopes: str = DEFAULT_SCOPES
    token_tolerance: int | None = None
    token_error_codes: bool = True
    token_latency_s: float = 0.0
    token_endpoint_down: bool = False
    app_disabled: bool = False
    refuse_fresh_tokens: bool = False
    missing_scopes: bool = False
    missing_users: set[str] = field(default_factory=set)
    legacy_not_found_code: bool = False
    # How the list call counts the 250 characters of agenda it shows.
    list_agenda_cut: Literal["code_points", "utf16"] = "code_points"
    rate_limits: dict[str, int] | None = None
    # How the per-second limits count: "sliding" (any 1 s span) or "fixed" (each wall-clock
    # second from :00.000); Zoom does not document which it uses.
    rate_window: Literal["sliding", "fixed"] = "sliding"
    rate_limit_headers: bool = True
    create_category: str = "light"
    categories: dict[str, str] = field(default_factory=_default_categories)
    daily_create_limit: int = 100
    # Updates of one meeting in any 24 hours ("a maximum of 100 times within a 24-hour period").
    meeting_update_limit: int = 100
    daily_limit_style: Literal["429", "400"] = "429"
    error_rate: float = 0.0
    reply_lost_rate: float = 0.0
    drop_rate: float = 0.0
    latency_s: float = 0.0
    seed: int | None = None
    # Event notifications (worker.simulator.webhooks): sent when both are set.
    webhook_url: str | None = None
    webhook_secret_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(SimulatorConfig)
        for f in dataclasses.fields(self):  # JSON from /_sim/config may carry anything
            if not _conforms(getattr(self, f.name), hints[f.name]):
                raise ValueError(f"{f.name}: {getattr(self, f.name)!r} is not a {f.type}")
        for name in ("error_rate", "reply_lost_rate", "drop_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: a probability in [0, 1]")
        for name in (
            "token_lifetime_s",
            "token_latency_s",
            "daily_create_limit",
            "meeting_update_limit",
            "latency_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative")
        if self.token_tolerance is not None and self.token_tolerance < 1:
            raise ValueError("token_tolerance: at least 1, or None")
        for name, limits in (
            ("rate_limits", self.rate_limits or {}),
            *(("account_rate_limits", v) for v in self.account_rate_limits.values()),
        ):
            if any(k not in RATE_CATEGORIES or v < 0 for k, v in limits.items()):
                raise ValueError(f"{name}: keys in {RATE_CATEGORIES}, values at least 0")
        if any(set(c) != {"account_id", "client_secret"} for c in self.s2s_clients.values()):
            raise ValueError("s2s_clients: each maps to {account_id, client_secret}")
        if any(k not in OPERATIONS or v not in RATE_CATEGORIES for k, v in self.categories.items()):
            raise ValueError(f"categories: maps {OPERATIONS} to {RATE_CATEGORIES}")
        if self.create_category not in RATE_CATEGORIES:
            raise ValueError(f"create_category: one of {RATE_CATEGORIES}")

    def category_for(self, operation: str) -> str:
        """The rate-limit category of an operation ("create", "delete", "get", ...)."""
        if operation == "create":
            return self.categories.get("create", self.create_category)
        return self.categories.get(operation, "light")

    def public_dict(self) -> dict[str, Any]:
        """The switches as JSON-ready data, without the client secrets."""
        data = dataclasses.asdict(self)
        del data["client_secret"]
        del data["webhook_secret_token"]
        data["missing_users"] = sorted(self.missing_users)
        data["refused_accounts"] = sorted(self.refused_accounts)
        data["s2s_clients"] = {
            k: {"account_id": v["account_id"]} for k, v in self.s2s_clients.items()
        }
        data["oauth_apps"] = sorted(self.oauth_apps)
        return data

    def s2s_account(self, client: tuple[str, str]) -> str | None:
        """The account of an S2S client id and secret, or None when they are not one."""
        if client == (self.client_id, self.client_secret):
            return self.account_id
        extra = self.s2s_clients.get(client[0])
        return extra["account_id"] if extra and extra["client_secret"] == client[1] else None

    def limits_for(self, account_id: str) -> dict[str, int] | None:
        """The per-second caps of an account."""
        return self.account_rate_limits.get(account_id, self.rate_limits)


def control_token_from_env() -> str | None:
    """The control token from ``SIMULATOR_CONTROL_TOKEN``, or None when unset or empty."""
    return os.environ.get(CONTROL_TOKEN_ENV) or None


SWITCHES = frozenset(f.name for f in dataclasses.fields(SimulatorConfig))


def _conforms(value: object, hint: object) -> bool:
    """Whether ``value`` fits a type hint of SimulatorConfig (the few forms it uses)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_conforms(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin is dict:
        return isinstance(value, dict) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items()
        )
    if origin is set:
        return isinstance(value, set) and all(_conforms(v, args[0]) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(hint, type) and isinstance(value, hint)
