"""events: the PostHog v0 event dicts the capture API builds."""

from __future__ import annotations

import copy
import enum
import json
import numbers
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from spoolpost._version import __version__
from spoolpost.events.build import (
    alias_event,
    capture_event,
    group_identify_event,
    identify_event,
    normalize_uuid,
    set_event,
    set_once_event,
)
from spoolpost.events.encoding import encode_event

NOW = 1735787045.5  # 2025-01-02T03:04:05.5Z
NOW_TEXT = "2025-01-02T03:04:05.500000Z"
FIELDS = ["uuid", "event", "distinct_id", "properties", "timestamp"]
LIB = {"$lib": "spoolpost", "$lib_version": __version__}
GIVEN_UUID = "0194e0f7-0000-7000-8000-000000000001"

Builder = Callable[..., dict[str, Any]]


class Tier(enum.IntEnum):
    GOLD = 3


# (id, call, expected event name, expected distinct_id, expected properties without $lib)
SHAPE_CASES: list[tuple[str, Callable[[], dict[str, Any]], str, str, dict[str, Any]]] = [
    (
        "capture",
        lambda: capture_event("signed_up", "u1", {"plan": "pro"}, now=NOW),
        "signed_up",
        "u1",
        {"plan": "pro"},
    ),
    (
        "capture-groups",
        lambda: capture_event("e", "u1", {"a": 1}, groups={"company": "acme"}, now=NOW),
        "e",
        "u1",
        {"a": 1, "$groups": {"company": "acme"}},
    ),
    ("capture-no-properties", lambda: capture_event("e", 42, now=NOW), "e", "42", {}),
    (
        "identify",
        lambda: identify_event("u1", {"email": "a@example.com"}, now=NOW),
        "$identify",
        "u1",
        {"$set": {"email": "a@example.com"}},
    ),
    (
        "identify-no-properties",
        lambda: identify_event("u1", now=NOW),
        "$identify",
        "u1",
        {"$set": {}},
    ),
    (
        "set",
        lambda: set_event("u1", {"plan": "pro"}, now=NOW),
        "$set",
        "u1",
        {"$set": {"plan": "pro"}},
    ),
    (
        "set_once",
        lambda: set_once_event("u1", {"first": "x"}, now=NOW),
        "$set_once",
        "u1",
        {"$set_once": {"first": "x"}},
    ),
    (
        "alias",
        lambda: alias_event("anon-1", "user-1", now=NOW),
        "$create_alias",
        "anon-1",
        {"distinct_id": "anon-1", "alias": "user-1"},
    ),
    (
        "group_identify",
        lambda: group_identify_event("company", "acme", {"seats": 5}, now=NOW),
        "$groupidentify",
        "$company_acme",
        {"$group_type": "company", "$group_key": "acme", "$group_set": {"seats": 5}},
    ),
    (
        "group_identify-int-key-and-distinct-id",
        lambda: group_identify_event("company", 7, distinct_id="u1", now=NOW),
        "$groupidentify",
        "u1",
        {"$group_type": "company", "$group_key": "7", "$group_set": {}},
    ),
]


@pytest.mark.parametrize(
    ("build", "name", "distinct_id", "properties"),
    [c[1:] for c in SHAPE_CASES],
    ids=[c[0] for c in SHAPE_CASES],
)
def test_event_shape(
    build: Callable[[], dict[str, Any]], name: str, distinct_id: str, properties: dict[str, Any]
) -> None:
    event = build()
    assert list(event) == FIELDS
    assert event["event"] == name
    assert event["distinct_id"] == distinct_id
    assert event["properties"] == {**properties, **LIB}
    assert list(event["properties"])[-2:] == ["$lib", "$lib_version"]
    assert event["timestamp"] == NOW_TEXT
    generated = uuid.UUID(event["uuid"])
    assert generated.version == 7
    assert str(generated) == event["uuid"]
    assert generated.int >> 80 == int(NOW * 1000)  # the UUIDv7 time is the client's `now`
    json.loads(encode_event(event))  # and it encodes


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (uuid.UUID(GIVEN_UUID), GIVEN_UUID),
        (GIVEN_UUID, GIVEN_UUID),
        (GIVEN_UUID.upper(), GIVEN_UUID),
        ("{" + GIVEN_UUID + "}", GIVEN_UUID),
        (GIVEN_UUID.replace("-", ""), GIVEN_UUID),
        ("urn:uuid:" + GIVEN_UUID, GIVEN_UUID),
    ],
)
def test_uuid_is_passed_through_normalized(given: Any, expected: str) -> None:
    assert capture_event("e", "u", uuid=given, now=NOW)["uuid"] == expected
    assert alias_event("a", "b", uuid=given, now=NOW)["uuid"] == expected


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2025-01-02T08:34:05+05:30", "2025-01-02T03:04:05Z"),
        (datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), "2025-01-02T03:04:05.123456Z"),
        ("2025-01-02", "2025-01-02T00:00:00Z"),
    ],
)
def test_timestamp_is_converted(timestamp: Any, expected: str) -> None:
    assert capture_event("e", "u", timestamp=timestamp, now=NOW)["timestamp"] == expected
    assert set_event("u", {}, timestamp=timestamp, now=NOW)["timestamp"] == expected


