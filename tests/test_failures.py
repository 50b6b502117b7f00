"""The failure policy (status → action, backoff, gate, pause, poison), row by row,
against the real loopback endpoint.

Time is simulated: the dispatcher is never started and the tests drive it with
``step(now)`` on a ManualClock (see kit.py). Request times come from the
``sent_at`` each request carries, which is stamped from that clock.
"""

from __future__ import annotations

import email.utils
import gzip
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from kit import API_KEY, INLINE, START, MakeRig, Rig, dead_letters, gaps, make_event, sent_at

from spoolpost import Client
from spoolpost.delivery import DeliveryConfig, Dispatcher, FlushBarrier, FlushResult
from spoolpost.delivery.policy import RetryPolicy
from spoolpost.delivery.transport import HttpTransport, PostHogV0
from spoolpost.spool import Spool
from spoolpost.testing import (
    LocalEndpoint,
    RecordedRequest,
    Response,
    reject_uuids,
    status_over_size,
)


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "spoolpost" and r.levelno >= logging.ERROR]


# -- 2xx ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_delivered(status: int, rig: Rig, endpoint: LocalEndpoint) -> None:
    endpoint.default = Response(status, body=b"" if status == 204 else b'{"status":1}')
    uuids = rig.capture(3)

    step = rig.step()

    assert step.batches == 1
    assert [r.uuids for r in endpoint.requests] == [uuids]
    assert rig.pending() == [] and rig.dead() == []
    assert rig.spool.counters()["delivered"] == 3


# -- transient failures: retried after backoff ---------------------------------------------

TRANSIENT: dict[str, tuple[Response | None, str]] = {
    "408": (Response(408), "HTTP 408"),
    "429": (Response(429), "HTTP 429"),
    "500": (Response(500, body=b"oops"), "HTTP 500: oops"),
    "502": (Response(502), "HTTP 502"),
    "503": (Response(503), "HTTP 503"),
    "504": (Response(504), "HTTP 504"),
    "501-unlisted-5xx": (Response(501), "HTTP 501"),
    "connection-dropped": (Response(drop=True), "transport error: connection closed by http://"),
    "read-timeout": (
        Response(delay=30.0),
        "transport error: timed out after 0.3 s waiting for an answer from http://",
    ),
    "connection-refused": (None, "transport error: connection refused to http://127.0.0.1:"),
}


@pytest.mark.parametrize("fault", list(TRANSIENT))
def test_transient_failure_is_retried_after_backoff(
    fault: str, make_rig: MakeRig, endpoint: LocalEndpoint
) -> None:
    response, error = TRANSIENT[fault]
    rig = make_rig(timeout=(2.0, 0.3))  # the read timeout is real time: keep it short
    uuids = rig.capture(2)
    if response is None:
        endpoint.stop()  # the port stays reserved and refuses connections
    else:
        endpoint.respond(response)

    assert rig.step().batches == 1

    rows = rig.pending()
    assert [r.uuid for r in rows] == uuids
    for row in rows:
        assert row.state == "pending"
        assert row.attempts == 1
        assert row.last_error.startswith(error)
        assert START + 0.5 <= row.next_attempt_at <= START + 1.0
        assert row.first_failed_at == row.last_failed_at == START
    assert rig.dead() == []
    assert rig.dispatcher.gate_until >= START + 0.5
    assert rig.step().blocked_by == "gate"

    if response is None:
        endpoint.start()
    rig.run(2.0)

    assert endpoint.delivered_uuids() == uuids
    retry = endpoint.requests[-1]
    assert retry.status == 200
    assert sent_at(retry) >= START + 0.5  # the first retry waits at least initial_backoff
    assert rig.pending() == [] and rig.dead() == []


# -- rejected: split to isolate, a lone event is dead ------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (413, "too_large"),
        (400, "rejected"),
        (422, "rejected"),
        (409, "rejected"),
        (418, "rejected"),
    ],
)
def test_rejected_event_is_dead_after_exactly_one_request(
    status: int,
    reason: str,
    rig: Rig,
    endpoint: LocalEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="spoolpost")
    body = b'{"type":"validation_error","detail":"' + b"x" * 5000 + b'"}'
    endpoint.default = Response(status, body=body)
    [uuid] = rig.capture()

    rig.run(2.0)

    assert len(endpoint.requests) == 1
    assert rig.pending() == []
    [dead] = rig.dead()
    assert dead.uuid == uuid
    assert dead.reason == reason
    assert dead.status == status
    assert dead.detail == body[:300].decode()  # a short excerpt of the body
    assert dead.first_failed_at == dead.last_failed_at == dead.dead_at == START
    assert rig.spool.counters()["dead"] == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"dead-lettered 1 event(s): {reason} {status}" in warned
    assert rig.dispatcher.paused_reason is None


