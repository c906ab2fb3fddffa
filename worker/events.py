"""What the worker reports about a task it received: arguments with every body masked.

A task's ``task-received`` event (read by Flower), the worker's own log lines and
``celery inspect`` show the message's ``argsrepr`` and ``kwargsrepr`` headers, which the
*sender* wrote; ``inspect reserved`` and ``inspect scheduled`` (on Flower's worker page)
even show the arguments themselves. A producer that sends ``meetings.create`` by name may
have put the whole meeting body in those headers, passcode (``password``) included, or left
them out, in which case Celery builds them from the arguments.

:class:`MaskedRequest` rewrites both headers as the message is received, before any event
or log line is made from it, and answers ``inspect`` with them: every ``dict`` argument (a
meeting body; no task of ours takes another kind of dict), even inside a list, and the
``meeting`` argument whatever its type, are shown as :class:`MaskedBody`, which keeps only
the ``topic``. The arguments the task runs with are untouched. The app's
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


# Arguments that carry a meeting body, masked whatever the sender put in them.
BODY_ARGUMENTS = frozenset({"meeting"})


class MaskedBody:
    """Stands for a masked body in a repr; shows its topic only."""

    __slots__ = ("topic",)

    def __init__(self, body: object) -> None:
        topic = body.get("topic") if isinstance(body, dict) else None
        self.topic = topic if isinstance(topic, str) else None

    def __repr__(self) -> str:
        return f"<body masked, topic={self.topic!r}>"


def masked(value: Any) -> Any:
    """``value`` with every dict in it (at any depth of lists) replaced by a MaskedBody."""
    if isinstance(value, dict):
        return MaskedBody(value)
    if isinstance(value, list | tuple):
        return type(value)(masked(item) for item in value)
    return value


def masked_reprs(args: Any, kwargs: Any) -> tuple[str, str]:
    """``argsrepr`` and ``kwargsrepr`` for these arguments: every dict masked, and a
    ``meeting`` argument masked whatever its type."""
    if _plain(args, kwargs):
        # Our own job messages (ids, names, numbers): nothing to mask, and repr() writes what
        # saferepr() would, some twenty times faster (this runs in the worker's main process
        # for every message it receives).
        return repr(args), repr(kwargs)
    if isinstance(kwargs, dict):
        shown_kwargs = {
            name: MaskedBody(value) if name in BODY_ARGUMENTS else masked(value)
            for name, value in kwargs.items()
        }
    else:
        shown_kwargs = masked(kwargs)
    return saferepr(masked(args), REPR_MAXSIZE), saferepr(shown_kwargs, REPR_MAXSIZE)


_PLAIN_SCALARS = (int, float, bool, type(None))
# Characters saferepr() writes differently from repr() (it does not escape them).
_UNSAFE = frozenset("\\'\"")


def _plain(args: Any, kwargs: Any) -> bool:
    """No arguments, and keyword arguments that are short plain scalars and printable text
    without quotes or backslashes (so repr() and saferepr() agree), no ``meeting``."""
    if args not in ((), []) or not isinstance(kwargs, dict) or BODY_ARGUMENTS & kwargs.keys():
        return False
    for name, value in kwargs.items():
        if not isinstance(name, str) or not _plain_text(name):
            return False
        if isinstance(value, str):
            if not _plain_text(value):
                return False
        elif not isinstance(value, _PLAIN_SCALARS):
            return False
    return len(repr(kwargs)) <= REPR_MAXSIZE


def _plain_text(text: str) -> bool:
    return text.isprintable() and _UNSAFE.isdisjoint(text)


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
