"""Leases: handing due events to senders and settling them.

:class:`Leases` finds due events (retries whose backoff is over first, then
fresh events in capture order), leases a batch to one sender under a random
token, and settles it by that token: ack (delete), reschedule, release,
dead-letter, extend. A settle call carrying a stale token changes nothing.
:meth:`Leases.reclaim` takes back leases that expired or whose owner process is
gone; it checks owners (reading /proc) before its write transaction, not in it.
Every write is one ``BEGIN IMMEDIATE`` transaction with no network I/O (see
docs/architecture.md, "An event row's states").
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import accumulate
from operator import itemgetter
from typing import Any, NamedTuple, cast

from spoolpost.spool.db import Database
from spoolpost.spool.due import DueRows
from spoolpost.spool.owner import Owner, current_owner, owner_alive
from spoolpost.spool.space import SpaceGuard, delivery_write
from spoolpost.spool.sql import IN_IDS, add_counter, ids_json, ids_where
from spoolpost.spool.stamps import (
    STAMP_RETURNING,
    STAMP_SET,
    RequestStamp,
    Stamper,
    stamped_identity,
    unstamp_rows,
)

log = logging.getLogger("spoolpost")

#: Rows a claim may dead-letter as ``expired`` in one transaction, per ``max_events``.
_EXPIRE_ROUNDS = 8


class Row(NamedTuple):
    """One leased event: spool ``id``, ``uuid``, encoded ``body``, prior ``attempts``,
    ``captured_at`` (UTC seconds), the ``request_id`` of the stored v1 request
    that carried it (None until it is first sent under v1) and its ``lane`` (None:
    analytics; ``"ai"``: ``capture_ai``, PostHog's ``/i/v0/ai/batch/``).

    A NamedTuple rather than a dataclass: a claim builds hundreds at a time."""

    id: int
    uuid: str
    body: bytes
    attempts: int
    captured_at: float
    request_id: str | None = None
    lane: str | None = None


@dataclass(frozen=True)
class Batch:
    """Events leased to one sender under ``token`` until ``expires_at`` (UTC seconds)."""

    token: str
    rows: tuple[Row, ...]
    expires_at: float
    #: The v1 request identity the claim stored for the rows (None: not stamped).
    stamp: RequestStamp | None = None

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.rows]

    @property
    def size(self) -> int:
        """Sum of the encoded event sizes, in bytes."""
        return sum(len(r.body) for r in self.rows)


_ID, _BODY, _CAPTURED_AT = itemgetter(0), itemgetter(2), itemgetter(4)
_as_row = cast("Callable[[Any], Row]", partial(tuple.__new__, Row))


def _take(rows: list[Any], oldest: float, max_bytes: int) -> list[Row] | None:
    """The rows a claim leases of its candidates ``rows`` (:data:`CLAIM_COLUMNS`
    tuples): the longest prefix within ``max_bytes`` (at least one row), or None
    when some candidate was captured before ``oldest`` (then
    :func:`_take_sorting` decides). No Python code runs per row: a claim
    handles hundreds of rows, under the write lock."""
    if min(map(_CAPTURED_AT, rows)) < oldest:
        return None
    sizes = list(accumulate(map(len, map(_BODY, rows))))
    stop = len(rows) if sizes[-1] <= max_bytes else max(1, bisect_right(sizes, max_bytes))
    return list(map(_as_row, rows[:stop]))


def _take_sorting(
    rows: list[Any], oldest: float, max_bytes: int, expired: list[int], died: list[Row]
) -> tuple[list[Row], int]:
    """:func:`_take` when some candidates are older than ``oldest``: those go to
    ``expired`` (ids) and ``died`` (rows); returns the rows taken and the index
    of the first candidate neither taken nor expired (the byte limit's cut)."""
    taken: list[Row] = []
    total = 0
    for n, row in enumerate(rows):
        if row[4] < oldest:  # captured_at
            expired.append(row[0])
            died.append(Row(*row[:5]))
            continue
        total += len(row[2])
        if taken and total > max_bytes:
            return taken, n
        taken.append(Row(*row))
    return taken, len(rows)


class Leases:
    """Leases on the spool ``db``; thread-safe (every call is one transaction)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # Where the search for due rows starts (spool/due.py).
        self._due = DueRows()
        #: Called with the rows a claim dead-lettered as ``expired``, after the commit.
        self.on_expired: Callable[[list[Row]], None] | None = None
        #: Runs the writes below on a full disk (set by the Spool; see spool/space.py).
        self.space: SpaceGuard | None = None
        db.on_start_over(self._start_over)

    def _start_over(self, forked: bool) -> None:
        # The cursors point into the file that was open.
        self._due.reset()

    @delivery_write()
    def claim(self, /, now: float, **options: Any) -> Batch | None:
        """Lease due pending events to one sender; see :meth:`Spool.claim`. Rows it
        dead-letters as ``expired`` are told to :attr:`on_expired` once committed."""
        died: list[Row] = []
        # Damage met here quarantines the file, its rows carried over (db.guarded).
        batch = self._db.guarded(lambda: self._claim(now, died, **options))
        if died and self.on_expired is not None:
            self.on_expired(died)
        return batch

    def _claim(
        self,
        now: float,
        died: list[Row],
        *,
        max_events: int,
        max_bytes: int,
        lease_ttl: float,
        max_event_age: float | None = None,
        owner: Owner | None = None,
        stamp: Stamper | None = None,
    ) -> Batch | None:
        owner = owner or current_owner()
        with self._db.write() as conn:
            for _ in range(_EXPIRE_ROUNDS):
                found = self._due.for_batch(conn, now, max_events)
                if not found.rows:
                    return None
                oldest = -1.0 if max_event_age is None else now - max_event_age
                expired: list[int] = []
                fast = _take(found.rows, oldest, max_bytes)
                if fast is None:  # some candidate is too old: row by row
                    taken, stop = _take_sorting(found.rows, oldest, max_bytes, expired, died)
                else:  # candidates before ``stop`` were leased or expired
                    taken, stop = fast, len(fast)
                if expired:
                    self.kill(conn, expired, None, now, "expired", None, "older than max_event_age")
                self._due.claimed(found, stop)
                if taken:
                    break
            else:
                return None
            token = secrets.token_hex(16)
            expires_at = now + lease_ttl
            conn.execute(
                "INSERT INTO leases (token, host, pid, pid_start, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (token, owner.host, owner.pid, owner.start, now, expires_at),
            )
            # A fresh batch is usually a run of ids: leased by one range, no JSON.
            where, params = ids_where(list(map(_ID, taken)))
            identity = None if stamp is None else stamp(taken[0].lane)
            if identity is None:
                conn.execute(
                    f"UPDATE events SET state = 'leased', lease_token = ?, lease_expires_at = ?"
                    f" WHERE {where}",
                    (token, expires_at, *params),
                )
                return Batch(token, tuple(taken), expires_at)
            # The first request's identity, stored with the lease (one UPDATE, no
            # second transaction): committed before the batch is handed to a sender.
            if taken[0].request_id is None:  # then none has one: a first request
                conn.execute(
                    f"UPDATE events SET state = 'leased', lease_token = ?, lease_expires_at = ?,"
                    f" request_id = ?, request_created_at = ?, request_attempts = 1"
                    f" WHERE {where}",
                    (token, expires_at, *identity, *params),
                )
                return Batch(token, tuple(taken), expires_at, RequestStamp(*identity, 1))
            stamped = conn.execute(
                f"UPDATE events SET state = 'leased', lease_token = ?, lease_expires_at = ?,"
                f" {STAMP_SET} WHERE {where} RETURNING {STAMP_RETURNING}",
                (token, expires_at, *identity, *params),
            ).fetchall()
            ids = [r.id for r in taken]
            request = stamped_identity(conn, token, ids, stamped, *identity)
        return Batch(token, tuple(taken), expires_at, request)

    def forget_lease(self, conn: sqlite3.Connection, token: str) -> None:
        conn.execute(
            "DELETE FROM leases WHERE token = ?"
            " AND NOT EXISTS (SELECT 1 FROM events WHERE lease_token = ?)",
            (token, token),
        )

    @delivery_write(frees=True)
    def ack(self, token: str, ids: Sequence[int]) -> int:
        """Delete delivered rows still leased to ``token``; see :meth:`Spool.ack`."""
        with self._db.write() as conn:
            where, params = ids_where(ids)
            n = conn.execute(
                f"DELETE FROM events WHERE {where} AND lease_token = ?", (*params, token)
            ).rowcount
            add_counter(conn, "delivered", n)
            self.forget_lease(conn, token)
        return n

    @delivery_write(frees=True)
    def reschedule(
        self,
        token: str,
        ids: Sequence[int],
        now: float,
        next_attempt_at: float,
        error: str,
        max_attempts: int | None = None,
        status: int | None = None,
    ) -> tuple[int, int]:
        """A failed attempt; see :meth:`Spool.reschedule`."""
        with self._db.write() as conn:
            result = self.reschedule_in(
                conn, token, ids, now, next_attempt_at, error, max_attempts, status
            )
            self.forget_lease(conn, token)
        return result

    def reschedule_in(
        self,
        conn: sqlite3.Connection,
        token: str,
        ids: Sequence[int],
        now: float,
        next_attempt_at: float,
        error: str,
        max_attempts: int | None,
        status: int | None,
        reason: str = "max_attempts",
    ) -> tuple[int, int]:
        """:meth:`reschedule` inside the caller's transaction ``conn``; rows reaching
        ``max_attempts`` die with ``reason``. Returns (rescheduled, dead)."""
        updated = conn.execute(
            "UPDATE events SET state = 'pending', lease_token = NULL,"
            " lease_expires_at = NULL, attempts = attempts + 1, next_attempt_at = ?,"
            " last_error = ?, first_failed_at = coalesce(first_failed_at, ?),"
            f" last_failed_at = ? WHERE {IN_IDS} AND lease_token = ?"
            " RETURNING id, attempts",
            (next_attempt_at, error[:1000], now, now, ids_json(ids), token),
        ).fetchall()
        dead_ids = []
        if max_attempts is not None:
            dead_ids = [row_id for row_id, attempts in updated if attempts >= max_attempts]
            self.kill(conn, dead_ids, None, now, reason, status, error)
        return len(updated) - len(dead_ids), len(dead_ids)

    @delivery_write()
    def stamp_request(
        self, token: str, ids: Sequence[int], request_id: str, created_at: str
    ) -> RequestStamp | None:
        """Count one more v1 request for rows held by ``token``; see
        :meth:`Spool.stamp_request`."""
        with self._db.write() as conn:
            stamped = conn.execute(
                f"UPDATE events SET {STAMP_SET} WHERE {IN_IDS} AND lease_token = ?"
                f" RETURNING {STAMP_RETURNING}",
                (request_id, created_at, ids_json(ids), token),
            ).fetchall()
            return stamped_identity(conn, token, ids, stamped, request_id, created_at)

    @delivery_write()
    def release(self, token: str, ids: Sequence[int] | None = None, unstamp: bool = False) -> int:
        """Give leased rows back, due now; see :meth:`Spool.release`."""
        with self._db.write() as conn:
            if unstamp:
                unstamp_rows(conn, token, ids)
            n = self._release(conn, token, ids)
            self.forget_lease(conn, token)
        return n

    @delivery_write()
    def unstamp(self, token: str, ids: Sequence[int], forget: bool = False) -> None:
        """Take back the request a claim stamped on rows ``token`` holds; see
        :meth:`Spool.unstamp`."""
        with self._db.write() as conn:
            unstamp_rows(conn, token, ids, forget)

    def _release(self, conn: sqlite3.Connection, token: str, ids: Sequence[int] | None) -> int:
        where = "lease_token = ?" if ids is None else f"{IN_IDS} AND lease_token = ?"
        params: tuple[Any, ...] = (token,) if ids is None else (ids_json(ids), token)
        n = int(
            conn.execute(
                f"UPDATE events SET state = 'pending', lease_token = NULL,"
                f" lease_expires_at = NULL WHERE {where}",
                params,
            ).rowcount
        )
        if n:
            self._due.reset()
        return n

    @delivery_write(frees=True)
    def dead_letter(
        self,
        token: str,
        ids: Sequence[int],
        now: float,
        reason: str,
        status: int | None = None,
        detail: str = "",
    ) -> int:
        """Dead-letter leased rows; see :meth:`Spool.dead_letter`."""
        with self._db.write() as conn:
            n = self.kill(conn, ids, token, now, reason, status, detail, tried=1)
            self.forget_lease(conn, token)
        return n

    def kill(
        self,
        conn: sqlite3.Connection,
        ids: Sequence[int],
        token: str | None,
        now: float,
        reason: str,
        status: int | None,
        detail: str,
        tried: int = 0,
    ) -> int:
        """Move rows ``ids`` (held by ``token``, or unleased when None) to dead_events;
        ``tried`` is 1 when a request that was not yet counted in ``attempts`` failed."""
        if not ids:
            return 0
        params: tuple[str, ...]
        if token is None:
            where, params = f"{IN_IDS} AND lease_token IS NULL", (ids_json(ids),)
        else:
            where, params = f"{IN_IDS} AND lease_token = ?", (ids_json(ids), token)
        n = int(
            conn.execute(
                "INSERT INTO dead_events (event_id, uuid, body, size, captured_at, attempts,"
                " reason, status, detail, first_failed_at, last_failed_at, dead_at, lane)"
                " SELECT id, uuid, body, size, captured_at, attempts + ?, ?, ?, ?,"
                f" coalesce(first_failed_at, ?), ?, ?, lane FROM events WHERE {where}",
                (tried, reason, status, detail[:1000], now, now, now, *params),
            ).rowcount
        )
        conn.execute(f"DELETE FROM events WHERE {where}", params)
        add_counter(conn, "dead", n)
        if n:
            log.warning("dead-lettered %d event(s): %s %s", n, reason, status or "")
        return n

    @delivery_write()
    def extend(self, token: str, expires_at: float) -> bool:
        """Extend a lease; see :meth:`Spool.extend`."""
        with self._db.write() as conn:
            n = conn.execute(
                "UPDATE leases SET expires_at = ? WHERE token = ?", (expires_at, token)
            ).rowcount
            conn.execute(
                "UPDATE events SET lease_expires_at = ? WHERE lease_token = ?",
                (expires_at, token),
            )
        return n > 0

    @delivery_write()
    def reclaim(self, now: float) -> int:
        """Take back abandoned leases; see :meth:`Spool.reclaim`."""
        # Rows that other processes gave back may lie behind the fresh-row
        # cursors; this runs every few seconds, so they wait at most that long.
        self._due.reset()
        self._db.follow_file()
        return self._db.guarded(lambda: self._reclaim(now))

    def _reclaim(self, now: float) -> int:
        with self._db.read() as conn:
            leases = conn.execute(
                "SELECT token, host, pid, pid_start, expires_at FROM leases"
            ).fetchall()
            orphans = conn.execute(
                "SELECT DISTINCT lease_token FROM events WHERE lease_token IS NOT NULL"
                " AND lease_expires_at <= ? AND lease_token NOT IN (SELECT token FROM leases)",
                (now,),
            ).fetchall()
        # Owner checks read /proc: done before the write transaction, not in it.
        owner_gone = {
            token
            for token, host, pid, start, expires_at in leases
            if expires_at > now and not owner_alive(Owner(host, pid, start))
        }
        candidates = [token for token, *_, expires_at in leases if expires_at <= now]
        candidates += [*owner_gone, *(token for (token,) in orphans)]
        if not candidates:
            return 0
        n = taken = 0
        with self._db.write() as conn:
            for token in candidates:
                row = conn.execute(
                    "SELECT expires_at FROM leases WHERE token = ?", (token,)
                ).fetchone()
                if row is not None and row[0] > now and token not in owner_gone:
                    continue  # extended since it was read: its owner is still at work
                n += self._release(conn, token, None)
                conn.execute("DELETE FROM leases WHERE token = ?", (token,))
                taken += 1
        if n:
            log.info("reclaimed %d event(s) from %d abandoned lease(s)", n, taken)
        return n

    def due(self, now: float, limit: int) -> tuple[int, float | None, int]:
        """What a claim would find due; see :meth:`Spool.due`. Also notices, at
        most once a second, a spool file deleted or replaced (``check_file``)."""
        self._db.check_file()
        rows = self._db.guarded(lambda: self._read_due(now, limit))
        if not rows:
            return 0, None, 0
        return len(rows), min(float(r[0]) for r in rows), max(int(r[1]) for r in rows)

    def _read_due(self, now: float, limit: int) -> list[Any]:
        with self._db.read() as conn:
            return self._due.peek(conn, now, limit, "next_attempt_at, attempts")
