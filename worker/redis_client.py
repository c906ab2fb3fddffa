"""Redis clients for the rate governor's URL (``REDIS_URL``): one server, or one behind Sentinel.

The forms a governor URL may take:

- ``redis://[[user]:password@]host:port/db``, ``rediss://...``, ``unix:///path?db=n``: one
  server, as redis-py reads it.
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``: the master of
  ``service`` (Sentinel's master name) as the Sentinels at those addresses report it; the
  password is the master's. Every new connection asks the Sentinels where the master is, and
  a connection to a former master (demoted by a failover) is dropped at its first refused
  write, so the next command reaches the new master.
- Celery's ``sentinel://host:port[/db];sentinel://host:port`` with the master's name given
  apart (``REDIS_SENTINEL_MASTER``): :func:`from_celery_sentinel` turns it into the form above,
  so a broker behind Sentinel can serve as the governor's Redis too.

This module knows nothing of Settings; :mod:`worker.config` checks the URLs with it.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"
CELERY_SENTINEL_SCHEME = "sentinel"
PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelAddress:
    """Where Sentinel finds the governor's master: the Sentinels, the master's name, the
    database and the master's credentials (``repr`` leaves the password out)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        return f"SentinelAddress({self.describe()}, db={self.db})"

    def describe(self) -> str:
        """The Sentinels and the master's name, never the password."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"Sentinel {hosts} (master {self.service})"


def parse_sentinel(url: str) -> SentinelAddress:
    """Read a ``redis+sentinel://`` URL; ValueError says what is wrong, without the password."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"a Sentinel URL starts with {SENTINEL_SCHEME}://")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    sentinels = tuple(_host_port(item) for item in hosts.split(",") if item.strip())
    if not sentinels:
        raise ValueError("names no Sentinel: redis+sentinel://host:port[,host:port]/service/db")
    segments = [part for part in parts.path.split("/") if part]
    if not segments or len(segments) > 2:
        raise ValueError("must end with /service or /service/db (Sentinel's master name)")
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ValueError("the database after the master's name must be a whole number")
        db = int(segments[1])
    return SentinelAddress(
        sentinels=sentinels,
        service=urllib.parse.unquote(segments[0]),
        db=db,
        username=urllib.parse.unquote(username) or None,
        password=urllib.parse.unquote(password) or None,
    )


def from_celery_sentinel(url: str, service: str) -> str:
    """Celery's ``sentinel://h:p/db;sentinel://h:p`` list and the master's name as a
    ``redis+sentinel://`` URL (the database and password come from the first address, as
    kombu takes them)."""
    addresses = [urllib.parse.urlsplit(part.strip()) for part in url.split(";") if part.strip()]
    if not addresses or any(a.scheme != CELERY_SENTINEL_SCHEME for a in addresses):
        raise ValueError("expected sentinel://host:port[;sentinel://host:port...]")
    first = addresses[0]
    credentials = first.netloc.rpartition("@")[0]
    hosts = ",".join(a.netloc.rpartition("@")[2] for a in addresses)
    db = first.path.strip("/") or "0"
    userinfo = f"{credentials}@" if credentials else ""
    return f"{SENTINEL_SCHEME}://{userinfo}{hosts}/{urllib.parse.quote(service, safe='')}/{db}"


def check(url: str) -> None:
    """Raise ValueError when ``url`` is no governor URL this module can connect with."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme == SENTINEL_SCHEME:
        parse_sentinel(url)
    elif scheme not in PLAIN_SCHEMES:
        raise ValueError(
            "must be a redis://, rediss://, unix:// or redis+sentinel:// URL (or Celery's "
            "sentinel:// list with REDIS_SENTINEL_MASTER)"
        )


def connect(url: str, **connection: Any) -> redis.Redis:
    """A client for ``url``; ``connection`` (timeouts, retry) applies to the master's
    connections and, for Sentinel, the timeouts to the Sentinels' too. Connecting is lazy:
    an unreachable server or Sentinel fails the first command (a ``redis.RedisError``)."""
    if urllib.parse.urlsplit(url).scheme != SENTINEL_SCHEME:
        return redis.Redis.from_url(url, **connection)
    address = parse_sentinel(url)
    timeouts = {
        name: connection[name]
        for name in ("socket_timeout", "socket_connect_timeout")
        if name in connection
    }
    sentinels = list(address.sentinels)
    sentinel = Sentinel(sentinels, sentinel_kwargs=timeouts)  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        address.service,
        db=address.db,
        username=address.username,
        password=address.password,
        **connection,
    )
    return client


def same_server(a: redis.Redis, b: redis.Redis) -> bool:
    """True when both clients reach the same database of the same server (the same address,
    or the same master of the same Sentinels), so that one script can serve both: their
    timeouts and retries may differ."""
    return _where(a) == _where(b)


def _where(client: redis.Redis) -> tuple[Any, ...]:
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    address = tuple(kwargs.get(name) for name in ("host", "port", "path", "db"))
    manager = getattr(pool, "sentinel_manager", None)
    if manager is None:
        return address
    found = (sentinel.connection_pool.connection_kwargs for sentinel in manager.sentinels)
    sentinels = tuple((kwargs.get("host"), kwargs.get("port")) for kwargs in found)
    return (*address, getattr(pool, "service_name", None), sentinels)


def describe(url: str, service: str | None = None) -> str:
    """Where ``url`` leads, for an operator: host and port, or the Sentinels and the
    master's name (``service`` for Celery's ``sentinel://`` list); never a password."""
    parts = urllib.parse.urlsplit(url)
    try:
        if parts.scheme == CELERY_SENTINEL_SCHEME:
            url = from_celery_sentinel(url, service or "")
        if urllib.parse.urlsplit(url).scheme == SENTINEL_SCHEME:
            return parse_sentinel(url).describe()
    except ValueError:
        return "(an unparsable Sentinel URL)"
    if parts.scheme == "unix":
        return parts.path
    try:
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        return "(an unparsable URL)"


def _host_port(item: str) -> tuple[str, int]:
    host, sep, port = item.strip().rpartition(":")
    if not sep:
        host, port = port, str(SENTINEL_PORT)
    if not host or not port.isdigit():
        raise ValueError(f"{item.strip()!r} is not a Sentinel's host:port")
    return host.strip("[]"), int(port)
