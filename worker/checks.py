"""Checks of JSON values built from a schema's rules, each raising ``InvalidMeeting`` with the
field's dotted path (``settings.approval_type``, ``tracking_fields[0].field``).

:mod:`worker.meeting_body` builds Zoom's create-meeting body from them. A check takes the
field's path and a value already copied by :func:`json_copy`, so only dict, list, str, int,
float, bool and None reach it.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from typing import Any, NoReturn

from worker import errors

Check = Callable[[str, Any], None]

_JSON_KINDS: dict[type, str] = {bool: "a boolean", int: "an integer", float: "a number"}
_JSON_KINDS |= {str: "a string", list: "a list", dict: "an object", type(None): "null"}


def fail(path: str, message: str) -> NoReturn:
    raise errors.InvalidMeeting(path, message)


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def show(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else f"{text[:57]}..."


def kind(value: object) -> str:
    return _JSON_KINDS[type(value)]  # every value has been through _json_copy


def json_copy(path: str, value: object) -> Any:
    """A deep copy of ``value`` made only of dict, list, str, int, float, bool and None."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            fail(path or "body", f"is {value}, which JSON cannot carry")
        return float(value)
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                fail(path or "body", f"has the key {key!r}; JSON object keys must be strings")
        return {str.__str__(k): json_copy(join(path, k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_copy(f"{path}[{i}]", item) for i, item in enumerate(value)]
    if isinstance(value, datetime | date | time):
        fail(path, 'is a Python datetime; pass an ISO string such as "2026-12-01T10:00:00Z"')
    fail(path or "body", f"is a {type(value).__name__}, which JSON cannot carry; use list or str")


# -- checks, built from a schema's rules ---------------------------------------------------


def string(max_len: int | None = None, pattern: str = "", shape: str = "") -> Check:
    compiled = re.compile(pattern) if pattern else None

    def check(path: str, value: Any) -> None:
        if not isinstance(value, str):
            fail(path, f"must be a string, not {kind(value)}")
        if max_len is not None and len(value) > max_len:
            fail(path, f"must be at most {max_len} characters; got {len(value)}")
        if compiled is not None and not compiled.fullmatch(value):
            fail(path, f"must be {shape}; got {show(value)}")

    return check


def integer(low: int, high: int) -> Check:
    def check(path: str, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            fail(path, f"must be an integer, not {kind(value)}")
        if not low <= value <= high:
            fail(path, f"must be between {low} and {high}; got {value}")

    return check


def choice(*choices: bool | int | str) -> Check:
    def check(path: str, value: Any) -> None:
        # type() as well as ==: True == 1 and 1.0 == 1, but Zoom refuses both for an integer.
        if type(value) is not type(choices[0]) or value not in choices:
            fail(path, f"must be one of {', '.join(map(show, choices))}; got {show(value)}")

    return check


def array(item: Check) -> Check:
    def check(path: str, value: Any) -> None:
        if not isinstance(value, list):
            fail(path, f"must be a list, not {kind(value)}")
        for index, element in enumerate(value):
            item(f"{path}[{index}]", element)

    return check


def obj(
    fields: Mapping[str, Check], *, required: tuple[str, ...] = (), closed: bool = False
) -> Check:
    def check(path: str, value: Any) -> None:
        if not isinstance(value, dict):
            fail(path or "body", f"must be an object, not {kind(value)}")
        for name in required:
            if name not in value:
                fail(join(path, name), "is required")
        for name, element in value.items():
            if name in fields:
                fields[name](join(path, name), element)
            elif closed:
                fail(join(path, name), unknown(name, fields))

    return check


def unknown(name: str, fields: Mapping[str, Check]) -> str:
    guess = difflib.get_close_matches(name, list(fields), n=1)
    hint = f'did you mean "{guess[0]}"?' if guess else f"known fields: {', '.join(sorted(fields))}"
    return f"is not a field Zoom knows here, and Zoom would silently ignore it; {hint}"
