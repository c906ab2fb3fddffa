"""What crosses the wire: the request and reply values, JSON answers, Basic auth and routing."""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Request:
    """One HTTP request as the simulator sees it (path without query, query parsed)."""

    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    host: str
    body: bytes


@dataclass(frozen=True)
class Reply:
    """The answer: status, headers and a body serialised under the lock; or a dropped line."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(payload).encode(), headers or {})


def error_reply(
    status: int, code: int, message: str, headers: dict[str, str] | None = None
) -> Reply:
    return json_reply(status, {"code": code, "message": message}, headers)


DROPPED = Reply(0, drop=True)


def utc_stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_object(body: bytes) -> dict[str, Any] | None:
    """The JSON object in a request body ({} when empty), or None when it is not one."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, sep, secret = (
            base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        )
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (client_id, secret) if sep else None


_USER_MEETINGS = re.compile(r"/v2/users/([^/]+)/meetings/?")
_MEETING = re.compile(r"/v2/meetings/([^/]+)/?")
_USER = re.compile(r"/v2/users/(me)/?")  # only the token's own user


def api_route(method: str, path: str) -> tuple[str, str] | None:
    """The operation name and its path argument, or None for an unknown route."""
    if match := _USER_MEETINGS.fullmatch(path):
        operation = {"POST": "create", "GET": "list"}.get(method)
    elif match := _MEETING.fullmatch(path):
        operation = {"GET": "get", "PATCH": "update", "DELETE": "delete"}.get(method)
    elif match := _USER.fullmatch(path):
        operation = {"GET": "user"}.get(method)
    else:
        return None
    return (operation, urllib.parse.unquote(match.group(1))) if operation else None
