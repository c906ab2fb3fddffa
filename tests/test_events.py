"""What the worker reports of a task's arguments: every body masked to its topic."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery.utils.saferepr import saferepr

from worker import events, tasks

BODY = {"topic": "Board", "password": "Pq7-zX9@w", "agenda": "Dial in", "type": 2}


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {"user_id": "host@example.com", "meeting": BODY}),
        (("host@example.com", BODY), {}),
        ((), {"user_id": "host@example.com", "unexpected": {"nested": BODY}}),
        ((), {"user_id": "host@example.com", "meeting": json.dumps(BODY)}),
        (("host@example.com", [BODY]), {}),
    ],
    ids=["keyword", "positional", "unknown-keyword", "body-as-text", "in-a-list"],
)
def test_events__bodies_in_args__shown_as_topic_only(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    argsrepr, kwargsrepr = events.masked_reprs(args, kwargs)

    shown = argsrepr + kwargsrepr
    assert "Pq7-zX9@w" not in shown and "Dial in" not in shown
    assert "host@example.com" in shown


def test_events__plain_arguments__shown_as_celery_would() -> None:
    kwargs = {"job_id": "8d5c", "user_id": "host@example.com", "topic": "Board"}

    argsrepr, kwargsrepr = events.masked_reprs([], kwargs)

    assert kwargsrepr == repr(kwargs) and argsrepr == "[]"
    assert "<body masked, topic='Board'>" in events.masked_reprs([], {"meeting": BODY})[1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"job_id": "8d5c", "priority": "normal", "user_id": "host@example.com", "topic": "Böard"},
        {"job_id": "8d5c", "meeting_id": 85746065432, "slot_at": 1764756000.123456, "x": None},
        {"job_id": "8d5c", "topic": 'It\'s \\ a "quote"\n', "ok": True},
        {"job_id": "8d5c", "topic": "x" * 2000},
    ],
    ids=["create", "numbers", "quotes-and-backslashes", "over-the-limit"],
)
def test_events__job_message__same_text_as_saferepr(kwargs: dict[str, Any]) -> None:
    # The fast path for plain messages must write exactly what Celery's saferepr writes.
    argsrepr, kwargsrepr = events.masked_reprs((), kwargs)

    assert argsrepr == saferepr((), events.REPR_MAXSIZE)
    assert kwargsrepr == saferepr(kwargs, events.REPR_MAXSIZE)


def test_events__job_message__no_saferepr_in_the_main_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # saferepr costs about 70 us a message in the worker's main process; repr() 3 us.
    def refuse(*_: Any) -> str:
        raise AssertionError("saferepr called for a plain job message")

    monkeypatch.setattr(events, "saferepr", refuse)
    kwargs = {"job_id": "8d5c", "priority": "normal", "user_id": "h@example.com", "topic": "B"}

    assert events.masked_reprs((), kwargs) == ("()", repr(kwargs))


def test_events__every_task__received_through_the_masked_request() -> None:
    ours = [tasks.create_meeting, tasks.delete_meeting, tasks.sweep, tasks.cleanup_stale]

    assert all(task.Request == "worker.events:MaskedRequest" for task in ours)
    assert all(isinstance(task, events.MaskedTask) for task in ours)
