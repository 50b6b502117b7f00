"""One script of posthog-python calls, run against posthog-python and against
spoolpost.Posthog, each pointed at a loopback endpoint; what reached each endpoint and
what each call returned must match, event by event.

Left out, and only these: README's intended differences ($lib/$lib_version, $os*,
Enum and datetime property values, where $set/$set_once sit), the random distinct
ids of personless events and of group_identify without one (compared by kind), and
timestamps taken "now" (compared within a few seconds, the runs are not simultaneous).
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import posthog
import pytest
from kit import API_KEY

import spoolpost
from spoolpost.testing import LocalEndpoint

FIXED_UUID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
PAST = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
IGNORED_PROPERTIES = {"$lib", "$lib_version", "$os", "$os_version", "$os_distro"}


class Plan(enum.Enum):
    PRO = "pro"


class Opaque:
    pass


@dataclasses.dataclass
class Cart:
    items: int
    total: Decimal


@dataclasses.dataclass
class Step:
    """One call: ``method(*args, **kwargs)``; ``now``: its timestamp is taken at the
    call; ``leave_out``: property names whose value encoding differs on purpose."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    now: bool = False
    leave_out: tuple[str, ...] = ()


def before_send(event: dict[str, Any]) -> dict[str, Any] | None:
    if event["event"] == "drop_me":
        return None
    event["properties"]["hooked"] = True
    return event


OPTIONS: dict[str, Any] = {
    "super_properties": {"app": "web", "plan": "super"},
    "before_send": before_send,
}

SCRIPT = [
    Step(
        "capture",
        ("signed_up",),
        {
            "distinct_id": "u1",
            "properties": {"plan": "pro", "n": 1, "ok": True, "nested": {"a": [1, 2]}},
            "timestamp": PAST,
            "uuid": FIXED_UUID,
        },
    ),
    Step("capture", ("naive_past",), {"distinct_id": "u1", "timestamp": datetime(2025, 1, 2)}),
    Step("capture", ("naive_now",), {"distinct_id": 42}, now=True),  # timestamp added below
    Step(
        "capture",
        ("offset",),
        {
            "distinct_id": "u1",
            "timestamp": datetime(2025, 1, 2, 8, 34, tzinfo=timezone(timedelta(hours=5.5))),
        },
    ),
    Step("capture", ("iso_string",), {"distinct_id": "u1", "timestamp": "2025-01-02T03:04:05Z"}),
    Step("capture", ("personless",), {"timestamp": PAST}),
    Step("capture", ("personless_empty",), {"distinct_id": "", "timestamp": PAST}),
    Step(
        "capture",
        ("grouped",),
        {"distinct_id": "u1", "groups": {"company": "acme"}, "timestamp": PAST},
    ),
    Step("capture", ("bad_uuid",), {"distinct_id": "u1", "uuid": "nope", "timestamp": PAST}),
    Step("capture", ("bad_timestamp",), {"distinct_id": "u1", "timestamp": "yesterday"}, now=True),
    Step(
        "capture",
        ("values",),
        {
            "distinct_id": uuid.UUID(int=7),
            "properties": {
                "opaque": Opaque(),
                "price": Decimal("1.5"),
                "id": uuid.UUID(int=1),
                "tags": {"one"},
                "pair": (1, "a"),
                "cart": Cart(2, Decimal("19.5")),
                "tier": Plan.PRO,
                "when": PAST,
            },
            "timestamp": PAST,
        },
        leave_out=("tier", "when"),
    ),
    Step("capture", ("geoip",), {"distinct_id": "u1", "disable_geoip": False, "timestamp": PAST}),
    Step("capture", ("drop_me",), {"distinct_id": "u1"}),
    Step("set", (), {"distinct_id": "u1", "properties": {"email": "a@b.c"}, "timestamp": PAST}),
    Step("set", (), {"properties": {"email": "a@b.c"}}),  # personless: nothing
    Step("set", (), {"distinct_id": "u1", "properties": {}}),  # empty: nothing
    Step("set_once", (), {"distinct_id": "u1", "properties": {"first": 1}, "timestamp": PAST}),
    Step("alias", ("u1", "u1-alias"), {"timestamp": PAST}),
    Step("alias", ("", "u1-alias")),  # dropped with a warning
    Step(
        "group_identify", ("company", "acme", {"size": 5}), {"timestamp": PAST, "distinct_id": "u1"}
    ),
    Step("group_identify", ("company", "acme"), {"timestamp": PAST}),  # a random distinct id
    Step("group_identify", ("", "acme")),  # dropped with a warning
]


