"""Bounded shutdown and its pitfalls: hung requests, stopping mid-split, concurrent flushes.

Nothing here sleeps: hung requests are real (the loopback endpoint never answers, or
a handler blocks on an Event the test controls), and the only wall-clock measurements
are the bounds a shutdown promises.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from kit import API_KEY, Rig, counts, make_event

from spoolpost import Client
from spoolpost.client import stop_reserve
from spoolpost.delivery import DeliveryConfig, Dispatcher, FlushBarrier
from spoolpost.delivery.transport import HttpTransport, PostHogV0
from spoolpost.spool import Spool
from spoolpost.testing import LocalEndpoint, RecordedRequest, Response

#: Slack allowed on top of a shutdown deadline (thread joins, closing the spool).
SLACK = 1.5


def our_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.name.startswith("spoolpost-")]


def test_shutdown_returns_by_its_deadline_when_the_endpoint_never_answers(
    make_client: Callable[..., Client],
    endpoint: LocalEndpoint,
    spool_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="spoolpost")
    endpoint.default = Response(hang=True)  # accepts, reads, never answers
    client = make_client(flush_at=1, flush_interval=0.0)
    uuids = [client.capture("e", distinct_id="user-1", properties={"i": i}) for i in range(5)]
    assert endpoint.wait_for_requests(1, timeout=30.0)

    started = time.monotonic()
    result = client.shutdown(timeout=2.0)
    elapsed = time.monotonic() - started

    assert elapsed <= 2.0 + SLACK
    assert result.timed_out and result.delivered == 0
    assert result.pending == len(uuids)
    left = counts(spool_path)
    assert left["pending"] + left["leased"] == len(uuids)  # nothing dropped
    assert endpoint.delivered_uuids() == []
    assert any("stay in the spool" in r.getMessage() for r in caplog.records)
    [warning] = [r.getMessage() for r in caplog.records if "deadline reached" in r.getMessage()]
    assert re.fullmatch(
        rf"stop deadline reached with \d request\(s\) still in flight "
        rf"\(spoolpost-sender-\d(, spoolpost-sender-\d)*\) to {endpoint.url}/batch/; their "
        r"events stay leased in the spool and are sent again once the lease ends or this "
        r"process is gone",
        warning,
    )


def deadline_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "deadline reached" in r.getMessage()
    ]


@pytest.mark.parametrize(
    ("timeout", "reserve"), [(-1.0, 0.0), (0.0, 0.0), (0.4, 0.1), (2.0, 0.5), (4.0, 1.0), (30, 1.0)]
)
def test_a_shutdown_keeps_part_of_its_deadline_for_stopping(timeout: float, reserve: float) -> None:
    assert stop_reserve(timeout) == reserve


def test_shutdown_during_an_outage_does_not_warn_about_busy_threads(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="spoolpost")
    down = LocalEndpoint()  # bound, never started: connections are refused at once
    try:
        client = Client(API_KEY, down.url, spool=spool_path, flush_at=1, flush_interval=0.0)
        uuid = client.capture("e", distinct_id="u")

        started = time.monotonic()
        result = client.shutdown(timeout=1.0)
        elapsed = time.monotonic() - started
    finally:
        down.stop()

    assert elapsed <= 1.0 + SLACK
    assert (result.timed_out, result.pending, result.delivered) == (True, 1, 0)
    assert deadline_warnings(caplog) == []  # the senders were idle, waiting out backoff
    assert counts(spool_path) == {"pending": 1, "leased": 0, "dead": 0}
    assert uuid is not None


def test_stop_with_no_time_left_warns_only_about_requests_in_flight(
    tmp_path: Path, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="spoolpost")
    spool = Spool(tmp_path / "events.spool")
    dispatcher = Dispatcher(spool, HttpTransport(endpoint.url, API_KEY))
    dispatcher.start()

    dispatcher.stop(0.0)  # idle threads, maybe not yet ended: nothing worth a warning

    assert dispatcher.requests_in_flight == 0
    assert deadline_warnings(caplog) == []
    spool.close()


class StuckWire(PostHogV0):
    """Blocks the sender before any network I/O until released, like a name lookup
    that hangs: no requests timeout bounds it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def body(self, api_key: str, events: Sequence[bytes], sent_at: str) -> bytes:
        self.entered.set()
        self.release.wait(60.0)
        return super().body(api_key, events, sent_at)


