"""Delivery from a spool that can be read but not written (see docs/architecture.md,
"Delivery from a read-only spool").

:class:`ReadOnlyLeases` is the :class:`~spoolpost.spool.leases.Leases` of a
:class:`~spoolpost.spool.Spool`. While writes work it is exactly that. When a claim,
a reclaim or a settle write is refused with the ``readonly`` disk condition
(:mod:`spoolpost.spool.conditions`), it goes on in memory:

- a claim reads due rows (pending, or leased under a lease that expired: another
  live process's lease is honoured) and hands them out under an in-memory token
  (``ro-…``), writing nothing;
- what each answer means (delivered, dead with its reason, a retry with its
  backoff) is kept in a :class:`~spoolpost.spool.remembered.Remembered`, by row id
  and uuid, so this process never sends a settled row again; past
  :data:`~spoolpost.spool.remembered.MAX_REMEMBERED` rows nothing more is sent
  (one WARNING);
- at most once per :data:`PROBE_EVERY` seconds a claim tries writing again: what
  is remembered is written down in one transaction, and a normal claim follows.

One WARNING when the mode starts (after the disk condition's ERROR), one INFO when
it ends. A crash before the write-down loses the memory only: the rows are sent
again with the same uuids (at-least-once).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from spoolpost.errors import SpoolpostError, SpoolUnwritable
from spoolpost.spool import overlay, queries
from spoolpost.spool.db import Database
from spoolpost.spool.leases import Batch, Leases, Row
from spoolpost.spool.remembered import MAX_REMEMBERED, Dead, Remembered, write_down
from spoolpost.spool.settlement import Settled, Settlement
from spoolpost.spool.sql import IN_IDS, ids_json
from spoolpost.spool.stamps import RequestStamp, Stamper

log = logging.getLogger("spoolpost")

#: Seconds (of the ``now`` passed in) between two tries at writing again.
PROBE_EVERY = 1.0
_PREFIX = "ro-"


def _readonly(exc: SpoolUnwritable) -> bool:
    return exc.condition == "readonly"


class ReadOnlyLeases(Leases):
    """Leases that go on in memory while the spool refuses writes; thread-safe."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._memory = Remembered()
        self._batches: dict[str, dict[int, Row]] = {}
        self._stamps: dict[str, RequestStamp] = {}
        self._lock = threading.RLock()
        self._active = False
        self._probe_at = 0.0
        self._told_full = False
        self._ro_cursor = 0

    @property
    def read_only(self) -> bool:
        """True while delivery goes on in memory (writes refused)."""
        return self._active

    @property
    def remembered(self) -> int:
        """Rows whose outcome is kept in memory, not written yet."""
        with self._lock:
            return len(self._memory)

    def outcomes(self) -> overlay.Outcomes:
        """A copy of the rows settled in memory (:meth:`Remembered.outcomes`)."""
        with self._lock:
            return self._memory.outcomes()

    def open_through(self, watermark: queries.Watermark) -> bool:
        """:meth:`Spool.any_open_through`, a row settled in memory counted settled."""
        with self._lock:
            if len(self._memory):
                return overlay.open_through(self._db, self._memory, watermark)
        return queries.any_open_through(self._db, watermark)

    def close(self) -> None:
        """Before the spool closes: write down what is remembered if writes work;
        else one WARNING saying what the next process sends again. Never raises."""
        with self._lock:
            memory = self._memory
            try:
                self._write_down(time.time())
            except SpoolpostError as exc:
                log.warning(
                    "spool %s: %s event(s) that read-only delivery kept in memory could not"
                    " be written down (%s); the next process sends them again (same uuids)",
                    self._db.path,
                    memory.summary(),
                    exc,
                )
                return
        self._leave()

    def _enter(self) -> None:
        with self._lock:
            if self._active:
                return
            self._active = True
            self._told_full = False
        log.warning(
            "spool %s: delivery goes on read-only: stored events are sent without a"
            " lease (leases of other processes are honoured) and what each answer means"
            " is kept in memory (up to %d events) until writes work again",
            self._db.path,
            MAX_REMEMBERED,
        )

    def _write_down(self, now: float) -> None:
        """Write what is remembered (one transaction); raises :class:`SpoolUnwritable`."""
        with self._lock:
            if not len(self._memory):
                return

            def write() -> None:
                with self._db.write() as conn:
                    written = write_down(conn, self._memory, now)
                log.info(
                    "spool %s takes writes again: wrote down %d delivered, %d dead and %d"
                    " retried event(s) that read-only delivery kept in memory",
                    self._db.path,
                    *written,
                )

            if self.space is None:
                write()
            else:
                self.space.run(write, frees=True)
            self._memory = Remembered()

    def _try_writing(self, now: float) -> None:
        """While outcomes are remembered, at most once per :data:`PROBE_EVERY` and
        not while rows are out under in-memory leases: write them down, and leave
        read-only delivery when that works."""
        if not len(self._memory) or self._batches or now < self._probe_at:
            return
        self._probe_at = now + PROBE_EVERY
        try:
            self._write_down(now)
        except SpoolUnwritable as exc:
            if not _readonly(exc):
                raise
            return
        self._leave()

    def _leave(self) -> None:
        with self._lock:
            was, self._active = self._active, False
        if was:
            log.info("spool %s: delivery leases again", self._db.path)

    # -- claim ---------------------------------------------------------------------

    def claim(self, /, now: float, **options: Any) -> Batch | None:
        """As :meth:`Leases.claim`; in memory while the spool refuses writes."""
        self._try_writing(now)
        probe = False
        if self._active and not self._batches and not len(self._memory):
            # Nothing to write down: a normal claim tells whether writes work.
            probe = now >= self._probe_at
        if not self._active or probe:
            self._probe_at = now + PROBE_EVERY
            try:
                batch = super().claim(now, **options)
            except SpoolUnwritable as exc:
                if not _readonly(exc):
                    raise
                self._due.reset()  # moved inside the transaction that failed
                self._enter()
            else:
                self._leave()
                return batch
        return self._claim_in_memory(now, **options)

    def _claim_in_memory(
        self,
        now: float,
        *,
        max_events: int,
        max_bytes: int,
        lease_ttl: float,
        max_event_age: float | None = None,
        owner: object = None,
        stamp: Stamper | None = None,
    ) -> Batch | None:
        died: list[Row] = []
        with self._lock:
            if self._memory.full:
                if not self._told_full:
                    self._told_full = True
                    log.warning(
                        "spool %s: read-only delivery keeps %d outcomes in memory; nothing"
                        " more is sent until writes work again",
                        self._db.path,
                        len(self._memory),
                    )
                return None
            found = self._db.guarded(lambda: self._pick(now, max_events, True))
            taken: list[Row] = []
            extra: tuple[Any, Any] = (None, None)
            total = 0
            for row_id, uuid, body, attempts, captured_at, rid, lane, created, sent in found:
                row = Row(row_id, uuid, bytes(body), attempts, captured_at, rid, lane)
                if max_event_age is not None and captured_at < now - max_event_age:
                    self._memory.kill(
                        row_id, Dead(uuid, "expired", None, "older than max_event_age", now, 0)
                    )
                    died.append(row)
                    continue
                if taken and ((rid, lane) != (taken[0].request_id, taken[0].lane)):
                    break
                if taken and total + len(row.body) > max_bytes:
                    break
                total += len(row.body)
                taken.append(row._replace(attempts=attempts + self._memory.tries(row_id)))
                extra = (created, sent)
            if taken:
                self._ro_cursor = taken[-1].id
        if died and self.on_expired is not None:
            self.on_expired(died)
        if not taken:
            return None
        token = _PREFIX + secrets.token_hex(12)
        request = None
        identity = None if stamp is None else stamp(taken[0].lane)
        if identity is not None:
            first = taken[0]
            if first.request_id is not None and extra[0] is not None:
                request = RequestStamp(first.request_id, extra[0], int(extra[1] or 0) + 1)
            else:
                request = RequestStamp(identity[0], identity[1], 1)
        with self._lock:
            self._batches[token] = {r.id: r for r in taken}
            if request is not None:
                self._stamps[token] = request
        return Batch(token, tuple(taken), now + lease_ttl, request)

    def _pick(self, now: float, limit: int, from_cursor: bool) -> list[Any]:
        """The rows that may be sent now (:func:`overlay.pick`), from the in-memory
        cursor on (``from_cursor``) or from the front; the caller holds the lock."""
        flying = {i for rows in self._batches.values() for i in rows}
        cursor = self._ro_cursor if from_cursor else 0
        with self._db.read() as conn:
            ids = overlay.pick(conn, self._memory, flying, cursor, now, limit)
            return overlay.fetch(conn, ids)

    def due(self, now: float, limit: int) -> tuple[int, float | None, int]:
        """As :meth:`Leases.due`; while read-only, what :meth:`claim` would find."""
        self._try_writing(now)
        if not self._active:
            return super().due(now, limit)
        self._db.check_file()
        with self._lock:
            rows = self._db.guarded(lambda: self._pick(now, limit, False))
            if not rows:
                return 0, None, 0
            tries = max(r[3] + self._memory.tries(r[0]) for r in rows)
        return len(rows), min(float(r[4]) for r in rows), tries

    def reclaim(self, now: float) -> int:
        """As :meth:`Leases.reclaim`; 0 while the spool refuses writes."""
        try:
            return super().reclaim(now)
        except SpoolUnwritable as exc:
            if not _readonly(exc):
                raise
            self._enter()
            return 0

    # -- settling --------------------------------------------------------------------

    def _rows(self, token: str, ids: Sequence[int], done: bool = True) -> list[Row]:
        """The rows ``token`` holds among ``ids`` (an in-memory lease's, or read from
        the spool by lease token); ``done``: they leave an in-memory lease."""
        with self._lock:
            held = self._batches.get(token)
            if held is not None:
                rows = [held[i] for i in ids if i in held]
                if done:
                    for r in rows:
                        del held[r.id]
                    if not held:
                        del self._batches[token]
                        self._stamps.pop(token, None)
                return rows
        with self._db.read() as conn:
            found = conn.execute(
                f"SELECT id, uuid, attempts, captured_at FROM events WHERE {IN_IDS}"
                " AND lease_token = ?",
                (ids_json(ids), token),
            ).fetchall()
        self._enter()
        return [Row(i, u, b"", a + self._memory.tries(i), c) for i, u, a, c in found]

    def _or_remember(self, token: str, write: Callable[[], Any]) -> Any:
        """``write()`` unless ``token`` is an in-memory lease; None when it must be
        remembered instead (the spool is read-only)."""
        if token.startswith(_PREFIX):
            return None
        try:
            return write()
        except SpoolUnwritable as exc:
            if not _readonly(exc):
                raise
            return None

    def ack(self, token: str, ids: Sequence[int]) -> int:
        """As :meth:`Leases.ack`; kept in memory while the spool refuses writes."""
        n = self._or_remember(token, lambda: Leases.ack(self, token, ids))
        if n is not None:
            return int(n)
        rows = self._rows(token, ids)
        with self._lock:
            return self._memory.deliver_rows(rows)

    def dead_letter(
        self,
        token: str,
        ids: Sequence[int],
        now: float,
        reason: str,
        status: int | None = None,
        detail: str = "",
    ) -> int:
        """As :meth:`Leases.dead_letter`; kept in memory while read-only."""
        n = self._or_remember(
            token, lambda: Leases.dead_letter(self, token, ids, now, reason, status, detail)
        )
        if n is not None:
            return int(n)
        rows = self._rows(token, ids)
        if rows:
            log.warning("dead-lettered %d event(s): %s %s", len(rows), reason, status or "")
        with self._lock:
            return self._memory.kill_rows(rows, now, reason, status, detail)

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
        """As :meth:`Leases.reschedule`; the retry is kept in memory while read-only."""
        done = self._or_remember(
            token,
            lambda: Leases.reschedule(
                self, token, ids, now, next_attempt_at, error, max_attempts, status
            ),
        )
        if done is not None:
            return (int(done[0]), int(done[1]))
        rows = self._rows(token, ids)
        with self._lock:
            return self._memory.retry_rows(rows, now, next_attempt_at, error, max_attempts, status)

    def settle_or_remember(
        self,
        token: str,
        settlement: Settlement,
        write: Callable[[], Settled],
        *,
        now: float,
        next_attempt_at: float,
        error: str,
        max_attempts: int | None,
        status: int | None,
    ) -> Settled:
        """``write()`` (the per-row settlement of :meth:`Spool.settle`), or the same
        outcomes kept in memory while the spool refuses writes."""
        done = self._or_remember(token, write)
        if done is not None:
            return done  # type: ignore[no-any-return]
        rescheduled = dead = 0
        doomed = {d.id: d for d in settlement.dead}
        rows = self._rows(token, [*settlement.delivered, *settlement.retried, *doomed])
        by_id = {r.id: r for r in rows}
        with self._lock:
            delivered = self._memory.deliver_rows(
                [by_id[i] for i in settlement.delivered if i in by_id]
            )
            for ids, reason, why in (
                (settlement.retry, "max_attempts", f"{error}: the server asked to retry"),
                (settlement.missing, "missing_result", f"{error}: no result for this event"),
            ):
                some = [by_id[i] for i in ids if i in by_id]
                r, d = self._memory.retry_rows(
                    some, now, next_attempt_at, why, max_attempts, status, reason
                )
                rescheduled, dead = rescheduled + r, dead + d
            for row_id, (_, reason, detail) in doomed.items():
                if row_id in by_id:
                    dead += self._memory.kill_rows([by_id[row_id]], now, reason, status, detail)
        return Settled(delivered, rescheduled, dead)

    def release(self, token: str, ids: Sequence[int] | None = None, unstamp: bool = False) -> int:
        """As :meth:`Leases.release`; an in-memory lease just lets its rows go."""
        if not token.startswith(_PREFIX):
            return super().release(token, ids, unstamp)
        with self._lock:
            held = self._batches.get(token, {})
            return len(self._rows(token, list(held) if ids is None else ids))

    def unstamp(self, token: str, ids: Sequence[int], forget: bool = False) -> None:
        """As :meth:`Leases.unstamp`; nothing to take back for an in-memory lease."""
        if not token.startswith(_PREFIX):
            super().unstamp(token, ids, forget)

    def extend(self, token: str, expires_at: float) -> bool:
        """As :meth:`Leases.extend`; an in-memory lease needs no extending."""
        if token.startswith(_PREFIX):
            return token in self._batches
        return super().extend(token, expires_at)

    def stamp_request(
        self, token: str, ids: Sequence[int], request_id: str, created_at: str
    ) -> RequestStamp | None:
        """As :meth:`Leases.stamp_request`; an in-memory lease's identity is kept in
        memory only (a retry after a restart is a new request)."""
        if not token.startswith(_PREFIX):
            return super().stamp_request(token, ids, request_id, created_at)
        with self._lock:
            if token not in self._batches:
                return None
            old = self._stamps.get(token)
            stamp = (
                RequestStamp(request_id, created_at, 1)
                if old is None
                else old._replace(attempt=old.attempt + 1)
            )
            self._stamps[token] = stamp
            return stamp
