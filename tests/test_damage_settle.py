"""Damage met by a sender's settle write (ack, per-event settle, reschedule) is handled
as damage met elsewhere: the file is quarantined with its readable rows carried over
(their leases too), the write runs again on the new spool by the same lease token, one
ERROR, no traceback. The answer's outcome is kept for every carried row; rows on the
damaged page are destroyed by the fault itself (named in the ERROR).

The damage is real: while the request is at the loopback endpoint, the WAL is
checkpointed and a leaf page of the events table is overwritten in the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from kit import MakeRig, add_events, live
from test_damage import PAD, checkpointed, damage_a_middle_leaf

from spoolpost.delivery import DeliveryConfig
from spoolpost.delivery.wire import PostHogV0, PostHogV1
from spoolpost.spool import Spool
from spoolpost.testing import RecordedRequest, Response

ONE_BATCH = DeliveryConfig(flush_at=1, flush_interval=0.0, max_batch_size=1000)


@pytest.mark.parametrize(
    ("wire", "status"),
    [(PostHogV0(), 200), (PostHogV1(), 200), (PostHogV0(), 503)],
    ids=["v0-ack", "v1-settle", "v0-reschedule"],
)
def test_damage_met_by_a_settle_write_quarantines_and_keeps_the_answer(
    spool_path: Path,
    make_rig: MakeRig,
    caplog: pytest.LogCaptureFixture,
    wire: PostHogV0 | PostHogV1,
    status: int,
) -> None:
    rig = make_rig(wire=wire, config=ONE_BATCH)
    uuids = rig.capture(120, pad=len(PAD["pad"]))
    destroyed: list[str] = []
    theirs: list[str] = []

    def damage_while_sending(request: RecordedRequest) -> Response | None:
        if not destroyed:
            checkpointed(rig.spool)  # the claim's lease is in the file now
            destroyed.extend(uuids[i - 1] for i in damage_a_middle_leaf(spool_path))
            with Spool(spool_path) as other:  # another process writes: every cache is stale
                theirs.extend(add_events(other, ["other process"], at=rig.clock.now()))
        return Response(status) if status != 200 else None

    rig.endpoint.set_handler(damage_while_sending)
    assert rig.step().batches == 1  # claim, POST, settle (meets the damage)
    rig.endpoint.set_handler(None)

    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.exc_info is None  # no traceback
    (aside,) = spool_path.parent.glob("events.spool.corrupt-*[0-9TZ]")
    assert f"moved aside as corrupt to {aside}" in error.getMessage()
    assert f"carried {121 - len(destroyed)} event(s)" in error.getMessage()
    (request,) = rig.endpoint.requests
    assert sorted(e["uuid"] for e in request.events) == sorted(uuids)

    if status == 200:
        # Delivered: the settle write ran again on the new spool by the same token.
        assert [e.uuid for e in live(rig.spool)] == theirs
        assert rig.spool.counters()["delivered"] == 120 - len(destroyed)
        rig.run(60)
        assert len(rig.endpoint.requests) == 2  # the other process's event; none again
        # Accounting: returned 121 = delivered 121 (each once); lost 0.
        assert sorted(rig.endpoint.delivered_uuids()) == sorted([*uuids, *theirs])
    else:
        # Rescheduled with the attempt counted; the destroyed rows were never delivered.
        left = live(rig.spool)
        assert sorted(e.uuid for e in left) == sorted({*uuids, *theirs} - set(destroyed))
        assert {e.attempts for e in left if e.uuid not in theirs} == {1}
        rig.run(60)
        delivered = rig.endpoint.delivered_uuids()
        assert sorted(delivered) == sorted({*uuids, *theirs} - set(destroyed))
        # Accounting: returned 121 = delivered + destroyed on the page by the fault.
        assert len(delivered) + len(destroyed) == len(uuids) + 1