def test_stop_returns_by_its_deadline_when_a_sender_hangs_outside_the_network(
    tmp_path: Path, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.spool"
    spool = Spool(path)
    wire = StuckWire()
    dispatcher = Dispatcher(
        spool,
        HttpTransport(endpoint.url, API_KEY, wire=wire),
        config=DeliveryConfig(flush_at=1, flush_interval=0.0, senders=2),
    )
    uuid, body = make_event(time.time())
    spool.append(uuid, body, time.time())
    before = set(threading.enumerate())
    dispatcher.start()
    threads = our_threads(before)
    try:
        assert wire.entered.wait(30.0)

        started = time.monotonic()
        dispatcher.stop(timeout=1.0)
        elapsed = time.monotonic() - started

        assert elapsed <= 1.0 + SLACK
        assert not dispatcher.running
        [warning] = deadline_warnings(caplog)
        assert re.match(r"stop deadline reached with 1 request\(s\) still in flight", warning)
        assert dispatcher.requests_in_flight == 1
        assert counts(path)["leased"] == 1  # still there, under its lease
    finally:
        wire.release.set()
        for thread in threads:
            thread.join(30.0)
    # Released, the stuck sender finishes the request it had begun, and settles it.
    assert not any(t.is_alive() for t in threads)
    assert endpoint.delivered_uuids() == [uuid]
    assert counts(path) == {"pending": 0, "leased": 0, "dead": 0}
    spool.close()


def test_a_split_stops_sending_once_stopping(rig: Rig, endpoint: LocalEndpoint) -> None:
    def halt_then_reject(request: RecordedRequest) -> Response:
        rig.dispatcher.halt()  # shutdown begins while the first request is in flight
        return Response(400)

    endpoint.set_handler(halt_then_reject)
    uuids = rig.capture(8)

    rig.step()

    assert len(endpoint.requests) == 1  # no half is sent after "stopping"
    rows = rig.pending()
    assert [r.uuid for r in rows] == uuids
    assert all(r.state == "pending" and r.attempts == 0 for r in rows)
    assert rig.dead() == []


def test_a_batch_handed_out_before_stopping_is_not_sent(rig: Rig, endpoint: LocalEndpoint) -> None:
    uuids = rig.capture(3)
    now = rig.clock.now()
    batch = rig.spool.claim(now, max_events=10, max_bytes=1 << 20, lease_ttl=60.0)
    assert batch is not None

    rig.dispatcher.halt()
    rig.dispatcher.deliver(batch)

    assert endpoint.requests == []
    rows = rig.pending()
    assert [r.uuid for r in rows] == uuids
    assert all(r.state == "pending" and r.attempts == 0 for r in rows)


def test_a_batch_in_flight_at_stop_failing_transiently_stays_rescheduled(
    tmp_path: Path, endpoint: LocalEndpoint
) -> None:
    spool = Spool(tmp_path / "events.spool")
    dispatcher = Dispatcher(
        spool,
        HttpTransport(endpoint.url, API_KEY),
        config=DeliveryConfig(flush_at=1, flush_interval=0.0, senders=2),
    )
    answer = threading.Event()

    def fail_once_stopping(request: RecordedRequest) -> Response:
        answer.wait(30.0)
        return Response(503)

    endpoint.set_handler(fail_once_stopping)
    uuids = []
    for i in range(4):
        uuid, body = make_event(time.time(), i)
        spool.append(uuid, body, time.time())
        uuids.append(uuid)
    dispatcher.start()
    try:
        assert endpoint.wait_for_requests(1, timeout=30.0)
        dispatcher.halt()  # what stop() does first, while the request is in flight
        answer.set()
        dispatcher.stop(timeout=10.0)

        assert len(endpoint.requests) == 1
        rows = list(spool.events(now=time.time()))
        assert [r.uuid for r in rows] == uuids
        for r in rows:
            assert (r.state, r.attempts) == ("pending", 1)
            assert r.last_error is not None and r.last_error.startswith("HTTP 503")
            assert r.next_attempt_at is not None and r.next_attempt_at > time.time() - 5.0
    finally:
        answer.set()
        dispatcher.stop(2.0)
        spool.close()


def test_concurrent_flushes_each_wait_for_their_own_watermark(
    tmp_path: Path, endpoint: LocalEndpoint
) -> None:
    spool = Spool(tmp_path / "events.spool")
    dispatcher = Dispatcher(
        spool,
        HttpTransport(endpoint.url, API_KEY),
        config=DeliveryConfig(flush_at=1000, flush_interval=60.0, max_batch_size=1, senders=2),
    )
    early, early_body = make_event(time.time(), 1)
    late, late_body = make_event(time.time(), 2)
    unblock = threading.Event()

    def hold_the_late_event(request: RecordedRequest) -> Response | None:
        if late in request.uuids:
            unblock.wait(30.0)
        return None

    endpoint.set_handler(hold_the_late_event)
    spool.append(early, early_body, time.time())
    first_mark = FlushBarrier.take(spool, time.time())
    spool.append(late, late_body, time.time())
    second_mark = FlushBarrier.take(spool, time.time())
    dispatcher.start()
    results = {}

    def flush(name: str, mark: FlushBarrier) -> None:
        results[name] = dispatcher.flush(mark, timeout=30.0)

    second = threading.Thread(target=flush, args=("second", second_mark))
    try:
        second.start()
        flush("first", first_mark)

        # The first flush returned once its own event was delivered, while the later
        # event is held at the endpoint; the second flush is still waiting for it.
        assert (results["first"].delivered, results["first"].pending) == (1, 0)
        assert not results["first"].timed_out
        assert second.is_alive()
        assert early in endpoint.delivered_uuids()

        unblock.set()
        second.join(30.0)
        assert not second.is_alive()
        assert (results["second"].delivered, results["second"].pending) == (2, 0)
        assert sorted(set(endpoint.delivered_uuids())) == sorted([early, late])
    finally:
        unblock.set()
        second.join(30.0)
        dispatcher.stop(2.0)
        spool.close()


def test_flush_returns_at_once_while_paused_and_a_new_client_sends_at_once(
    make_client: Callable[..., Client], endpoint: LocalEndpoint
) -> None:
    endpoint.default = Response(401, body=b'{"detail":"invalid api key"}')
    first = make_client(flush_at=1000, flush_interval=60.0)
    uuid = first.capture("e", distinct_id="user-1")

    started = time.monotonic()
    result = first.flush(timeout=30.0)
    again = first.flush(timeout=30.0)

    assert time.monotonic() - started < 10.0  # far from the 30 s timeout
    for r in (result, again):
        assert r.paused is not None and "HTTP 401" in r.paused and "invalid api key" in r.paused
        assert (r.pending, r.delivered, r.timed_out) == (1, 0, False)
    assert len(endpoint.requests) == 1  # the second flush did not probe early

    endpoint.default = Response(200)  # fixed: a new client (or drain) sends at once
    second = make_client(flush_at=1000, flush_interval=60.0)
    assert second.flush(timeout=30.0).delivered == 1
    assert endpoint.delivered_uuids() == [uuid]
