"""Lane-aware claiming: each lane has its own fresh-row cursor, so interleaved
``capture``/``capture_ai`` events still go out in full batches of one lane, in
capture order within each lane (see docs/architecture.md, "An event row's states")."""

from __future__ import annotations

import pytest
from kit import START, MakeRig, make_event

from spoolpost.delivery.wire import PostHogV1
from spoolpost.spool import AI_LANE, Batch, Spool
from spoolpost.spool.due import LANE_WINDOW
from spoolpost.testing import AI_PATH, V1_PATH, LocalEndpoint


def append(spool: Spool, lanes: list[str | None]) -> list[str]:
    """One event per entry of ``lanes``, on that lane, in this order; their uuids."""
    uuids = []
    for i, lane in enumerate(lanes):
        uuid, body = make_event(START, i, 0, "e")
        assert spool.append(uuid, body, START, lane)
        uuids.append(uuid)
    return uuids


def claim_all(spool: Spool, max_events: int) -> list[Batch]:
    batches = []
    while True:
        b = spool.claim(START, max_events=max_events, max_bytes=1 << 30, lease_ttl=60)
        if b is None:
            return batches
        batches.append(b)


@pytest.mark.parametrize("max_events", [2, 5, 10])
def test_alternating_lanes_are_claimed_in_full_batches_in_order_within_each_lane(
    spool: Spool, max_events: int
) -> None:
    lanes: list[str | None] = [None, AI_LANE] * 10
    uuids = append(spool, lanes)

    batches = claim_all(spool, max_events)

    assert [len(b.rows) for b in batches] == [max_events] * (20 // max_events)
    assert all(len({r.lane for r in b.rows}) == 1 for b in batches)
    for lane in (None, AI_LANE):
        sent = [r.uuid for b in batches for r in b.rows if r.lane == lane]
        assert sent == [u for u, on in zip(uuids, lanes, strict=True) if on == lane]


def test_a_rare_lane_is_found_past_the_search_window_and_nothing_is_left(spool: Spool) -> None:
    # An AI event, then more analytics events than one top-up looks through, then
    # another AI event: every row is claimed once, lanes never mix, order is kept.
    far = LANE_WINDOW * 2 + 5
    lanes: list[str | None] = [AI_LANE, *[None] * far, AI_LANE, None, AI_LANE]
    uuids = append(spool, lanes)

    batches = claim_all(spool, 2)

    claimed = [r.uuid for b in batches for r in b.rows]
    assert sorted(claimed) == sorted(uuids)
    assert all(len({r.lane for r in b.rows}) == 1 for b in batches)
    for lane in (None, AI_LANE):
        sent = [r.uuid for b in batches for r in b.rows if r.lane == lane]
        assert sent == [u for u, on in zip(uuids, lanes, strict=True) if on == lane]


def test_retries_of_one_lane_are_topped_up_with_that_lanes_fresh_rows(spool: Spool) -> None:
    first = append(spool, [None])
    batch = spool.claim(START, max_events=10, max_bytes=1 << 30, lease_ttl=60)
    assert batch is not None
    spool.reschedule(batch.token, batch.ids, START, START, "HTTP 503")
    later = append(spool, [AI_LANE, None, AI_LANE, None])

    batches = claim_all(spool, 10)

    assert [[r.uuid for r in b.rows] for b in batches] == [
        [first[0], later[1], later[3]],
        [later[0], later[2]],
    ]


def test_interleaved_lanes_go_out_as_one_full_request_per_lane(
    make_rig: MakeRig, endpoint: LocalEndpoint
) -> None:
    rig = make_rig(wire=PostHogV1())
    lanes: list[str | None] = [None, AI_LANE] * 10
    uuids = append(rig.spool, lanes)

    rig.dispatcher.run_until_idle(rig.clock.now())

    requests = {r.path: r.uuids for r in endpoint.requests}
    assert len(endpoint.requests) == 2
    assert requests[V1_PATH] == uuids[0::2]
    assert requests[AI_PATH] == uuids[1::2]
