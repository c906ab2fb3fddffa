"""The test harness itself: what tests/conftest.py promises other tests."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import conftest
import pytest


def test_spawn_celery__not_ready_in_time__killed_not_left_running(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker left running after its test would take the next test's messages from the same
    # broker database (each xdist process reuses its databases for every test).
    spawned: list[subprocess.Popen[Any]] = []
    real_popen = subprocess.Popen

    def recording_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        spawned.append(real_popen(*args, **kwargs))
        return spawned[-1]

    monkeypatch.setattr(conftest.subprocess, "Popen", recording_popen)
    arguments = ["worker", "--pool", "solo", "--without-gossip", "--without-mingle"]

    with pytest.raises(AssertionError, match="celery late ready: not within 1s"):
        conftest.spawn_celery(
            "late", arguments, env, tmp_path / "late.log", "a line never logged", timeout=1
        )

    assert len(spawned) == 1
    assert spawned[0].poll() is not None, "the worker that was not ready still runs"


def test_redis_db__each_xdist_worker__databases_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    per_worker = []
    for index in (0, 1):
        monkeypatch.setattr(conftest, "XDIST_INDEX", index)
        per_worker.append({conftest.redis_db(n) for n in range(8, 16)})

    assert per_worker == [set(range(8, 16)), set(range(8))]
