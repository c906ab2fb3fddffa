"""The simulator's event notifications: signed and sent as Zoom sends them, off the lock.

The :class:`Simulator` calls :meth:`WebhookSender.emit` while holding its lock, when a meeting
is created, updated, deleted, started or ended (by the API or by "someone else" through the
control API); ``emit`` only stamps the event and puts it on a queue. One daemon thread sends
the queue in order with ``urllib`` (the simulator is standard library only), signed with
``x-zm-signature: v0=<hex HMAC-SHA256 of "v0:{x-zm-request-timestamp}:{body}">`` under the
configured secret token, as Zoom signs. Like Zoom it retries an answer >= 500 or none at
all, never a 4xx; unlike Zoom (+5, +20, +60 minutes) it retries within seconds
(:data:`RETRY_DELAYS_S`), so a test on a loaded machine does not lose an event.
Nothing is sent while ``webhook_url`` or ``webhook_secret_token`` is unset.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any

from worker.simulator.config import SimulatorConfig

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 5.0
RETRY_DELAYS_S = (0.5, 2.0, 5.0)
# What a webhook's payload.object says of a meeting, besides what changed.
EVENT_FIELDS = ("uuid", "id", "host_id", "topic", "type", "start_time", "duration", "timezone")
# The operator of a change made through the control API, as in Zoom's web page.
SOMEONE_ELSE = "someone.else@sim.zoom.us"


class WebhookSender:
    """A queue of events and the thread that sends them; a part of :class:`Simulator`."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, bytes, bytes]] = queue.Queue()
        self._stats_lock = threading.Lock()
        self._last_ts = 0
        self.stats = {"webhooks_sent": 0, "webhooks_failed": 0}
        self._thread: threading.Thread | None = None  # started by the first event sent

    def emit(
        self,
        config: SimulatorConfig,
        event: str,
        meeting: dict[str, Any],
        changed: dict[str, Any] | None,
        old: dict[str, Any] | None,
        operator: str | None,
        clock_offset: timedelta,
    ) -> None:
        """Queue one event about ``meeting`` (its body), never blocking. Called under the
        Simulator's lock, so ``event_ts`` follows the order of the changes: it is strictly
        increasing, in milliseconds. ``meeting.updated`` carries only the ids and what
        changed (``changed``), and ``old_object`` (``old``), as Zoom sends it."""
        url, secret = config.webhook_url, config.webhook_secret_token
        if not url or not secret:
            return
        ids = {k: meeting[k] for k in ("uuid", "id", "host_id")}
        if event == "meeting.updated":
            obj = ids | (changed or {})
        else:
            obj = {k: meeting[k] for k in EVENT_FIELDS if k in meeting} | (changed or {})
        now_ms = int((time.time() + clock_offset.total_seconds()) * 1000)
        self._last_ts = max(now_ms, self._last_ts + 1)
        payload: dict[str, Any] = {
            "account_id": config.account_id,
            "operator": operator or meeting.get("host_email", SOMEONE_ELSE),
            "object": obj,
        }
        if old is not None:
            payload["old_object"] = ids | old
        body = {"event": event, "event_ts": self._last_ts, "payload": payload}
        if self._thread is None:
            self._thread = threading.Thread(target=self._send_forever, name="sim-webhooks")
            self._thread.daemon = True
            self._thread.start()
        self._queue.put((url, secret.encode(), json.dumps(body).encode()))

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued event was sent (or failed); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def counts(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self.stats)

    def _send_forever(self) -> None:
        while True:
            url, secret, body = self._queue.get()
            try:
                ok = self._send(url, secret, body)
                for delay in RETRY_DELAYS_S if ok is None else ():
                    time.sleep(delay)  # this thread's own wait: the Simulator's lock is free
                    if (ok := self._send(url, secret, body)) is not None:
                        break
            finally:
                self._queue.task_done()
            with self._stats_lock:
                self.stats["webhooks_sent" if ok else "webhooks_failed"] += 1

    @staticmethod
    def _send(url: str, secret: bytes, body: bytes) -> bool | None:
        """True on a 2xx answer, False on a 4xx (never retried), None to retry."""
        timestamp = str(int(time.time()))
        signature = hmac.new(secret, b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256)
        request = urllib.request.Request(  # noqa: S310 - the configured http(s) URL
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "x-zm-request-timestamp": timestamp,
                "x-zm-signature": "v0=" + signature.hexdigest(),
                "User-Agent": "Zoom Marketplace/1.0a",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_S) as answer:  # noqa: S310
                return 200 <= int(answer.status) < 300
        except urllib.error.HTTPError as exc:
            return None if exc.code >= 500 else False
        except (urllib.error.URLError, OSError) as exc:
            log.debug("simulator.webhook_failed %s", type(exc).__name__)
            return None
