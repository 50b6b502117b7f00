"""A claim leases, and an ack deletes, a run of ids by one primary-key range
(``ids_where``): exactly the rows named, whatever lies between them."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from kit import START, live, make_event, rows

from spoolpost.spool import AI_LANE, Batch, Spool
from spoolpost.spool.sql import ids_where


def claim(spool: Spool, **options: Any) -> Batch:
    options.setdefault("max_events", 100)
    batch = spool.claim(START, max_bytes=1 << 30, lease_ttl=60, **options)
    assert batch is not None
    return batch


def append(spool: Spool, lanes: list[str | None]) -> None:
    for i, lane in enumerate(lanes):
        uuid, body = make_event(START, i, 0, "e")
        assert spool.append(uuid, body, START, lane)


@pytest.mark.parametrize(
    "ids",
    [
        [],
        [7],
        [3, 4, 5, 6],
        [6, 4, 5, 3],  # a run out of order
        [3, 4, 6, 7],  # a gap
        [3, 3, 5],  # a duplicate that makes the span look like a run
        [3, 3, 4, 5, 7],
        [1, 20],
    ],
)
def test_ids_where_matches_exactly_the_ids_named(ids: list[int]) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO events VALUES (?)", [(i,) for i in range(1, 21)])
    where, params = ids_where(ids)
    found = [r[0] for r in conn.execute(f"SELECT id FROM events WHERE {where}", params)]
    assert found == sorted(set(ids))
    run = bool(ids) and max(ids) - min(ids) + 1 == len(ids) == len(set(ids))
    assert where.startswith("id BETWEEN") == run


@pytest.mark.parametrize("stamp", [False, True], ids=["v0", "v1-stamped"])
def test_a_claim_across_another_lanes_rows_leases_only_its_own(spool: Spool, stamp: bool) -> None:
    append(spool, [None, None, AI_LANE, None, AI_LANE, None])
    identity = ("0190a000-0000-7000-8000-000000000001", "2026-01-01T00:00:00.000Z")
    batch = spool.claim(
        START,
        max_events=10,
        max_bytes=1 << 30,
        lease_ttl=60,
        stamp=(lambda lane: identity if lane is None else None) if stamp else None,
    )
    assert batch is not None
    assert batch.ids == [1, 2, 4, 6]
    with sqlite3.connect(spool.path) as conn:  # read from the file
        got = conn.execute(
            "SELECT id, state, lease_token, request_id FROM events ORDER BY id"
        ).fetchall()
    rid = identity[0] if stamp else None
    assert got == [
        (1, "leased", batch.token, rid),
        (2, "leased", batch.token, rid),
        (3, "pending", None, None),
        (4, "leased", batch.token, rid),
        (5, "pending", None, None),
        (6, "leased", batch.token, rid),
    ]


def test_a_run_is_leased_by_a_range_and_acked_in_parts(spool: Spool) -> None:
    append(spool, [None] * 6)
    batch = claim(spool, max_events=5)
    assert batch.ids == [1, 2, 3, 4, 5]
    assert [r[1] for r in rows(live(spool), "id, state")] == ["leased"] * 5 + ["pending"]

    assert spool.ack(batch.token, [2, 3]) == 2  # a run inside the batch: that run only
    assert spool.ack(batch.token, [1, 5]) == 2  # a gap whose row the token still holds
    assert rows(live(spool), "id, state, lease_token") == [
        (4, "leased", batch.token),
        (6, "pending", None),
    ]
    assert spool.ack("another token", [4, 5, 6]) == 0  # a stale token changes nothing
    assert spool.ack(batch.token, [4, 5, 6]) == 1
    assert spool.counters()["delivered"] == 5
