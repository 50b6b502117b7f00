"""The module-level API reads ``disabled`` and ``debug`` at every call, as posthog-python
7.x's ``setup()`` does; the other settings once, when the default client is made.

A real spool under tmp_path and the loopback endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kit import API_KEY, live

import spoolpost
from spoolpost.dropin.module import PER_CALL_SETTINGS
from spoolpost.testing import LocalEndpoint


@pytest.fixture
def settings(
    monkeypatch: pytest.MonkeyPatch, spool_path: Path, endpoint: LocalEndpoint
) -> Iterator[None]:
    """The module's settings pointed at this test's spool and endpoint (capture-only,
    so the spool shows what was stored), no default client yet; shut down after."""
    values: dict[str, Any] = {
        "api_key": API_KEY,
        "project_api_key": None,
        "host": endpoint.url,
        "spool_path": str(spool_path),
        "disabled": False,
        "debug": False,
        "send": True,
        "deliver": False,
        "before_send": None,
        "client_options": {},
        "default_client": None,
    }
    for name, value in values.items():
        monkeypatch.setattr(spoolpost, name, value)
    yield
    spoolpost.shutdown()


def names(spool_path: Path) -> list[str]:
    return [e.event["event"] for e in live(spool_path)]


@pytest.mark.usefixtures("settings")
def test_disabled_is_read_at_every_call(monkeypatch: pytest.MonkeyPatch, spool_path: Path) -> None:
    assert spoolpost.capture("one", distinct_id="u") is not None
    client = spoolpost.default_client

    monkeypatch.setattr(spoolpost, "disabled", True)
    assert spoolpost.capture("while disabled", distinct_id="u") is None
    monkeypatch.setattr(spoolpost, "disabled", False)
    assert spoolpost.capture("two", distinct_id="u") is not None

    # Loss accounting: 3 calls; 2 stored; 1 made while disabled, which stores
    # nothing by the app's own setting (as in posthog-python): not lost, not an error.
    assert spoolpost.default_client is client  # the same client throughout
    assert client is not None and client.lost == 0
    assert names(spool_path) == ["one", "two"]


@pytest.mark.usefixtures("settings")
def test_a_client_made_disabled_stores_once_enabled(
    monkeypatch: pytest.MonkeyPatch, spool_path: Path
) -> None:
    monkeypatch.setattr(spoolpost, "disabled", True)
    assert spoolpost.capture("while disabled", distinct_id="u") is None
    assert not spool_path.exists()  # a disabled client opens no spool

    monkeypatch.setattr(spoolpost, "disabled", False)
    uid = spoolpost.capture("enabled", distinct_id="u")

    assert uid is not None
    assert names(spool_path) == ["enabled"]


@pytest.mark.usefixtures("settings")
def test_debug_is_read_at_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    assert spoolpost.capture("", distinct_id="u") is None  # logged, counted, not raised

    monkeypatch.setattr(spoolpost, "debug", True)
    with pytest.raises(ValueError, match="event must be a non-empty str"):
        spoolpost.capture("", distinct_id="u")

    monkeypatch.setattr(spoolpost, "debug", False)
    assert spoolpost.capture("", distinct_id="u") is None
    client = spoolpost.default_client
    assert client is not None and client.lost == 2  # the raising call is the caller's


@pytest.mark.usefixtures("settings")
def test_other_settings_are_read_once(monkeypatch: pytest.MonkeyPatch, spool_path: Path) -> None:
    spoolpost.capture("before", distinct_id="u")
    monkeypatch.setattr(spoolpost, "super_properties", {"late": True})
    spoolpost.capture("after", distinct_id="u")
    assert [e.event["properties"].get("late") for e in live(spool_path)] == [None, None]
    assert PER_CALL_SETTINGS == ("disabled", "debug")
