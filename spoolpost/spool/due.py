"""What a claim finds due: retries first, then fresh rows of one lane.

A batch holds one lane and, when it carries a stored v1 request, that request's
rows alone (see docs/architecture.md, "An event row's states"). :class:`DueRows`
finds the rows of one such group for :meth:`Leases.claim`:

- retries whose backoff is over, oldest schedule first; the first one's group
  (request, lane) makes the batch, and a batch of retries with no stored
  request is topped up with fresh rows of its lane;
- otherwise fresh rows (``attempts = 0``) in capture order from a shared
  in-memory cursor; the first one's group makes the batch. Rows of the other
  lane in that window are passed over (not taken, never lost: the shared cursor
  stops before the first of them) and the batch is topped up from its own lane,
  so interleaved ``capture``/``capture_ai`` events still batch fully.

The cursors only bound where a search starts (rows below them were claimed by
this process); a search that finds nothing starts over from the beginning, as
ids are reused once the spool empties. Every method runs inside the caller's
transaction.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

#: What a claim reads of each row: ``Row``'s fields, in its order.
CLAIM_COLUMNS = "id, uuid, CAST(body AS BLOB), attempts, captured_at, request_id, lane"
_ID, _ATTEMPTS, _REQUEST, _LANE = 0, 3, 5, 6
_GET_REQUEST, _GET_LANE = itemgetter(_REQUEST), itemgetter(_LANE)
_RETRIES = (
    "SELECT {} FROM events WHERE attempts > 0 AND state = 'pending'"
    " AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?"
)
_FRESH = (
    "SELECT {} FROM events WHERE id > ? AND attempts = 0 AND state = 'pending' ORDER BY id LIMIT ?"
)
#: Fresh rows of one lane among the next ``?`` fresh rows of any lane: the search
#: for a lane's rows past the other lane's is bounded (no scan of a whole spool of
#: the other lane inside the claim's write transaction), and only the chosen
#: lane's bodies are read.
_FRESH_OF_LANE = (
    f"SELECT {CLAIM_COLUMNS} FROM events WHERE id IN ("
    "SELECT id FROM events WHERE id > ? AND attempts = 0 AND state = 'pending'"
    " ORDER BY id LIMIT ?) AND lane IS ? ORDER BY id LIMIT ?"
)
#: How many fresh rows of any lane a top-up looks through, per row it may take.
LANE_WINDOW = 8


@dataclass(frozen=True)
class Found:
    """One batch's candidates: ``rows`` (one group, retries first, then fresh rows
    in capture order), whether the fresh rows came from the ``shared`` cursor, and
    ``passed``, the id of the first fresh row of that window outside the group
    (None: none), which the shared cursor must not pass."""

    rows: list[Any]
    shared: bool = False
    passed: int | None = None


class DueRows:
    """The claim's search for due rows, with its fresh-row cursors (see the module
    docstring). Not thread-safe by itself: the spool's write lock serializes claims."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Search from the beginning again (rows were given back, or a new file)."""
        #: Every fresh row (any lane) with an id up to this was claimed here.
        self._shared = 0
        #: Per lane: every fresh row of the lane with an id up to this was claimed here.
        self._lanes: dict[str | None, int] = {}

    def peek(self, conn: sqlite3.Connection, now: float, limit: int, columns: str) -> list[Any]:
        """Up to ``limit`` due rows of any lane (``columns`` of each): what the
        dispatcher counts to decide whether a batch is due."""
        rows = conn.execute(_RETRIES.format(columns), (now, limit)).fetchall()
        if len(rows) < limit:
            rows += self._fresh(conn, limit - len(rows), columns)
        return rows

    def _fresh(self, conn: sqlite3.Connection, limit: int, columns: str) -> list[Any]:
        sql = _FRESH.format(columns)
        rows = conn.execute(sql, (self._shared, limit)).fetchall()
        if not rows and self._shared:
            self.reset()
            rows = conn.execute(sql, (0, limit)).fetchall()
        return rows

    def _of_lane(
        self, conn: sqlite3.Connection, lane: str | None, after: int, limit: int
    ) -> list[Any]:
        """Fresh rows of ``lane`` after id ``after`` with no stored request, in
        capture order, up to ``limit``; stops at one that has a stored request
        (a request given back unsent goes alone, and is not passed)."""
        if limit <= 0:
            return []
        rows = conn.execute(_FRESH_OF_LANE, (after, limit * LANE_WINDOW, lane, limit)).fetchall()
        for n, row in enumerate(rows):
            if row[_REQUEST] is not None:
                return rows[:n]
        return rows

    def for_batch(self, conn: sqlite3.Connection, now: float, limit: int) -> Found:
        """The candidates of one batch of up to ``limit`` rows (:data:`CLAIM_COLUMNS`)."""
        retries = conn.execute(_RETRIES.format(CLAIM_COLUMNS), (now, limit)).fetchall()
        if retries:
            request, lane = retries[0][_REQUEST], retries[0][_LANE]
            rows = [r for r in retries if r[_REQUEST] == request and r[_LANE] == lane]
            if request is None:
                after = max(self._shared, self._lanes.get(lane, 0))
                rows += self._of_lane(conn, lane, after, limit - len(rows))
            return Found(rows)
        window = self._fresh(conn, limit, CLAIM_COLUMNS)
        if not window:
            return Found([])
        request, lane = window[0][_REQUEST], window[0][_LANE]
        # The usual window is one group (no Python code per row to see it).
        size = len(window)
        same = list(map(_GET_REQUEST, window)).count(request) == size
        if same and list(map(_GET_LANE, window)).count(lane) == size:
            return Found(window, True)  # nothing in the window is passed
        rows = []
        passed = None
        for row in window:
            if row[_REQUEST] == request and row[_LANE] == lane:
                rows.append(row)
                continue
            passed = row[_ID] if passed is None else passed
            if row[_LANE] == lane:
                break  # the lane's cursor must not pass a row of its own lane
        else:
            if passed is not None and request is None and len(window) == limit:
                rows += self._of_lane(conn, lane, window[-1][_ID], limit - len(rows))
        return Found(rows, True, passed)

    def claimed(self, found: Found, stop: int) -> None:
        """Move the cursors past what a claim did with ``found``: it leased or
        dead-lettered the candidates before index ``stop``; the rest (after the
        byte limit) stay ahead of the cursors."""
        rows = found.rows
        # Fresh rows follow the retries, in capture order: the last one done is the
        # highest, and the first one left is the lowest.
        done = rows[stop - 1] if stop else None
        if done is not None and done[_ATTEMPTS] == 0:
            lane = done[_LANE]
            self._lanes[lane] = max(self._lanes.get(lane, 0), done[_ID])
        if not found.shared:
            return
        left = rows[stop][_ID] if stop < len(rows) else None
        blockers = [i for i in (left, found.passed) if i is not None]
        if blockers:
            self._shared = max(self._shared, min(blockers) - 1)
        elif done is not None:
            self._shared = max(self._shared, done[_ID])
