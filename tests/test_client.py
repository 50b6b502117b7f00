"""Client: capture into the spool, limits, before_send, lifecycle (see docs/architecture.md).

Real spool files under tmp_path and the real loopback endpoint. What reached disk is
read back by a new Spool on the file (kit.stored), the way a second process would see it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from kit import API_KEY, live, stored

from spoolpost import Client, ConfigError, KeyMismatch, SpoolClosed
from spoolpost._version import __version__
from spoolpost.client import FILTERED_COUNT_EVERY, key_fingerprint
from spoolpost.clock import ManualClock
from spoolpost.delivery import FlushResult
from spoolpost.errors import EncodingError, EventTooLarge
from spoolpost.testing import LocalEndpoint, Response

MakeClient = Callable[..., Client]
FIXED_UUID = "0194e0f7-0000-7000-8000-000000000001"


def spoolpost_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("spoolpost-")]


def wrong(value: object) -> Any:
    """Pass ``value`` where the annotations forbid it: the runtime checks are tested."""
    return value


# -- capture commits before it returns ------------------------------------------------------


def test_capture_returns_the_uuid_once_the_row_is_committed(
    make_client: MakeClient, spool_path: Path
) -> None:
    client = make_client(send=False)

    returned = client.capture("signed_up", distinct_id="u1", properties={"plan": "pro"})

    assert returned is not None
    assert uuid.UUID(returned).version == 7
    [event] = stored(spool_path)  # another connection sees the committed row at once
    assert event["uuid"] == returned
    assert event["event"] == "signed_up"
    assert event["distinct_id"] == "u1"
    assert event["properties"]["plan"] == "pro"


def test_event_shape_and_timestamp_stamped_at_capture(
    make_client: MakeClient, spool_path: Path
) -> None:
    clock = ManualClock(start=1735787045.25)  # 2025-01-02T03:04:05.25Z
    client = make_client(send=False, clock=clock)

    returned = client.capture("e", distinct_id="u1", properties={"k": 1})

    [event] = stored(spool_path)
    assert list(event) == ["uuid", "event", "distinct_id", "properties", "timestamp"]
    assert event["timestamp"] == "2025-01-02T03:04:05.250000Z"
    assert event["properties"] == {
        "k": 1,
        "$lib": "spoolpost",
        "$lib_version": __version__,
        "$geoip_disable": True,
    }
    # A UUIDv7 carries its capture time in its first 48 bits (milliseconds).
    assert uuid.UUID(returned).int >> 80 == 1735787045250


def test_a_given_uuid_is_normalized_and_kept(make_client: MakeClient, spool_path: Path) -> None:
    client = make_client(send=False)

    first = client.capture("e", distinct_id="u1", uuid=uuid.UUID(FIXED_UUID))
    second = client.capture("e", distinct_id="u1", uuid=FIXED_UUID.upper())

    assert first == second == FIXED_UUID
    # No uniqueness check on the capture path (it would cost an index write per
    # event): a repeat is stored and sent again, and PostHog deduplicates by uuid.
    assert [e["uuid"] for e in stored(spool_path)] == [FIXED_UUID, FIXED_UUID]


# -- bad input: ValueError, nothing written ----------------------------------------------------

ID_TYPES = "a non-empty str, int or UUID"

BAD_CALLS: list[tuple[str, Callable[[Client], object], str]] = [
    (
        "event-empty",
        lambda c: c.capture("", distinct_id="u"),
        "event must be a non-empty str, got ''",
    ),
    (
        "event-none",
        lambda c: c.capture(wrong(None), distinct_id="u"),
        "event must be a non-empty str, got NoneType",
    ),
    (
        "event-int",
        lambda c: c.capture(wrong(7), distinct_id="u"),
        "event must be a non-empty str, got int",
    ),
    (
        "distinct-id-empty",
        lambda c: c.capture("e", distinct_id=""),
        f"distinct_id must be {ID_TYPES}, got ''",
    ),
    (
        "distinct-id-none",
        lambda c: c.capture("e", distinct_id=wrong(None)),
        f"distinct_id must be {ID_TYPES}, got NoneType",
    ),
    (
        "distinct-id-float",
        lambda c: c.capture("e", distinct_id=wrong(1.5)),
        f"distinct_id must be {ID_TYPES}, got float",
    ),
    (
        "distinct-id-bool",
        lambda c: c.capture("e", distinct_id=True),
        f"distinct_id must be {ID_TYPES}, got bool",
    ),
    (
        "properties-list",
        lambda c: c.capture("e", distinct_id="u", properties=wrong([1])),
        "properties must be a mapping or None, got list",
    ),
    (
        "uuid-garbage",
        lambda c: c.capture("e", distinct_id="u", uuid="not-a-uuid"),
        "uuid must be a UUID or a str holding one, got 'not-a-uuid'",
    ),
    (
        "timestamp-garbage",
        lambda c: c.capture("e", distinct_id="u", timestamp="yesterday"),
        "invalid timestamp 'yesterday': expected an ISO 8601 date-time such as "
        "'2025-01-02T03:04:05Z' or '2025-01-02T08:34:05+05:30'",
    ),
    (
        "event-nul",
        lambda c: c.capture("e\x00", distinct_id="u"),
        "event must not contain control characters (NUL, newline, tab, …), got 'e\\x00'",
    ),
    (
        "distinct-id-whitespace",
        lambda c: c.capture("e", distinct_id="  "),
        "distinct_id must not be only whitespace, got '  '",
    ),
    (
        "set-distinct-id-whitespace",
        lambda c: c.set(distinct_id="\t", properties={"a": 1}),
        "distinct_id must not be only whitespace, got '\\t'",
    ),
    (
        "identify-id-empty",
        lambda c: c.identify(""),
        f"distinct_id must be {ID_TYPES}, got ''",
    ),
    (
        "set-properties-none",
        lambda c: c.set(distinct_id="u", properties=wrong(None)),
        "properties must be a mapping, got NoneType",
    ),
    (
        "alias-previous-empty",
        lambda c: c.alias("", "b"),
        f"previous_id must be {ID_TYPES}, got ''",
    ),
    (
        "group-type-empty",
        lambda c: c.group_identify("", "acme"),
        "group_type must be a non-empty str, got ''",
    ),
]


@pytest.mark.parametrize(
    ("call", "message"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_bad_input_raises_value_error_and_writes_nothing(
    make_client: MakeClient, spool_path: Path, call: Callable[[Client], object], message: str
) -> None:
    client = make_client(send=False)

    with pytest.raises(ValueError) as caught:
        call(client)

    assert str(caught.value) == message
    assert stored(spool_path) == []


def test_an_int_property_over_the_digit_limit_raises_encoding_error(
    make_client: MakeClient, spool_path: Path
) -> None:
    limit = sys.get_int_max_str_digits()
    client = make_client(send=False)

    with pytest.raises(EncodingError) as caught:
        client.capture("e", distinct_id="u", properties={"i": 10**5000})

    assert caught.value.path == "properties.i"
    assert str(caught.value) == (
        f"cannot encode an int of more than {limit} digits (Python's int-to-str limit; "
        "send it as a str) at properties.i"
    )
    assert stored(spool_path) == []


@pytest.mark.parametrize(
    ("distinct_id", "expected"),
    [
        (42, "42"),
        (0, "0"),
        (2**70, str(2**70)),
        (uuid.UUID(FIXED_UUID), FIXED_UUID),
        ("  spaced  ", "  spaced  "),
    ],
)
def test_numbers_and_uuids_are_sent_as_strings(
    make_client: MakeClient, spool_path: Path, distinct_id: Any, expected: str
) -> None:
    make_client(send=False).capture("e", distinct_id=distinct_id)

    assert stored(spool_path)[0]["distinct_id"] == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"send_feature_flags": True}, "capture(send_feature_flags=...) is not supported"),
        ({"send_feature_flags": {"only_evaluate_locally": True}}, "send_feature_flags"),
        ({"flags": object()}, "capture(flags=...) is not supported"),
    ],
)
def test_feature_flag_options_are_refused_with_a_clear_type_error(
    make_client: MakeClient, spool_path: Path, options: dict[str, Any], message: str
) -> None:
    client = make_client(send=False)

    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        client.capture("e", distinct_id="u", **options)

    assert stored(spool_path) == []


def test_false_feature_flag_options_are_accepted(make_client: MakeClient, spool_path: Path) -> None:
    client = make_client(send=False)

    client.capture("e", distinct_id="u", send_feature_flags=False, flags=None)

    assert len(stored(spool_path)) == 1


# -- timestamps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2025-01-02T08:34:05+05:30", "2025-01-02T03:04:05Z"),
        ("2025-01-02T03:04:05Z", "2025-01-02T03:04:05Z"),
        ("2025-01-01T22:04:05.5-05:00", "2025-01-02T03:04:05.500000Z"),
        (datetime(2025, 1, 2, 8, 34, 5, tzinfo=timezone(timedelta(hours=5, minutes=30))), None),
        (datetime(2025, 1, 2, 3, 4, 5, 7, tzinfo=UTC), "2025-01-02T03:04:05.000007Z"),
        (date(2025, 1, 2), "2025-01-02T00:00:00Z"),
    ],
    ids=["offset-str", "z-str", "fraction-str", "aware-kolkata", "aware-utc-micros", "date"],
)
def test_timestamps_are_sent_as_utc_rfc3339(
    make_client: MakeClient, spool_path: Path, timestamp: Any, expected: str | None
) -> None:
    make_client(send=False).capture("e", distinct_id="u", timestamp=timestamp)

    assert stored(spool_path)[0]["timestamp"] == (expected or "2025-01-02T03:04:05Z")


# -- max_event_bytes ---------------------------------------------------------------------------


def test_max_event_bytes_is_inclusive(make_client: MakeClient, spool_path: Path) -> None:
    fixed: dict[str, Any] = {"timestamp": "2025-01-02T03:04:05Z", "uuid": FIXED_UUID}
    probe = make_client(send=False, spool=spool_path.with_name("probe.spool"))
    probe.capture("e", distinct_id="u", properties={"pad": "x" * 100}, **fixed)
    [size] = [len(e.body) for e in live(probe.spool.path)]
    client = make_client(send=False, max_event_bytes=size)

    assert (
        client.capture("e", distinct_id="u", properties={"pad": "x" * 100}, **fixed) == FIXED_UUID
    )
    with pytest.raises(EventTooLarge) as caught:
        client.capture("e", distinct_id="u", properties={"pad": "x" * 101}, **fixed)

    assert (caught.value.size, caught.value.limit) == (size + 1, size)
    assert str(caught.value) == f"encoded event is {size + 1} bytes, over max_event_bytes={size}"
    assert [e["properties"]["pad"] for e in stored(spool_path)] == ["x" * 100]


def test_the_default_limit_is_900_kib(make_client: MakeClient, spool_path: Path) -> None:
    client = make_client(send=False)

    client.capture("e", distinct_id="u", properties={"pad": "x" * (900 * 1024 - 300)})
    with pytest.raises(EventTooLarge) as caught:
        client.capture("e", distinct_id="u", properties={"pad": "x" * (900 * 1024)})

    assert caught.value.limit == 900 * 1024
    assert caught.value.size > 900 * 1024
    assert len(stored(spool_path)) == 1


# -- before_send -------------------------------------------------------------------------------


def scrub(event: dict[str, Any]) -> dict[str, Any]:
    event["properties"].pop("email", None)
    event["properties"]["scrubbed"] = True
    return event


def drop(event: dict[str, Any]) -> None:
    return None


def explode(event: dict[str, Any]) -> dict[str, Any]:
    event["properties"]["email"] = "half-scrubbed"  # mutates its copy, then fails
    raise RuntimeError("hook bug")


def not_an_event(event: dict[str, Any]) -> Any:
    return "oops"


def bad_uuid(event: dict[str, Any]) -> dict[str, Any]:
    return {**event, "uuid": "nope"}


def no_uuid(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "uuid"}


def new_uuid(event: dict[str, Any]) -> dict[str, Any]:
    return {**event, "uuid": uuid.UUID(FIXED_UUID)}


ORIGINAL = {"email": "a@example.com", "plan": "pro"}

# (id, hook, written properties (None: nothing written), uuid written, log text)
HOOK_CASES: list[tuple[str, Any, dict[str, Any] | None, str, str]] = [
    ("scrubs", scrub, {"plan": "pro", "scrubbed": True}, "captured", ""),
    ("drops", drop, None, "", ""),
    ("raises", explode, ORIGINAL, "captured", "before_send raised"),
    ("returns-junk", not_an_event, ORIGINAL, "captured", "before_send returned a str"),
    ("bad-uuid", bad_uuid, ORIGINAL, "captured", "before_send returned an invalid event (uuid"),
    ("removes-uuid", no_uuid, ORIGINAL, "captured", ""),
    ("new-uuid", new_uuid, ORIGINAL, FIXED_UUID, ""),
]


@pytest.mark.parametrize(
    ("hook", "written", "written_uuid", "logged"),
    [c[1:] for c in HOOK_CASES],
    ids=[c[0] for c in HOOK_CASES],
)
def test_before_send(
    make_client: MakeClient,
    spool_path: Path,
    caplog: pytest.LogCaptureFixture,
    hook: Callable[[dict[str, Any]], Any],
    written: dict[str, Any] | None,
    written_uuid: str,
    logged: str,
) -> None:
    callers: list[int] = []

    def recording(event: dict[str, Any]) -> Any:
        callers.append(threading.get_ident())
        return hook(event)

    client = make_client(send=False, before_send=recording, disable_geoip=False)
    properties = dict(ORIGINAL)

    with caplog.at_level(logging.ERROR, logger="spoolpost"):
        returned = client.capture("e", distinct_id="u", properties=properties)

    assert callers == [threading.get_ident()]  # in the caller's thread
    assert properties == ORIGINAL  # the caller's mapping is never touched
    events = stored(spool_path)
    if written is None:
        assert returned is None and events == []
        assert client.spool.counters()["filtered"] == 1
    else:
        [event] = events
        expected_uuid = returned if written_uuid == "captured" else written_uuid
        assert returned == event["uuid"] == expected_uuid
        lib = {"$lib": "spoolpost", "$lib_version": __version__}
        assert event["properties"] == {**written, **lib}
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.name == "spoolpost" and r.levelno >= logging.ERROR
    ]
    if logged:
        assert len(errors) == 1 and logged in errors[0]
    else:
        assert errors == []


def without(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda event: {k: v for k, v in event.items() if k != key}


def replacing(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda event: {**event, key: value}


def scrubbed(change: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[..., Any]:
    """A hook that scrubs the email, then makes the event invalid with ``change``."""
    return lambda event: change(scrub(event))


# (id, how the hook spoils the event it returns, the problem logged)
INVALID_RETURNS: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], str]] = [
    ("event-empty", replacing("event", ""), "event must be a non-empty str, got ''"),
    (
        "event-nul",
        replacing("event", "e\x00"),
        "event must not contain control characters (NUL, newline, tab, …), got 'e\\x00'",
    ),
    ("event-missing", without("event"), "event is missing"),
    ("distinct-id-missing", without("distinct_id"), "distinct_id is missing"),
    (
        "distinct-id-none",
        replacing("distinct_id", None),
        "distinct_id must be a non-empty str, int or UUID, got NoneType",
    ),
    (
        "distinct-id-blank",
        replacing("distinct_id", " "),
        "distinct_id must not be only whitespace, got ' '",
    ),
    ("properties-missing", without("properties"), "properties is missing"),
    (
        "properties-none",
        replacing("properties", None),
        "properties must be a mapping, got NoneType",
    ),
    (
        "uuid-bad",
        replacing("uuid", "nope"),
        "uuid must be a UUID or a str holding one, got 'nope'",
    ),
    (
        "timestamp-bad",
        replacing("timestamp", "soon"),
        "invalid timestamp 'soon': expected an ISO 8601 date-time such as "
        "'2025-01-02T03:04:05Z' or '2025-01-02T08:34:05+05:30'",
    ),
]


@pytest.mark.parametrize(
    ("change", "problem"), [c[1:] for c in INVALID_RETURNS], ids=[c[0] for c in INVALID_RETURNS]
)
def test_before_send_returning_an_invalid_event_keeps_the_original(
    make_client: MakeClient,
    spool_path: Path,
    caplog: pytest.LogCaptureFixture,
    change: Callable[[dict[str, Any]], dict[str, Any]],
    problem: str,
) -> None:
    clock = ManualClock(start=1735787045.25)
    client = make_client(send=False, before_send=scrubbed(change), clock=clock)

    with caplog.at_level(logging.ERROR, logger="spoolpost"):
        returned = client.capture("e", distinct_id="u", properties=ORIGINAL)

    [event] = stored(spool_path)
    assert event["uuid"] == returned
    assert (event["event"], event["distinct_id"]) == ("e", "u")
    assert event["timestamp"] == "2025-01-02T03:04:05.250000Z"
    assert {k: event["properties"][k] for k in ORIGINAL} == ORIGINAL  # unmodified
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"before_send returned an invalid event ({problem}); the event {returned} is kept "
        "unmodified"
    ]


def test_before_send_output_is_normalized_like_a_capture(
    make_client: MakeClient, spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def rewrite(event: dict[str, Any]) -> dict[str, Any]:
        return {
            "event": "renamed",
            "distinct_id": 42,
            "properties": {"plan": "pro"},
            "timestamp": datetime(2025, 1, 2, 8, 34, 5, tzinfo=timezone(timedelta(hours=5.5))),
            "uuid": FIXED_UUID.upper(),
        }

    client = make_client(send=False, before_send=rewrite)

    with caplog.at_level(logging.ERROR, logger="spoolpost"):
        returned = client.capture("e", distinct_id="u")

    assert returned == FIXED_UUID
    assert stored(spool_path) == [
        {
            "event": "renamed",
            "distinct_id": "42",
            "properties": {"plan": "pro"},
            "timestamp": "2025-01-02T03:04:05Z",
            "uuid": FIXED_UUID,
        }
    ]
    assert caplog.records == []


def test_filtered_drops_are_counted_in_few_writes(
    make_client: MakeClient, spool_path: Path
) -> None:
    clock = ManualClock()
    client = make_client(send=False, before_send=drop, clock=clock)

    for _ in range(5):
        client.capture("e", distinct_id="u")
    first = client.spool.counters()["filtered"]  # the first drop is written at once
    clock.advance(FILTERED_COUNT_EVERY)
    client.capture("e", distinct_id="u")
    second = client.spool.counters()["filtered"]
    client.capture("e", distinct_id="u")
    client.flush(timeout=1)

    assert (first, second, client.spool.counters()["filtered"]) == (1, 6, 7)
    assert stored(spool_path) == []


def test_before_send_sees_every_capture_method(make_client: MakeClient) -> None:
    seen: list[str] = []

    def record(event: dict[str, Any]) -> None:
        seen.append(event["event"])

    client = make_client(send=False, before_send=record)
    client.capture("e", distinct_id="u")
    client.identify("u", {"a": 1})
    client.set(distinct_id="u", properties={"a": 1})
    client.set_once(distinct_id="u", properties={"a": 1})
    client.alias("a", "b")
    client.group_identify("company", "acme")

    assert seen == ["e", "$identify", "$set", "$set_once", "$create_alias", "$groupidentify"]


# -- disable_geoip --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_setting", "call_setting", "expected"),
    [
        (True, None, True),
        (False, None, False),
        (True, False, False),
        (False, True, True),
    ],
)
def test_disable_geoip(
    make_client: MakeClient,
    spool_path: Path,
    client_setting: bool,
    call_setting: bool | None,
    expected: bool,
) -> None:
    client = make_client(send=False, disable_geoip=client_setting)

    client.capture("e", distinct_id="u", disable_geoip=call_setting)
    client.alias("a", "b", disable_geoip=call_setting)
    client.group_identify("company", "acme", disable_geoip=call_setting)

    for event in stored(spool_path):
        assert ("$geoip_disable" in event["properties"]) is expected
        assert event["properties"].get("$geoip_disable", True) is True


# -- disabled and capture-only clients -------------------------------------------------------


def test_disabled_captures_nothing_and_raises_nothing(tmp_path: Path) -> None:
    before = spoolpost_threads()
    client = Client("", "not a url", spool=tmp_path / "never.spool", disabled=True)

    results = [
        client.capture(wrong(None), distinct_id=wrong(None), properties=wrong([1])),
        client.capture(
            "e", distinct_id="u", properties={"lock": threading.Lock()}, send_feature_flags=True
        ),
        client.identify("u"),
        client.set(distinct_id="u", properties={"a": 1}),
        client.set_once(distinct_id="u", properties={"a": 1}),
        client.alias("a", "b"),
        client.group_identify("company", "acme"),
    ]

    assert results == [None] * 7
    assert client.flush() == FlushResult()
    assert client.shutdown() == FlushResult()
    assert list(tmp_path.iterdir()) == []
    assert spoolpost_threads() == before


def test_capture_only_client_starts_no_threads(spool_path: Path, endpoint: LocalEndpoint) -> None:
    before = spoolpost_threads()
    client = Client(API_KEY, endpoint.url, spool=spool_path, send=False)
    uuids = [client.capture("e", distinct_id="u", properties={"i": i}) for i in range(3)]

    assert spoolpost_threads() == before
    flushed = client.flush(timeout=5)
    assert flushed == FlushResult(pending=3)
    assert not flushed.complete  # left in the spool for `spoolpost drain`
    assert client.shutdown(timeout=5) == FlushResult(pending=3)
    assert spoolpost_threads() == before
    assert endpoint.requests == []
    assert [e["uuid"] for e in stored(spool_path)] == uuids  # left for `spoolpost drain`


# -- configuration errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_key", "host", "options", "message"),
    [
        ("", "http://127.0.0.1:9", {}, "api_key must be a non-empty string"),
        ("   ", "http://127.0.0.1:9", {}, "api_key must be a non-empty string"),
        (API_KEY, "ftp://example.com", {}, "host must be an http(s) URL"),
        (API_KEY, "http://127.0.0.1:9", {"max_event_bytes": 0}, "max_event_bytes must be >= 1"),
        (API_KEY, "http://127.0.0.1:9", {"shutdown_timeout": -1}, "shutdown_timeout must be"),
        (API_KEY, "http://127.0.0.1:9", {"flush_at": 0}, "flush_at and max_batch_size"),
        (API_KEY, "http://127.0.0.1:9", {"durability": "disk"}, "durability must be one of"),
        (API_KEY, "http://127.0.0.1:9", {"on_full": "ignore"}, "on_full must be one of"),
    ],
)
def test_settings_that_cannot_work_raise_config_error(
    spool_path: Path, api_key: str, host: str, options: dict[str, Any], message: str
) -> None:
    before = spoolpost_threads()
    with pytest.raises(ConfigError) as caught:
        Client(api_key, host, spool=spool_path, **options)

    assert message in str(caught.value)
    assert spoolpost_threads() == before


def test_a_spool_of_another_key_raises_key_mismatch_unless_forced(
    spool_path: Path, endpoint: LocalEndpoint
) -> None:
    with Client("phc_first", endpoint.url, spool=spool_path, send=False) as first:
        first.capture("e", distinct_id="u")

    with pytest.raises(KeyMismatch) as caught:
        Client("phc_second", endpoint.url, spool=spool_path, send=False)

    assert key_fingerprint("phc_first") in str(caught.value)
    assert "force=True" in str(caught.value)
    with Client("phc_second", endpoint.url, spool=spool_path, force_key=True) as forced:
        assert forced.spool.meta()["key_fingerprint"] == key_fingerprint("phc_second")
        result = forced.flush(timeout=10)
    assert result == FlushResult(delivered=1)
    assert [r.json["api_key"] for r in endpoint.requests] == ["phc_second"]


# -- lifecycle ------------------------------------------------------------------------------------


def test_shutdown_is_idempotent_and_capture_afterwards_raises(
    make_client: MakeClient, endpoint: LocalEndpoint
) -> None:
    client = make_client()
    captured = client.capture("e", distinct_id="u")

    first = client.shutdown(timeout=10)
    second = client.shutdown(timeout=10)

    assert first == FlushResult(delivered=1)
    assert second == first  # the same answer: what was left at shutdown
    with pytest.raises(SpoolClosed, match="this client was shut down"):
        client.flush()
    assert endpoint.delivered_uuids() == [captured]
    with pytest.raises(SpoolClosed, match="this client was shut down"):
        client.capture("e", distinct_id="u")
    assert not client.dispatcher.running


def test_a_second_shutdown_still_says_what_was_left(
    make_client: MakeClient, endpoint: LocalEndpoint
) -> None:
    endpoint.default = Response(status=401)
    client = make_client()
    for n in range(10):
        client.capture("e", distinct_id=f"u{n}")
    first = client.shutdown(timeout=1)
    assert first.pending == 10 and not first.complete
    assert client.shutdown() == first


@pytest.mark.parametrize("timeout", [-1.0, float("nan")])
def test_flush_and_shutdown_refuse_a_negative_or_nan_timeout(
    make_client: MakeClient, timeout: float
) -> None:
    client = make_client()
    with pytest.raises(ValueError, match="timeout must be >= 0 seconds"):
        client.flush(timeout)
    with pytest.raises(ValueError, match="timeout must be >= 0 seconds"):
        client.shutdown(timeout)


def test_concurrent_shutdowns_flush_once(make_client: MakeClient, endpoint: LocalEndpoint) -> None:
    client = make_client()
    captured = [client.capture("e", distinct_id="u", properties={"i": i}) for i in range(20)]
    results: list[FlushResult] = []
    barrier = threading.Barrier(4)

    def stop() -> None:
        barrier.wait()
        results.append(client.shutdown(timeout=10))

    threads = [threading.Thread(target=stop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert results == [FlushResult(delivered=20)] * 4  # one flush, its result told to all
    assert sorted(endpoint.delivered_uuids()) == sorted(str(u) for u in captured)


def test_context_manager_delivers_and_shuts_down(spool_path: Path, endpoint: LocalEndpoint) -> None:
    with Client(API_KEY, endpoint.url, spool=spool_path, flush_interval=3600) as client:
        captured = client.capture("e", distinct_id="u")

    assert endpoint.delivered_uuids() == [captured]
    with pytest.raises(SpoolClosed):
        client.capture("e", distinct_id="u")


def test_atexit_delivers_what_a_script_captured(
    tmp_path: Path, spool_path: Path, endpoint: LocalEndpoint
) -> None:
    script = textwrap.dedent(
        f"""
        import spoolpost
        client = spoolpost.Client({API_KEY!r}, {endpoint.url!r}, spool={str(spool_path)!r},
                                  flush_interval=3600, flush_at=1000)
        for i in range(3):
            print(client.capture("from_script", distinct_id="u", properties={{"i": i}}), flush=True)
        # no flush, no shutdown: the atexit hook must deliver
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
    captured = done.stdout.split()
    assert len(captured) == 3
    assert endpoint.delivered_uuids() == captured  # the process is gone: all were sent
    assert stored(spool_path) == []


def test_atexit_shutdown_keeps_what_it_cannot_send(tmp_path: Path, spool_path: Path) -> None:
    down = LocalEndpoint()  # bound, never started: connections are refused
    script = textwrap.dedent(
        f"""
        import spoolpost
        client = spoolpost.Client({API_KEY!r}, {down.url!r}, spool={str(spool_path)!r},
                                  shutdown_timeout=0.5)
        client.capture("kept", distinct_id="u")
        """
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        down.stop()

    assert done.returncode == 0, done.stderr
    assert [e["event"] for e in stored(spool_path)] == ["kept"]


def test_a_mapping_that_is_not_a_dict_is_accepted(
    make_client: MakeClient, spool_path: Path
) -> None:
    class Props(Mapping[str, Any]):
        def __init__(self) -> None:
            self.data = {"a": 1}

        def __getitem__(self, key: str) -> Any:
            return self.data[key]

        def __iter__(self) -> Iterator[str]:
            return iter(self.data)

        def __len__(self) -> int:
            return len(self.data)

    make_client(send=False).capture("e", distinct_id="u", properties=Props(), groups=Props())

    props = stored(spool_path)[0]["properties"]
    assert (props["a"], props["$groups"]) == (1, {"a": 1})
