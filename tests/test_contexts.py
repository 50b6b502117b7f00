"""posthog-python 7.x's contexts (issue 9): the distinct id, session and tags a
context supplies reach the events of Client, Posthog and the module API alike;
nesting (``fresh``), ``capture_exceptions`` (accepted, ignored, one INFO line), and
isolation between threads and asyncio tasks (contextvars)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kit import API_KEY

import spoolpost
from spoolpost import Client, Posthog
from spoolpost.events import contexts
from spoolpost.testing import LocalEndpoint


def sent(endpoint: LocalEndpoint) -> list[dict[str, Any]]:
    return [e for r in endpoint.requests for e in r.events]


@pytest.fixture
def posthog(spool_path: Path, endpoint: LocalEndpoint) -> Iterator[Posthog]:
    client = Posthog(API_KEY, host=endpoint.url, spool=str(spool_path), is_server=False)
    yield client
    client.shutdown()


def test_context_supplies_id_session_and_tags_to_client_calls(
    make_client: Callable[..., Client], endpoint: LocalEndpoint
) -> None:
    client = make_client()
    with client.new_context():
        client.identify_context("user-1")
        client.set_context_session("sess-1")
        client.tag("request_id", "r-1")
        client.tag("plan", "tag-loses")
        client.capture("viewed", properties={"plan": "pro"})
        client.set(properties={"name": "Ada"})
        client.alias("old-id", None)  # type: ignore[arg-type]  # the context's id
        client.group_identify("company", "acme", {"size": 3})
        assert client.get_tags() == {"request_id": "r-1", "plan": "tag-loses"}
    with pytest.raises(ValueError):
        client.capture("outside")  # no context: Client stays strict
    client.flush(timeout=10)

    viewed, set_, alias, group = sent(endpoint)
    assert viewed["distinct_id"] == "user-1"
    assert {k: v for k, v in viewed["properties"].items() if not k.startswith("$lib")} == {
        "plan": "pro",
        "request_id": "r-1",
        "$context_tags": ["plan", "request_id"],
        "$session_id": "sess-1",
        "$geoip_disable": True,
    }
    assert set_["distinct_id"] == "user-1"
    assert set_["properties"]["$set"] == {
        "name": "Ada",
        "request_id": "r-1",
        "plan": "tag-loses",
        "$context_tags": ["plan", "request_id"],
        "$session_id": "sess-1",
    }
    assert (alias["distinct_id"], alias["properties"]["alias"]) == ("old-id", "user-1")
    assert alias["properties"]["$session_id"] == "sess-1"
    assert group["distinct_id"] == "user-1" and group["properties"]["$session_id"] == "sess-1"


def test_nested_contexts_inherit_unless_fresh(posthog: Posthog, endpoint: LocalEndpoint) -> None:
    with posthog.new_context():
        posthog.identify_context("outer")
        posthog.set_context_session("s-outer")
        posthog.tag("a", 1)
        with posthog.new_context():
            posthog.tag("b", 2)
            posthog.tag("a", "child-wins")
            posthog.capture("inherited")
        with posthog.new_context(fresh=True):
            posthog.tag("c", 3)
            posthog.capture("fresh")
        posthog.capture("outer-again")
    posthog.capture("outside", distinct_id="u")
    posthog.flush()

    by_name = {e["event"]: e for e in sent(endpoint)}
    inherited = by_name["inherited"]
    assert inherited["distinct_id"] == "outer"
    assert inherited["properties"]["a"] == "child-wins" and inherited["properties"]["b"] == 2
    assert inherited["properties"]["$context_tags"] == ["a", "b"]
    assert inherited["properties"]["$session_id"] == "s-outer"
    fresh = by_name["fresh"]
    assert fresh["properties"]["$process_person_profile"] is False  # no id: personless
    assert "$session_id" not in fresh["properties"] and "a" not in fresh["properties"]
    assert fresh["properties"]["$context_tags"] == ["c"]
    assert "b" not in by_name["outer-again"]["properties"]
    assert by_name["outer-again"]["properties"]["$context_tags"] == ["a"]
    assert "$context_tags" not in by_name["outside"]["properties"]


def test_module_functions_use_contexts(
    monkeypatch: pytest.MonkeyPatch, spool_path: Path, endpoint: LocalEndpoint
) -> None:
    monkeypatch.setattr(spoolpost, "api_key", API_KEY)
    monkeypatch.setattr(spoolpost, "host", endpoint.url)
    monkeypatch.setattr(spoolpost, "spool_path", str(spool_path))
    monkeypatch.setattr(spoolpost, "default_client", None)
    try:

        @spoolpost.scoped()
        def handle(user: str) -> str | None:
            spoolpost.identify_context(user)
            spoolpost.tag("route", "/buy")
            return spoolpost.capture("bought")

        assert handle("u-9") is not None
        assert spoolpost.get_tags() == {}  # the scope ended
        spoolpost.flush()
    finally:
        spoolpost.shutdown()

    [event] = sent(endpoint)
    assert event["distinct_id"] == "u-9" and event["properties"]["route"] == "/buy"


def test_capture_exceptions_is_accepted_ignored_and_logged_once(
    posthog: Posthog, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(contexts, "_told_exceptions", False)
    with caplog.at_level(logging.INFO, logger="spoolpost"):
        for _ in range(2):
            with pytest.raises(KeyError), posthog.new_context(capture_exceptions=True):
                raise KeyError("boom")
        with pytest.raises(KeyError), spoolpost.new_context(capture_exceptions=False):
            raise KeyError("boom")

    assert [r.getMessage() for r in caplog.records] == [
        "new_context(capture_exceptions=True) is accepted and ignored by spoolpost"
    ]
    assert (
        posthog.client is not None
        and sum(posthog.client.spool.stats(time.time()).counts.values()) == 0
    )


def test_contexts_outside_a_scope_do_nothing(posthog: Posthog, endpoint: LocalEndpoint) -> None:
    spoolpost.tag("x", 1)
    spoolpost.identify_context("nobody")
    spoolpost.set_context_session("none")
    spoolpost.set_context_device_id("dev")
    assert spoolpost.get_tags() == {}
    assert posthog.capture("e") is not None  # personless: no context id
    posthog.flush()
    [event] = sent(endpoint)
    assert event["properties"]["$process_person_profile"] is False
    assert "$session_id" not in event["properties"]


def test_threads_and_tasks_each_carry_their_own_context(
    posthog: Posthog, endpoint: LocalEndpoint
) -> None:
    barrier = threading.Barrier(2)

    def in_thread(name: str) -> None:
        with spoolpost.new_context():
            spoolpost.identify_context(f"thread-{name}")
            spoolpost.set_context_session(f"s-thread-{name}")
            spoolpost.tag("worker", name)
            barrier.wait()  # both contexts are set before either captures
            for i in range(20):
                posthog.capture("t", properties={"i": i})

    async def in_task(name: str, started: asyncio.Event, other: asyncio.Event) -> None:
        with posthog.new_context():
            posthog.identify_context(f"task-{name}")
            posthog.set_context_session(f"s-task-{name}")
            posthog.tag("worker", name)
            started.set()
            await other.wait()  # interleave with the other task inside the contexts
            for i in range(20):
                posthog.capture("a", properties={"i": i})
                await asyncio.sleep(0)

    async def two_tasks() -> None:
        one, two = asyncio.Event(), asyncio.Event()
        await asyncio.gather(in_task("1", one, two), in_task("2", two, one))

    threads = [threading.Thread(target=in_thread, args=(n,)) for n in ("1", "2")]
    for t in threads:
        t.start()
    asyncio.run(two_tasks())
    for t in threads:
        t.join()
    posthog.flush()

    events = sent(endpoint)
    assert len(events) == 80
    for event in events:
        kind = "thread" if event["event"] == "t" else "task"
        worker = event["properties"]["worker"]
        assert event["distinct_id"] == f"{kind}-{worker}"
        assert event["properties"]["$session_id"] == f"s-{kind}-{worker}"
