"""Operators' views and repairs, as methods of :class:`~spoolpost.spool.Spool`.

:class:`OperatorMethods` is the part of the ``Spool`` facade that the ``spoolpost``
commands use: listing and tailing events, replaying and purging dead letters,
importing, "try now". Its SQL is in :mod:`spoolpost.spool.maintenance`; each call
runs in one read snapshot or one short ``BEGIN IMMEDIATE`` write.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from spoolpost.spool import maintenance
from spoolpost.spool.maintenance import Filter, SpooledEvent

if TYPE_CHECKING:
    from spoolpost.spool.db import Database
    from spoolpost.spool.queries import SpoolSnapshot


class OperatorMethods:
    """Mixed into :class:`~spoolpost.spool.Spool`, which provides ``_db`` and
    :meth:`snapshot`."""

    _db: Database

    def snapshot(self) -> contextlib.AbstractContextManager[SpoolSnapshot]:
        raise NotImplementedError  # provided by Spool

    @property
    def switches(self) -> list[str]:
        """One line per file this spool object left for a new spool at its path
        (found damaged, deleted, moved or replaced), oldest first: what happened,
        what was carried over, what could not be read (the ERROR logged then)."""
        return list(self._db.switches)

    def events(self, where: Filter | None = None, *, now: float) -> Iterator[SpooledEvent]:
        """Every event matching ``where`` (None: all) at ``now`` (UTC seconds, for
        ``older_than``): live events in capture order, then dead letters in the
        order they died. Streams from one read snapshot on a private connection,
        held until the iterator is exhausted or closed; writers are never blocked.
        Raises :class:`SpoolClosed`."""
        with self.snapshot() as snap:
            yield from snap.events(where or Filter(), now)

    def tail(
        self, where: Filter | None = None, limit: int = 20, *, now: float
    ) -> list[SpooledEvent]:
        """The ``limit`` most recent events matching ``where``, newest first: live
        events by capture time, dead letters by the time they were dead-lettered.
        ``limit`` is a whole number (anything over 2**62 reads as 2**62). Raises
        ``TypeError`` for another type."""
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be a whole number, not {type(limit).__name__}")
        if limit < 1:
            return []
        limit = min(limit, 2**62)  # SQLite integers are 64-bit
        with self._db.read(snapshot=True) as conn:
            return maintenance.tail(conn, where or Filter(), limit, now)

    def count_dead(self, where: Filter | None = None, *, now: float) -> int:
        """How many dead letters match ``where`` (None: all)."""
        with self._db.read() as conn:
            return maintenance.count_dead(conn, where or Filter(), now)

    def replay(self, where: Filter | None = None, *, now: float) -> int:
        """Move the dead letters matching ``where`` back to pending, due at ``now``,
        with ``attempts``, errors and the ``max_event_age`` clock reset (their
        ``captured_at`` becomes ``now``; the event's own timestamp is unchanged).
        Returns how many; counted as ``replayed``. Raises :class:`SpoolLocked`."""
        with self._db.write() as conn:
            return maintenance.replay(conn, where or Filter(), now)

    def purge(self, where: Filter | None = None, *, now: float) -> int:
        """Delete the dead letters matching ``where``; return how many, counted as
        ``purged``. Raises :class:`SpoolLocked`."""
        with self._db.write() as conn:
            return maintenance.purge(conn, where or Filter(), now)

    def import_events(self, events: Sequence[tuple[str, bytes]], *, now: float) -> int:
        """Add encoded ``(uuid, body)`` events as pending, due at ``now``, in one
        transaction; uuids already in the spool in any state, or repeated, are
        skipped. ``max_spool_bytes``/``on_full`` do not apply. Returns how many
        were added, counted as ``imported``. Raises :class:`SpoolLocked`."""
        with self._db.write() as conn:
            return maintenance.insert_new(conn, events, now)

    def retry_now(self, now: float) -> int:
        """Make pending retries whose backoff is not over due at ``now`` (UTC
        seconds), keeping their attempts and errors: an operator's "try now".
        Returns how many. Raises :class:`SpoolLocked`."""
        with self._db.write() as conn:
            return maintenance.make_due(conn, now)
