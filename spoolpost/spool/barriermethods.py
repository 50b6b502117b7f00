"""The flush-barrier part of the :class:`~spoolpost.spool.Spool` facade: a
watermark, and what lies inside it (see docs/architecture.md, "The flush
barrier"). Counts take in what this process's read-only delivery settled in
memory (:mod:`spoolpost.spool.overlay`). Its SQL is in
:mod:`spoolpost.spool.queries` and :mod:`spoolpost.spool.overlay`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spoolpost.spool import overlay, queries
from spoolpost.spool.queries import Watermark

if TYPE_CHECKING:
    from spoolpost.spool.db import Database
    from spoolpost.spool.readonly import ReadOnlyLeases


class BarrierMethods:
    """Mixed into :class:`~spoolpost.spool.Spool`, which provides ``_db`` and
    ``_leases``."""

    _db: Database
    _leases: ReadOnlyLeases

    def watermark(self, now: float) -> Watermark:
        """A flush barrier: (newest event id, ``now``). The events "captured before"
        it are those with ``id <= wm[0]`` and ``captured_at <= wm[1]`` (ids are
        reused once the spool empties; the time tells those apart)."""
        return queries.watermark(self._db, now)

    def any_open_through(self, watermark: Watermark) -> bool:
        """True while an event inside ``watermark`` is pending or leased and not settled
        in this process's memory (overlay.py). O(log n), unlike :meth:`states_through`."""
        return self._leases.open_through(watermark)

    def dead_through(self, watermark: Watermark) -> int:
        """How many dead letters lie inside ``watermark`` (an index range count),
        with those this process's read-only delivery keeps in memory."""
        return overlay.dead_through(self._db, self._leases.outcomes(), watermark)

    def states_through(self, watermark: Watermark) -> dict[str, int]:
        """Counts by state (pending, leased, dead) of the events inside ``watermark``
        (a scan of the events table, in one read snapshot); a row settled in this
        process's memory counts as delivered (gone) or dead (see overlay.py)."""
        return overlay.states_through(self._db, self._leases.outcomes(), watermark)
