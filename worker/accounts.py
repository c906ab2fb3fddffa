"""Each credential's token store, Zoom client and gate in one worker process: isolation.

A job names its credential (``jobs.account``, read in the claim's RETURNING); the work asks
:class:`Accounts` for that credential's :class:`Account`, built on first use and kept for
the life of the process (the registry bounds how many there are). So each credential has its
own token row, single flight, circuit and token budget (:mod:`worker.token_store`), and a
credential whose secret Zoom refuses holds only its own jobs while the others run on.

Zoom's per-second limits and its per-host daily counts belong to the Zoom *account* (the
account id) and are shared by every app on it. The gate of a credential therefore runs over
the rate governor of its account id (:func:`namespace_of`): two credentials of one account
share one governor namespace, and hence one schedule and one set of daily counts; two
accounts never slow each other down. The environment's account keeps the governor's
original namespace (``zw:rl``), so today's fleets see no change. A user's connection learns
its account id when it is registered (``GET /users/me``); one whose account Zoom did not
say (the app lacks ``user:read``) gets a namespace of its own.

A Zoom account's per-second limits depend on its plan. A registered credential may carry
them (``credentials add --plan free|pro|business`` and/or ``--rate-limits light=..``,
columns ``plan`` and ``rate_limits``); a credential that names neither uses the settings'
(``ZOOM_PLAN``, ``ZOOM_RATE_LIMITS``). The first credential of an account built in a process
sizes that account's governor.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from worker import gate, zoom
from worker.config import PLAN_RATE_LIMITS, Settings, parse_rate_limits
from worker.models import DEFAULT_CREDENTIAL, Credential
from worker.ratelimit import RateGovernor
from worker.token_store import TokenStore, Unconfigured

log = logging.getLogger(__name__)

# The governor's namespace of the environment's account (worker.ratelimit's default).
DEFAULT_NAMESPACE = "zw:rl"


@dataclass(frozen=True)
class Account:
    """What a job of one credential calls Zoom with."""

    name: str
    account_id: str
    store: TokenStore | Unconfigured
    client: zoom.ZoomClient
    gate: gate.Gate


@dataclass(frozen=True)
class Limits:
    """A credential's account and the per-second caps it plans for (None: the settings')."""

    account_id: str
    rate_limits: dict[str, int] | None


def namespace_of(account_id: str, settings: Settings) -> str:
    """The rate governor's namespace of a Zoom account: the original one for the
    environment's account, else one per account id (a digest: ids are opaque text)."""
    if not account_id or account_id == settings.ZOOM_ACCOUNT_ID:
        return DEFAULT_NAMESPACE
    digest = hashlib.blake2b(account_id.encode(), digest_size=8).hexdigest()
    return f"{DEFAULT_NAMESPACE}:acct:{digest}"


def limits_of(plan: str | None, rate_limits: str | None) -> dict[str, int] | None:
    """The per-second caps a credential names: its plan's, overridden by explicit ones;
    None when it names neither. ValueError names a bad plan or limit."""
    if plan is None and not rate_limits:
        return None
    if plan is not None and plan not in PLAN_RATE_LIMITS:
        raise ValueError(f"plan must be one of {sorted(PLAN_RATE_LIMITS)}")
    limits = dict(PLAN_RATE_LIMITS[plan or "pro"])
    if rate_limits:
        limits.update(parse_rate_limits(rate_limits))
    return limits


class Accounts:
    """The credentials' :class:`Account` in this process, built on first use.

    ``default`` is the environment's, built eagerly (it is what the fleet always had);
    ``build_client`` makes a Zoom client over a token store (with the process's counters).
    Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        default: Account,
        build_client: Callable[[TokenStore], zoom.ZoomClient],
        governor_client: redis.Redis | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._build_client = build_client
        self._governor_client = governor_client
        self._accounts: dict[str, Account] = {DEFAULT_CREDENTIAL: default}
        default_namespace = namespace_of(default.account_id, settings)
        self._gates: dict[str, gate.Gate] = {default_namespace: default.gate}
        self._lock = threading.Lock()

    def get(self, name: str) -> Account:
        """The credential's Account; InvalidCredential (field ``account``) when it is not
        registered (removed after its jobs were enqueued)."""
        found = self._accounts.get(name)
        if found is not None:
            return found
        with self._lock:
            found = self._accounts.get(name)
            if found is None:
                found = self._accounts[name] = self._build(name)
            return found

    def built(self) -> list[Account]:
        """The accounts built so far in this process."""
        with self._lock:
            return list(self._accounts.values())

    def _build(self, name: str) -> Account:
        store = TokenStore(self._settings, self._sessions, credential=name)
        limits = self._limits(name)
        namespace = namespace_of(limits.account_id or f"user:{name}", self._settings)
        permits = self._gates.get(namespace)
        if permits is None:
            permits = self._gates[namespace] = self._gate(namespace, limits.rate_limits)
        log.info("account.ready name=%s namespace=%s", name, namespace)
        return Account(name, limits.account_id, store, self._build_client(store), permits)

    def _limits(self, name: str) -> Limits:
        with self._sessions() as session:
            row = session.execute(
                select(Credential.account_id, Credential.plan, Credential.rate_limits).where(
                    Credential.name == name
                )
            ).one()
        try:
            return Limits(row.account_id, limits_of(row.plan, row.rate_limits))
        except ValueError:
            log.warning("account.bad_limits name=%s using the settings' limits", name)
            return Limits(row.account_id, None)

    def _gate(self, namespace: str, rate_limits: dict[str, int] | None) -> gate.Gate:
        settings = self._settings
        if not settings.RATE_GOVERNOR or self._governor_client is None:
            return gate.OpenGate()
        caps = rate_limits if rate_limits is not None else settings.rate_limits
        planned = {name: rate * settings.RATE_HEADROOM for name, rate in caps.items()}
        governor = RateGovernor(
            self._governor_client,
            planned,
            namespace=namespace,
            spread_s=settings.RATE_ARRIVAL_SPREAD_S,
        )
        return gate.FleetGate(governor, settings)
