"""What read-only delivery sent but could not write down, kept in memory until the
spool takes writes again (see docs/architecture.md, "Delivery from a read-only
spool").

:class:`Remembered` holds, per spool row (id and uuid, since ids are reused once a
spool empties): the rows an answer settled (delivered, or dead with its reason), and
the retries of rows whose send failed (attempts counted here, due time). Its size is
bounded (:data:`MAX_REMEMBERED` rows): past it nothing more is sent. Its ``front``
is a read position: every stored row up to it is settled here
(:func:`~spoolpost.spool.overlay.advance_front`). :func:`write_down` applies all of
it in one write transaction once writes work again. Not thread-safe: the caller holds
a lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from spoolpost.spool.leases import Row
from spoolpost.spool.sql import add_counter

#: Rows whose outcome read-only delivery may keep in memory (about 200 bytes each:
#: some 20 MiB at most, dead letters' details capped at 1000 characters); past it,
#: nothing more is sent until writes work again.
MAX_REMEMBERED = 100_000


class Dead(NamedTuple):
    """A row an answer (or its age) made dead: ``reason``, HTTP ``status``,
    ``detail``, when (``at``, UTC seconds) and the attempts to add (``tried``)."""

    uuid: str
    reason: str
    status: int | None
    detail: str
    at: float
    tried: int


class Front(NamedTuple):
    """The last row (``id``, ``uuid``) of the stored rows at the start of the events
    table whose outcome is all settled in memory; ``id`` 0: none."""

    id: int
    uuid: str


#: The front before any row is known settled.
NO_FRONT = Front(0, "")


class Retry(NamedTuple):
    """A row whose sends failed ``tries`` times in memory: due again at ``due_at``
    (UTC seconds); ``error`` and ``at``: the last failure."""

    uuid: str
    tries: int
    due_at: float
    error: str
    at: float


@dataclass
class Remembered:
    """Outcomes not written yet, by row id. ``delivered``: id → uuid; ``dead``: id
    → :class:`Dead`; ``retries``: id → :class:`Retry`; ``front``: see :class:`Front`."""

    delivered: dict[int, str] = field(default_factory=dict)
    dead: dict[int, Dead] = field(default_factory=dict)
    retries: dict[int, Retry] = field(default_factory=dict)
    front: Front = NO_FRONT

    def __len__(self) -> int:
        return len(self.delivered) + len(self.dead) + len(self.retries)

    @property
    def full(self) -> bool:
        """True once :data:`MAX_REMEMBERED` rows are kept."""
        return len(self) >= MAX_REMEMBERED

    def settled(self, row_id: int) -> bool:
        """True if the row's outcome is final (delivered or dead): never sent again."""
        return row_id in self.delivered or row_id in self.dead

    def settled_as(self, row_id: int, uuid: str) -> bool:
        """True if the stored row ``row_id`` holding ``uuid`` is settled here."""
        dead = self.dead.get(row_id)
        return self.delivered.get(row_id) == uuid or (dead is not None and dead.uuid == uuid)

    def summary(self) -> str:
        """How many rows are delivered, dead and retried, in words."""
        d, k, r = len(self.delivered), len(self.dead), len(self.retries)
        return f"{d} delivered, {k} dead and {r} retried"

    def outcomes(self) -> dict[int, tuple[str, bool]]:
        """A copy of the settled rows: id → (uuid, True if dead, False if delivered)."""
        found = {i: (u, False) for i, u in self.delivered.items()}
        return found | {i: (d.uuid, True) for i, d in self.dead.items()}

    def held_back(self, row_id: int, now: float) -> bool:
        """True if the row must not be sent at ``now``: settled, or a retry not due."""
        retry = self.retries.get(row_id)
        return self.settled(row_id) or (retry is not None and retry.due_at > now)

    def tries(self, row_id: int) -> int:
        """Failed sends of the row counted in memory (not in its stored attempts)."""
        retry = self.retries.get(row_id)
        return 0 if retry is None else retry.tries

    def kill(self, row_id: int, dead: Dead) -> None:
        self.retries.pop(row_id, None)
        self.dead[row_id] = dead

    def deliver_rows(self, rows: Sequence[Row]) -> int:
        """The answer delivered ``rows``; returns how many."""
        for r in rows:
            self.retries.pop(r.id, None)
            self.delivered[r.id] = r.uuid
        return len(rows)

    def kill_rows(
        self, rows: Sequence[Row], at: float, reason: str, status: int | None, detail: str
    ) -> int:
        """The answer at ``at`` made ``rows`` dead (an attempt counted); returns how many."""
        for r in rows:
            self.kill(r.id, Dead(r.uuid, reason, status, detail, at, self.tries(r.id) + 1))
        return len(rows)

    def retry_rows(
        self,
        rows: Sequence[Row],
        at: float,
        due_at: float,
        error: str,
        max_attempts: int | None,
        status: int | None,
        reason: str = "max_attempts",
    ) -> tuple[int, int]:
        """A failed send of ``rows`` (``Row.attempts``: stored attempts plus those
        in memory) at ``at``: due again at ``due_at``, dead with ``reason`` once
        ``max_attempts`` is reached. Returns (to retry, dead)."""
        dead = 0
        for r in rows:
            tries = self.tries(r.id) + 1
            self.retries[r.id] = Retry(r.uuid, tries, due_at, error[:1000], at)
            if max_attempts is not None and r.attempts + 1 >= max_attempts:
                self.kill(r.id, Dead(r.uuid, reason, status, error, at, tries))
                dead += 1
        return len(rows) - dead, dead


