"""A token store and a Zoom client built from this test's settings, closed after the test.

Shared by test_token_store and test_circuit; the token store's spawned children build theirs
here too. A test module takes ``close_opened`` by importing it (pytest finds fixtures in a
module's globals)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker import db, token_store, zoom
from worker.config import get_settings

_opened: list[token_store.TokenStore | zoom.ZoomClient] = []


def new_store() -> token_store.TokenStore:
    """A TokenStore on this test's database, closed after the test."""
    store = token_store.TokenStore(get_settings(), db.sessions(get_settings()))
    _opened.append(store)
    return store


def new_client(store: token_store.TokenStore) -> zoom.ZoomClient:
    """A ZoomClient on this test's simulator through ``store``, closed after the test."""
    client = zoom.ZoomClient(get_settings().ZOOM_API_URL, zoom.ZoomAuth(store), timeout_s=5)
    _opened.append(client)
    return client


@pytest.fixture(autouse=True)
def close_opened() -> Iterator[None]:
    """Close every store and client the test built."""
    yield
    while _opened:
        _opened.pop().close()