def run(
    client: Any, endpoint: LocalEndpoint, script: list[Step] = SCRIPT
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Run ``script`` on ``client``; return what each call gave and the events sent."""
    results: list[Any] = []
    for step in script:
        kwargs = dict(step.kwargs)
        if step.method == "capture" and step.args == ("naive_now",):
            kwargs["timestamp"] = datetime.now()  # naive local now: local time, both
        try:
            results.append(("returned", getattr(client, step.method)(*step.args, **kwargs)))
        except Exception as exc:
            results.append(("raised", type(exc).__name__))
    results.append(("flush", client.flush()))
    results.append(("shutdown", client.shutdown()))
    events = [event for request in endpoint.requests for event in request.events]
    return results, events


def returned(result: tuple[str, Any]) -> tuple[str, Any]:
    """A call's outcome with generated uuids as "<uuid>" (each library makes its own)."""
    kind, value = result
    if isinstance(value, str) and value != FIXED_UUID:
        uuid.UUID(value)
        return kind, "<uuid>"
    return kind, value


def in_call_order(
    script: list[Step], results: list[Any], events: list[dict[str, Any]]
) -> list[tuple[Step, dict[str, Any]]]:
    """Each sent event with the step that made it, in script order (requests may
    arrive in any order with several sender threads): a call's returned uuid is its
    event's. Every event sent must belong to a call."""
    by_uuid = {event["uuid"]: event for event in events}
    assert len(by_uuid) == len(events)
    paired = [
        (step, by_uuid.pop(value))
        for step, (_, value) in zip(script, results, strict=False)
        if value in by_uuid
    ]
    assert by_uuid == {}, "events sent that no call returned"
    return paired


def comparable(event: dict[str, Any], step: Step) -> dict[str, Any]:
    properties = {k: v for k, v in event["properties"].items() if k not in IGNORED_PROPERTIES}
    for key in ("$set", "$set_once"):  # beside or inside properties: PostHog merges them
        if key in event:
            properties[key] = event[key]
    for name in step.leave_out:
        properties.pop(name, None)
    distinct_id = event["distinct_id"]
    if properties.get("$process_person_profile") is False:
        uuid.UUID(distinct_id)
        distinct_id = "<personless>"
    elif event["event"] == "$groupidentify" and "distinct_id" not in step.kwargs:
        uuid.UUID(distinct_id)
        distinct_id = "<random>"
    instant = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    return {
        "event": event["event"],
        "distinct_id": distinct_id,
        "properties": properties,
        "timestamp": "<now>" if step.now else instant,
        "instant": instant,
        "uuid": event["uuid"] if event["uuid"] == FIXED_UUID else "<uuid>",
    }


@pytest.fixture
def endpoints() -> Iterator[tuple[LocalEndpoint, LocalEndpoint]]:
    with LocalEndpoint() as theirs, LocalEndpoint() as ours:
        yield theirs, ours


def test_same_script_same_events_and_results(
    endpoints: tuple[LocalEndpoint, LocalEndpoint],
    tmp_path: Path,
    set_tz: Callable[[str], None],
) -> None:
    set_tz("EST5EDT")  # naive datetimes: the rule, not the zone, decides
    theirs_endpoint, ours_endpoint = endpoints
    theirs = posthog.Posthog(API_KEY, host=theirs_endpoint.url, **OPTIONS)
    ours = spoolpost.Posthog(
        API_KEY, host=ours_endpoint.url, spool=str(tmp_path / "e.spool"), **OPTIONS
    )
    their_results, their_events = run(theirs, theirs_endpoint)
    our_results, our_events = run(ours, ours_endpoint)

    assert [returned(r) for r in our_results] == [returned(r) for r in their_results]
    theirs_sent = in_call_order(SCRIPT, their_results, their_events)
    ours_sent = in_call_order(SCRIPT, our_results, our_events)
    assert len(theirs_sent) == len(ours_sent) == 17
    for (step, theirs_event), (_, ours_event) in zip(theirs_sent, ours_sent, strict=True):
        a, b = comparable(theirs_event, step), comparable(ours_event, step)
        if step.now:  # the two runs are seconds apart
            assert abs((a.pop("instant") - b.pop("instant")).total_seconds()) < 60
        else:
            assert b.pop("instant") == a.pop("instant")
        assert b == a


SHORT = [SCRIPT[0], SCRIPT[5], SCRIPT[13], SCRIPT[19]]  # capture, personless, set, group


@pytest.mark.parametrize(
    "options",
    [
        {"send": False},
        {"disabled": True},
        {"sync_mode": True},
        {"is_server": False},
        {"disable_geoip": False},
        {"historical_migration": True},
        {"gzip": True},
        {"max_retries": 0, "thread": 2, "flush_at": 1, "flush_interval": 0.5, "timeout": 3},
    ],
    ids=lambda options: ",".join(options),
)
def test_constructor_options_same_events_and_results(
    endpoints: tuple[LocalEndpoint, LocalEndpoint], tmp_path: Path, options: dict[str, Any]
) -> None:
    theirs_endpoint, ours_endpoint = endpoints
    theirs = posthog.Posthog(API_KEY, host=theirs_endpoint.url, **options)
    ours = spoolpost.Posthog(
        API_KEY, host=ours_endpoint.url, spool=str(tmp_path / "e.spool"), **options
    )
    their_results, their_events = run(theirs, theirs_endpoint, SHORT)
    our_results, our_events = run(ours, ours_endpoint, SHORT)

    assert [returned(r) for r in our_results] == [returned(r) for r in their_results]
    theirs_sent = in_call_order(SHORT, their_results, their_events)
    ours_sent = in_call_order(SHORT, our_results, our_events)
    nothing = options.get("send") is False or options.get("disabled")
    assert len(theirs_sent) == len(ours_sent) == (0 if nothing else 4)
    for (step, theirs_event), (_, ours_event) in zip(theirs_sent, ours_sent, strict=True):
        assert comparable(ours_event, step) == comparable(theirs_event, step)
    flags = {r.json.get("historical_migration", False) for r in ours_endpoint.requests}
    assert flags <= {options.get("historical_migration", False)}
    if options.get("gzip"):
        assert {r.headers.get("Content-Encoding") for r in ours_endpoint.requests} == {"gzip"}


# -- contexts --------------------------------------------------------------------------------


def context_script(lib: Any, client: Any) -> list[Any]:
    """posthog-python's context calls, made with ``lib``'s module functions and
    ``client``'s methods; returns what each call gave."""
    results: list[Any] = []
    with lib.new_context():
        lib.identify_context("ctx-user")
        lib.set_context_session("sess-1")
        lib.tag("request_id", "r1")
        client.tag("plan", "from-tag")
        results.append(client.capture("in_context", properties={"plan": "pro"}, timestamp=PAST))
        results.append(client.set(properties={"email": "a@b.c"}, timestamp=PAST))
        results.append(client.set_once(properties={}, timestamp=PAST))  # the tags: not empty
        results.append(client.alias("old-id", None, timestamp=PAST))
        results.append(client.group_identify("company", "acme", {"size": 1}, timestamp=PAST))
        with client.new_context(fresh=True):
            client.tag("inner", 1)
            results.append(client.capture("fresh", timestamp=PAST))
        with lib.new_context():
            lib.tag("nested", True)
            results.append(
                client.capture(
                    "nested",
                    distinct_id="explicit",
                    properties={"$session_id": "own", "request_id": "prop-wins"},
                    timestamp=PAST,
                )
            )
            results.append(sorted(lib.get_tags().items()))
        results.append(sorted(client.get_tags().items()))
    results.append(lib.get_tags())
    results.append(client.capture("outside", timestamp=PAST))  # personless
    client.flush()
    client.shutdown()
    return results


def with_sorted_context_tags(event: dict[str, Any]) -> dict[str, Any]:
    """posthog-python sends ``$context_tags`` as a set (any order); spoolpost sorted."""
    properties = event["properties"]
    for bag in (
        properties,
        *(d.get(k) for d in (event, properties) for k in ("$set", "$set_once")),
    ):
        if isinstance(bag, dict) and "$context_tags" in bag:
            bag["$context_tags"] = sorted(bag["$context_tags"])
    return event


def sent(endpoint: LocalEndpoint) -> list[dict[str, Any]]:
    return [event for request in endpoint.requests for event in request.events]


def test_contexts_same_events_and_results(
    endpoints: tuple[LocalEndpoint, LocalEndpoint], tmp_path: Path
) -> None:
    theirs_endpoint, ours_endpoint = endpoints
    theirs = posthog.Posthog(API_KEY, host=theirs_endpoint.url)
    ours = spoolpost.Posthog(API_KEY, host=ours_endpoint.url, spool=str(tmp_path / "e.spool"))
    their_results = context_script(posthog, theirs)
    our_results = context_script(spoolpost, ours)

    assert [returned(("r", r)) for r in our_results] == [returned(("r", r)) for r in their_results]
    assert their_results[-2] == {} and their_results[-3] == [
        ("plan", "from-tag"),
        ("request_id", "r1"),
    ]
    step = Step("capture", kwargs={"distinct_id": "compared as sent"})
    for events, results in (
        (sent(theirs_endpoint), their_results),
        (sent(ours_endpoint), our_results),
    ):
        assert sorted(e["uuid"] for e in events) == sorted(r for r in results if isinstance(r, str))
    theirs_by_name = {e["event"]: e for e in sent(theirs_endpoint)}
    ours_by_name = {e["event"]: e for e in sent(ours_endpoint)}
    assert set(ours_by_name) == set(theirs_by_name) and len(ours_by_name) == 8
    for name, their_event in theirs_by_name.items():
        a = comparable(with_sorted_context_tags(their_event), step)
        b = comparable(with_sorted_context_tags(ours_by_name[name]), step)
        assert b == a, name
