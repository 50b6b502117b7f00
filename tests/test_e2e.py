"""End to end: Client → spool → dispatcher → the real loopback endpoint.

The acceptance checks of issues 2 and 4 that need delivery: many threads, the wire
shape, flush barriers, shutdown with the endpoint down, real-world property values,
and property-based round trips of nested values through the spool to the endpoint.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kit import API_KEY, live

from spoolpost import Client, EncodingError, EventTooLarge
from spoolpost._version import __version__
from spoolpost.delivery import FlushResult
from spoolpost.delivery.policy import RetryPolicy
from spoolpost.spool import Spool
from spoolpost.testing import LocalEndpoint, RecordedRequest, Response

MakeClient = Callable[..., Client]
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")
LIB = {"$lib": "spoolpost", "$lib_version": __version__}
QUIET: dict[str, Any] = {"flush_at": 100_000, "flush_interval": 3600.0}  # send on flush() only


def parse_utc(text: str) -> datetime:
    assert RFC3339_UTC.match(text), text
    return datetime.fromisoformat(text)


def wire_events(endpoint: LocalEndpoint) -> dict[str, dict[str, Any]]:
    """Every event answered 2xx, by uuid."""
    return {e["uuid"]: e for r in endpoint.requests if 200 <= r.status < 300 for e in r.events}


# -- 10,000 events from 4 threads ------------------------------------------------------------


def check_request(request: RecordedRequest) -> None:
    """Every field of one batch request in the PostHog v0 wire format (delivery/transport.py)."""
    assert (request.method, request.path) == ("POST", "/batch/")
    assert request.headers["User-Agent"] == f"spoolpost/{__version__}"
    assert request.headers["Content-Type"] == "application/json"
    assert "Content-Encoding" not in request.headers
    body = request.json
    assert list(body) == ["api_key", "historical_migration", "sent_at", "batch"]
    assert body["api_key"] == API_KEY
    assert body["historical_migration"] is False
    sent_at = parse_utc(body["sent_at"])
    assert sent_at.timestamp() <= request.time + 1e-3
    assert 1 <= len(body["batch"]) <= 500
    for event in body["batch"]:
        assert list(event) == ["uuid", "event", "distinct_id", "properties", "timestamp"]
        assert uuid.UUID(event["uuid"]).version == 7
        assert str(uuid.UUID(event["uuid"])) == event["uuid"]
        assert parse_utc(event["timestamp"]) <= sent_at
        assert event["properties"]["$lib"] == "spoolpost"
        assert event["properties"]["$lib_version"] == __version__


def test_ten_thousand_events_from_four_threads_are_each_delivered_once(
    make_client: MakeClient, endpoint: LocalEndpoint
) -> None:
    client = make_client()
    per_thread, threads = 2500, 4
    captured: list[list[tuple[str | None, int]]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def work(k: int) -> None:
        start.wait()
        for i in range(per_thread):
            props = {"thread": k, "seq": i, "plan": "pro"}
            captured[k].append(
                (client.capture("page_view", distinct_id=f"user-{k}", properties=props), i)
            )

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    result = client.flush(timeout=120)

    # delivered counts what the flush itself settled; most went out while capturing
    assert result.pending == 0 and result.dead == 0 and not result.timed_out
    delivered = endpoint.delivered_uuids()
    assert len(delivered) == len(set(delivered)) == per_thread * threads
    events = wire_events(endpoint)
    for k, items in enumerate(captured):
        for captured_uuid, i in items:
            assert captured_uuid is not None
            event = events[captured_uuid]
            assert event["event"] == "page_view"
            assert event["distinct_id"] == f"user-{k}"
            assert event["properties"] == {
                "thread": k,
                "seq": i,
                "plan": "pro",
                **LIB,
                "$geoip_disable": True,
            }
    for request in endpoint.requests:
        check_request(request)
    assert live(client.spool.path) == []


def test_historical_migration_and_gzip_reach_the_wire(
    make_client: MakeClient, endpoint: LocalEndpoint
) -> None:
    client = make_client(historical_migration=True, gzip=True)
    captured = client.capture("imported", distinct_id="u", timestamp="2020-05-06T07:08:09Z")

    client.flush(timeout=10)

    [request] = endpoint.requests
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.json["historical_migration"] is True
    assert request.json["batch"][0]["uuid"] == captured
    assert request.json["batch"][0]["timestamp"] == "2020-05-06T07:08:09Z"


# -- flush barriers ------------------------------------------------------------------------


def test_flush_returns_only_once_its_events_are_acknowledged(
    make_client: MakeClient, endpoint: LocalEndpoint
) -> None:
    endpoint.default = Response(delay=0.3)  # a slow endpoint: an early return would show
    client = make_client(**QUIET)
    captured = [client.capture("e", distinct_id="u", properties={"i": i}) for i in range(250)]

    result = client.flush(timeout=30)

    acknowledged = set(endpoint.delivered_uuids())  # right when flush returned
    assert set(captured) <= acknowledged
    assert result == FlushResult(delivered=250)


LATER = "0194e0f7-0000-7000-8000-00000000abcd"


def test_a_flush_does_not_wait_for_events_captured_after_it(
    make_client: MakeClient, endpoint: LocalEndpoint
) -> None:
    later_hung = threading.Event()

    def handler(request: RecordedRequest) -> Response | None:
        if LATER in request.uuids:
            later_hung.set()
            return Response(hang=True)
        later_hung.wait(30)  # the first batch is answered only once the later one hangs
        return None

    endpoint.set_handler(handler)
    client = make_client(senders=2, **QUIET)
    early = [client.capture("early", distinct_id="u", properties={"i": i}) for i in range(5)]
    first_result: list[FlushResult] = []
    first = threading.Thread(target=lambda: first_result.append(client.flush(timeout=30)))
    first.start()
    assert endpoint.wait_for_requests(1, timeout=10)  # the first flush has begun
    client.capture("later", distinct_id="u", uuid=LATER)
    second_result = client.flush(timeout=0.5)  # its batch hangs
    first.join(timeout=30)

    assert later_hung.is_set()
    assert first_result == [FlushResult(delivered=5)]
    assert set(early) <= set(endpoint.delivered_uuids())
    assert second_result.timed_out and second_result.pending == 1
    assert LATER not in endpoint.delivered_uuids()
    endpoint.release_hung()


def test_concurrent_flushes_each_wait_for_their_own_events(
    make_client: MakeClient, endpoint: LocalEndpoint
) -> None:
    endpoint.default = Response(delay=0.05)
    client = make_client(senders=2, **QUIET)
    threads, rounds = 4, 3
    # per thread: (its events of one round, what the endpoint had acknowledged when
    # that round's flush returned, the flush result)
    seen: list[list[tuple[set[str], set[str], FlushResult]]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def work(k: int) -> None:
        start.wait()
        for r in range(rounds):
            mine = {
                str(client.capture("e", distinct_id=f"user-{k}", properties={"r": r}))
                for _ in range(20)
            }
            result = client.flush(timeout=30)
            seen[k].append((mine, set(endpoint.delivered_uuids()), result))

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    assert [len(rounds_seen) for rounds_seen in seen] == [rounds] * threads
    for rounds_seen in seen:
        for mine, acknowledged, result in rounds_seen:
            assert mine <= acknowledged
            assert result.pending == 0 and not result.timed_out
    delivered = endpoint.delivered_uuids()
    assert len(delivered) == len(set(delivered)) == threads * rounds * 20


def test_a_retry_resends_the_same_bytes_with_a_new_sent_at(
    make_client: MakeClient, endpoint: LocalEndpoint
) -> None:
    endpoint.respond(Response(503, headers={"Retry-After": "0"}))
    client = make_client(retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.1), **QUIET)
    captured = [client.capture("e", distinct_id="u", properties={"i": i}) for i in range(3)]

    result = client.flush(timeout=30)

    assert result == FlushResult(delivered=3)
    failed, retried = endpoint.requests
    assert (failed.status, retried.status) == (503, 200)
    assert failed.uuids == retried.uuids == captured
    assert failed.json["batch"] == retried.json["batch"]  # the stored events, unchanged
    assert parse_utc(failed.json["sent_at"]) < parse_utc(retried.json["sent_at"])


@pytest.mark.parametrize("status", [401, 403, 404])
def test_flush_returns_at_once_when_delivery_pauses_on_a_configuration_fault(
    make_client: MakeClient, endpoint: LocalEndpoint, status: int
) -> None:
    endpoint.default = Response(status, body=b'{"error":"invalid api key"}')
    client = make_client(**QUIET)
    client.capture("e", distinct_id="u")

    result = client.flush(timeout=30)

    assert not result.timed_out
    assert result.pending == 1 and result.delivered == 0
    assert result.paused is not None and f"HTTP {status}" in result.paused
    assert len(live(client.spool.path)) == 1  # kept for when the key is fixed


# -- shutdown with the endpoint down ----------------------------------------------------------


def test_shutdown_with_the_endpoint_down_returns_in_time_and_keeps_the_events(
    spool_path: Path,
) -> None:
    down = LocalEndpoint()  # the port is reserved but nothing listens: refused
    client = Client(API_KEY, down.url, spool=spool_path, **QUIET)
    captured = [client.capture("e", distinct_id="u", properties={"i": i}) for i in range(50)]
    try:
        started = time.monotonic()
        result = client.shutdown(timeout=1.0)
        took = time.monotonic() - started
    finally:
        down.stop()

    assert took < 1.0 + 2.0  # its own deadline, plus closing the spool
    assert result.timed_out and result.pending == 50 and result.delivered == 0
    spool = Spool(spool_path)
    try:
        counts = spool.stats(time.time()).counts
        kept = [e.uuid for e in spool.events(now=time.time())]
    finally:
        spool.close()
    assert counts["pending"] + counts["leased"] == 50
    assert kept == captured


def test_a_later_client_delivers_what_shutdown_left(
    spool_path: Path, endpoint: LocalEndpoint
) -> None:
    down = LocalEndpoint()
    client = Client(API_KEY, down.url, spool=spool_path, **QUIET)
    captured = [client.capture("e", distinct_id="u", properties={"i": i}) for i in range(10)]
    client.shutdown(timeout=0.2)
    down.stop()

    # Another loopback port is another endpoint: the spool remembers the first one.
    with Client(API_KEY, endpoint.url, spool=spool_path, force_host=True) as later:
        result = later.flush(timeout=30)

    assert result.pending == 0 and result.delivered == 10
    assert sorted(endpoint.delivered_uuids()) == sorted(str(u) for u in captured)


# -- real-world property values (issue 4, "must show") ------------------------------------------


class Plan(enum.Enum):
    PRO = "pro"


@dataclasses.dataclass
class Cart:
    items: int
    total: Decimal


def test_real_world_values_are_delivered_with_the_documented_encodings(
    local_tz: str, make_client: MakeClient, endpoint: LocalEndpoint
) -> None:
    an_id = uuid.uuid4()
    properties = {
        "day": date(2025, 1, 2),
        "naive": datetime(2025, 1, 2, 8, 34, 5),
        "aware": datetime(2025, 1, 2, 8, 34, 5, 120000, tzinfo=timezone(timedelta(hours=5.5))),
        "price": Decimal("1.10"),
        "id": an_id,
        "raw": b"\xff",
        "tags": {1, 2},
        "nan": float("nan"),
        "inf": float("inf"),
        "text": "\ud800x",
        "plan": Plan.PRO,
        "cart": Cart(2, Decimal("19.99")),
        "pair": (1, "a"),
    }
    client = make_client()

    captured = client.capture("checkout", distinct_id="u1", properties=properties)
    client.flush(timeout=10)

    assert wire_events(endpoint)[str(captured)]["properties"] == {
        "day": "2025-01-02T00:00:00Z",
        "naive": "2025-01-02T08:34:05Z",  # a naive datetime of the past is UTC
        "aware": "2025-01-02T03:04:05.120000Z",
        "price": 1.1,
        "id": str(an_id),
        "raw": "/w==",
        "tags": [1, 2],
        "nan": None,
        "inf": None,
        "text": "\ufffdx",
        "plan": "pro",
        "cart": {"items": 2, "total": 19.99},
        "pair": [1, "a"],
        **LIB,
        "$geoip_disable": True,
    }


@pytest.mark.parametrize(
    ("make_bad", "path"),
    [
        (lambda f: {"ok": 1, "file": f}, "properties.file"),
        (lambda f: {"meta": {"locks": [1, threading.Lock()]}}, "properties.meta.locks[1]"),
        (lambda f: {"a b": {"x": object()}}, 'properties["a b"].x'),
    ],
    ids=["open-file", "lock-in-list", "object-under-odd-key"],
)
def test_an_unencodable_value_raises_naming_its_path_and_spares_the_others(
    tmp_path: Path,
    make_client: MakeClient,
    endpoint: LocalEndpoint,
    make_bad: Callable[[Any], dict[str, Any]],
    path: str,
) -> None:
    client = make_client(**QUIET)
    with open(tmp_path / "f.txt", "w") as handle:
        before = client.capture("before", distinct_id="u")
        with pytest.raises(EncodingError) as caught:
            client.capture("bad", distinct_id="u", properties=make_bad(handle))
        after = client.capture("after", distinct_id="u")

    assert caught.value.path == path
    assert str(caught.value).endswith(f" at {path}")
    assert "cannot encode a value of type" in str(caught.value)
    result = client.flush(timeout=10)
    assert result == FlushResult(delivered=2)
    assert endpoint.delivered_uuids() == [before, after]


def test_a_two_megabyte_event_raises_and_flush_returns_promptly(
    make_client: MakeClient, endpoint: LocalEndpoint
) -> None:
    client = make_client(**QUIET)

    with pytest.raises(EventTooLarge) as caught:
        client.capture("huge", distinct_id="u", properties={"blob": "x" * 2_000_000})
    result = client.flush(timeout=5)

    assert caught.value.size > 2_000_000
    assert caught.value.limit == 900 * 1024
    assert result == FlushResult()  # nothing pending, no timeout
    assert endpoint.requests == []
    assert live(client.spool.path) == []


# -- property-based: nested values round-trip or fail with a path ------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(codec="utf-8") | st.characters(categories=["Cs"]), max_size=8),
    st.decimals(allow_nan=True, allow_infinity=True, places=None),
    st.uuids(),
    st.binary(max_size=8),
    st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 1, 1)),
    st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2200, 1, 1)),
    st.datetimes(
        min_value=datetime(1900, 1, 2),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)), timezone(timedelta(0))]),
    ),
    st.frozensets(st.integers(-5, 5), max_size=3),
    st.sets(st.text(max_size=3) | st.integers(-5, 5), max_size=3),  # maybe unorderable
    st.sampled_from([Plan.PRO]),
)


class Opaque:
    """No converter knows this type."""


UNENCODABLE = st.builds(Opaque) | st.builds(threading.Lock)


def values(bad: bool) -> st.SearchStrategy[Any]:
    leaves = st.one_of(SCALARS, UNENCODABLE) if bad else SCALARS
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.tuples(children, children),
            st.dictionaries(st.text(max_size=6), children, max_size=4),
        ),
        max_leaves=12,
    )


def expected_json(value: Any) -> Any:
    """The documented encoding (encode_event's docstring), written out plainly."""
    if isinstance(value, Opaque) or type(value) is type(threading.Lock()):
        raise LookupError  # unencodable
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        if value == value.to_integral_value() and -(2**63) <= value <= 2**63 - 1:
            return int(value)
        return float(value) if Decimal(repr(float(value))) == value else str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return f"{value.isoformat()}T00:00:00Z"
    if isinstance(value, set | frozenset):
        try:
            members = sorted(value)
        except TypeError:  # str and int mixed: iteration order
            members = list(value)
        return [expected_json(v) for v in members]
    if isinstance(value, enum.Enum):
        return expected_json(value.value)
    if isinstance(value, list | tuple):
        return [expected_json(v) for v in value]
    assert isinstance(value, dict)
    out = {}
    for k, v in value.items():
        out[expected_json(k)] = expected_json(v)
    return out


def bad_paths(value: Any, path: str) -> set[str]:
    """The paths of every unencodable value, written as EncodingError names them."""
    found: set[str] = set()
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found |= bad_paths(item, f"{path}[{i}]")
        return found
    if isinstance(value, dict):
        for key, item in value.items():
            text = expected_json(key)
            name = text.replace("$", "_")
            step = (
                f".{text}" if name.isidentifier() else f"[{json.dumps(text, ensure_ascii=False)}]"
            )
            found |= bad_paths(item, path + step)
        return found
    try:
        expected_json(value)
    except LookupError:
        return {path}
    return found


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, LocalEndpoint]]:
    with LocalEndpoint() as endpoint:
        spool = tmp_path_factory.mktemp("roundtrip") / "events.spool"
        client = Client(API_KEY, endpoint.url, spool=spool, disable_geoip=False, **QUIET)
        yield client, endpoint
        client.shutdown(timeout=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(properties=st.dictionaries(st.text(max_size=6), values(bad=False), max_size=5))
def test_encodable_values_round_trip_through_the_spool_to_the_endpoint(
    roundtrip: tuple[Client, LocalEndpoint], properties: dict[str, Any]
) -> None:
    client, endpoint = roundtrip
    for key in LIB:
        properties.pop(key, None)  # $lib and $lib_version are always the client's

    captured = client.capture("e", distinct_id="u", properties=properties)
    result = client.flush(timeout=10)

    # complete, not delivered == 1: a step of the dispatcher thread that began during
    # the previous example's flush may claim this event before this flush counts it,
    # and FlushResult.delivered counts only what the call itself settled.
    assert result.complete and result.pending == 0
    delivered = wire_events(endpoint)[str(captured)]
    expected = expected_json(properties) | LIB
    assert delivered["properties"] == expected


@settings(max_examples=150, deadline=None)
@given(properties=st.dictionaries(st.text(max_size=6), values(bad=True), max_size=5))
def test_every_value_either_round_trips_or_raises_with_a_path(
    roundtrip: tuple[Client, LocalEndpoint], properties: dict[str, Any]
) -> None:
    client, endpoint = roundtrip
    for key in LIB:
        properties.pop(key, None)  # $lib and $lib_version are always the client's
    bad = bad_paths(properties, "properties")

    try:
        captured = client.capture("e", distinct_id="u", properties=properties)
    except EncodingError as exc:
        hypothesis.event("raised EncodingError")
        assert exc.path in bad
        return
    hypothesis.event("encoded")
    assert not bad
    client.flush(timeout=10)
    assert wire_events(endpoint)[str(captured)]["properties"] == expected_json(properties) | LIB


def test_nothing_is_written_when_encoding_fails(spool_path: Path) -> None:
    client = Client(API_KEY, "http://127.0.0.1:9", spool=spool_path, send=False)
    with pytest.raises(EncodingError):
        client.capture("e", distinct_id="u", properties={"x": [1, {"y": Opaque()}]})
    client.shutdown(timeout=1)

    assert live(spool_path) == []
