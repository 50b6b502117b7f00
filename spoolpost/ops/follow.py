"""``tail -f``: poll a spool for events that arrive after the ones already shown.

:func:`follow` is a generator over what a reader sees at each poll, driven by an
injected ``sleep`` (which returns True to stop) so that tests step it without
waiting. An event is new when it was not in the previous poll's window (the
:data:`WINDOW` newest matching events) and it is no older than the newest one
seen so far, less :data:`SLACK` seconds (captures from other processes, whose
clocks differ a little): an old event that moves up into the window because
newer ones were delivered is not shown again. An event that is dead-lettered
comes back once more, as dead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from spoolpost.spool import Spool
from spoolpost.spool.maintenance import Filter, SpooledEvent

#: How many of the newest matching events each poll reads.
WINDOW = 1000
#: Seconds an arriving event may be older than the newest one already seen.
SLACK = 5.0


def _key(e: SpooledEvent) -> tuple[str, bool]:
    return e.uuid, e.state == "dead"


def follow(
    spool: Spool,
    where: Filter,
    *,
    limit: int,
    sleep: Callable[[], bool],
    now: Callable[[], float],
    max_polls: int | None = None,
) -> Iterator[SpooledEvent]:
    """The ``limit`` newest events matching ``where`` (oldest first), then each
    event that arrives, in the order it arrived, polling after every ``sleep()``
    until it returns True (stop) or ``max_polls`` polls after the first."""
    window = spool.tail(where, max(limit, WINDOW), now=now())
    yield from reversed(window[:limit])
    seen = {_key(e) for e in window}
    newest = max((e.recent_at for e in window), default=float("-inf"))
    polls = 0
    while (max_polls is None or polls < max_polls) and not sleep():
        polls += 1
        window = spool.tail(where, WINDOW, now=now())
        fresh = [e for e in window if _key(e) not in seen and e.recent_at >= newest - SLACK]
        yield from reversed(fresh)
        seen = {_key(e) for e in window}
        newest = max([newest, *(e.recent_at for e in window)])
