"""A flush barrier: the events captured before a moment, and what a flush at it
came to.

:class:`FlushBarrier` is taken from the spool at ``now``: its watermark
(:meth:`Spool.watermark`) and how the events inside stood then (pending,
leased, dead). :meth:`Dispatcher.flush` waits at it, and
:meth:`FlushBarrier.result` turns the spool as it is afterwards into a
:class:`FlushResult`. ``Client.flush`` and the cron drain both take one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from spoolpost.errors import SpoolCorrupt
from spoolpost.spool import Spool, Watermark


@dataclass(frozen=True)
class FlushBarrier:
    """Everything captured into a spool up to a moment: ``watermark``, and
    ``before``, the counts by state (``pending``, ``leased``, ``dead``) of the
    events inside it when the barrier was taken."""

    watermark: Watermark
    before: Mapping[str, int]

    @classmethod
    def take(cls, spool: Spool, now: float) -> FlushBarrier:
        """The barrier at ``now`` (UTC seconds), counted at once: a scan of the
        spool (about 0.7 s per million events). Raises
        :class:`~spoolpost.errors.SpoolClosed`."""
        watermark = spool.watermark(now)
        return cls(watermark, spool.states_through(watermark))

    @classmethod
    def take_starting(
        cls, spool: Spool, now: float, start: Callable[[], None]
    ) -> FlushBarrier | None:
        """The barrier at ``now`` (UTC seconds), counted while delivery starts:
        ``start()`` (e.g. :meth:`Dispatcher.start`) is called with a snapshot of
        the spool pinned, and the counts are read on that snapshot, so the first
        request goes out at once and the counts are still exact as of ``now``.

        Returns None, without calling ``start``, when nothing captured up to
        ``now`` is left in the spool (an O(log n) check). A damaged page met while
        counting is handled by the spool (the file is quarantined, its readable
        rows carried over) and the counts are taken again there. Raises
        :class:`~spoolpost.errors.SpoolClosed`.
        """
        watermark = spool.watermark(now)
        if not spool.any_open_through(watermark):
            return None
        started = False
        try:
            with spool.snapshot() as pinned:
                start()
                started = True
                return cls(watermark, pinned.states_through(watermark))
        except SpoolCorrupt:
            # A damaged page: counted again through the spool, which quarantines
            # the file with its readable rows carried over (same ids where free).
            counts = spool.states_through(watermark)
            if not started:
                start()
            return cls(watermark, counts)

    @property
    def unsettled(self) -> int:
        """Events inside the barrier still to deliver when it was taken (pending
        or leased)."""
        return self.before.get("pending", 0) + self.before.get("leased", 0)

    def result(
        self,
        spool: Spool,
        *,
        open_left: bool = True,
        paused: str | None = None,
        timed_out: bool = False,
        outage: str | None = None,
    ) -> FlushResult:
        """What a flush at this barrier came to, from ``spool`` as it is now.

        ``open_left`` False says that :meth:`Spool.any_open_through` found
        nothing left (the exact O(n) count is then skipped). ``paused`` is
        reported only while events are left; ``timed_out`` and ``outage`` are
        passed through (see :class:`FlushResult`).
        """
        if open_left:
            states = spool.states_through(self.watermark)
            pending, dead_now = states["pending"] + states["leased"], states["dead"]
        else:
            pending, dead_now = 0, spool.dead_through(self.watermark)
        dead = dead_now - self.before.get("dead", 0)
        return FlushResult(
            delivered=max(0, self.unsettled - pending - dead),
            dead=dead,
            pending=pending,
            paused=paused if pending else None,
            timed_out=timed_out,
            outage=outage,
        )


@dataclass(frozen=True)
class FlushResult:
    """What one flush call came to, over the events captured before it (its
    watermark).

    The counts cover what **this call** settled, not what reached the server:

    - ``delivered``: events of the watermark that were still pending or leased
      when the call began and were delivered by the time it returned (by any
      sender of this process, or by another process).
    - ``dead``: events of the watermark dead-lettered while the call ran.
    - ``pending``: events of the watermark still in the spool when it returned
      (pending or leased: not delivered yet, never lost).

    Events the background senders had delivered before the call began are in
    no count. Capture 500 events, call ``flush()`` once the senders have sent
    310 of them, and it reports ``delivered=190`` although all 500 reached the
    server. To know whether everything captured before the call is out of the
    spool, read :attr:`complete`, not ``delivered``.

    ``paused`` says why delivery is paused by a configuration fault (None if it
    is not); ``timed_out`` is True when the timeout ended the wait; ``outage``
    is the last transient failure when a drain stopped on an outage (None
    otherwise).
    """

    delivered: int = 0
    dead: int = 0
    pending: int = 0
    paused: str | None = None
    timed_out: bool = False
    outage: str | None = None

    @property
    def complete(self) -> bool:
        """True when no event captured before the flush is left in the spool:
        each was delivered (by this call or earlier) or dead-lettered (see
        ``dead``, and ``spoolpost tail --state dead`` for older ones). False while
        ``pending`` > 0: after a timeout, a pause or an outage, or for a
        capture-only client."""
        return self.pending == 0
