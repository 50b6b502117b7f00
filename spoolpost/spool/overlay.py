"""The spool as the process that delivers from it read-only sees it (see
docs/architecture.md, "Delivery from a read-only spool"): the stored rows with the
outcomes a :class:`~spoolpost.spool.remembered.Remembered` keeps laid over them.

A read-only spool's rows stay in the file however many of them are settled in
memory, so reading past them has a cost that grows with the memory:

- :func:`advance_front` moves the memory's front past the rows at the start of the
  table that are settled in memory (each such row is read once per episode, not
  once per dispatcher step), and what follows reads from the front on;
- :func:`pick` and :func:`fetch`: the rows read-only delivery may send next;
- :func:`open_through`, :func:`states_through`, :func:`dead_through`: the flush
  barrier's questions (:mod:`~spoolpost.spool.queries`) with a row settled in
  memory counted as settled for this process: delivered (gone from the counts) or
  dead.

Rows are matched by id and uuid. :func:`advance_front`, :func:`pick` and
:func:`open_through` run with the caller holding the lock that guards the memory;
:func:`states_through` and :func:`dead_through` take a copy of its outcomes
(:meth:`Remembered.outcomes`), which stays right while it is written down
meanwhile: a row written down is out of ``events`` (delivered) or in
``dead_events`` (dead), and so counted the same.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping
from typing import Any

from spoolpost.spool import queries
from spoolpost.spool.db import Database, recovering
from spoolpost.spool.queries import Watermark
from spoolpost.spool.remembered import NO_FRONT, Front, Remembered
from spoolpost.spool.sql import IN_IDS, ids_json

#: Row id → (uuid, dead): the outcomes :meth:`Remembered.outcomes` copies.
Outcomes = Mapping[int, tuple[str, bool]]

_SCAN = 1000  # ids read at a time while looking past settled rows
_COLUMNS = (
    "id, uuid, CAST(body AS BLOB), attempts, captured_at, request_id, lane,"
    " request_created_at, request_attempts"
)


def advance_front(conn: sqlite3.Connection, memory: Remembered) -> int:
    """Move ``memory.front`` past the stored rows after it that are settled in
    ``memory``; returns the front's id. A front whose row is no longer stored
    (another process deleted it, so ids may be reused) starts again at 0."""
    front = memory.front
    if front.id:
        row = conn.execute("SELECT uuid FROM events WHERE id = ?", (front.id,)).fetchone()
        if row is None or row[0] != front.uuid:
            front = NO_FRONT
    chunk = 16  # the first row is often unsettled: read few, then more
    while True:
        found = conn.execute(
            "SELECT id, uuid FROM events WHERE id > ? ORDER BY id LIMIT ?", (front.id, chunk)
        ).fetchall()
        for row_id, uuid in found:
            if not memory.settled_as(row_id, uuid):
                memory.front = front
                return front.id
            front = Front(row_id, uuid)
        if len(found) < chunk:
            memory.front = front
            return front.id
        chunk = min(2 * chunk, _SCAN)


def pick(
    conn: sqlite3.Connection,
    memory: Remembered,
    flying: Collection[int],
    cursor: int,
    now: float,
    limit: int,
) -> list[int]:
    """Ids of up to ``limit`` rows that may be sent at ``now``: pending (or under
    an expired lease), due, not settled in ``memory`` or held back by it, not in
    ``flying``; from ``cursor`` on (at least from the front), then once more from
    the front up to ``cursor``."""
    front = advance_front(conn, memory)
    start = cursor = max(cursor, front)
    wrapped = cursor == front
    chosen: list[int] = []
    while len(chosen) < limit:
        ids = conn.execute(
            "SELECT id FROM events WHERE id > ?"
            " AND (state = 'pending' OR lease_expires_at <= ?)"
            " AND (attempts = 0 OR next_attempt_at <= ?) ORDER BY id LIMIT ?",
            (cursor, now, now, _SCAN),
        ).fetchall()
        if not ids:
            if wrapped:
                break
            cursor, wrapped = front, True
            continue
        for (row_id,) in ids:
            if wrapped and start != front and row_id > start:
                return chosen  # round once
            cursor = row_id
            if row_id not in flying and not memory.held_back(row_id, now):
                chosen.append(row_id)
                if len(chosen) == limit:
                    break
    return chosen


def fetch(conn: sqlite3.Connection, ids: list[int]) -> list[Any]:
    """The rows ``ids`` as a claim reads them (id, uuid, body, attempts,
    captured_at, request_id, lane, request_created_at, request_attempts), by id."""
    if not ids:
        return []
    return conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE {IN_IDS} ORDER BY id", (ids_json(ids),)
    ).fetchall()


@recovering
def open_through(db: Database, memory: Remembered, watermark: Watermark) -> bool:
    """:meth:`Spool.any_open_through` with ``memory`` laid over: True while a row
    inside ``watermark`` is stored and not settled in ``memory``."""
    with db.read(snapshot=True) as conn:
        return _open_through(conn, memory, watermark)


def _open_through(conn: sqlite3.Connection, memory: Remembered, watermark: Watermark) -> bool:
    last_id, at = watermark
    cursor = advance_front(conn, memory)
    while True:
        found = conn.execute(
            "SELECT id, uuid FROM events WHERE id > ? AND id <= ? AND captured_at <= ?"
            " ORDER BY id LIMIT ?",
            (cursor, last_id, at, _SCAN),
        ).fetchall()
        if any(not memory.settled_as(row_id, uuid) for row_id, uuid in found):
            return True
        if len(found) < _SCAN:
            return False
        cursor = found[-1][0]


def _settled_inside(
    conn: sqlite3.Connection, outcomes: Outcomes, watermark: Watermark
) -> list[tuple[str, bool]]:
    """(stored state, dead in memory) of each stored row inside ``watermark`` that
    ``outcomes`` settles."""
    last_id, at = watermark
    ids = [i for i in outcomes if i <= last_id]
    if not ids:
        return []
    found = conn.execute(
        f"SELECT id, uuid, state FROM events WHERE {IN_IDS} AND id <= ? AND captured_at <= ?",
        (ids_json(ids), last_id, at),
    ).fetchall()
    return [(state, outcomes[i][1]) for i, uuid, state in found if outcomes[i][0] == uuid]


def states_through(db: Database, outcomes: Outcomes, watermark: Watermark) -> dict[str, int]:
    """:meth:`Spool.states_through` with ``outcomes`` laid over: a row settled in
    memory is not counted in its stored state, and a dead one counts as dead."""
    if not outcomes:
        return queries.states_through(db, watermark)
    return _states_through(db, outcomes, watermark)


@recovering
def _states_through(db: Database, outcomes: Outcomes, watermark: Watermark) -> dict[str, int]:
    with db.read(snapshot=True) as conn:
        counts = queries.states_on(conn, watermark)
        for state, dead in _settled_inside(conn, outcomes, watermark):
            counts[state] -= 1
            counts["dead"] += dead
    return counts


def dead_through(db: Database, outcomes: Outcomes, watermark: Watermark) -> int:
    """:meth:`Spool.dead_through` with ``outcomes`` laid over: the rows dead in
    memory count too."""
    if not outcomes:
        return queries.dead_through(db, watermark)
    return _dead_through(db, outcomes, watermark)


@recovering
def _dead_through(db: Database, outcomes: Outcomes, watermark: Watermark) -> int:
    with db.read(snapshot=True) as conn:
        stored = queries.dead_on(conn, watermark)
        return stored + sum(dead for _, dead in _settled_inside(conn, outcomes, watermark))
