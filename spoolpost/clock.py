"""Time as a parameter.

Every wait in spoolpost goes through a :class:`Clock`, so tests can drive time
instead of sleeping. Wall-clock values stored in the spool come from
:meth:`Clock.now` (``time.time()``: UTC seconds since the epoch), which
time-machine can move; in-process deadlines use :meth:`Clock.monotonic`.
"""

from __future__ import annotations

import threading
import time


class Clock:
    """The real clock: ``time.time()``, ``time.monotonic()`` and real waits."""

    def now(self) -> float:
        """Wall-clock UTC seconds since the epoch; the only source of stored times."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; for in-process deadlines."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` (only where nothing can wake the caller earlier)."""
        time.sleep(max(0.0, seconds))

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: forever) for ``event``; True if it was set."""
        return event.wait(timeout)


SYSTEM_CLOCK = Clock()


class ManualClock(Clock):
    """A clock that moves only when told to: for tests and simulations.

    ``now()`` starts at ``start`` (default: the real ``time.time()`` at creation)
    and ``monotonic()`` at 0; :meth:`advance` moves both. :meth:`sleep` and a
    :meth:`wait` that is not satisfied at once advance time instead of blocking,
    so code driven step by step never really waits.
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._mono = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += seconds
            self._mono += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        if event.is_set():
            return True
        if timeout:
            self.advance(timeout)
        return event.is_set()
