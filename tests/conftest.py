"""Shared fixtures: real spool files under tmp_path, a real loopback endpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kit import API_KEY

from spoolpost import Client
from spoolpost.testing import LocalEndpoint


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    """A spool file path in this test's own temporary folder."""
    return tmp_path / "spool" / "events.spool"


@pytest.fixture
def endpoint() -> Iterator[LocalEndpoint]:
    """A started loopback endpoint, stopped after the test."""
    with LocalEndpoint() as ep:
        yield ep


@pytest.fixture
def make_client(spool_path: Path, endpoint: LocalEndpoint) -> Iterator[Callable[..., Client]]:
    """Build clients on ``spool_path`` and ``endpoint``; all shut down at teardown."""
    made: list[Client] = []

    def make(**options: Any) -> Client:
        options.setdefault("spool", spool_path)
        client = Client(
            options.pop("api_key", API_KEY), options.pop("host", endpoint.url), **options
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.shutdown(timeout=1)