@pytest.mark.parametrize("position", [0, 17, 49])
@pytest.mark.parametrize("status", [400, 422])
def test_one_bad_event_in_50_is_isolated_and_the_49_delivered(
    status: int, position: int, rig: Rig, endpoint: LocalEndpoint
) -> None:
    uuids = rig.capture(50)
    bad = uuids[position]
    endpoint.set_handler(reject_uuids([bad], status=status, body=b'{"detail":"bad distinct_id"}'))

    assert rig.step().batches == 1  # one batch, split and settled inline

    delivered = endpoint.delivered_uuids()
    assert sorted(delivered) == sorted(set(uuids) - {bad})  # each exactly once
    [dead] = rig.dead()
    assert (dead.uuid, dead.reason, dead.status) == (bad, "rejected", status)
    assert dead.detail == '{"detail":"bad distinct_id"}'
    assert rig.pending() == []
    assert rig.spool.counters()["delivered"] == 49
    # 1 request, then 2 per halving: 50 → 25 → 13 → 7 → 4 → 2 → 1.
    assert len(endpoint.requests) <= 1 + 2 * math.ceil(math.log2(50))


def test_a_1_2_mb_event_among_50_small_ones(
    make_client: Callable[..., Client], endpoint: LocalEndpoint
) -> None:
    endpoint.set_handler(status_over_size(1_000_000))  # 413 to bodies over 1 MB
    client = make_client(max_event_bytes=2_000_000, flush_at=1000, flush_interval=60.0)
    small = [
        str(client.capture("small", distinct_id="user-1", properties={"i": i})) for i in range(25)
    ]
    big = client.capture("big", distinct_id="user-1", properties={"blob": "x" * 1_200_000})
    small += [
        str(client.capture("small", distinct_id="user-1", properties={"i": i}))
        for i in range(25, 50)
    ]

    result = client.flush(timeout=30.0)

    assert (result.delivered, result.dead, result.pending) == (50, 1, 0)
    assert sorted(endpoint.delivered_uuids()) == sorted(small)  # each exactly once
    dead = dead_letters(client.spool)
    assert [(e.uuid, e.reason, e.status) for e in dead] == [(big, "too_large", 413)]
    # One batch of 51, then 2 requests per halving: no endless 413 loop.
    assert len(endpoint.requests) <= 1 + 2 * math.ceil(math.log2(51))


def test_too_large_splits_in_halves_down_to_the_event(rig: Rig, endpoint: LocalEndpoint) -> None:
    limit = 40_000
    endpoint.set_handler(lambda r: Response(413) if len(r.body) > limit else None)
    small = rig.capture(8, pad=4_000)  # 8 × ~4 KB: every pair fits, the batch does not
    [big] = rig.capture(1, pad=50_000)

    rig.step()

    assert sorted(endpoint.delivered_uuids()) == sorted(small)
    [dead] = rig.dead()
    assert (dead.uuid, dead.reason, dead.status) == (big, "too_large", 413)
    assert all(len(r.body) <= limit for r in endpoint.requests if r.status == 200)
    assert len(endpoint.requests) <= 1 + 2 * math.ceil(math.log2(9))


# -- configuration faults: keep everything, pause ------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 404, 301, 302, 303, 307, 308])
def test_configuration_fault_keeps_the_event_and_pauses(
    status: int, rig: Rig, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="spoolpost")
    elsewhere = f"{endpoint.url}/elsewhere/"
    endpoint.set_handler(
        lambda r: Response(status, headers={"Location": elsewhere}) if r.path == "/batch/" else None
    )
    [uuid] = rig.capture()

    rig.run(2.0)

    assert [r.path for r in endpoint.requests] == ["/batch/"]  # one request; never redirected
    [row] = rig.pending()
    assert (row.uuid, row.state, row.attempts) == (uuid, "pending", 0)
    assert rig.dead() == []
    reason = rig.dispatcher.paused_reason
    assert reason is not None and f"HTTP {status}" in reason and endpoint.url in reason
    assert rig.dispatcher.paused_until == START + 5.0

    before = rig.clock.monotonic()
    result = rig.dispatcher.flush(FlushBarrier.take(rig.spool, rig.clock.now()), timeout=30.0)

    assert rig.clock.monotonic() == before  # returned at once, waiting for nothing
    assert result.paused == reason
    assert (result.pending, result.delivered, result.dead) == (1, 0, 0)
    assert not result.timed_out
    assert len(endpoint.requests) == 1
    [error] = errors(caplog)
    assert f"HTTP {status}" in error.getMessage() and "paused" in error.getMessage()


