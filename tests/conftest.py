"""Shared fixtures: real spool files under tmp_path, a real loopback endpoint, the
process time zone."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kit import API_KEY, MakeRig, Rig

from spoolpost import Client
from spoolpost.spool import Spool
from spoolpost.testing import LocalEndpoint


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    """A spool file path in this test's own temporary folder."""
    return tmp_path / "spool" / "events.spool"


@pytest.fixture
def spool(spool_path: Path) -> Iterator[Spool]:
    """An open Spool on ``spool_path``, closed after the test."""
    with Spool(spool_path) as s:
        yield s


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


@pytest.fixture
def make_rig(spool_path: Path, endpoint: LocalEndpoint) -> Iterator[MakeRig]:
    """Build rigs (kit.Rig) on ``spool_path`` and ``endpoint``; all closed at teardown."""
    made: list[Rig] = []

    def make(**options: Any) -> Rig:
        rig = Rig.build(spool_path, endpoint, **options)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


@pytest.fixture
def rig(make_rig: MakeRig) -> Rig:
    """A rig with the default options."""
    return make_rig()


@pytest.fixture
def set_tz() -> Iterator[Callable[[str], None]]:
    """Switch the process time zone (TZ + tzset) for the rest of the test; restored
    afterwards. POSIX TZ strings need no tz database: "EST5" is UTC-5, "IST-5:30" is
    UTC+05:30."""
    before = os.environ.get("TZ")

    def set_tz(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield set_tz
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.fixture(params=["UTC0", "IST-5:30"], ids=["tz-utc", "tz-kolkata"])
def local_tz(request: pytest.FixtureRequest, set_tz: Callable[[str], None]) -> str:
    """Run the test once in each time zone, UTC and Kolkata (for others, parametrize
    ``local_tz`` with ``indirect=True``); the TZ in force."""
    set_tz(request.param)
    return str(request.param)
