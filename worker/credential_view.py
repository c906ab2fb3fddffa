"""A credential as the registry shows it (:mod:`worker.credentials`): :class:`CredentialInfo`
built from its row, and what a probe found (:class:`ProbeResult`). Neither carries a secret or
a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from worker.models import Credential


@dataclass(frozen=True)
class CredentialInfo:
    """A credential as the registry shows it: never its secret or its tokens."""

    name: str
    kind: str  # "s2s" | "user"
    account_id: str  # "" for a user's connection until its account is learnt
    client_id: str
    app: str | None  # the app a user's connection authorized
    status: str  # "active" | "disabled" | "needs_reauthorization"
    status_reason: str | None
    created_at: datetime | None
    # The account's plan and explicit per-second caps (None: the settings', worker.accounts).
    plan: str | None = None
    rate_limits: str | None = None


@dataclass(frozen=True)
class ProbeResult:
    """What a probe of a credential found: ``ok`` when Zoom accepted a token's call."""

    ok: bool
    detail: str


def info(row: Credential, app: str | None) -> CredentialInfo:
    """The registry's view of a credential's row; ``app``: the app it authorized."""
    return CredentialInfo(
        name=row.name,
        kind=row.kind,
        account_id=row.account_id,
        client_id=row.client_id,
        app=app,
        status=row.status,
        status_reason=row.status_reason,
        created_at=row.created_at,
        plan=row.plan,
        rate_limits=row.rate_limits,
    )
