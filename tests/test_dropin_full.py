"""spoolpost.Posthog and a full spool (issue 9): an ``on_full`` drop is counted and told
to ``on_error`` once per full episode; a ``before_send`` filter is never an error.

A real spool under tmp_path with a small ``max_spool_bytes``, the loopback endpoint."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from kit import API_KEY

from spoolpost import Posthog, SpoolFull, ops
from spoolpost.delivery.transport import HttpTransport
from spoolpost.events.pipeline import Outcome
from spoolpost.spool import Spool
from spoolpost.testing import LocalEndpoint

#: Small enough to fill in a few dozen captures of PAD bytes each.
BOUND = 128 * 1024
PAD = "x" * 4000


class Heard:
    """An ``on_error`` that records every call (and in which thread)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Exception, list[dict[str, Any]], str]] = []

    def __call__(self, error: Exception, events: list[dict[str, Any]]) -> None:
        self.calls.append((error, events, threading.current_thread().name))


def capture_until_dropped(posthog: Posthog, episode: int, extra: int) -> int:
    """Capture padded events until one is dropped, then ``extra`` more (dropped too);
    return how many were stored."""
    stored = 0
    for i in range(10_000):
        uid = posthog.capture(f"e{episode}-{i}", distinct_id="u", properties={"pad": PAD})
        if uid is None:
            break
        stored += 1
    for j in range(extra):
        late = posthog.capture(f"late{episode}-{j}", distinct_id="u", properties={"pad": PAD})
        assert late is None
    return stored


def test_on_full_drops_are_counted_and_told_to_on_error_once_per_episode(
    spool_path: Path, endpoint: LocalEndpoint
) -> None:
    heard = Heard()
    posthog = Posthog(
        API_KEY,
        host=endpoint.url,
        spool=str(spool_path),
        deliver=False,  # capture-only: nothing frees room until the drain below
        on_error=heard,
        client_options={"max_spool_bytes": BOUND},
    )
    first = capture_until_dropped(posthog, 1, extra=4)
    assert first >= 1

    # Room again: a drain delivers everything; the next capture stores and ends the
    # episode (the spool is back under 7/8 of its bound).
    with Spool(spool_path) as spool:
        drained = ops.drain_spool(spool, HttpTransport(endpoint.url, API_KEY), budget=60)
    assert drained.delivered == first
    assert posthog.capture("after", distinct_id="u") is not None
    second = capture_until_dropped(posthog, 2, extra=2)
    assert posthog.client is not None
    counters = posthog.client.spool.counters()
    posthog.shutdown()  # tells on_error what is queued before it returns

    # Loss accounting: every capture either returned a uuid (stored: first + 1 +
    # second) or was dropped and counted (5 + 3); lost is 0.
    assert counters["dropped"] == 5 + 3
    assert posthog.lost == 0 and counters.get("lost", 0) == 0
    assert [type(error) for error, _, _ in heard.calls] == [SpoolFull, SpoolFull]
    (error1, events1, thread1), (_, events2, _) = heard.calls
    assert str(error1) == (
        f"spool {spool_path} is full (max_spool_bytes={BOUND}, on_full=drop_newest); events "
        "are dropped and counted as 'dropped' until it is back down to 7/8 of that"
    )
    assert [e["event"] for e in events1] == [f"e1-{first}"]  # the episode's first drop
    assert [e["event"] for e in events2] == [f"e2-{second}"]
    assert thread1 == "spoolpost-on-error"  # never the caller's thread
    assert second >= 1


def test_a_before_send_filter_is_never_an_error(spool_path: Path, endpoint: LocalEndpoint) -> None:
    heard = Heard()
    posthog = Posthog(
        API_KEY,
        host=endpoint.url,
        spool=str(spool_path),
        on_error=heard,
        before_send=lambda event: None if event["event"] == "secret" else event,
    )
    assert posthog.capture("secret", distinct_id="u") is None
    kept = posthog.capture("kept", distinct_id="u")
    posthog.flush()
    assert posthog.client is not None
    counters = posthog.client.spool.counters()
    posthog.shutdown()

    # Loss accounting: 1 stored and delivered, 1 filtered by the app's own hook
    # (counted as 'filtered', not dropped, not lost).
    assert heard.calls == []
    assert posthog.lost == 0
    assert (counters["filtered"], counters["dropped"]) == (1, 0)
    assert endpoint.delivered_uuids() == [kept]


def test_the_pipeline_tells_a_filter_from_a_drop(spool_path: Path) -> None:
    from spoolpost.clock import SYSTEM_CLOCK
    from spoolpost.events.build import capture_event
    from spoolpost.events.pipeline import CapturePipeline

    with Spool(spool_path, max_spool_bytes=BOUND) as spool:
        pipeline = CapturePipeline(
            spool,
            before_send=lambda e: None if e["event"] == "no" else e,
            max_event_bytes=900 * 1024,
            clock=SYSTEM_CLOCK,
        )
        outcomes = [
            pipeline.store(capture_event(name, "u", {"pad": PAD}, now=1.0), 1.0)[0]
            for name in ["yes", "no"] + ["fill"] * 60
        ]
    assert outcomes[:2] == [Outcome.STORED, Outcome.FILTERED]
    assert Outcome.DROPPED in outcomes
    dropped_at = outcomes.index(Outcome.DROPPED)
    assert set(outcomes[2:dropped_at]) == {Outcome.STORED}
    assert set(outcomes[dropped_at:]) == {Outcome.DROPPED}


def test_drop_oldest_tells_on_error_once_when_it_begins_deleting_older_events(
    spool_path: Path, endpoint: LocalEndpoint
) -> None:
    heard = Heard()
    posthog = Posthog(
        API_KEY,
        host=endpoint.url,
        spool=str(spool_path),
        deliver=False,
        on_error=heard,
        client_options={"max_spool_bytes": BOUND, "on_full": "drop_oldest"},
    )
    uuids = [posthog.capture(f"e{i}", distinct_id="u", properties={"pad": PAD}) for i in range(80)]
    assert posthog.client is not None
    counters = posthog.client.spool.counters()
    pending = posthog.client.spool.stats(0).counts["pending"]
    posthog.shutdown()

    # Loss accounting: 80 captures returned a uuid; the older ones were deleted to
    # make room and counted as dropped: pending + dropped = 80; lost is 0.
    assert None not in uuids
    assert counters["dropped"] > 0 and pending + counters["dropped"] == 80
    assert posthog.lost == 0
    [(error, events, _)] = heard.calls
    assert isinstance(error, SpoolFull) and "on_full=drop_oldest" in str(error)
    assert events == []  # the deleted events are not at hand; they are counted