def test_pause_grows_and_logs_one_error_per_episode(
    rig: Rig, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="spoolpost")
    endpoint.default = Response(401)
    [uuid] = rig.capture()

    rig.run(36.0)  # faults at 0, 5, 15 and 35 s: pauses of 5, 10 and 20 s

    assert len(endpoint.requests) == 4
    assert gaps(endpoint.requests) == pytest.approx([5.0, 10.0, 20.0], abs=0.15)
    assert len(errors(caplog)) == 1
    assert len(rig.pending()) == 1

    endpoint.default = Response(200)
    rig.run(41.0)  # the next probe comes 40 s after the last fault

    assert endpoint.delivered_uuids() == [uuid]
    assert len(endpoint.requests) == 5
    assert rig.dispatcher.paused_reason is None
    assert any("resumed" in r.getMessage() for r in caplog.records)

    endpoint.default = Response(403)  # a new episode: a new ERROR
    rig.capture()
    rig.run(1.0)
    assert len(errors(caplog)) == 2
    assert rig.dispatcher.paused_until == pytest.approx(rig.clock.now() + 4.0, abs=0.15)


def test_the_pause_belongs_to_the_dispatcher_that_saw_it(rig: Rig, endpoint: LocalEndpoint) -> None:
    endpoint.default = Response(401)
    [uuid] = rig.capture()
    rig.step()
    assert rig.dispatcher.paused_reason is not None

    endpoint.default = Response(200)  # e.g. the key was fixed; a new client or drain starts
    fresh = Dispatcher(
        rig.spool, HttpTransport(endpoint.url, API_KEY), config=INLINE, clock=rig.clock
    )

    assert fresh.paused_reason is None
    assert fresh.step(rig.clock.now()).batches == 1
    assert endpoint.delivered_uuids() == [uuid]
    assert rig.dispatcher.step(rig.clock.now()).blocked_by == "paused"  # the old one waits


# -- Retry-After ---------------------------------------------------------------------


def http_date(at: float) -> str:
    return email.utils.formatdate(at, usegmt=True)


