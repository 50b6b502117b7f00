"""spoolpost.Posthog: posthog-python 7.x's constructor and its never-raise capture calls,
over a real spool and the loopback endpoint."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kit import API_KEY, dead_letters, live

from spoolpost import PausePolicy, Posthog, RetryPolicy
from spoolpost.dropin import DeliveryInterrupted, EventsNotStored, EventsRejected
from spoolpost.errors import HostMismatch
from spoolpost.testing import LocalEndpoint, Response

MakePosthog = Callable[..., Posthog]


class Heard:
    """An ``on_error`` that records its calls and lets a test wait for them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Exception, list[dict[str, Any]], str]] = []
        self.arrived = threading.Event()

    def __call__(self, error: Exception, events: list[dict[str, Any]]) -> None:
        self.calls.append((error, events, threading.current_thread().name))
        self.arrived.set()

    def wait(self) -> tuple[Exception, list[dict[str, Any]], str]:
        assert self.arrived.wait(10), "on_error was not called"
        return self.calls[0]


@pytest.fixture
def make_posthog(spool_path: Path, endpoint: LocalEndpoint) -> Iterator[MakePosthog]:
    made: list[Posthog] = []

    def make(*args: Any, **options: Any) -> Posthog:
        options.setdefault("spool", str(spool_path))
        options.setdefault("host", endpoint.url)
        client = Posthog(*(args or (API_KEY,)), **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.shutdown()


def test_capture_is_delivered_and_flush_join_shutdown_return_none(
    make_posthog: MakePosthog, endpoint: LocalEndpoint
) -> None:
    posthog = make_posthog()
    uid = posthog.capture("signed_up", distinct_id="u1", properties={"plan": "pro"})
    assert uid is not None
    assert posthog.flush() is None
    [event] = endpoint.requests[0].events
    assert (event["event"], event["distinct_id"], event["uuid"]) == ("signed_up", "u1", uid)
    assert event["properties"]["plan"] == "pro"
    assert event["properties"]["$is_server"] is True
    assert posthog.join() is None
    assert posthog.shutdown() is None


def test_personless_capture_generates_an_id_and_sets_process_person_profile_false(
    make_posthog: MakePosthog, endpoint: LocalEndpoint
) -> None:
    posthog = make_posthog()
    posthog.capture("anonymous_thing")
    posthog.capture("kept", properties={"$process_person_profile": True})
    posthog.flush()
    first, second = (e for r in endpoint.requests for e in r.events)
    uuid.UUID(first["distinct_id"])  # a random uuid4, as in posthog-python 7.x
    assert first["properties"]["$process_person_profile"] is False
    assert second["properties"]["$process_person_profile"] is True
    assert first["distinct_id"] != second["distinct_id"]


def test_bad_uuid_is_replaced_with_an_error_line(
    make_posthog: MakePosthog, caplog: pytest.LogCaptureFixture
) -> None:
    posthog = make_posthog()
    uid = posthog.capture("e", distinct_id="u1", uuid="not-a-uuid")
    assert uid is not None and uid != "not-a-uuid"
    assert "Falling back to a generated UUID" in caplog.text
    assert [e.uuid for e in live(posthog.client.spool)] == [uid]  # type: ignore[union-attr]
    assert posthog.lost == 0


class Opaque:
    pass


def test_unencodable_value_is_sent_as_null_with_a_warning_naming_the_path(
    make_posthog: MakePosthog, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    posthog = make_posthog()
    with caplog.at_level(logging.WARNING, "spoolpost"):
        posthog.capture("e", distinct_id="u1", properties={"ok": 1, "cart": [Opaque()]})
    posthog.flush()
    [event] = endpoint.requests[0].events
    assert event["properties"]["cart"] == [None]
    assert event["properties"]["ok"] == 1
    assert "the value at properties.cart[0] cannot be encoded; sent as null" in caplog.text
    assert posthog.lost == 0


def test_capture_after_shutdown_returns_none_counts_and_tells_on_error(
    make_posthog: MakePosthog,
) -> None:
    heard = Heard()
    posthog = make_posthog(on_error=heard)
    posthog.shutdown()
    assert posthog.capture("late", distinct_id="u1") is None
    error, events, thread = heard.wait()
    assert isinstance(error, EventsNotStored) and error.method == "capture"
    assert [(e["event"], e["distinct_id"]) for e in events] == [("late", "u1")]
    assert thread == "spoolpost-on-error"  # off the caller's thread
    assert posthog.lost == 1


def test_invalid_event_name_is_counted_in_the_spool_and_reported(
    make_posthog: MakePosthog,
) -> None:
    heard = Heard()
    posthog = make_posthog(on_error=heard)
    assert posthog.capture("bad\nname", distinct_id="u1") is None
    error, _, _ = heard.wait()
    assert isinstance(error, EventsNotStored) and isinstance(error.cause, ValueError)
    assert posthog.lost == 1
    assert posthog.client is not None
    assert posthog.client.spool.counters()["lost"] == 1
    assert live(posthog.client.spool) == []


def test_spool_that_cannot_be_opened_never_raises(tmp_path: Path, endpoint: LocalEndpoint) -> None:
    not_a_spool = tmp_path / "not-a-spool"
    not_a_spool.write_bytes(b"this is not sqlite" * 10)
    heard = Heard()
    posthog = Posthog(API_KEY, host=endpoint.url, spool=str(not_a_spool), on_error=heard)
    assert posthog.client is None
    assert posthog.capture("e", distinct_id="u1") is None
    assert posthog.set(distinct_id="u1", properties={"a": 1}) is None
    assert posthog.flush() is None and posthog.shutdown() is None
    error, events, _ = heard.wait()
    assert isinstance(error, EventsNotStored) and error.method == "capture"
    assert [e["event"] for e in events] == ["e"]
    assert posthog.lost == 2
    assert not_a_spool.read_bytes() == b"this is not sqlite" * 10


def test_default_spool_that_cannot_be_created_falls_back_to_var_tmp(
    tmp_path: Path, endpoint: LocalEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.delenv("SPOOLPOST_SPOOL", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(blocked / "state"))  # under a file: cannot exist
    key = f"phc_fallback_{uuid.uuid4().hex}"
    posthog = Posthog(key, host=endpoint.url)
    try:
        assert posthog.client is not None
        from spoolpost.dropin.settings import fallback_spool_path

        assert posthog.client.spool.path == fallback_spool_path(key)
        assert str(posthog.client.spool.path).startswith("/var/tmp/spoolpost-")
        assert posthog.capture("e", distinct_id="u1") is not None
    finally:
        posthog.shutdown()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{fallback_spool_path(key)}{suffix}").unlink(missing_ok=True)


def test_debug_reraises_and_turns_on_debug_logging(make_posthog: MakePosthog) -> None:
    logger = logging.getLogger("spoolpost")
    level = logger.level
    try:
        posthog = make_posthog(debug=True)
        assert logger.level == logging.DEBUG
        with pytest.raises(ValueError, match="event must not contain control characters"):
            posthog.capture("bad\nname", distinct_id="u1")
    finally:
        logger.setLevel(level)


def test_max_retries_maps_to_attempts_and_a_dead_batch_reaches_on_error(
    make_posthog: MakePosthog, endpoint: LocalEndpoint
) -> None:
    heard = Heard()
    endpoint.default = Response(status=503)
    posthog = make_posthog(max_retries=1, on_error=heard)
    assert posthog.client is not None
    assert posthog.client.dispatcher.retry.max_attempts == 2
    uid = posthog.capture("e", distinct_id="u1")
    posthog.flush()  # returns once the event is dead
    assert [e.uuid for e in dead_letters(posthog.client.spool)] == [uid]
    posthog.shutdown()  # tells on_error what is queued
    # Two failed requests are no outage episode (three in a row are): only the dead batch.
    [(error, events, thread)] = heard.calls
    assert isinstance(error, EventsRejected) and error.reason == "max_attempts"
    assert [e["uuid"] for e in events] == [uid]
    assert thread == "spoolpost-on-error"
    assert len(endpoint.requests) == 2  # n + 1 requests


def test_rejected_event_reaches_on_error(
    make_posthog: MakePosthog, endpoint: LocalEndpoint
) -> None:
    heard = Heard()
    endpoint.default = Response(status=400, body=b"bad event")
    posthog = make_posthog(on_error=heard)
    uid = posthog.capture("e", distinct_id="u1")
    error, events, _ = heard.wait()
    assert isinstance(error, EventsRejected) and error.reason == "rejected"
    assert [e["uuid"] for e in events] == [uid]


def test_under_v1_an_event_the_server_drops_reaches_on_error(
    make_posthog: MakePosthog, endpoint: LocalEndpoint
) -> None:
    heard = Heard()
    posthog = make_posthog(on_error=heard, capture_mode="v1", flush_at=1)
    assert posthog.client is not None
    uid = "0192d0a4-5c1e-7000-8000-000000000001"
    endpoint.script_results({uid: ("drop", "quota of the project")})  # before it can be sent
    assert posthog.capture("e", distinct_id="u1", uuid=uid) == uid
    posthog.flush()
    error, events, _ = heard.wait()
    assert isinstance(error, EventsRejected) and error.reason == "dropped"
    assert [e["uuid"] for e in events] == [uid]
    assert endpoint.requests[0].path == "/i/v1/analytics/events"
    (dead,) = dead_letters(posthog.client.spool)
    assert (dead.uuid, dead.reason, dead.detail) == (uid, "dropped", "quota of the project")


def test_posthog_defaults_do_not_cap_retries_or_threads(make_posthog: MakePosthog) -> None:
    posthog = make_posthog()
    assert posthog.client is not None
    assert posthog.client.dispatcher.retry == RetryPolicy()  # unlimited attempts, 7 days


def test_mapped_options(make_posthog: MakePosthog) -> None:
    posthog = make_posthog(thread=2, flush_at=7, flush_interval=0.25, timeout=3, gzip=True)
    assert posthog.client is not None
    config = posthog.client.dispatcher.config
    assert (config.senders, config.flush_at, config.flush_interval) == (2, 7, 0.25)
    assert posthog.client.transport.gzip is True


def test_ignored_options_log_one_info_line_each(
    make_posthog: MakePosthog, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "spoolpost"):
        posthog = make_posthog(personal_api_key="phx_1", enable_exception_autocapture=True)
    assert posthog.ignored == ["enable_exception_autocapture", "personal_api_key"]
    lines = [r.getMessage() for r in caplog.records if "accepted and ignored" in r.getMessage()]
    assert lines == [
        "Posthog(enable_exception_autocapture=...) is accepted and ignored by spoolpost",
        "Posthog(personal_api_key=...) is accepted and ignored by spoolpost",
    ]


def test_super_properties_win_over_event_properties(
    make_posthog: MakePosthog, endpoint: LocalEndpoint
) -> None:
    posthog = make_posthog(super_properties={"app": "web", "plan": "super"})
    posthog.capture("e", distinct_id="u1", properties={"plan": "pro"})
    posthog.set(distinct_id="u1", properties={"x": 1})
    posthog.flush()
    first, second = (e for r in endpoint.requests for e in r.events)
    assert (first["properties"]["app"], first["properties"]["plan"]) == ("web", "super")
    assert second["properties"]["app"] == "web"


def test_before_send_that_raises_drops_the_event(
    make_posthog: MakePosthog, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(event: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    posthog = make_posthog(before_send=hook)
    assert posthog.capture("e", distinct_id="u1") is None
    assert "before_send raised" in caplog.text
    assert posthog.client is not None and live(posthog.client.spool) == []


def test_send_false_stores_and_sends_nothing_but_returns_uuids(
    tmp_path: Path, endpoint: LocalEndpoint
) -> None:
    spool = tmp_path / "never.spool"
    posthog = Posthog(API_KEY, host=endpoint.url, send=False, spool=str(spool))
    uid = posthog.capture("e", distinct_id="u1", properties={"o": Opaque()})
    uuid.UUID(str(uid))
    assert posthog.flush() is None and posthog.shutdown() is None
    assert endpoint.requests == [] and not spool.exists()


def test_deliver_false_is_capture_only(make_posthog: MakePosthog, endpoint: LocalEndpoint) -> None:
    posthog = make_posthog(deliver=False)
    uid = posthog.capture("e", distinct_id="u1")
    posthog.flush(timeout_seconds=0.5)
    assert posthog.client is not None
    assert [e.uuid for e in live(posthog.client.spool)] == [uid]
    assert endpoint.requests == []


def test_sync_mode_delivers_before_returning(
    make_posthog: MakePosthog, endpoint: LocalEndpoint
) -> None:
    posthog = make_posthog(sync_mode=True, flush_interval=3600)
    uid = posthog.capture("e", distinct_id="u1")
    assert endpoint.delivered_uuids() == [uid]


def test_disabled_or_keyless_captures_nothing(endpoint: LocalEndpoint, tmp_path: Path) -> None:
    for posthog in (Posthog(API_KEY, disabled=True), Posthog("", host=endpoint.url)):
        assert posthog.capture("e", distinct_id="u1") is None
        assert posthog.client is None and posthog.lost == 0
        posthog.flush()
        posthog.shutdown()


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda p: p.set(properties={"a": 1}), None),  # personless set does nothing
        (lambda p: p.set(distinct_id="u1", properties={}), None),
        (lambda p: p.alias("", "u2"), None),
        (lambda p: p.group_identify("", "k"), None),
    ],
)
def test_calls_posthog_python_drops_return_none_without_counting(
    make_posthog: MakePosthog, call: Callable[[Posthog], Any], expected: Any
) -> None:
    posthog = make_posthog()
    assert call(posthog) is expected
    assert posthog.lost == 0


def test_naive_utcnow_timestamp_is_the_same_instant(
    make_posthog: MakePosthog, endpoint: LocalEndpoint, set_tz: Callable[[str], None]
) -> None:
    set_tz("EST5EDT")
    posthog = make_posthog()
    posthog.capture("e", distinct_id="u1", timestamp=datetime(2025, 1, 2, 3, 4, 5))
    posthog.capture("e", distinct_id="u1", timestamp="yesterday")  # bad: now, a WARNING
    posthog.flush()
    first, second = (e for r in endpoint.requests for e in r.events)
    assert first["timestamp"] == "2025-01-02T03:04:05Z"
    assert datetime.fromisoformat(second["timestamp"]).year == datetime.now(UTC).year


def test_lifecycle_defaults_are_posthog_pythons() -> None:
    import inspect

    import posthog

    ours, theirs = Posthog.flush, posthog.Posthog.flush
    assert inspect.signature(ours).parameters["timeout_seconds"].default == 10
    assert (
        inspect.signature(ours).parameters["timeout_seconds"].default
        == inspect.signature(theirs).parameters["timeout_seconds"].default
    )
    for name in ("join", "shutdown"):
        assert list(inspect.signature(getattr(Posthog, name)).parameters) == ["self"]


def test_an_outage_is_told_to_on_error_once_not_at_each_backoff_step(
    make_posthog: MakePosthog, endpoint: LocalEndpoint
) -> None:
    heard = Heard()
    endpoint.default = Response(status=503)
    fast = RetryPolicy(initial_backoff=0.01, max_backoff=0.01, max_attempts=4)
    posthog = make_posthog(on_error=heard, client_options={"retry": fast})
    uid = posthog.capture("e", distinct_id="u1")
    posthog.flush()  # returns once the event is dead (4 failed requests)
    posthog.shutdown()  # tells on_error what is queued before it returns

    assert len(endpoint.requests) == 4
    [(outage, none, _), (dead, events, _)] = heard.calls
    assert isinstance(outage, DeliveryInterrupted) and none == []
    assert outage.kind == "outage" and outage.failure.startswith("HTTP 503")
    assert isinstance(dead, EventsRejected) and dead.reason == "max_attempts"
    assert [e["uuid"] for e in events] == [uid]


def test_a_failure_the_next_attempt_fixes_is_not_told_to_on_error(
    make_posthog: MakePosthog, endpoint: LocalEndpoint
) -> None:
    heard = Heard()
    fast = RetryPolicy(initial_backoff=0.01, max_backoff=0.01)
    posthog = make_posthog(on_error=heard, client_options={"retry": fast})
    for i in range(3):  # three blips, each fixed by the next attempt
        endpoint.respond(Response(status=503))
        uid = posthog.capture("e", distinct_id=f"u{i}")
        posthog.flush()
        assert uid in endpoint.delivered_uuids()
    posthog.shutdown()
    assert len(endpoint.requests) == 6
    assert heard.calls == []


def test_a_pause_is_told_to_on_error_once_per_episode(
    make_posthog: MakePosthog, endpoint: LocalEndpoint
) -> None:
    heard = Heard()
    endpoint.default = Response(status=401, body=b'{"error":"bad key"}')
    quick = PausePolicy(initial=0.01, maximum=0.01)
    posthog = make_posthog(on_error=heard, client_options={"pause": quick})
    uid = posthog.capture("e", distinct_id="u1")
    assert endpoint.wait_for_requests(3)  # three faults (probes) in one episode
    endpoint.default = Response(status=200)
    assert endpoint.wait_for_uuids([uid])
    posthog.shutdown()

    [(paused, none, _)] = heard.calls
    assert isinstance(paused, DeliveryInterrupted) and none == []
    assert paused.kind == "paused" and paused.failure.startswith("HTTP 401")


def test_events_expired_by_max_event_age_reach_on_error(
    make_posthog: MakePosthog, endpoint: LocalEndpoint
) -> None:
    storing = make_posthog(deliver=False)
    uid = storing.capture("e", distinct_id="u1")
    storing.shutdown()
    heard = Heard()
    young = RetryPolicy(max_event_age=0.001)  # the event is older than 1 ms by now
    posthog = make_posthog(on_error=heard, client_options={"retry": young})
    posthog.flush()
    posthog.shutdown()

    [(error, events, _)] = heard.calls
    assert isinstance(error, EventsRejected)
    assert (error.reason, error.detail) == ("expired", "older than max_event_age")
    assert [e["uuid"] for e in events] == [uid]
    assert endpoint.requests == []


def test_a_spool_that_delivers_elsewhere_still_stores_what_is_captured(
    make_posthog: MakePosthog, endpoint: LocalEndpoint, spool_path: Path
) -> None:
    """The app's host changed (a proxy added, a region fixed): the spool recorded the
    old endpoint. Events are stored, not lost; this process does not deliver them
    (the operator drains with --host … --force-host); on_error hears of it once."""
    with LocalEndpoint() as old:
        first = make_posthog(host=old.url)
        first.capture("before", distinct_id="u1")
        first.flush()
        first.shutdown()
        assert len(old.requests) == 1
    heard = Heard()
    posthog = make_posthog(on_error=heard)  # the new endpoint
    uid = posthog.capture("after", distinct_id="u1")
    posthog.flush()
    posthog.shutdown()

    assert uid is not None and posthog.lost == 0
    assert endpoint.requests == []
    assert [e.uuid for e in live(spool_path)] == [uid]
    [(error, events, _)] = heard.calls
    assert isinstance(error, HostMismatch) and events == []


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("capture_mode", "v9", "capture_mode must be one of"),
        ("capture_compression", "brotli", "capture_compression must be one of"),
    ],
)
def test_wire_settings_that_cannot_work_raise_at_construction_as_in_posthog_python(
    make_posthog: MakePosthog, option: str, value: str, message: str
) -> None:
    """posthog-python raises ValueError from its constructor here; a Posthog that
    went on would store nothing at all (every capture lost)."""
    with pytest.raises(ValueError, match=message):
        make_posthog(**{option: value})
