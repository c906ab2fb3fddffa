"""kombu's Redis transports, keeping one redis-py client per channel.

kombu's Redis channel builds a new ``redis.Redis`` for every operation it runs outside its
event loop (``Channel.conn_or_acquire``: each publish, acknowledgement, queue size, fanout
lookup): redis-py copies its table of some 170 response callbacks into every new client, a
sixth of a worker main process's Redis work under load. A client holds no state of its own
but its connection pool, and each command takes a connection from that pool, so one client
per channel serves every operation; it is rebuilt when the channel's pool is (after a
connection error kombu drops the pool). Nothing changes on the wire.

:func:`for_url` names the transport class for Celery's ``broker_transport`` setting: these
for ``redis://`` and ``sentinel://``, kombu's own for any other scheme (``rediss://`` keeps
kombu's checks of its TLS options).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

_BY_SCHEME = {
    "redis": f"{__name__}:Transport",
    "sentinel": f"{__name__}:SentinelTransport",
}


def for_url(url: str) -> str | None:
    """The ``broker_transport`` for a broker URL: a class path, or None for kombu's own."""
    return _BY_SCHEME.get(urllib.parse.urlsplit(url).scheme.lower())


class _OneClient:
    """``conn_or_acquire`` on one client per channel and connection pool."""

    _one_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool  # type: ignore[attr-defined]  # kombu's Channel
        found = self._one_client
        if found is None or found.connection_pool is not pool:
            found = self._one_client = self._create_client()  # type: ignore[attr-defined]
        yield found


class Channel(_OneClient, kombu_redis.Channel):
    """kombu's Redis channel with one client for its operations."""


class Transport(kombu_redis.Transport):
    """kombu's Redis transport on :class:`Channel`."""

    Channel = Channel


class SentinelChannel(_OneClient, kombu_redis.SentinelChannel):
    """kombu's Redis-behind-Sentinel channel with one client for its operations."""


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Redis-behind-Sentinel transport on :class:`SentinelChannel`."""

    Channel = SentinelChannel
