"""What the work needs in a worker process: the Zoom client, token store, gate and ledger of
the environment's credential, and the registered credentials' (:mod:`worker.accounts`), built
once per process from Settings (:meth:`Runtime.from_settings`). :mod:`worker.meetings` does
the work with it; ``worker.meetings.Runtime`` is this class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker import db, errors, fleet_counters, gate, ledger, outage, zoom
from worker.accounts import Account, Accounts
from worker.config import Settings
from worker.models import DEFAULT_CREDENTIAL
from worker.token_store import TokenStore, Unconfigured


@dataclass(frozen=True)
class Runtime:
    """What the work needs in a worker process, built once per process from Settings."""

    settings: Settings
    client: zoom.ZoomClient
    gate: gate.Gate
    store: TokenStore | Unconfigured
    ledger: ledger.Ledger
    outage: outage.Breaker = field(default_factory=outage.NoBreaker)
    counters: fleet_counters.FleetCounters | None = None  # job durations, when set
    # The registered credentials' stores, clients and gates (None: the environment's only).
    accounts: Accounts | None = None

    def account(self, name: str) -> Account:
        """What a job of credential ``name`` calls Zoom with; InvalidCredential (field
        ``account``) when no such credential is registered."""
        if name == DEFAULT_CREDENTIAL:
            # This runtime's own (a test may have replaced its gate or client).
            account_id = self.settings.ZOOM_ACCOUNT_ID or ""
            return Account(name, account_id, self.store, self.client, self.gate)
        if self.accounts is None:
            raise errors.InvalidCredential("account", f"no credential is named {name!r}")
        return self.accounts.get(name)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, send: Callable[[str, dict[str, Any]], None]
    ) -> Runtime:
        """The token store, Zoom client, gate and ledger for these settings; ``send`` puts a
        task on the broker (``worker.celery_app.send``)."""
        sessions = db.sessions(settings)
        # A fleet of registered credentials only may leave the environment's unset.
        store = (
            TokenStore(settings, sessions) if settings.has_credentials else Unconfigured(settings)
        )
        counters = fleet_counters.FleetCounters.from_url(
            settings.redis_url, create_category=settings.ZOOM_CREATE_CATEGORY
        )

        def client_of(source: zoom.TokenSource) -> zoom.ZoomClient:
            return zoom.ZoomClient(
                settings.ZOOM_API_URL,
                zoom.ZoomAuth(source),
                timeout_s=settings.ZOOM_HTTP_TIMEOUT,
                on_request=counters.on_request,
                on_response=counters.on_response,
            )

        client = client_of(store)
        permits: gate.Gate = gate.OpenGate()
        governor_client = None
        if settings.RATE_GOVERNOR:
            fleet_gate = gate.FleetGate.from_settings(settings)
            permits, governor_client = fleet_gate, fleet_gate.governor.client
        default = Account(
            DEFAULT_CREDENTIAL, settings.ZOOM_ACCOUNT_ID or "", store, client, permits
        )
        registered = Accounts(settings, sessions, default, client_of, governor_client)
        work = ledger.Ledger.from_settings(settings, send)
        # A good answer's report joins the attempt's counters' round trip (same Redis).
        breaker = outage.OutageBreaker.from_settings(settings, batch=counters)
        return cls(settings, client, permits, store, work, breaker, counters, registered)