class Written(NamedTuple):
    """What :func:`write_down` wrote: rows ``delivered`` (deleted), ``dead`` and
    ``rescheduled``; rows no longer in the spool (by id and uuid) do not count."""

    delivered: int
    dead: int
    rescheduled: int


def write_down(conn: sqlite3.Connection, memory: Remembered, now: float) -> Written:
    """Apply ``memory`` in the caller's write transaction ``conn``: delete the
    delivered rows (counted ``delivered``), move the dead ones to ``dead_events``
    (counted ``dead``), and store the retries' attempts and due times. Rows are
    matched by id and uuid; a row another live process holds leased is rescheduled
    only once its lease expired."""
    delivered = conn.executemany(
        "DELETE FROM events WHERE id = ? AND uuid = ?", list(memory.delivered.items())
    ).rowcount
    add_counter(conn, "delivered", max(0, delivered))
    doomed = [
        (d.tried, d.reason, d.status, d.detail[:1000], d.at, d.at, d.at, row_id, d.uuid)
        for row_id, d in memory.dead.items()
    ]
    dead = conn.executemany(
        "INSERT INTO dead_events (event_id, uuid, body, size, captured_at, attempts,"
        " reason, status, detail, first_failed_at, last_failed_at, dead_at, lane)"
        " SELECT id, uuid, body, size, captured_at, attempts + ?, ?, ?, ?,"
        " coalesce(first_failed_at, ?), ?, ?, lane FROM events WHERE id = ? AND uuid = ?",
        doomed,
    ).rowcount
    conn.executemany(
        "DELETE FROM events WHERE id = ? AND uuid = ?",
        [(row_id, d.uuid) for row_id, d in memory.dead.items()],
    )
    add_counter(conn, "dead", max(0, dead))
    rescheduled = conn.executemany(
        "UPDATE events SET state = 'pending', lease_token = NULL, lease_expires_at = NULL,"
        " attempts = attempts + ?, next_attempt_at = ?, last_error = ?,"
        " first_failed_at = coalesce(first_failed_at, ?), last_failed_at = ?"
        " WHERE id = ? AND uuid = ? AND (state = 'pending' OR lease_expires_at <= ?)",
        [
            (r.tries, r.due_at, r.error, r.at, r.at, row_id, r.uuid, now)
            for row_id, r in memory.retries.items()
        ],
    ).rowcount
    return Written(max(0, delivered), max(0, dead), max(0, rescheduled))
