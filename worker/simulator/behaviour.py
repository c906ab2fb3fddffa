"""The :class:`Simulator`: its parts under one lock, faults, and the one request dispatch.

The parts are plain objects, each owning its own state, and only the Simulator calls them,
always while holding its lock: the token issuer (:class:`TokenIssuer`), the meeting book
(:class:`MeetingBook`), the rate windows (:class:`RateWindows`), the counters and the clock.
Every control request (``/_sim/...``) goes through :func:`.control.dispatch`.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import threading
import time
from datetime import timedelta
from typing import Any

from worker.simulator import control
from worker.simulator.config import SWITCHES, SimulatorConfig
from worker.simulator.faults import SERVER_ERRORS, ScriptedFaults
from worker.simulator.limits import RateWindows
from worker.simulator.meetings import (
    MEETING_STATUSES,
    UPDATABLE_FIELDS,
    MeetingBook,
    validate,
    validation_failed,
)
from worker.simulator.state import Clock, Counters, Meeting
from worker.simulator.tokens import TokenIssuer
from worker.simulator.user_oauth import Connection
from worker.simulator.webhooks import SOMEONE_ELSE, WebhookSender
from worker.simulator.wire import (
    DROPPED,
    Reply,
    Request,
    api_route,
    error_reply,
    json_reply,
    parse_object,
    utc_stamp,
)


class Simulator:
    """The state of one simulated Zoom account and the answers it gives; thread-safe.

    All state lives in the parts, under one lock held only for bookkeeping, never while
    sleeping.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._lock = threading.Lock()
        self._config = copy.deepcopy(config) if config else SimulatorConfig()
        self._rng = random.Random(self._config.seed)
        self._clock = Clock()
        self.webhooks = WebhookSender()  # kept across resets: its thread and queue
        self._new_parts()

    def _new_parts(self) -> None:
        self._counters = Counters()
        self._tokens = TokenIssuer()
        self._rates: dict[str, RateWindows] = {}  # by account id
        self._faults = ScriptedFaults()
        self._book = MeetingBook(self._rng, self._clock, self._counters)

    @property
    def config(self) -> SimulatorConfig:
        """The switches in force now (replace them with :meth:`configure`)."""
        return self._config

    def configure(self, **changes: Any) -> SimulatorConfig:
        """Change some switches at once; ValueError on an unknown name or a bad value."""
        unknown = sorted(set(changes) - SWITCHES)
        if unknown:
            raise ValueError(f"unknown switch: {', '.join(unknown)}")
        for name in ("missing_users", "refused_accounts"):
            if isinstance(changes.get(name), list | tuple | frozenset):
                changes[name] = set(changes[name])
        with self._lock:
            self._config = dataclasses.replace(self._config, **changes)
            if "seed" in changes:
                self._rng.seed(self._config.seed)
            return self._config

    def reset(self) -> None:
        """Forget meetings, tokens, pages, counters, daily counts and the clock's offset;
        keep the config."""
        with self._lock:
            self._clock.offset = timedelta()
            self._new_parts()
            self._rng.seed(self._config.seed)

    def fail_next(self, operation: str, count: int = 1, status: int = 503) -> None:
        """Answer the next ``count`` calls of ``operation`` with ``status`` (a 5xx)."""
        with self._lock:
            self._faults.add(operation, count, status)

    def invalidate_tokens(self) -> None:
        """Kill every access token issued so far."""
        with self._lock:
            self._tokens.invalidate()

    def rotate_secret(self, new_secret: str) -> None:
        """Rotate the client secret, as an ownership transfer is completed in Zoom.

        The old secret is refused from now on, every token dies and ``refuse_fresh_tokens``
        is turned off.
        """
        with self._lock:
            self._config = dataclasses.replace(
                self._config, client_secret=new_secret, refuse_fresh_tokens=False
            )
            self._tokens.invalidate()

    def authorize_user(
        self, client_id: str, user_id: str, redirect_uri: str, account_id: str | None = None
    ) -> str:
        """A user of ``account_id`` (the main account by default) consents to the OAuth app
        ``client_id``: the authorization code Zoom's redirect would carry."""
        with self._lock:
            if client_id not in self._config.oauth_apps:
                raise ValueError(f"client_id: no OAuth app {client_id!r} (oauth_apps)")
            account = account_id or self._config.account_id
            return self._tokens.users.authorize(
                Connection(client_id, user_id, account), redirect_uri
            )

    def revoke_user(self, user_id: str) -> int:
        """The user removes the app: their refresh tokens die; returns how many."""
        with self._lock:
            return self._tokens.users.revoke(user_id)

    def advance_clock(self, seconds: float) -> str:
        """Move the simulator's clock (negative: back); returns its new now as Zoom spells it."""
        with self._lock:
            return utc_stamp(self._clock.advance(seconds))

    def stats(self) -> dict[str, Any]:
        """Counters since start or reset, plus live meetings, valid tokens, peak rates and
        API calls by operation."""
        with self._lock:
            return {
                **self._counters.values,
                "live_meetings": sum(not m.deleted for m in self._book.meetings.values()),
                "tokens_valid": self._tokens.valid(),
                "max_calls_per_second": dict(self._rates_of(self._config.account_id).max_qps),
                "accounts": {
                    account: {"max_calls_per_second": dict(rates.max_qps)}
                    for account, rates in self._rates.items()
                },
                "tokens_by_client": dict(self._tokens.issued_by_client),
                "grants": dict(self._tokens.grants),
                "calls_by_operation": dict(self._counters.by_operation),
                **self.webhooks.counts(),
            }

    def accepted_calls(self, category: str, account_id: str | None = None) -> list[float]:
        """When each call the category's rate limit accepted arrived (epoch seconds), in
        order, for the account (the configured one by default): the pace as Zoom saw it (the
        benchmarks)."""
        with self._lock:
            rates = self._rates_of(account_id or self._config.account_id)
            return list(rates.accepted[category])

    def meetings(self) -> list[dict[str, Any]]:
        """Every meeting ever made, in creation order, with ``deleted``; never ``start_url``."""
        with self._lock:
            return [
                {k: v for k, v in m.body.items() if k != "start_url"}
                | {"deleted": m.deleted, "foreign": m.foreign, "user_id": m.user_id}
                | ({"occurrences": [dict(o) for o in m.occurrences]} if m.occurrences else {})
                for m in self._book.meetings.values()
            ]

    def seed_meeting(self, user_id: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Make a meeting as another app would, outside the API stats and daily counts."""
        body = body or {}
        problems = validate(body)
        if problems:
            raise ValueError(f"invalid meeting body: {problems}")
        with self._lock:
            self._counters.add("meetings_seeded")
            meeting = self._book.create(user_id, body, foreign=True)
            self._notify("meeting.created", meeting, operator=SOMEONE_ELSE)
            return dict(meeting.body)

    def update_meeting(self, meeting_id: int, body: dict[str, Any]) -> None:
        """Change a meeting as its host would in Zoom's web page (no token, no daily count);
        KeyError if it does not exist."""
        problems = validate(body)
        if problems:
            raise ValueError(f"invalid meeting body: {problems}")
        with self._lock:
            meeting = self._book.live(str(meeting_id))
            if meeting is None:
                raise KeyError(meeting_id)
            self._updated(meeting, body, {}, operator=SOMEONE_ELSE)

    def delete_meeting(self, meeting_id: int, occurrence_id: str | None = None) -> None:
        """Delete a meeting (or one occurrence) as its host would in Zoom's web page;
        KeyError if it does not exist, ValueError if Zoom would refuse."""
        with self._lock:
            meeting = self._book.live(str(meeting_id))
            if meeting is None:
                raise KeyError(meeting_id)
            query = {"occurrence_id": [occurrence_id]} if occurrence_id else {}
            reply = self._deleted(meeting, query, operator=SOMEONE_ELSE)
            if reply.status >= 400:
                raise ValueError(reply.body.decode())

    def set_meeting_status(self, meeting_id: int, status: str) -> None:
        """Mark a meeting waiting, started or ended; KeyError if it does not exist."""
        if status not in MEETING_STATUSES:
            raise ValueError(f"status must be one of {MEETING_STATUSES}")
        with self._lock:
            meeting = self._book.live(str(meeting_id))
            if meeting is None:
                raise KeyError(meeting_id)
            meeting.body["status"] = status
            if status in ("started", "ended"):
                self._notify(f"meeting.{status}", meeting)

    def set_use_pmi(self, user_id: str, enabled: bool) -> int:
        """Set a host's "use PMI for scheduled meetings" profile setting; returns the PMI."""
        with self._lock:
            return self._book.use_pmi(user_id, enabled)

    def handle(self, request: Request) -> Reply:
        """Answer one HTTP request (the server's handler calls this)."""
        if request.path == "/oauth/token" and request.method == "POST":
            return self._token_endpoint(request)
        if request.path.startswith("/_sim/"):
            return control.dispatch(self, request)
        route = api_route(request.method, request.path)
        if route is None:
            return error_reply(404, 404, "Not Found")
        return self._api(request, *route)

    def _token_endpoint(self, request: Request) -> Reply:
        if self._config.token_latency_s:
            time.sleep(self._config.token_latency_s)
        with self._lock:
            self._counters.add("token_requests")
            reply = self._tokens.issue(request, self._config)
            self._counters.add("tokens_issued" if reply.status == 200 else "token_errors")
            return reply

    # -- Meetings API -----------------------------------------------------------------------

    def _api(self, request: Request, operation: str, argument: str) -> Reply:
        if self._config.latency_s:
            time.sleep(self._config.latency_s)
        body = parse_object(request.body) if operation in ("create", "update") else {}
        with self._lock:
            self._counters.add("api_calls")
            by_operation = self._counters.by_operation
            by_operation[operation] = by_operation.get(operation, 0) + 1
            reply = self._api_locked(request, operation, argument, body)
            if reply.status == 401:
                self._counters.add("api_401")
            elif reply.status == 429:
                self._counters.add("api_429")
            elif reply.status >= 500:
                self._counters.add("api_5xx")
            return reply

    def _api_locked(
        self, request: Request, operation: str, argument: str, body: dict[str, Any] | None
    ) -> Reply:
        cfg = self._config
        if cfg.drop_rate and self._rng.random() < cfg.drop_rate:
            self._counters.add("connections_dropped")
            return DROPPED
        if cfg.error_rate and self._rng.random() < cfg.error_rate:
            status = self._rng.choice(list(SERVER_ERRORS))
            return error_reply(status, status, SERVER_ERRORS[status])
        if scripted := self._faults.take(operation):
            return scripted
        account = self._tokens.check(request.authorization, operation, cfg)
        if isinstance(account, Reply):
            return account
        rates = self._rates_of(account)
        limited = rates.take_slot(cfg.category_for(operation), cfg, cfg.limits_for(account))
        if limited is not None:
            return limited
        if operation in ("create", "list") and argument in cfg.missing_users:
            return error_reply(404, 1001, f"User does not exist: {argument}.")
        if body is None:
            return error_reply(400, 300, "Request Body should be a valid JSON object.")
        if operation == "create":
            return self._create(argument, body, cfg, rates)
        if operation == "list":
            return self._book.list(argument, request.query, cfg.list_agenda_cut)
        if operation == "user":
            user = self._tokens.user_of(request.authorization, account)
            return json_reply(200, {"id": user, "email": user, "account_id": account, "type": 2})
        meeting = self._book.live(argument)
        if meeting is None:
            code = 300 if operation == "delete" and cfg.legacy_not_found_code else 3001
            return error_reply(404, code, f"Meeting does not exist: {argument}.")
        if operation == "get":
            return self._book.answer(meeting, request.query)
        if operation == "update":
            problems = validate(body)
            if problems:
                return validation_failed(problems)
            limited = rates.take_meeting_update(argument, cfg, self._clock.now())
            limited = limited or self._daily(meeting.body["host_id"], cfg, rates)
            return limited or self._updated(meeting, body, request.query)
        return self._deleted(meeting, request.query)

    def _create(
        self, user_id: str, body: dict[str, Any], cfg: SimulatorConfig, rates: RateWindows
    ) -> Reply:
        problems = validate(body)
        if problems:
            return validation_failed(problems)
        limited = self._daily(self._book.host(user_id)[0], cfg, rates)
        if limited is not None:
            return limited
        meeting = self._book.create(user_id, body, foreign=False)
        self._counters.add("meetings_created")
        self._notify("meeting.created", meeting)
        if cfg.reply_lost_rate and self._rng.random() < cfg.reply_lost_rate:
            # The meeting exists but the caller never hears: Zoom has no idempotency key.
            self._counters.add("replies_lost")
            return DROPPED
        return json_reply(201, meeting.body)

    def _rates_of(self, account_id: str) -> RateWindows:
        # Zoom's limits and daily counts are the account's, shared by every app on it.
        return self._rates.setdefault(account_id, RateWindows())

    def _daily(self, host_id: str, cfg: SimulatorConfig, rates: RateWindows) -> Reply | None:
        limited = rates.take_daily(host_id, cfg, self._clock.now())
        if limited is not None:
            self._counters.add("api_429_daily")
        return limited

    # -- event notifications (worker.simulator.webhooks); called under the lock ---------------

    def _updated(
        self,
        meeting: Meeting,
        body: dict[str, Any],
        query: dict[str, list[str]],
        operator: str | None = None,
    ) -> Reply:
        fields = sorted(UPDATABLE_FIELDS & body.keys())
        before = {k: copy.deepcopy(meeting.body.get(k)) for k in fields}
        reply = self._book.update(meeting, body, query)
        if reply.status == 204:
            after = {k: copy.deepcopy(meeting.body.get(k)) for k in fields}
            occurrence_id = query.get("occurrence_id", [""])[0]
            if occurrence_id:  # the occurrence's new times, not the series'
                after = {"occurrences": [{"occurrence_id": occurrence_id, **body}]}
            self._notify("meeting.updated", meeting, after, before, operator=operator)
        return reply

    def _deleted(
        self, meeting: Meeting, query: dict[str, list[str]], operator: str | None = None
    ) -> Reply:
        reply = self._book.delete(meeting, query)
        if reply.status == 204:
            occurrence_id = query.get("occurrence_id", [""])[0]
            extra = {"occurrences": [{"occurrence_id": occurrence_id}]} if occurrence_id else {}
            self._notify("meeting.deleted", meeting, extra, operator=operator)
        return reply

    def _notify(
        self,
        event: str,
        meeting: Meeting,
        changed: dict[str, Any] | None = None,
        old: dict[str, Any] | None = None,
        operator: str | None = None,
    ) -> None:
        self.webhooks.emit(
            self._config, event, meeting.body, changed, old, operator, self._clock.offset
        )
