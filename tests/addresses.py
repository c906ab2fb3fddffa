"""This machine's addresses, for tests about what listens where."""

from __future__ import annotations

import contextlib
import ipaddress
import socket

import pytest


def non_loopback_address() -> str:
    """An IPv4 address of this machine that is not loopback; skips the test when it has none."""
    candidates: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, contextlib.suppress(OSError):
        # UDP connect sends nothing: it only picks the interface a packet would leave by.
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1, documentation only
        candidates.append(str(probe.getsockname()[0]))
    with contextlib.suppress(OSError):
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    for address in candidates:
        ip = ipaddress.ip_address(address)
        if not (ip.is_loopback or ip.is_unspecified):
            return address
    pytest.skip("this machine has no non-loopback IPv4 address")
