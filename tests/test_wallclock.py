"""Behaviour that depends on the wall-clock times stored in the spool, driven with
time-machine (which moves time.time() for every thread, not time.monotonic())."""

from __future__ import annotations

import time
from pathlib import Path

import time_machine
from kit import API_KEY

from spoolpost import Client
from spoolpost.delivery.transport import HttpTransport
from spoolpost.ops import drain_spool
from spoolpost.spool import Spool
from spoolpost.testing import LocalEndpoint, Response

DAY = 24 * 3600.0


def test_events_older_than_max_event_age_are_dead_lettered_expired_not_sent(
    spool_path: Path, endpoint: LocalEndpoint
) -> None:
    with Client(API_KEY, endpoint.url, spool=spool_path, send=False) as client:
        old = [client.capture("old", distinct_id=f"u{i}") for i in range(3)]
    with time_machine.travel(time.time() + 8 * DAY, tick=True):
        with Client(API_KEY, endpoint.url, spool=spool_path, send=False) as client:
            fresh = client.capture("fresh", distinct_id="u9")
        with Spool(spool_path) as spool:
            result = drain_spool(spool, HttpTransport(endpoint.url, API_KEY))
            stats = spool.stats(time.time())
    assert endpoint.delivered_uuids() == [fresh]
    assert (result.delivered, result.dead, result.pending) == (1, 3, 0)
    assert stats.dead_reasons == {"expired": 3}
    assert None not in old


def test_a_retry_scheduled_before_a_restart_is_kept_after_it(
    spool_path: Path, endpoint: LocalEndpoint
) -> None:
    endpoint.respond(Response(status=503, headers={"Retry-After": "500"}))
    with Client(API_KEY, endpoint.url, spool=spool_path, send=False) as client:
        client.capture("e", distinct_id="u")
    with Spool(spool_path) as spool:
        first = drain_spool(spool, HttpTransport(endpoint.url, API_KEY), budget=0.5)
        assert first.pending == 1 and len(endpoint.requests) == 1
    # A new process (a new drain) 250 s later still waits out the 500 s.
    with time_machine.travel(time.time() + 250, tick=True), Spool(spool_path) as spool:
        early = drain_spool(spool, HttpTransport(endpoint.url, API_KEY), budget=0.5)
    assert early.pending == 1 and len(endpoint.requests) == 1
    with time_machine.travel(time.time() + 501, tick=True), Spool(spool_path) as spool:
        late = drain_spool(spool, HttpTransport(endpoint.url, API_KEY))
    assert (late.delivered, late.pending) == (1, 0) and len(endpoint.requests) == 2
