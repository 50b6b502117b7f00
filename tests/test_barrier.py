"""The flush barrier: what "captured before the flush" means, and what a flush came to."""

from __future__ import annotations

from kit import API_KEY, START, add_events

from spoolpost.clock import Clock
from spoolpost.delivery import FlushBarrier, FlushResult
from spoolpost.delivery.transport import HttpTransport
from spoolpost.ops import DrainResult, drain_spool
from spoolpost.spool import Spool
from spoolpost.testing import LocalEndpoint


class StoppedWallClock(Clock):
    """Real waits and monotonic time; a wall clock that stays at ``at``."""

    def __init__(self, at: float) -> None:
        self.at = at

    def now(self) -> float:
        return self.at


def deliver_all(spool: Spool, now: float) -> None:
    """What senders would do: claim and acknowledge everything due."""
    while (batch := spool.claim(now, max_events=100, max_bytes=10**7, lease_ttl=60.0)) is not None:
        spool.ack(batch.token, batch.ids)


def test_a_barrier_covers_what_was_captured_up_to_its_moment(spool: Spool) -> None:
    add_events(spool, ["a", "b", "c"], at=START)  # captured at START … START + 2
    barrier = FlushBarrier.take(spool, START + 2)
    add_events(spool, ["late"], at=START + 3)  # captured after the barrier
    assert barrier.unsettled == 3
    assert barrier.result(spool) == FlushResult(pending=3)
    assert not barrier.result(spool, timed_out=True).complete
    deliver_all(spool, START + 3)
    assert barrier.result(spool) == FlushResult(delivered=3)
    assert barrier.result(spool, open_left=False, paused="401") == FlushResult(delivered=3)


def test_taking_a_barrier_while_starting_counts_as_of_before_the_start(spool: Spool) -> None:
    add_events(spool, ["a", "b", "c", "d"], at=START)
    barrier = FlushBarrier.take_starting(spool, START + 3, lambda: deliver_all(spool, START + 3))
    assert barrier is not None
    assert barrier.before == {"pending": 4, "leased": 0, "dead": 0}
    assert barrier.result(spool) == FlushResult(delivered=4)  # delivered as it started


def test_nothing_is_started_for_a_barrier_with_nothing_left(spool: Spool) -> None:
    add_events(spool, ["a", "b"], at=START + 10)
    started: list[bool] = []
    assert FlushBarrier.take_starting(spool, START, lambda: started.append(True)) is None
    assert started == []


def test_drain_takes_its_barrier_at_the_injected_clocks_now(
    spool: Spool, endpoint: LocalEndpoint
) -> None:
    add_events(spool, ["a", "b"], at=START + 10)
    transport = HttpTransport(endpoint.url, API_KEY)
    early = drain_spool(spool, transport, clock=StoppedWallClock(START))
    assert (early, endpoint.requests) == (DrainResult(), [])  # captured after its now
    later = drain_spool(spool, transport, clock=StoppedWallClock(START + 20))
    assert (later.delivered, later.pending) == (2, 0)
