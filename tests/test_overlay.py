"""The spool as read-only delivery sees it (spool/overlay.py): outcomes kept in a
Remembered laid over real stored rows, with no fault needed (the memory is filled
directly, as read-only delivery would after its answers)."""

from __future__ import annotations

from kit import T0, add_events

from spoolpost.spool import Spool, overlay
from spoolpost.spool.leases import Row
from spoolpost.spool.remembered import Remembered


def rows_of(spool: Spool) -> list[Row]:
    batch = spool.claim(T0, max_events=100, max_bytes=1 << 30, lease_ttl=60)
    assert batch is not None
    spool.release(batch.token)
    return list(batch.rows)


def test_counts_through_the_memory_settle_its_rows_and_match_them_by_uuid(
    spool: Spool,
) -> None:
    add_events(spool, ["a"] * 6)
    rows = rows_of(spool)
    memory = Remembered()
    memory.deliver_rows(rows[:3])
    memory.kill_rows([rows[3]], T0, "rejected", 400, "bad")
    memory.deliver_rows([rows[4]._replace(uuid="not-the-stored-row")])  # an id reused
    wm = spool.watermark(T0 + 100)
    outcomes = memory.outcomes()
    assert overlay.states_through(spool._db, outcomes, wm) == {
        "pending": 2,
        "leased": 0,
        "dead": 1,
    }
    assert overlay.dead_through(spool._db, outcomes, wm) == 1
    assert overlay.open_through(spool._db, memory, wm)  # rows 5 and 6 are open
    assert memory.front.id == rows[3].id  # the first four are settled
    memory.deliver_rows(rows[4:])
    assert not overlay.open_through(spool._db, memory, wm)
    assert memory.front.id == rows[5].id
    # Without a memory the counts are the stored ones.
    assert overlay.states_through(spool._db, {}, wm) == spool.states_through(wm)


def test_the_front_starts_again_when_its_row_is_gone(spool: Spool) -> None:
    add_events(spool, ["a"] * 4)
    rows = rows_of(spool)
    memory = Remembered()
    memory.deliver_rows(rows[:2])
    wm = spool.watermark(T0 + 100)
    assert overlay.open_through(spool._db, memory, wm) and memory.front.id == rows[1].id
    batch = spool.claim(T0, max_events=2, max_bytes=1 << 30, lease_ttl=60)
    assert batch is not None and spool.ack(batch.token, [r.id for r in batch.rows]) == 2
    with spool._db.read() as conn:  # another process deleted the front's row
        assert overlay.advance_front(conn, memory) == 0