@pytest.mark.parametrize(
    ("distinct_id", "expected"),
    [
        ("u-1", "u-1"),
        (" u ", " u "),  # kept as given; only whitespace alone is refused
        (0, "0"),
        (12345678901234567890, "12345678901234567890"),
        (Tier.GOLD, "3"),
        (uuid.UUID(GIVEN_UUID), GIVEN_UUID),
    ],
)
def test_distinct_id_conversion(distinct_id: Any, expected: str) -> None:
    assert capture_event("e", distinct_id, now=NOW)["distinct_id"] == expected


def wrong(value: object) -> Any:
    """Pass ``value`` where the annotations forbid it: these tests check the runtime checks."""
    return value


ID_MESSAGE = "distinct_id must be a non-empty str, int or UUID, got "

ERROR_CASES: list[tuple[str, Callable[[], object], str]] = [
    (
        "event-empty",
        lambda: capture_event("", "u", now=NOW),
        "event must be a non-empty str, got ''",
    ),
    (
        "event-none",
        lambda: capture_event(wrong(None), "u", now=NOW),
        "event must be a non-empty str, got NoneType",
    ),
    (
        "event-int",
        lambda: capture_event(wrong(5), "u", now=NOW),
        "event must be a non-empty str, got int",
    ),
    ("id-none", lambda: capture_event("e", wrong(None), now=NOW), ID_MESSAGE + "NoneType"),
    ("id-empty", lambda: capture_event("e", "", now=NOW), ID_MESSAGE + "''"),
    ("id-bool", lambda: capture_event("e", True, now=NOW), ID_MESSAGE + "bool"),
    ("id-float", lambda: capture_event("e", wrong(1.5), now=NOW), ID_MESSAGE + "float"),
    ("id-object", lambda: identify_event(wrong(object()), now=NOW), ID_MESSAGE + "object"),
    (
        "properties-list",
        lambda: capture_event("e", "u", wrong([("a", 1)]), now=NOW),
        "properties must be a mapping or None, got list",
    ),
    (
        "groups-str",
        lambda: capture_event("e", "u", groups=wrong("acme"), now=NOW),
        "groups must be a mapping or None, got str",
    ),
    (
        "set-none",
        lambda: set_event("u", wrong(None), now=NOW),
        "properties must be a mapping, got NoneType",
    ),
    (
        "set_once-none",
        lambda: set_once_event("u", wrong(None), now=NOW),
        "properties must be a mapping, got NoneType",
    ),
    (
        "uuid-bad-str",
        lambda: capture_event("e", "u", uuid="nope", now=NOW),
        "uuid must be a UUID or a str holding one, got 'nope'",
    ),
    (
        "uuid-int",
        lambda: capture_event("e", "u", uuid=wrong(123), now=NOW),
        "uuid must be a UUID or a str holding one, got int",
    ),
    (
        "timestamp-bad",
        lambda: capture_event("e", "u", timestamp="soon", now=NOW),
        "invalid timestamp 'soon': expected an ISO 8601 date-time such as "
        "'2025-01-02T03:04:05Z' or '2025-01-02T08:34:05+05:30'",
    ),
    (
        "alias-previous-empty",
        lambda: alias_event("", "b", now=NOW),
        "previous_id must be a non-empty str, int or UUID, got ''",
    ),
    ("alias-new-none", lambda: alias_event("a", wrong(None), now=NOW), ID_MESSAGE + "NoneType"),
    (
        "group-type-empty",
        lambda: group_identify_event("", "k", now=NOW),
        "group_type must be a non-empty str, got ''",
    ),
    (
        "group-key-none",
        lambda: group_identify_event("company", wrong(None), now=NOW),
        "group_key must be a non-empty str, int or UUID, got NoneType",
    ),
    (
        "group-distinct-id-empty",
        lambda: group_identify_event("company", "k", distinct_id="", now=NOW),
        ID_MESSAGE + "''",
    ),
    *[
        (
            f"event-control-{label}",
            lambda name=name: capture_event(name, "u", now=NOW),
            f"event must not contain control characters (NUL, newline, tab, …), got {name!r}",
        )
        for label, name in [
            ("nul", "e\x00"),
            ("newline", "signed\nup"),
            ("tab", "\tsigned_up"),
            ("escape", "\x1b[31mred"),
            ("del", "e\x7f"),
            ("c1", "e\x85"),
        ]
    ],
    (
        "group-type-control",
        lambda: group_identify_event("co\x00", "k", now=NOW),
        "group_type must not contain control characters (NUL, newline, tab, …), got 'co\\x00'",
    ),
    *[
        (
            f"blank-{argument}-{label}",
            call,
            f"{argument} must not be only whitespace, got {blank!r}",
        )
        for label, blank in [("spaces", "  "), ("tab-newline", "\t\n"), ("nbsp", "\u00a0")]
        for argument, call in [
            ("distinct_id", lambda blank=blank: capture_event("e", blank, now=NOW)),
            ("previous_id", lambda blank=blank: alias_event(blank, "b", now=NOW)),
            ("group_key", lambda blank=blank: group_identify_event("company", blank, now=NOW)),
        ]
    ],
    (
        "id-int-over-digit-limit",
        lambda: capture_event("e", 10**5000, now=NOW),
        f"distinct_id is an int of more than {sys.get_int_max_str_digits()} digits; "
        "send it as a str",
    ),
]


