"""The capture pipeline: one built event through ``before_send``, encoding, the size
check and into the spool, in the caller's thread (the capture hot path).

The client builds the event (:mod:`spoolpost.events.build`) and, once
:meth:`CapturePipeline.write` has committed it, tells delivery; everything in
between lives here.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from spoolpost.clock import Clock
from spoolpost.errors import EventTooLarge, SpoolUnwritable
from spoolpost.events.build import check_event
from spoolpost.events.encoding import encode_event

if TYPE_CHECKING:
    from spoolpost.spool import Spool

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "FILTERED_COUNT_EVERY",
    "BeforeSend",
    "CapturePipeline",
    "Outcome",
]

log = logging.getLogger("spoolpost")

#: Bytes one encoded event may take (``max_event_bytes``), 900 KiB.
DEFAULT_MAX_EVENT_BYTES = 900 * 1024
#: Seconds between writes of the ``filtered`` counter while ``before_send`` drops events.
FILTERED_COUNT_EVERY = 1.0

BeforeSend = Callable[[dict[str, Any]], "Mapping[str, Any] | None"]


class Outcome(enum.Enum):
    """What :meth:`CapturePipeline.store` did with one event."""

    STORED = "stored"  #: committed to the spool
    FILTERED = "filtered"  #: ``before_send`` returned None: the caller's choice, never an error
    DROPPED = "dropped"  #: the spool's ``on_full`` policy dropped it (counted as ``dropped``)


class CapturePipeline:
    """Filter, encode and commit built events to ``spool``.

    ``before_send``: the hook run on a copy of each event (None: no hook).
    ``max_event_bytes``: the largest encoded event accepted (the caller checks it is
    >= 1). ``clock``: paces the writes of the ``filtered`` counter.
    """

    def __init__(
        self,
        spool: Spool,
        *,
        before_send: BeforeSend | None,
        max_event_bytes: int,
        clock: Clock,
    ) -> None:
        self.spool = spool
        self.before_send = before_send
        self.max_event_bytes = max_event_bytes
        self.clock = clock
        #: True: values that cannot be encoded are written as null, each with a
        #: WARNING naming its path (posthog-python's behaviour; the drop-in sets it).
        self.null_unencodable = False
        #: Called with each event the spool's ``on_full`` policy dropped (the drop-in
        #: tells ``on_error``); in the capturing thread, so it must not block.
        self.on_dropped: Callable[[dict[str, Any]], None] | None = None
        self.after_fork_in_child()

    def after_fork_in_child(self) -> None:
        """(Re)create the counter's lock and zero the counter; also in a forked
        child, where another thread of the parent may have held the lock at the
        time of the fork (the parent still writes what it counted)."""
        self._filtered_lock = threading.Lock()
        self._filtered = 0  # before_send drops not yet added to the spool's counter
        self._filtered_due = 0.0  # monotonic time of the next counter write

    def write(self, event: dict[str, Any], now: float, lane: str | None = None) -> str | None:
        """Filter, encode and commit one built ``event`` captured at ``now`` (wall-clock
        seconds) on ``lane`` (None, or ``"ai"`` for ``capture_ai``). Returns its uuid
        once committed, or None when ``before_send`` or the spool's ``on_full``
        policy dropped it.

        Raises as :meth:`store` does; an ``on_full`` drop also goes to
        :attr:`on_dropped`.
        """
        outcome, stored = self.store(event, now, lane)
        if outcome is Outcome.STORED:
            uuid: str = stored["uuid"]
            return uuid
        if outcome is Outcome.DROPPED and self.on_dropped is not None:
            self.on_dropped(stored)
        return None

    def store(
        self, event: dict[str, Any], now: float, lane: str | None = None
    ) -> tuple[Outcome, dict[str, Any]]:
        """As :meth:`write`, returning the :class:`Outcome` and the event as
        ``before_send`` left it (``event`` itself when it was filtered).

        Raises :class:`~spoolpost.errors.EncodingError` (via
        :func:`~spoolpost.events.encoding.encode_event`),
        :class:`~spoolpost.errors.EventTooLarge` over ``max_event_bytes``, and what
        :meth:`~spoolpost.spool.Spool.append` raises. Nothing is written when it raises.
        """
        if self.before_send is not None:
            kept = self._run_before_send(event)
            if kept is None:
                self._count_filtered()
                return Outcome.FILTERED, event
            event = kept
        body = self._encode(event)
        if len(body) > self.max_event_bytes:
            raise EventTooLarge(len(body), self.max_event_bytes)
        if not self.spool.append(event["uuid"], body, now, lane):
            return Outcome.DROPPED, event
        return Outcome.STORED, event

    def _encode(self, event: dict[str, Any]) -> bytes:
        if not self.null_unencodable:
            return encode_event(event)
        nulls: list[str] = []
        body = encode_event(event, nulls=nulls)
        for path in nulls:
            log.warning(
                "event %s (%s): the value at %s cannot be encoded; sent as null",
                event.get("uuid"),
                event.get("event"),
                path,
            )
        return body

    def _run_before_send(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The hook's verdict on ``event``: the event to write, or None to drop it.

        The hook gets a copy of the event (and of its ``properties``; deeper values
        are shared). If it raises, or returns neither None nor a valid event (see
        :func:`~spoolpost.events.build.check_event`), an ERROR is logged and
        ``event`` is kept unmodified."""
        assert self.before_send is not None
        copy = dict(event)
        copy["properties"] = dict(event["properties"])
        try:
            changed: object = self.before_send(copy)
        except Exception:
            log.exception("before_send raised; the event %s is kept unmodified", event["uuid"])
            return event
        if changed is None:
            return None
        if not isinstance(changed, Mapping):
            log.error(
                "before_send returned a %s instead of an event dict or None; the event %s "
                "is kept unmodified",
                type(changed).__name__,
                event["uuid"],
            )
            return event
        try:
            return check_event(changed, event)
        except ValueError as exc:
            log.error(
                "before_send returned an invalid event (%s); the event %s is kept unmodified",
                exc,
                event["uuid"],
            )
            return event

    def _count_filtered(self) -> None:
        """Count a ``before_send`` drop; the spool's counter is written at most once
        per :data:`FILTERED_COUNT_EVERY` seconds, and by :meth:`save_filtered`."""
        with self._filtered_lock:
            self._filtered += 1
            due = self.clock.monotonic() >= self._filtered_due
        if due:
            self.save_filtered()

    def save_filtered(self) -> None:
        """Add the drops counted so far to the spool's ``filtered`` counter (the
        client calls it from flush and shutdown)."""
        with self._filtered_lock:
            n, self._filtered = self._filtered, 0
            self._filtered_due = self.clock.monotonic() + FILTERED_COUNT_EVERY
        if not n:
            return
        try:
            self.spool.add_counter("filtered", n)
        except SpoolUnwritable:  # a full or read-only disk: counted at a later flush
            with self._filtered_lock:
                self._filtered += n
