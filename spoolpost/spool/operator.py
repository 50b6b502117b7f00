"""Operators' views and repairs, as methods of :class:`~spoolpost.spool.Spool`.

:class:`OperatorMethods` is the part of the ``Spool`` facade that the ``spoolpost``
commands use: listing and tailing events, replaying and purging dead letters,
importing, "try now", and (from :class:`~spoolpost.spool.vacuum.VacuumMethods`) the
spool's size and ``compact``. Its SQL is in :mod:`spoolpost.spool.maintenance`.
A view runs in one read snapshot; ``replay``, ``purge`` and ``import`` run in
chunks of a few milliseconds each (:mod:`spoolpost.spool.chunks`), so that they
are safe beside running apps: each chunk commits on its own, and a rerun of a job
that was interrupted finishes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from spoolpost.spool import maintenance
from spoolpost.spool.chunks import Chunking
from spoolpost.spool.maintenance import Filter, KnownUuids, SpooledEvent
from spoolpost.spool.vacuum import VacuumMethods

if TYPE_CHECKING:
    from spoolpost.spool.db import Database
    from spoolpost.spool.queries import SpoolSnapshot


class OperatorMethods(VacuumMethods):
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

    def replay(
        self, where: Filter | None = None, *, now: float, chunking: Chunking | None = None
    ) -> int:
        """Move the dead letters matching ``where`` back to pending, due at ``now``,
        with ``attempts``, errors and the ``max_event_age`` clock reset (their
        ``captured_at`` becomes ``now``; the event's own timestamp is unchanged).
        Returns how many; counted as ``replayed``.

        The dead letters are chosen once, from one read snapshot; they are moved
        in chunks of a few milliseconds each (``chunking``, default
        :class:`~spoolpost.spool.chunks.Chunking`), each its own transaction. An
        interrupted replay leaves the chunks before it replayed and the rest
        dead: run it again. Raises :class:`SpoolLocked`."""
        with self._db.read(snapshot=True) as conn:
            ids = maintenance.dead_ids(conn, where or Filter(), now)
        return (chunking or Chunking()).run(
            self._db, ids, lambda conn, chunk: maintenance.replay(conn, chunk, now)
        )

    def purge(
        self, where: Filter | None = None, *, now: float, chunking: Chunking | None = None
    ) -> int:
        """Delete the dead letters matching ``where`` (chosen once, from one read
        snapshot), in chunks of a few milliseconds each as :meth:`replay`; return
        how many, counted as ``purged``. Raises :class:`SpoolLocked`."""
        with self._db.read(snapshot=True) as conn:
            ids = maintenance.dead_ids(conn, where or Filter(), now)
        return (chunking or Chunking()).run(self._db, ids, maintenance.purge)

    def import_events(
        self,
        events: Sequence[tuple[str, bytes]],
        *,
        now: float,
        chunking: Chunking | None = None,
    ) -> int:
        """Add encoded ``(uuid, body)`` events as pending, due at ``now``, in input
        order; uuids already in the spool in any state, or repeated, are skipped.
        ``max_spool_bytes``/``on_full`` do not apply. Returns how many were added,
        counted as ``imported``.

        The uuids already stored are read once (one read snapshot, no lock held);
        the events are written in chunks of a few milliseconds each (``chunking``,
        default :class:`~spoolpost.spool.chunks.Chunking`), each its own
        transaction, each skipping uuids written since by others too. An
        interrupted import leaves the chunks before it added; run again, it skips
        those by uuid and adds the rest. Raises :class:`SpoolLocked`."""
        with self._db.read(snapshot=True) as conn:
            known = KnownUuids(conn, [uuid for uuid, _ in events])
        return (chunking or Chunking()).run(
            self._db, events, lambda conn, chunk: maintenance.insert_new(conn, chunk, now, known)
        )

    def retry_now(self, now: float) -> int:
        """Make pending retries whose backoff is not over due at ``now`` (UTC
        seconds), keeping their attempts and errors: an operator's "try now".
        Returns how many. Raises :class:`SpoolLocked`."""
        with self._db.write() as conn:
            return maintenance.make_due(conn, now)
