"""A Redis master, its replica and Sentinels of a test's own, on free private ports.

Debian's ``redis-sentinel`` is ``redis-server CONFIG --sentinel``: the same binary, so
nothing more than the ``redis-server`` the tests already need. Sentinel rewrites its
configuration file, so each gets one in the test's directory.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from conftest import wait_for

MASTER_NAME = "mymaster"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _ping(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_connect_timeout=0.5) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass
class SentinelSet:
    """The servers of one test: ``master_port`` and ``replica_port`` swap roles on failover."""

    master_port: int
    replica_port: int
    sentinel_ports: list[int]
    processes: list[subprocess.Popen[bytes]]

    def broker_url(self, db: int) -> str:
        """Celery's ``sentinel://`` list (with ``REDIS_SENTINEL_MASTER``)."""
        return ";".join(f"sentinel://127.0.0.1:{port}/{db}" for port in self.sentinel_ports)

    def governor_url(self, db: int) -> str:
        """The governor's ``redis+sentinel://`` form."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/{db}"

    def sentinel(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[0], decode_responses=True)

    def current_master_port(self) -> int:
        with self.sentinel() as client:
            _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    def replica_in_sync(self) -> bool:
        """The master's replica is online and every Sentinel knows it (a failover needs it)."""
        for port in self.sentinel_ports:
            with redis.Redis(port=port, decode_responses=True) as client:
                replicas = client.sentinel_slaves(MASTER_NAME)
            if not any(r["master-link-status"] == "ok" and not r["is_odown"] for r in replicas):
                return False
        return True

    def failover(self) -> int:
        """Sentinel promotes the replica; returns the new master's port once it says so.

        The Sentinels are shared by a module's tests: after an earlier failover the old master
        has just been turned into a replica, and Sentinel refuses to promote one that is not in
        sync yet (``-failover-abort-no-good-slave``), so wait for it first."""
        wait_for(self.replica_in_sync, timeout=30, what="a replica in sync to promote")
        old = self.current_master_port()
        with self.sentinel() as client:
            client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        wait_for(lambda: self.current_master_port() != old, timeout=30, what="a new master")
        return self.current_master_port()


def _redis(arguments: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(["redis-server", *arguments], stdout=out, stderr=subprocess.STDOUT)


@contextmanager
def sentinel_set(directory: Path, sentinels: int = 2) -> Iterator[SentinelSet]:
    """Start a master, a replica and ``sentinels`` Sentinels (quorum 1); stop them after."""
    master, replica = free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)]
    processes = [
        _redis(["--port", str(master), *common], directory / "master.log"),
        _redis(
            ["--port", str(replica), *common, "--replicaof", "127.0.0.1", str(master)],
            directory / "replica.log",
        ),
    ]
    ports = [free_port() for _ in range(sentinels)]
    try:
        for port in (master, replica):
            wait_for(lambda port=port: _ping(port), timeout=10, what=f"redis-server on {port}")
        for port in ports:
            config = directory / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 1\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            )
            processes.append(
                _redis([str(config), "--sentinel"], directory / f"sentinel-{port}.log")
            )
        for port in ports:
            wait_for(lambda port=port: _ping(port), timeout=10, what=f"sentinel on {port}")
        found = SentinelSet(master, replica, ports, processes)
        wait_for(found.replica_in_sync, timeout=30, what="Sentinels seeing the replica in sync")
        yield found
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)
