"""What the worker reports about a task it received: arguments with every body masked.

A task's ``task-received`` event (read by Flower), the worker's own log lines and
``celery inspect`` show the message's ``argsrepr`` and ``kwargsrepr`` headers, which the
*sender* wrote; ``inspect reserved`` and ``inspect scheduled`` (on Flower's worker page)
even show the arguments themselves. A producer that sends ``meetings.create`` by name may
have put the whole meeting body in those headers, passcode (``password``) included, or left
them out, in which case Celery builds them from the arguments.

:class:`MaskedRequest` rewrites both headers as the message is received, before any event
or log line is made from it, and answers ``inspect`` with them: every ``dict`` argument (a
meeting body; no task of ours takes another kind of dict) is shown as :class:`MaskedBody`,
which keeps only the ``topic``. The arguments the task runs with are untouched. The app's
task class, :class:`MaskedTask`, uses it for every task.

What the sender itself reports (its ``task-sent`` event) is the sender's business: the README
shows by-name producers how to pass ``kwargsrepr``.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.utils.saferepr import saferepr
from celery.worker.request import Request

# Celery's own limits for these headers (celery.app.amqp.AMQP.*repr_maxsize).
REPR_MAXSIZE = 1024


class MaskedBody:
    """Stands for a masked body in a repr; shows its topic only."""

    __slots__ = ("topic",)

    def __init__(self, body: dict[Any, Any]) -> None:
        topic = body.get("topic")
        self.topic = topic if isinstance(topic, str) else None

    def __repr__(self) -> str:
        return f"<body masked, topic={self.topic!r}>"


def masked(value: Any) -> Any:
    """``value``, or a :class:`MaskedBody` in its place when it is a dict."""
    return MaskedBody(value) if isinstance(value, dict) else value


def masked_reprs(args: Any, kwargs: Any) -> tuple[str, str]:
    """``argsrepr`` and ``kwargsrepr`` for these arguments, every dict masked."""
    shown_args = [masked(arg) for arg in args] if isinstance(args, list | tuple) else args
    shown_kwargs = (
        {name: masked(value) for name, value in kwargs.items()}
        if isinstance(kwargs, dict)
        else kwargs
    )
    return saferepr(shown_args, REPR_MAXSIZE), saferepr(shown_kwargs, REPR_MAXSIZE)


class MaskedRequest(Request):
    """Celery's worker-side request, with argument reprs the worker computes itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        argsrepr, kwargsrepr = masked_reprs(self.args, self.kwargs)
        # The request dict becomes the task's context in the pool process (its log lines).
        self._argsrepr = self.request_dict["argsrepr"] = argsrepr
        self._kwargsrepr = self.request_dict["kwargsrepr"] = kwargsrepr

    def info(self, safe: bool = False) -> Any:
        """What ``celery inspect`` shows of the request (Flower's worker page asks for the
        reserved and scheduled ones unsafe): always the masked reprs, never the arguments."""
        return super().info(safe=True)


class MaskedTask(Task):  # type: ignore[type-arg]  # the app's base task class
    """The app's task class: every task received through :class:`MaskedRequest`."""

    Request = "worker.events:MaskedRequest"