@pytest.mark.parametrize(
    ("status", "header", "tz", "low", "high"),
    [
        pytest.param(429, lambda now: "3", "UTC", 3.0, 3.0, id="429-seconds"),
        pytest.param(503, lambda now: "2", "UTC", 2.0, 2.0, id="503-seconds"),
        pytest.param(429, lambda now: http_date(now + 3), "America/New_York", 3.0, 3.0, id="ny"),
        pytest.param(429, lambda now: http_date(now + 3), "Asia/Kolkata", 3.0, 3.0, id="kolkata"),
        pytest.param(429, lambda now: http_date(now - 3600), "UTC", 0.5, 1.0, id="past-date"),
        pytest.param(429, lambda now: "soon", "UTC", 0.5, 1.0, id="garbage"),
        pytest.param(429, lambda now: "-5", "UTC", 0.5, 1.0, id="negative"),
        pytest.param(
            429, lambda now: "Mon, 31 Feb 2020 00:00:00 GMT", "UTC", 0.5, 1.0, id="bad-day"
        ),
        pytest.param(429, lambda now: "9" * 5000, "UTC", 600.0, 600.0, id="huge-capped"),
    ],
)
def test_retry_after_is_a_lower_bound_on_the_wait(
    status: int,
    header: Callable[[float], str],
    tz: str,
    low: float,
    high: float,
    rig: Rig,
    endpoint: LocalEndpoint,
    set_tz: Callable[[str], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    set_tz(tz)
    endpoint.respond(Response(status, headers={"Retry-After": header(START)}))
    [uuid] = rig.capture()

    rig.run(high + 1.0)

    assert endpoint.delivered_uuids() == [uuid]  # the sender survived the header
    first, second = endpoint.requests
    assert low <= sent_at(second) - sent_at(first) <= high + 0.11  # steps are 0.1 s apart
    assert errors(caplog) == []


def test_retries_resend_the_same_events_with_a_new_sent_at(
    rig: Rig, endpoint: LocalEndpoint
) -> None:
    endpoint.respond(Response(503), times=3)
    uuids = rig.capture(3)
    stored = [row.body for row in rig.pending()]

    rig.run(10.0)

    requests = endpoint.requests
    assert [r.status for r in requests] == [503, 503, 503, 200]
    assert endpoint.delivered_uuids() == uuids
    batches = [r.json["batch"] for r in requests]
    assert all(b == batches[0] for b in batches)  # uuid, timestamp, all: identical
    assert [e["uuid"] for e in batches[0]] == uuids
    for request in requests:  # sent as stored, never re-encoded
        assert all(body in request.body for body in stored)
    assert len({r.json["sent_at"] for r in requests}) == 4  # stamped per attempt
    assert sent_at(requests[0]) == START
    first, second, third = gaps(requests)
    assert first >= 0.5 and second >= 1.0 and third >= 2.0  # backoff doubles


# -- limits ---------------------------------------------------------------------------


def test_max_attempts_ends_in_the_dead_state(make_rig: MakeRig, endpoint: LocalEndpoint) -> None:
    rig = make_rig(retry=RetryPolicy(max_attempts=4))
    endpoint.default = Response(503, body=b'{"error":"overloaded"}')
    [uuid] = rig.capture()

    rig.run(300.0)

    requests = endpoint.requests
    assert len(requests) == 4
    assert rig.pending() == []
    [dead] = rig.dead()
    assert (dead.uuid, dead.reason, dead.status, dead.attempts) == (
        uuid,
        "max_attempts",
        503,
        4,
    )
    assert dead.detail == 'HTTP 503: {"error":"overloaded"}'
    assert dead.first_failed_at == sent_at(requests[0]) == START
    assert dead.last_failed_at == pytest.approx(sent_at(requests[-1]), abs=1e-6)
    assert rig.spool.counters()["dead"] == 1


def test_events_older_than_max_event_age_expire(make_rig: MakeRig, endpoint: LocalEndpoint) -> None:
    week = 7 * 24 * 3600.0  # the default max_event_age
    rig = make_rig(retry=RetryPolicy(max_backoff=3600.0))  # hourly retries: fewer requests
    endpoint.default = Response(503)
    [uuid] = rig.capture()

    while rig.pending():
        now = rig.clock.now()
        assert now <= START + week + 3601.0
        rig.dispatcher.run_until_idle(now)
        due = rig.spool.next_due_at()
        if due is None:
            break
        rig.clock.advance(max(0.001, max(due, rig.dispatcher.gate_until) - now))
        if rig.clock.now() < START + week:
            assert rig.dead() == []

    [dead] = rig.dead()
    assert (dead.uuid, dead.reason, dead.status) == (uuid, "expired", None)
    assert START + week < dead.dead_at <= START + week + 3601.0
    assert dead.attempts == len(endpoint.requests) > 150
    assert dead.first_failed_at == START
    assert all(sent_at(r) <= START + week for r in endpoint.requests)


# -- the endpoint gate ------------------------------------------------------------------


def test_an_outage_costs_about_one_request_per_backoff_interval(
    rig: Rig, endpoint: LocalEndpoint
) -> None:
    uuids = rig.capture(10_000)
    endpoint.default = Response(503)

    rig.run(600.0)  # ten minutes of simulated time

    outage = endpoint.requests
    # The gate waits max(backoff) after each failure: 0.5, 1, 2, 4, 8, 16 s, then 30 s
    # (the cap). That fits 7 failures in the first 31.5 s and one per 30 s after.
    bound = 7 + math.ceil((600.0 - 31.5) / 30.0)
    assert 20 <= len(outage) <= bound
    assert all(gap >= 0.5 for gap in gaps(outage))
    assert all(len(r.uuids) <= 500 for r in outage)
    assert rig.dead() == []

    endpoint.default = Response(200)
    rig.run(31.0)  # the next probe is at most max_backoff away

    delivered = endpoint.delivered_uuids()
    assert len(delivered) == 10_000 and set(delivered) == set(uuids)
    assert rig.states() == {"pending": 0, "leased": 0, "dead": 0}
    assert len(endpoint.requests) - len(outage) <= 10_000 // 500 + 1


def test_the_gate_holds_every_batch_until_the_probe(rig: Rig, endpoint: LocalEndpoint) -> None:
    rig.capture(1200)  # three batches
    endpoint.respond(Response(503))

    assert rig.step().batches == 1
    gate = rig.dispatcher.gate_until
    assert START + 0.5 <= gate <= START + 1.0
    # A flush does not push through the gate either.
    rig.dispatcher.begin_flush(rig.spool.watermark(rig.clock.now()))
    assert rig.dispatcher.run_until_idle(rig.clock.now()) == 0
    rig.clock.advance(gate - START - 0.01)
    assert rig.step().blocked_by == "gate"
    assert len(endpoint.requests) == 1

    rig.clock.advance(0.01)
    assert rig.step().batches == 1  # the probe
    assert endpoint.requests[-1].status == 200
    rig.run(1.0)  # then everything else, the retried batch once it is due
    assert rig.states() == {"pending": 0, "leased": 0, "dead": 0}
    assert len(endpoint.delivered_uuids()) == 1200


class Signal(logging.Handler):
    """Sets ``event`` when the "spoolpost" logger emits a message containing ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def test_after_a_failure_one_probe_goes_alone_then_full_concurrency(
    tmp_path: Path, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "events.spool")
    dispatcher = Dispatcher(
        spool,
        HttpTransport(endpoint.url, API_KEY),
        config=DeliveryConfig(flush_at=10, flush_interval=60.0, max_batch_size=10, senders=4),
        retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.1),
    )
    release, held = threading.Event(), threading.Event()

    def hold_the_probe(request: RecordedRequest) -> Response | None:
        if not held.is_set():
            held.set()
            release.wait(30.0)
        return None

    endpoint.respond(Response(503))
    endpoint.set_handler(hold_the_probe)
    closed = Signal("failed (HTTP 503")  # DEBUG: one failure is not an outage
    caplog.set_level(logging.DEBUG, logger="spoolpost")
    logging.getLogger("spoolpost").addHandler(closed)
    captured: list[str] = []

    def capture(n: int) -> None:
        for i in range(n):
            uuid, body = make_event(time.time(), i)
            spool.append(uuid, body, time.time())
            captured.append(uuid)
            dispatcher.notify_captured()

    dispatcher.start()
    try:
        capture(10)  # one batch: it gets the 503 and closes the gate
        assert closed.event.wait(30.0)
        capture(70)  # seven more batches wait behind the gate

        assert held.wait(30.0)  # the probe, held at the endpoint
        step = dispatcher.step(time.time())
        assert (step.batches, step.blocked_by) == (0, "busy")  # nothing else goes out...
        assert spool.stats(time.time()).counts["leased"] == 10  # ...besides the probe
        assert len(endpoint.requests) == 2

        release.set()
        result = dispatcher.flush(FlushBarrier.take(spool, time.time()), timeout=30.0)

        assert result.pending == 0
        delivered = endpoint.delivered_uuids()
        assert sorted(delivered) == sorted(captured)  # each exactly once
    finally:
        release.set()
        logging.getLogger("spoolpost").removeHandler(closed)
        dispatcher.stop(2.0)
        spool.close()


# -- poison batches -------------------------------------------------------------------


def fail_when(uuid: str, status: int = 500) -> Callable[[RecordedRequest], Response | None]:
    return lambda request: Response(status) if uuid in request.uuids else None


def test_a_poison_event_cannot_hold_its_batch_back(
    make_rig: MakeRig, endpoint: LocalEndpoint
) -> None:
    rig = make_rig(config=DeliveryConfig(flush_at=1, flush_interval=0.0, max_batch_size=10))
    uuids = rig.capture(50)
    poison = uuids[23]
    endpoint.set_handler(fail_when(poison))

    rig.run(120.0)

    delivered = endpoint.delivered_uuids()
    assert sorted(delivered) == sorted(set(uuids) - {poison})
    [row] = rig.pending()
    assert row.uuid == poison and row.attempts >= 3
    assert rig.dead() == []  # it stays until max_attempts / max_event_age
    # 5 batches + 2 failures before the split + 2 per halving of 10 + the lone event's
    # own retries (backoff 2, 4, 8, 16, 30, 30, 30 s in the remaining time).
    assert len(endpoint.requests) <= 5 + 2 + 2 * math.ceil(math.log2(10)) + 8

    later = rig.capture(10)  # events captured later are not held back either
    rig.run(1.0)
    assert set(later) <= set(endpoint.delivered_uuids())


def test_a_poison_event_cannot_hold_back_the_events_that_join_its_retries(
    rig: Rig, endpoint: LocalEndpoint
) -> None:
    # One batch of up to 500: every retry of the poison event carries the new events.
    poison = rig.capture(1)[0]
    endpoint.set_handler(fail_when(poison, 503))
    captured = []
    for _ in range(120):
        captured += rig.capture(2)
        rig.run(1.0)
    rig.run(60.0)

    assert sorted(endpoint.delivered_uuids()) == sorted(captured)
    assert [r.uuid for r in rig.pending()] == [poison]
    assert len(endpoint.requests) < 120 + 40  # no storm: about one per capture tick


def failed_twice(rig: Rig, n: int) -> list[str]:
    """Capture ``n`` events whose first two attempts failed, then let another event
    through: the ``n`` look poisoned when they fail again, 10 s later."""
    uuids = rig.capture(n)
    now = rig.clock.now()
    for due in (now, now + 10.0):
        batch = rig.spool.claim(now, max_events=n, max_bytes=1 << 20, lease_ttl=60.0)
        assert batch is not None and len(batch.rows) == n
        rig.spool.reschedule(batch.token, batch.ids, now, due, "HTTP 503", None, 503)
    rig.capture(1)
    assert rig.step().batches == 1  # delivered: the endpoint is up
    rig.clock.advance(10.0)
    return uuids


def test_a_configuration_fault_during_isolation_stops_it(rig: Rig, endpoint: LocalEndpoint) -> None:
    suspects = failed_twice(rig, 4)
    endpoint.set_handler(lambda r: Response(500) if suspects[0] in r.uuids else Response(401))

    rig.step()

    # The batch (500), its first half (500), its second half (401): then nothing more.
    assert [r.status for r in endpoint.requests[1:]] == [500, 500, 401]
    assert rig.dispatcher.paused_reason is not None
    assert [r.attempts for r in rig.pending()] == [3, 3, 2, 2]
    assert rig.step().blocked_by == "paused"


def test_a_poison_event_with_no_other_traffic_is_isolated_by_the_probes(
    rig: Rig, endpoint: LocalEndpoint
) -> None:
    uuids = rig.capture(8)  # nothing else is ever captured: no request can succeed
    poison = uuids[2]
    endpoint.set_handler(fail_when(poison))

    rig.run(300.0)

    assert sorted(endpoint.delivered_uuids()) == sorted(set(uuids) - {poison})
    assert [r.uuid for r in rig.pending()] == [poison]
    assert len(endpoint.requests) <= 40  # about one request per backoff interval


def test_a_general_outage_stops_the_isolation_after_three_requests(
    rig: Rig, endpoint: LocalEndpoint
) -> None:
    failed_twice(rig, 10)
    endpoint.default = Response(503)  # but now the whole endpoint fails

    rig.step()

    assert [r.status for r in endpoint.requests] == [200, 503, 503, 503]
    assert [len(r.uuids) for r in endpoint.requests[1:]] == [10, 5, 5]  # the batch, each half
    assert all(r.attempts == 3 for r in rig.pending())
    assert rig.step().blocked_by == "gate"


def test_a_poison_event_is_isolated_in_two_requests_per_halving(
    rig: Rig, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    suspects = failed_twice(rig, 16)
    poison = suspects[11]
    endpoint.set_handler(fail_when(poison))

    rig.step()

    assert sorted(endpoint.delivered_uuids()[1:]) == sorted(set(suspects) - {poison})
    # The batch, then both halves of 16, 8, 4 and 2.
    assert len(endpoint.requests) == 1 + 1 + 2 * 4
    [row] = rig.pending()
    assert (row.uuid, row.attempts) == (poison, 3)
    assert rig.step().blocked_by == "idle"  # a lone event failing does not close the gate
    assert any(poison in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# -- threads never die ------------------------------------------------------------------


class ExplodingWire(PostHogV0):
    """PostHog's wire format, except that it raises on events named "boom"."""

    def body(self, api_key: str, events: Sequence[bytes], sent_at: str) -> bytes:
        if any(b'"event":"boom"' in event for event in events):
            raise RuntimeError("wire format broke")
        return super().body(api_key, events, sent_at)


def test_an_unexpected_error_inline_is_logged_and_the_batch_rescheduled(
    make_rig: MakeRig, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(wire=ExplodingWire())
    [boom] = rig.capture(name="boom")

    step = rig.step()  # does not raise

    assert step.batches == 1
    assert endpoint.requests == []
    [row] = rig.pending()
    assert (row.uuid, row.state, row.attempts) == (boom, "pending", 1)
    assert row.last_error == "internal error: RuntimeError: wire format broke"
    assert row.next_attempt_at >= START + 0.5  # backoff: no hot loop
    [error] = errors(caplog)
    assert "failed unexpectedly" in error.getMessage() and error.exc_info is not None


def test_a_sender_thread_survives_unexpected_errors(
    tmp_path: Path, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "events.spool")
    dispatcher = Dispatcher(
        spool,
        HttpTransport(endpoint.url, API_KEY, wire=ExplodingWire()),
        config=DeliveryConfig(flush_at=1, flush_interval=0.0, max_batch_size=1, senders=1),
        retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.02, max_attempts=3),
    )
    now = time.time()
    good = [make_event(now, i) for i in range(3)]
    bad = make_event(now, 9, name="boom")
    for uuid, body in [good[0], bad, *good[1:]]:
        spool.append(uuid, body, now)
    dispatcher.start()
    try:
        result = dispatcher.flush(FlushBarrier.take(spool, time.time()), timeout=30.0)

        assert (result.delivered, result.dead, result.pending) == (3, 1, 0)
        assert sorted(endpoint.delivered_uuids()) == sorted(u for u, _ in good)
        dead = [(e.uuid, e.reason, e.attempts, e.detail) for e in dead_letters(spool)]
        assert dead == [
            (bad[0], "max_attempts", 3, "internal error: RuntimeError: wire format broke")
        ]
        assert len(errors(caplog)) == 3  # one per failed attempt, each with its traceback

        later = make_event(time.time(), 10)  # the one sender is still at work
        spool.append(*later, time.time())
        assert dispatcher.flush(FlushBarrier.take(spool, time.time()), timeout=30.0).delivered == 1
        assert later[0] in endpoint.delivered_uuids()
    finally:
        dispatcher.stop(2.0)
        spool.close()


class FlakySpool(Spool):
    """A real spool whose ``due`` fails once, like a transient disk error."""

    failures = 1

    def due(self, now: float, limit: int) -> tuple[int, float | None, int]:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return super().due(now, limit)


def test_the_dispatcher_thread_survives_a_failing_step(
    tmp_path: Path, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    spool = FlakySpool(tmp_path / "events.spool")
    dispatcher = Dispatcher(
        spool,
        HttpTransport(endpoint.url, API_KEY),
        config=DeliveryConfig(flush_at=1, flush_interval=0.0, senders=1),
    )
    uuid, body = make_event(time.time())
    spool.append(uuid, body, time.time())
    dispatcher.start()
    try:
        result = dispatcher.flush(FlushBarrier.take(spool, time.time()), timeout=30.0)

        assert result.delivered == 1 and endpoint.delivered_uuids() == [uuid]
        [error] = errors(caplog)
        assert "dispatcher step failed" in error.getMessage()
        assert spool.failures == 0
    finally:
        dispatcher.stop(2.0)
        spool.close()


# -- durability of the schedule (issue 2) ---------------------------------------------


def test_refused_then_up_keeps_the_schedule_across_a_restart(tmp_path: Path) -> None:
    endpoint = LocalEndpoint()  # port reserved, refusing connections
    rig = Rig.build(tmp_path / "events.spool", endpoint)
    try:
        uuids = rig.capture(3)
        rig.step()
        rig.clock.advance(max(rig.dispatcher.gate_until, rig.spool.next_due_at() or 0) - START)
        rig.step()
        rows = rig.pending()
        assert [r.attempts for r in rows] == [2, 2, 2]
        due = rows[0].next_attempt_at
        assert due - rig.clock.now() >= 1.0  # the second retry's backoff

        rig = rig.restart()  # a new process: no gate, no memory, the spool only
        endpoint.start()

        assert rig.step().batches == 0  # not due yet: the schedule was not reset
        assert endpoint.requests == []
        assert [r.attempts for r in rig.pending()] == [2, 2, 2]
        rig.clock.advance(due - rig.clock.now())
        assert rig.dispatcher.run_until_idle(rig.clock.now()) == 1

        assert endpoint.delivered_uuids() == uuids
        assert rig.pending() == []
    finally:
        rig.close()
        endpoint.stop()


# -- gzip -----------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_gzip_option(compress: bool, make_rig: MakeRig, endpoint: LocalEndpoint) -> None:
    rig = make_rig(gzip=compress)
    uuids = rig.capture(20)

    rig.step()

    [request] = endpoint.requests
    assert request.uuids == uuids
    if compress:
        assert request.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(request.raw_body) == request.body
        assert len(request.raw_body) < len(request.body)
    else:
        assert "Content-Encoding" not in request.headers
        assert request.raw_body == request.body
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("spoolpost/")


# -- the API key never comes back from a server's error text ---------------------------------


SHOWN = '{"error":"bad key phc_***"}'


@pytest.mark.parametrize(
    ("status", "where", "log"),
    [
        (401, "paused", f"paused: HTTP 401: {SHOWN} — a configuration fault"),
        (400, "dead letter", "dead-lettered 1 event(s): rejected 400"),
        (503, "last_error", f"failed (HTTP 503: {SHOWN}, 1 in a row)"),
    ],
)
def test_an_error_body_echoing_the_api_key_is_stored_and_logged_redacted(
    status: int,
    where: str,
    log: str,
    rig: Rig,
    endpoint: LocalEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="spoolpost")
    endpoint.default = Response(status, body=f'{{"error":"bad key {API_KEY}"}}'.encode())
    rig.capture()

    rig.step()

    if where == "paused":
        paused = f"HTTP 401: {SHOWN} from {endpoint.url}/batch/"
        assert rig.dispatcher.paused_reason == paused
    elif where == "dead letter":
        [dead] = rig.dead()
        assert dead.detail == SHOWN
    else:
        [row] = rig.pending()
        assert row.last_error == f"HTTP 503: {SHOWN}"
    [logged] = [r.getMessage() for r in caplog.records if r.name == "spoolpost"]
    assert log in logged and API_KEY not in logged


@pytest.mark.parametrize(
    ("body", "excerpt"),
    [
        (f"{API_KEY} is not valid", "phc_*** is not valid"),
        ("x" * 290 + API_KEY + " tail", "x" * 290 + "phc_***"),  # runs past the excerpt
        ("x" * 299 + API_KEY, "x" * 299 + "phc_***"),
        ("x" * 300 + API_KEY, "x" * 300),  # starts after the excerpt
        ("bad key phc_test", "bad key phc_***"),  # the body ends inside the key
        ("bad key phc_", "bad key phc_"),  # only the public prefix
        ("no key here", "no key here"),
    ],
    ids=["whole", "straddling", "last-byte", "after", "cut-short", "prefix", "none"],
)
def test_the_body_excerpt_never_shows_the_api_key(
    body: str, excerpt: str, endpoint: LocalEndpoint
) -> None:
    endpoint.default = Response(400, body=body.encode())

    reply = HttpTransport(endpoint.url, API_KEY).post([b'{"uuid":"u1"}'], START)

    assert (reply.status, reply.excerpt) == (400, excerpt)


# -- what a FlushResult counts -------------------------------------------------------------


def test_flush_counts_what_it_settled_not_what_reached_the_server(
    make_rig: MakeRig, endpoint: LocalEndpoint
) -> None:
    rig = make_rig(config=DeliveryConfig(flush_at=1, flush_interval=0.0, max_batch_size=310))
    captured = rig.capture(500)
    rig.step()  # the background senders got 310 of them out before the flush call
    assert len(endpoint.delivered_uuids()) == 310

    result = rig.dispatcher.flush(FlushBarrier.take(rig.spool, rig.clock.now()), timeout=30.0)
    again = rig.dispatcher.flush(FlushBarrier.take(rig.spool, rig.clock.now()), timeout=30.0)

    assert sorted(endpoint.delivered_uuids()) == sorted(captured)  # all 500 reached it
    assert result == FlushResult(delivered=190)
    assert result.complete
    assert again == FlushResult(delivered=0)  # nothing left to settle: still complete
    assert again.complete
