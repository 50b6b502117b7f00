"""admin: the operator functions behind the CLI, on real spool files."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from kit import API_KEY, OTHER_API_KEY, T0, add_events, kill, states

from spoolpost import ops
from spoolpost.cli.options import parse_duration
from spoolpost.delivery import DeliveryConfig, Dispatcher, FlushResult
from spoolpost.delivery.transport import HttpTransport
from spoolpost.errors import ConfigError, ImportRejected, KeyMismatch, SpoolFull
from spoolpost.spool import Filter, Spool
from spoolpost.testing import LocalEndpoint, Response, reject_uuids

DAY = 86_400.0


# -- open_spool ---------------------------------------------------------------------------


def test_open_spool_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no spool at"):
        ops.open_spool(tmp_path / "missing.spool")
    assert not (tmp_path / "missing.spool").exists()


def test_open_spool_creates_when_asked(tmp_path: Path) -> None:
    ops.open_spool(tmp_path / "new.spool", create=True).close()
    assert (tmp_path / "new.spool").read_bytes().startswith(b"SQLite format 3\x00")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"event": "x"}\n', "not a spoolpost spool"),
        (b"\x00" * 200, "not a spoolpost spool"),
    ],
)
def test_open_spool_leaves_other_files_untouched(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        ops.open_spool(path)
    assert path.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["events.jsonl"]  # nothing moved aside


def test_open_spool_refuses_another_applications_database(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(ConfigError, match="SQLite database, but not a spoolpost spool"):
        ops.open_spool(path)
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    conn.close()
    assert tables == ["users"]


def test_open_spool_refuses_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        ops.open_spool(tmp_path)


def test_open_spool_accepts_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.spool"
    path.touch()
    ops.open_spool(path).close()
    assert path.stat().st_size > 0


# -- Filter, select_events, tail -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"states": frozenset({"gone"})}, "unknown state"),
        ({"states": "dead"}, r"states must be a set of state names, e.g. frozenset\({'dead'}\)"),
        ({"older_than": -1.0}, "older_than must be >= 0"),
    ],
)
def test_filter_refuses_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Filter(**kwargs)  # type: ignore[arg-type]


def test_select_events_lists_live_events_in_capture_order_then_dead(spool: Spool) -> None:
    a, b, c = add_events(spool, ["a", "b", "c"])
    kill(spool, [a], at=T0 + 10)
    events = list(spool.events(now=time.time()))
    assert [(e.state, e.uuid) for e in events] == [("pending", b), ("pending", c), ("dead", a)]
    dead = events[2]
    assert dead.event["event"] == "a"
    assert (dead.reason, dead.status, dead.detail) == ("rejected", 400, '{"error":"bad event"}')
    assert dead.dead_at == T0 + 10
    assert dead.captured_at == T0


def test_tail_is_newest_first_by_capture_or_dead_time(spool: Spool) -> None:
    a, b, c = add_events(spool, ["a", "b", "c"])  # captured at T0, T0+1, T0+2
    kill(spool, [a], at=T0 + 5)
    assert [e.uuid for e in spool.tail(limit=10, now=time.time())] == [a, c, b]
    assert [e.uuid for e in spool.tail(limit=2, now=time.time())] == [a, c]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (Filter(states=frozenset({"dead"})), ["x1"]),
        (Filter(states=frozenset({"pending"})), ["y", "x2"]),
        (Filter(states=frozenset({"leased"})), []),
        (Filter(event="x"), ["x1", "x2"]),
        (Filter(reason="rejected"), ["x1"]),
        (Filter(reason="expired"), []),
        (Filter(event="y", states=frozenset({"dead"})), []),
    ],
)
def test_tail_filters(spool: Spool, where: Filter, expected: list[str]) -> None:
    x1, x2, y = add_events(spool, ["x", "x", "y"])
    kill(spool, [x1], at=T0 + 1.5)
    names = {x1: "x1", x2: "x2", y: "y"}
    assert [names[e.uuid] for e in spool.tail(where, limit=10, now=time.time())] == expected


def test_tail_shows_leased_events(spool: Spool) -> None:
    (a,) = add_events(spool, ["a"])
    spool.claim(T0, max_events=10, max_bytes=1 << 20, lease_ttl=60)
    assert [(e.state, e.uuid) for e in spool.tail(now=time.time())] == [("leased", a)]


def test_spooled_event_json_line_adds_the_spool_metadata(spool: Spool) -> None:
    (a,) = add_events(spool, ["a"])
    kill(spool, [a], at=T0 + 3)
    (line,) = [json.loads(e.json_line()) for e in spool.events(now=time.time())]
    meta = line.pop("spoolpost")
    assert line["uuid"] == a and line["event"] == "a"
    assert meta == {
        "state": "dead",
        "id": 1,
        "attempts": 1,
        "captured_at": T0,
        "reason": "rejected",
        "status": 400,
        "detail": '{"error":"bad event"}',
        "dead_at": T0 + 3,
    }


# -- replay and purge ------------------------------------------------------------------------


def test_replay_moves_dead_letters_back_to_pending_with_a_fresh_start(spool: Spool) -> None:
    a, b = add_events(spool, ["a", "b"])
    kill(spool, [a, b], at=T0 + 1, reason="expired", status=None)
    now = T0 + 30 * DAY
    assert spool.replay(now=now) == 2
    found = list(spool.events(now=time.time()))
    assert [(e.state, e.uuid, e.attempts) for e in found] == [("pending", a, 0), ("pending", b, 0)]
    assert all(e.captured_at == now and e.next_attempt_at == now for e in found)
    assert all(e.last_error is None for e in found)
    assert spool.counters()["replayed"] == 2


@pytest.mark.parametrize(
    ("where", "replayed"),
    [
        (Filter(reason="too_large"), ["big"]),
        (Filter(event="bad"), ["bad"]),
        (Filter(reason="rejected", event="big"), []),
        (Filter(states=frozenset({"pending"})), []),
        (Filter(older_than=2.5 * DAY), ["bad"]),
    ],
)
def test_replay_filters(spool: Spool, where: Filter, replayed: list[str]) -> None:
    bad, big, ok = add_events(spool, ["bad", "big", "ok"])
    kill(spool, [bad], at=T0, reason="rejected", status=400)
    kill(spool, [big], at=T0 + DAY, reason="too_large", status=413)
    names = {bad: "bad", big: "big", ok: "ok"}
    assert spool.replay(where, now=T0 + 3 * DAY) == len(replayed)
    pending = states(spool)["pending"]
    assert sorted(names[u] for u in pending) == sorted(["ok", *replayed])


def test_replay_by_uuid(spool: Spool) -> None:
    a, b = add_events(spool, ["a", "b"])
    kill(spool, [a, b])
    assert spool.replay(Filter(uuids=(b,)), now=time.time()) == 1
    assert states(spool) == {"pending": [b], "leased": [], "dead": [a]}


def test_replay_dry_run_changes_nothing(spool: Spool) -> None:
    a, b = add_events(spool, ["a", "b"])
    kill(spool, [a])
    assert spool.count_dead(now=time.time()) == 1
    assert states(spool) == {"pending": [b], "leased": [], "dead": [a]}
    assert spool.counters().get("replayed", 0) == 0


def test_replayed_events_are_delivered(spool: Spool, endpoint: LocalEndpoint) -> None:
    a, b = add_events(spool, ["a", "b"])
    kill(spool, [a, b])
    spool.replay(now=time.time())
    dispatcher = Dispatcher(
        spool, HttpTransport(endpoint.url, API_KEY), config=DeliveryConfig(flush_interval=0.0)
    )
    step = dispatcher.step(time.time())
    assert step.batches == 1
    assert endpoint.delivered_uuids() == [a, b]
    assert states(spool) == {"pending": [], "leased": [], "dead": []}


def test_purge_deletes_matching_dead_letters_only(spool: Spool) -> None:
    old, new, live = add_events(spool, ["old", "new", "live"])
    kill(spool, [old], at=T0)
    kill(spool, [new], at=T0 + 6 * DAY)
    assert spool.count_dead(Filter(older_than=7 * DAY), now=T0 + 8 * DAY) == 1
    assert spool.purge(Filter(older_than=7 * DAY), now=T0 + 8 * DAY) == 1
    assert states(spool) == {"pending": [live], "leased": [], "dead": [new]}
    assert spool.purge(Filter(event="nothing-like-it"), now=time.time()) == 0
    assert spool.purge(now=time.time()) == 1
    assert states(spool) == {"pending": [live], "leased": [], "dead": []}
    assert spool.counters()["purged"] == 2


def test_purge_never_touches_live_events(spool: Spool) -> None:
    (a,) = add_events(spool, ["a"])
    assert spool.purge(Filter(uuids=(a,)), now=time.time()) == 0
    assert states(spool)["pending"] == [a]


# -- import -------------------------------------------------------------------------------------


def line(**event: object) -> str:
    return json.dumps(event)


GOOD_UUID = "0194e0f7-0000-7000-8000-000000000001"


def test_import_adds_pending_events_normalized(spool: Spool) -> None:
    lines = [
        line(
            event="signed_up",
            distinct_id=42,
            uuid=GOOD_UUID.upper(),
            timestamp="2025-01-02T08:34:05+05:30",
            properties={"$lib": "posthog-python", "plan": "pro"},
            type="capture",
        ),
        "",
        line(event="b", distinct_id="u2"),
    ]
    result = ops.import_events(spool, lines, now=T0)
    assert result == ops.ImportResult(imported=2, skipped=0)
    first, second = spool.events(now=time.time())
    assert first.event == {
        "uuid": GOOD_UUID,
        "event": "signed_up",
        "distinct_id": "42",
        "properties": {"$lib": "posthog-python", "plan": "pro"},
        "timestamp": "2025-01-02T03:04:05Z",
        "type": "capture",
    }
    assert (first.state, first.captured_at, first.attempts) == ("pending", T0, 0)
    assert second.event["timestamp"] == "2023-11-14T22:13:20Z"  # default: now
    assert second.event["properties"] == {}
    assert len(second.uuid) == 36
    assert spool.counters()["imported"] == 2


@pytest.mark.parametrize("state", ["pending", "leased", "dead"])
def test_import_skips_uuids_already_in_the_spool_in_any_state_or_repeated(
    spool: Spool, state: str
) -> None:
    a, b = add_events(spool, ["a", "b"])
    if state == "leased":
        assert spool.claim(T0, max_events=1, max_bytes=1 << 30, lease_ttl=60) is not None
    if state == "dead":
        kill(spool, [a])
    lines = [
        line(event="a", distinct_id="u", uuid=a),
        line(event="n", distinct_id="u", uuid=GOOD_UUID),
    ]
    result = ops.import_events(spool, [*lines, lines[1]])
    assert result == ops.ImportResult(imported=1, skipped=2)
    expected = {"pending": [b, GOOD_UUID], "leased": [], "dead": []}
    expected[state] = [a, b, GOOD_UUID] if state == "pending" else [a]
    assert states(spool) == expected
    assert spool.counters()["imported"] == 1


def test_export_imported_into_the_same_spool_adds_nothing_and_replay_sends_once(
    spool: Spool, endpoint: LocalEndpoint
) -> None:
    # The reported case: the dead letter came back as pending beside itself, and
    # a replay later sent it twice.
    now = time.time()
    a, b, c = add_events(spool, ["a", "b", "c"], at=now - 10)
    kill(spool, [b], at=now - 5)
    exported = [e.json_line() for e in spool.events(now=time.time())]

    assert ops.import_events(spool, exported) == ops.ImportResult(imported=0, skipped=3)

    assert states(spool) == {"pending": [a, c], "leased": [], "dead": [b]}
    assert spool.counters().get("imported", 0) == 0
    assert spool.replay(now=time.time()) == 1
    dispatcher = Dispatcher(
        spool, HttpTransport(endpoint.url, API_KEY), config=DeliveryConfig(flush_interval=0.0)
    )
    assert dispatcher.step(time.time()).batches == 1
    assert endpoint.delivered_uuids() == [a, c, b]


def test_export_then_import_reproduces_the_stored_bytes(spool: Spool, tmp_path: Path) -> None:
    uuids = add_events(spool, ["a", "b", "c"])
    kill(spool, [uuids[1]])
    exported = [e.json_line() for e in spool.events(now=time.time())]
    before = {e.uuid: e.body for e in spool.events(now=time.time())}
    other = Spool(tmp_path / "other.spool")
    try:
        assert ops.import_events(other, exported).imported == 3
        after = {e.uuid: e.body for e in other.events(now=time.time())}
        assert {e.state for e in other.events(now=time.time())} == {"pending"}
    finally:
        other.close()
    assert after == before


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("[1, 2]", "expected a JSON object (a PostHog event), got list"),
        (line(distinct_id="u"), 'missing "event"'),
        (line(event="e"), 'missing "distinct_id"'),
        (line(event="", distinct_id="u"), "event must be a non-empty str"),
        (line(event="e", distinct_id=1.5), "distinct_id must be a non-empty str, int or UUID"),
        (line(event="e", distinct_id=True), "distinct_id must be"),
        (line(event="e", distinct_id="u", properties=[1]), '"properties" must be an object'),
        (line(event="e", distinct_id="u", timestamp=5), '"timestamp" must be an ISO 8601 string'),
        (line(event="e", distinct_id="u", timestamp="yesterday"), "invalid timestamp"),
        (line(event="e", distinct_id="u", uuid="nope"), "uuid must be a UUID"),
        (
            line(event="e", distinct_id="u", properties={"x": "y" * 1000}),
            "over max_event_bytes=500",
        ),
    ],
)
def test_import_rejects_a_bad_line_and_writes_nothing(
    spool: Spool, bad: str | bytes, message: str
) -> None:
    good = line(event="fine", distinct_id="u")
    with pytest.raises(ImportRejected) as caught:
        ops.import_events(spool, [good, good, bad, good], max_event_bytes=500)
    assert caught.value.errors == [(3, caught.value.errors[0][1])]
    assert message in caught.value.errors[0][1]
    assert "line 3: " in str(caught.value) and "nothing was imported" in str(caught.value)
    assert states(spool) == {"pending": [], "leased": [], "dead": []}
    assert spool.counters().get("imported", 0) == 0


def test_import_reports_every_bad_line_up_to_a_limit(spool: Spool) -> None:
    lines = ["nope"] * 30
    with pytest.raises(ImportRejected) as caught:
        ops.import_events(spool, lines)
    assert caught.value.total == 30
    assert [n for n, _ in caught.value.errors] == list(range(1, 21))
    assert "and 10 more bad line(s)" in str(caught.value)


# -- capture_one -----------------------------------------------------------------------------


def test_capture_one_commits_a_capture_only_event(spool_path: Path) -> None:
    uuid = ops.capture_one(spool_path, API_KEY, "signed_up", "u1", {"plan": "pro"})
    s = Spool(spool_path)
    try:
        (e,) = s.events(now=time.time())
        assert s.meta()["key_fingerprint"]
    finally:
        s.close()
    assert (e.uuid, e.state, e.event["event"], e.event["distinct_id"]) == (
        uuid,
        "pending",
        "signed_up",
        "u1",
    )
    assert e.event["properties"]["plan"] == "pro"


def test_capture_one_refuses_a_spool_of_another_key(spool_path: Path) -> None:
    ops.capture_one(spool_path, API_KEY, "a", "u1")
    with pytest.raises(KeyMismatch, match="another project API key"):
        ops.capture_one(spool_path, OTHER_API_KEY, "b", "u1")


def test_capture_one_reports_a_dropped_event(spool_path: Path) -> None:
    with pytest.raises(SpoolFull, match="the event was dropped"):
        ops.capture_one(spool_path, API_KEY, "a", "u1", max_spool_bytes=1)


def test_capture_one_refuses_a_file_that_is_not_a_spool(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(ConfigError, match="not a spoolpost spool"):
        ops.capture_one(path, API_KEY, "a", "u1")
    assert path.read_text() == "keep me"


# -- drain ------------------------------------------------------------------------------------


def test_drain_spool_delivers_and_reports_progress(spool: Spool, endpoint: LocalEndpoint) -> None:
    uuids = add_events(spool, ["a"] * 250, at=time.time() - 1000)
    seen: list[tuple[int, int]] = []
    result = ops.drain_spool(
        spool,
        HttpTransport(endpoint.url, API_KEY),
        config=DeliveryConfig(flush_interval=0.0, max_batch_size=100),
        progress=lambda total, pending: seen.append((total, pending)),
    )
    assert result == ops.DrainResult(delivered=250, dead=0, pending=0)
    assert sorted(endpoint.delivered_uuids()) == sorted(uuids)
    assert seen[0][0] == 250 and seen[-1] == (250, 0)
    assert ops.drain_exit_code(result) == ops.EXIT_EMPTY


def test_drain_spool_of_an_empty_spool_sends_nothing(spool: Spool, endpoint: LocalEndpoint) -> None:
    result = ops.drain_spool(spool, HttpTransport(endpoint.url, API_KEY))
    assert result == ops.DrainResult()
    assert endpoint.requests == []


def test_drain_spool_dead_letters_the_rejected_event_only(
    spool: Spool, endpoint: LocalEndpoint
) -> None:
    uuids = add_events(spool, ["a"] * 4, at=time.time() - 1000)
    endpoint.set_handler(reject_uuids([uuids[2]]))
    result = ops.drain_spool(spool, HttpTransport(endpoint.url, API_KEY))
    assert (result.delivered, result.dead, result.pending) == (3, 1, 0)
    assert ops.drain_exit_code(result) == ops.EXIT_DEAD
    assert states(spool)["dead"] == [uuids[2]]


def test_drain_spool_stops_on_an_outage(spool: Spool, endpoint: LocalEndpoint) -> None:
    add_events(spool, ["a"] * 3, at=time.time() - 1000)
    endpoint.default = Response(503)
    result = ops.drain_spool(spool, HttpTransport(endpoint.url, API_KEY), outage_after=1)
    assert result.pending == 3 and result.outage is not None and "503" in result.outage
    assert ops.drain_exit_code(result) == ops.EXIT_OUTAGE


def test_drain_spool_refuses_another_key(spool: Spool, endpoint: LocalEndpoint) -> None:
    add_events(spool, ["a"], at=time.time() - 1000)
    spool.bind_key("0123456789abcdef")
    with pytest.raises(KeyMismatch):
        ops.drain_spool(spool, HttpTransport(endpoint.url, API_KEY))
    assert endpoint.requests == []


@pytest.mark.parametrize(
    ("result", "code"),
    [
        (FlushResult(), 0),
        (FlushResult(delivered=5), 0),
        (FlushResult(delivered=5, dead=1), 6),
        (FlushResult(pending=2, timed_out=True), 3),
        (FlushResult(pending=2, outage="HTTP 503"), 4),
        (FlushResult(pending=2, paused="HTTP 401"), 5),
        (FlushResult(pending=2, dead=1, paused="HTTP 401"), 5),
        (FlushResult(pending=2, dead=1, timed_out=True), 3),
    ],
)
def test_drain_exit_code(result: FlushResult, code: int) -> None:
    assert ops.drain_exit_code(result) == code


# -- parsers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("1.5H", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "-1d", "7 days", "1e3s", "7dd"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration like 30m, 12h, 7d or 2w"):
        parse_duration(text)