@pytest.mark.parametrize(
    ("event", "distinct_id"),
    [("signed up", " user 1 "), ("café 🎉", "ümlaut"), ("$pageview", "a\tb"), ("e" * 200, "x")],
)
def test_names_and_ids_that_are_accepted_as_given(event: str, distinct_id: str) -> None:
    built = capture_event(event, distinct_id, now=NOW)

    assert (built["event"], built["distinct_id"]) == (event, distinct_id)


@pytest.mark.parametrize(
    ("call", "message"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_validation_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        call()


def test_callers_mappings_are_not_mutated() -> None:
    properties = {"plan": "pro", "nested": {"a": 1}}
    groups = {"company": "acme"}
    before = copy.deepcopy((properties, groups))
    built = [
        capture_event("e", "u", properties, groups=groups, now=NOW),
        identify_event("u", properties, now=NOW),
        set_event("u", properties, now=NOW),
        set_once_event("u", properties, now=NOW),
        group_identify_event("company", "acme", properties, now=NOW),
    ]
    assert (properties, groups) == before
    assert built[0]["properties"] is not properties
    assert built[0]["properties"]["$groups"] is not groups
    assert built[1]["properties"]["$set"] is not properties


def test_lib_overrides_a_caller_lib() -> None:
    event = capture_event("e", "u", {"$lib": "mine", "$lib_version": "9"}, now=NOW)
    assert event["properties"]["$lib"] == "spoolpost"
    assert event["properties"]["$lib_version"] == __version__


def test_empty_groups_are_left_out() -> None:
    assert "$groups" not in capture_event("e", "u", groups={}, now=NOW)["properties"]


# ------------------------------------------------- against posthog-python itself


@pytest.fixture(scope="module")
def posthog_events() -> Iterator[Callable[[Callable[[Any], object]], dict[str, Any]]]:
    """Run a posthog-python call and return the message it would have queued.

    posthog-python's own builders run, offline: ``send=False``, and a ``before_send``
    that records the finished message and drops it.
    """
    posthog = pytest.importorskip("posthog")
    seen: list[dict[str, Any]] = []

    def record(msg: dict[str, Any]) -> None:
        seen.append(msg)
        return None

    client = posthog.Client(
        "phc_test",
        host="http://127.0.0.1:9",
        send=False,
        before_send=record,
        enable_local_evaluation=False,
    )

    def run(call: Callable[[Any], object]) -> dict[str, Any]:
        seen.clear()
        call(client)
        assert len(seen) == 1
        return seen[0]

    yield run
    client.shutdown()


def normalized(msg: dict[str, Any], baseline: set[str]) -> dict[str, Any]:
    """posthog-python's properties as PostHog's ingestion reads them: top-level
    ``$set``/``$set_once`` merged in; its own context properties left out."""
    properties = {k: v for k, v in msg["properties"].items() if k not in baseline}
    for key in ("$set", "$set_once"):
        if key in msg:
            properties[key] = msg[key]
    return properties


TS = "2025-01-02T08:34:05+05:30"

POSTHOG_CASES: list[tuple[str, Callable[[Any], object], Callable[[], dict[str, Any]]]] = [
    (
        "capture",
        lambda ph: ph.capture(
            "signed_up",
            distinct_id="u1",
            properties={"plan": "pro"},
            groups={"company": "acme"},
            uuid=GIVEN_UUID,
            timestamp=TS,
        ),
        lambda: capture_event(
            "signed_up", "u1", {"plan": "pro"}, TS, GIVEN_UUID, {"company": "acme"}, now=NOW
        ),
    ),
    (
        "set",
        lambda ph: ph.set(
            distinct_id="u1", properties={"plan": "pro"}, uuid=GIVEN_UUID, timestamp=TS
        ),
        lambda: set_event("u1", {"plan": "pro"}, TS, GIVEN_UUID, now=NOW),
    ),
    (
        "set_once",
        lambda ph: ph.set_once(
            distinct_id="u1", properties={"first": "x"}, uuid=GIVEN_UUID, timestamp=TS
        ),
        lambda: set_once_event("u1", {"first": "x"}, TS, GIVEN_UUID, now=NOW),
    ),
    (
        "alias",
        lambda ph: ph.alias(
            previous_id="anon-1", distinct_id="user-1", uuid=GIVEN_UUID, timestamp=TS
        ),
        lambda: alias_event("anon-1", "user-1", TS, GIVEN_UUID, now=NOW),
    ),
    (
        "group_identify",
        lambda ph: ph.group_identify(
            "company", "acme", {"seats": 5}, timestamp=TS, uuid=GIVEN_UUID, distinct_id="u1"
        ),
        lambda: group_identify_event(
            "company", "acme", {"seats": 5}, TS, GIVEN_UUID, "u1", now=NOW
        ),
    ),
]


@pytest.mark.parametrize(
    ("theirs", "ours"), [c[1:] for c in POSTHOG_CASES], ids=[c[0] for c in POSTHOG_CASES]
)
def test_matches_posthog_python(
    posthog_events: Callable[[Callable[[Any], object]], dict[str, Any]],
    theirs: Callable[[Any], object],
    ours: Callable[[], dict[str, Any]],
) -> None:
    # What posthog-python adds to every event on its own (system context, $lib, …).
    baseline = set(posthog_events(lambda ph: ph.capture("x", distinct_id="u"))["properties"])
    msg = posthog_events(theirs)
    event = ours()
    assert event["event"] == msg["event"]
    assert event["distinct_id"] == msg["distinct_id"]
    assert event["uuid"] == msg["uuid"]
    parse = datetime.fromisoformat
    assert parse(event["timestamp"]) == parse(msg["timestamp"])
    ours_properties = {k: v for k, v in event["properties"].items() if k not in LIB}
    assert ours_properties == normalized(msg, baseline)


def test_identify_uses_documented_posthog_names() -> None:
    # posthog-python 7 has no identify(); PostHog documents $identify with $set.
    event = identify_event("u1", {"email": "a@example.com"}, now=NOW)
    assert event["event"] == "$identify"
    assert event["properties"]["$set"] == {"email": "a@example.com"}


class Count:
    """An integer type that is not an ``int`` (like a NumPy integer): registered as
    ``numbers.Integral`` and usable as an index."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


numbers.Integral.register(Count)


def test_other_integral_types_are_sent_as_their_number() -> None:
    event = capture_event("e", wrong(Count(12)), now=NOW)
    group = group_identify_event("company", wrong(Count(7)), now=NOW)

    assert event["distinct_id"] == "12"
    assert group["properties"]["$group_key"] == "7"


GEOIP_BUILDERS: list[tuple[str, Callable[..., dict[str, Any]]]] = [
    ("capture", lambda **kw: capture_event("e", "u", {"a": 1}, now=NOW, **kw)),
    ("identify", lambda **kw: identify_event("u", {"a": 1}, now=NOW, **kw)),
    ("set", lambda **kw: set_event("u", {"a": 1}, now=NOW, **kw)),
    ("set_once", lambda **kw: set_once_event("u", {"a": 1}, now=NOW, **kw)),
    ("alias", lambda **kw: alias_event("a", "b", now=NOW, **kw)),
    ("group_identify", lambda **kw: group_identify_event("company", "acme", now=NOW, **kw)),
]


@pytest.mark.parametrize(
    "build", [b for _, b in GEOIP_BUILDERS], ids=[n for n, _ in GEOIP_BUILDERS]
)
def test_disable_geoip_adds_the_posthog_flag(build: Callable[..., dict[str, Any]]) -> None:
    plain = build()
    flagged = build(disable_geoip=True)

    assert "$geoip_disable" not in plain["properties"]
    assert build(disable_geoip=False)["properties"] == plain["properties"]
    assert flagged["properties"] == {**plain["properties"], "$geoip_disable": True}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (uuid.UUID(GIVEN_UUID), GIVEN_UUID),
        (GIVEN_UUID.upper(), GIVEN_UUID),
        ("{" + GIVEN_UUID + "}", GIVEN_UUID),
        (GIVEN_UUID.replace("-", ""), GIVEN_UUID),
    ],
)
def test_normalize_uuid(given: object, expected: str) -> None:
    assert normalize_uuid(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("nope", "uuid must be a UUID or a str holding one, got 'nope'"),
        (None, "uuid must be a UUID or a str holding one, got NoneType"),
        (7, "uuid must be a UUID or a str holding one, got int"),
    ],
)
def test_normalize_uuid_refuses_anything_else(given: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        normalize_uuid(given)
