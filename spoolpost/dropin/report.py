"""``on_error(error, events)`` off the caller's thread, and the count of lost events.

posthog-python calls ``on_error(error, batch)`` from its consumer threads when an
upload fails; here the same callback hears of events that could not be stored at
capture (:class:`EventsNotStored`), of batches the endpoint's replies
dead-lettered (:class:`EventsRejected`), of outage and pause episodes
(:class:`DeliveryInterrupted`) and of full-spool episodes, in which the spool's
``on_full`` policy drops events (:class:`~spoolpost.errors.SpoolFull`, once per
episode). All are told in one reporter thread, so a slow or raising callback never
delays a capture or a sender.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from spoolpost.errors import SpoolFull, SpoolpostError
from spoolpost.spool import Row

__all__ = [
    "LOST_COUNTER",
    "DeliveryInterrupted",
    "EventsNotStored",
    "EventsRejected",
    "OnError",
    "Reporter",
]

log = logging.getLogger("spoolpost")

#: posthog-python's callback shape: ``on_error(error, events)``, events a list of dicts.
OnError: TypeAlias = Callable[[Exception, list[dict[str, Any]]], Any]

#: The spool's persisted counter of captures a :class:`~spoolpost.Posthog` could not store.
LOST_COUNTER = "lost"


class EventsNotStored(SpoolpostError):
    """A capture call could not store its event; ``cause`` says why (also ``__cause__``)."""

    def __init__(self, method: str, cause: BaseException) -> None:
        super().__init__(f"{method}() stored nothing: {type(cause).__name__}: {cause}")
        self.method = method
        self.cause = cause


class EventsRejected(SpoolpostError):
    """A batch of events was dead-lettered: ``reason`` (``rejected``, ``too_large``,
    ``max_attempts``, ``expired``, v1's ``dropped``, ``limited``, …) and ``detail``
    (status and body excerpt)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"events dead-lettered ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


class DeliveryInterrupted(SpoolpostError):
    """Delivery stopped for a while: ``kind`` is ``outage`` (transient failures: 5xx,
    429, no answer; retried with backoff) or ``paused`` (a configuration fault:
    401/403/404/3xx); ``failure`` says what came back. Told once per episode, with no
    events: they stay in the spool and are sent once delivery resumes."""

    def __init__(self, kind: str, failure: str) -> None:
        super().__init__(f"delivery {kind}: {failure}; events are kept in the spool")
        self.kind = kind
        self.failure = failure


def row_events(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The stored events of ``rows`` as dicts (an unreadable body as ``{"uuid": …}``)."""
    events: list[dict[str, Any]] = []
    for row in rows:
        try:
            events.append(json.loads(row.body))
        except ValueError:
            events.append({"uuid": row.uuid})
    return events


#: Seconds the reporter thread waits for a report before it exits (a later report
#: starts a new one), so an idle client holds no thread.
IDLE_EXIT = 1.0

_STOP = object()


class Reporter:
    """Calls ``on_error`` (None: nobody listens) in a daemon thread, one report at a
    time, in the order reported. A callback that raises is logged and the thread goes
    on. The thread starts at a report (again in a forked child) and exits after
    :data:`IDLE_EXIT` seconds without one, or at :meth:`close` once the reports
    queued before it are told."""

    def __init__(self, on_error: OnError | None) -> None:
        self.on_error = on_error
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        #: True from an ``on_full`` drop until the spool's full episode is over.
        self.full_episode = False

    def report(self, error: Exception, events: list[dict[str, Any]]) -> None:
        """Queue ``on_error(error, events)``; returns at once."""
        if self.on_error is None:
            return
        with self._lock:
            self._queue.put((error, events))
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="spoolpost-on-error", daemon=True
                )
                self._thread.start()

    def dead(self, rows: Sequence[Row], reason: str, detail: str) -> None:
        """The dispatcher's ``on_dead`` hook: report a dead-lettered batch."""
        self.report(EventsRejected(reason, detail), row_events(rows))

    def episode(self, kind: str, failure: str) -> None:
        """The dispatcher's ``on_episode`` hook: report an outage or a pause once."""
        self.report(DeliveryInterrupted(kind, failure), [])

    def dropped(self, error: SpoolFull, event: dict[str, Any] | None) -> None:
        """An ``on_full`` policy dropped ``event`` (None: older events, not at hand):
        tell ``on_error(error, [event])`` (``[]`` for None)
        at the first drop of a full episode only (the drops are counted in the
        spool's ``dropped`` counter); the episode lasts until :meth:`stored`."""
        with self._lock:
            first, self.full_episode = not self.full_episode, True
        if first:
            self.report(error, [] if event is None else [event])

    def stored(self) -> None:
        """A capture call stored its event once the spool's full episode was over
        (:attr:`Spool.full <spoolpost.spool.Spool.full>`): the next drop is told again."""
        self.full_episode = False

    def close(self, timeout: float) -> None:
        """Let the thread tell what is queued and exit; wait up to ``timeout`` seconds
        for it (a callback still running then goes on in the daemon thread)."""
        with self._lock:
            thread = self._thread if self._pid == os.getpid() else None
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        callback = self.on_error
        assert callback is not None
        while True:
            try:
                item = self._queue.get(timeout=IDLE_EXIT)
            except queue.Empty:
                item = _STOP
            if item is _STOP:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            error, events = item
            try:
                callback(error, events)
            except Exception:
                log.exception("on_error raised; ignored")
