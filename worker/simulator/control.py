"""The simulator's control API: every ``/_sim/...`` request, answered through the public
methods of :class:`~worker.simulator.behaviour.Simulator` (which take its lock)."""

from __future__ import annotations

import re
import urllib.parse
from typing import TYPE_CHECKING, Any

from worker.simulator.wire import Reply, Request, error_reply, json_reply, parse_object

if TYPE_CHECKING:
    from worker.simulator.behaviour import Simulator

_MEETING_STATUS = re.compile(r"/_sim/meetings/(\d+)/status")
_MEETING = re.compile(r"/_sim/meetings/(\d+)")
_USER_SETTINGS = re.compile(r"/_sim/users/([^/]+)/settings")


def dispatch(sim: Simulator, request: Request) -> Reply:
    """Answer one control request: the action's answer, or ``{"ok": true}``."""
    method, path = request.method, request.path.rstrip("/")
    body = parse_object(request.body)
    if body is None:
        return error_reply(400, 300, "Request Body should be a valid JSON object.")
    try:
        return _action(sim, method, path, body) or json_reply(200, {"ok": True})
    except ValueError as exc:
        return error_reply(400, 300, str(exc))
    except KeyError as exc:
        return error_reply(404, 3001, f"Meeting does not exist: {exc.args[0]}.")


def _action(sim: Simulator, method: str, path: str, body: dict[str, Any]) -> Reply | None:
    """The answer to one control request; None for a plain ``{"ok": true}``."""
    if method == "GET" and path == "/_sim/stats":
        return json_reply(200, sim.stats())
    if method == "GET" and path == "/_sim/meetings":
        return json_reply(200, sim.meetings())
    if method == "GET" and path == "/_sim/config":
        return json_reply(200, sim.config.public_dict())
    if method == "PATCH" and (match := _MEETING.fullmatch(path)):
        sim.update_meeting(int(match.group(1)), body)
        return None
    if method == "DELETE" and (match := _MEETING.fullmatch(path)):
        occurrence_id = body.get("occurrence_id")
        sim.delete_meeting(int(match.group(1)), str(occurrence_id) if occurrence_id else None)
        return None
    if method != "POST":
        return error_reply(404, 404, "Not Found")
    if path == "/_sim/config":
        return json_reply(200, sim.configure(**body).public_dict())
    if path == "/_sim/reset":
        sim.reset()
    elif path == "/_sim/faults":
        sim.fail_next(str(body.get("operation")), body.get("count", 1), body.get("status", 503))
    elif path == "/_sim/invalidate-tokens":
        sim.invalidate_tokens()
    elif path == "/_sim/rotate-secret":
        secret = body.get("client_secret")
        if not isinstance(secret, str) or not secret:
            return error_reply(400, 300, "client_secret: a non-empty string is required")
        sim.rotate_secret(secret)
    elif path == "/_sim/oauth/authorize":
        client_id, user_id = body.get("client_id"), body.get("user_id")
        redirect_uri, account_id = body.get("redirect_uri"), body.get("account_id")
        if not all(isinstance(v, str) and v for v in (client_id, user_id, redirect_uri)):
            return error_reply(400, 300, "client_id, user_id and redirect_uri are required")
        code = sim.authorize_user(
            str(client_id), str(user_id), str(redirect_uri), str(account_id or "") or None
        )
        return json_reply(200, {"code": code})
    elif path == "/_sim/oauth/revoke":
        if not isinstance(user_id := body.get("user_id"), str) or not user_id:
            return error_reply(400, 300, "user_id is required")
        return json_reply(200, {"revoked": sim.revoke_user(user_id)})
    elif path == "/_sim/clock":
        seconds = body.get("advance_s")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            return error_reply(400, 300, "advance_s: a number of seconds is required")
        return json_reply(200, {"now": sim.advance_clock(seconds)})
    elif path == "/_sim/meetings":
        user_id, meeting = body.get("user_id"), body.get("body") or {}
        if not isinstance(user_id, str) or not user_id or not isinstance(meeting, dict):
            return error_reply(400, 300, "user_id (a string) and body (an object) required")
        return json_reply(201, sim.seed_meeting(user_id, meeting))
    elif match := _MEETING_STATUS.fullmatch(path):
        sim.set_meeting_status(int(match.group(1)), str(body.get("status")))
    elif match := _USER_SETTINGS.fullmatch(path):
        if not isinstance(enabled := body.get("use_pmi"), bool):
            return error_reply(400, 300, "use_pmi: true or false is required")
        user_id = urllib.parse.unquote(match.group(1))
        return json_reply(200, {"pmi": sim.set_use_pmi(user_id, enabled)})
    else:
        return error_reply(404, 404, "Not Found")
    return None
