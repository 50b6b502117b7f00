"""The threads that run a dispatcher: one loops its ``step``, the others send.

:class:`Threads` owns the dispatcher thread, the sender threads and the queue
between them; the :class:`~spoolpost.delivery.dispatcher.Dispatcher` owns what
they do (``step`` and ``deliver``). Tests and inline callers drive the
dispatcher without any of this.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable

from spoolpost.clock import Clock
from spoolpost.delivery.config import Step
from spoolpost.errors import SpoolClosed, SpoolpostError, SpoolUnwritable
from spoolpost.spool import Batch, Spool

log = logging.getLogger("spoolpost")

#: Longest wait (seconds) of the dispatcher thread between two steps.
MAX_STEP_WAIT = 5.0


class Threads:
    """One dispatcher thread looping ``step`` and ``senders`` sender threads
    calling ``deliver`` on the batches handed out with :meth:`hand_out`.

    ``lock`` is the dispatcher's; it guards :attr:`inflight` (batches handed out
    and not yet settled) and is notified whenever a batch is settled or the
    threads stop. :attr:`wake` set wakes the dispatcher thread before its wait is
    over; :attr:`stopping` set means send nothing more. Batches still queued when
    the threads stop go back to ``spool``. Belongs to the process that made it
    (:attr:`pid`): a forked child makes its own.
    """

    def __init__(self, spool: Spool, clock: Clock, lock: threading.Condition, senders: int) -> None:
        self.spool = spool
        self.clock = clock
        self.lock = lock
        self.senders = senders
        self.inflight = 0
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.pid = os.getpid()
        self._queue: queue.Queue[Batch | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    @property
    def running(self) -> bool:
        """True while the threads of this process run (False in a forked child)."""
        return bool(self._threads) and self.pid == os.getpid()

    def start(self, step: Callable[[float], Step], deliver: Callable[[Batch], None]) -> None:
        """Start the dispatcher thread (``step(now)`` in a loop) and the sender
        threads (``deliver(batch)``, which must never raise)."""
        self.stopping.clear()
        self._queue = queue.Queue()  # senders abandoned by an earlier stop() keep the old one
        self._threads = [
            threading.Thread(target=self._run, args=(step,), name="spoolpost-dispatcher")
        ]
        self._threads += [
            threading.Thread(
                target=self._sender, args=(self._queue, deliver), name=f"spoolpost-sender-{i}"
            )
            for i in range(self.senders)
        ]
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def hand_out(self, batch: Batch) -> None:
        """Queue ``batch`` for the next free sender thread."""
        with self.lock:
            self.inflight += 1
        self._queue.put(batch)

    def _run(self, step: Callable[[float], Step]) -> None:
        failures = 0  # steps in a row that failed with a spoolpost error
        while not self.stopping.is_set():
            self.wake.clear()
            wait: float | None = 1.0
            try:
                wait = step(self.clock.now()).wait
            except SpoolClosed:
                return
            except SpoolpostError as exc:  # e.g. a spool that stays damaged: no spinning
                failures += 1
                # A full or unwritable disk is logged once per episode by the spool.
                if failures == 1 and not isinstance(exc, SpoolUnwritable):
                    log.error("delivery step failed: %s; retrying with backoff", exc)
                wait = min(MAX_STEP_WAIT, 0.5 * 2**failures)
            except Exception:
                log.exception("dispatcher step failed; going on")
            else:
                if failures:
                    log.warning("delivery steps work again after %d failure(s)", failures)
                    failures = 0
            if wait == 0.0:
                continue
            timeout = MAX_STEP_WAIT if wait is None else min(wait, MAX_STEP_WAIT)
            self.clock.wait(self.wake, timeout)

    def _sender(self, jobs: queue.Queue[Batch | None], deliver: Callable[[Batch], None]) -> None:
        while True:
            batch = jobs.get()
            if batch is None:
                return
            try:
                deliver(batch)  # never raises
            finally:
                with self.lock:
                    self.inflight -= 1
                    self.lock.notify_all()
                self.wake.set()

    def halt(self) -> None:
        """Send nothing more (see :meth:`Dispatcher.halt`)."""
        self.stopping.set()
        self.wake.set()

    def stop(self, timeout: float) -> list[str]:
        """Halt, give back the queued batches and join the threads within
        ``timeout`` seconds; return the names of those still alive at the deadline
        (blocked in a request, or idle and about to end on their own)."""
        deadline = self.clock.monotonic() + max(0.0, timeout)
        self.halt()
        jobs = self._queue
        self._release_queued(jobs)
        for _ in range(self.senders):
            jobs.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - self.clock.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        self._release_queued(jobs)  # one the dispatcher thread queued as it stopped
        self._threads = []
        with self.lock:
            self.lock.notify_all()
        return alive

    def _release_queued(self, jobs: queue.Queue[Batch | None]) -> None:
        """Give back every batch waiting in ``jobs``; the stop sentinels stay."""
        sentinels = 0
        while True:
            try:
                batch = jobs.get_nowait()
            except queue.Empty:
                break
            if batch is None:
                sentinels += 1
                continue
            try:
                self.spool.release(batch.token, unstamp=batch.stamp is not None)
            except Exception:
                log.exception("could not release lease %s; it will expire", batch.token[:8])
            with self.lock:
                self.inflight -= 1
        for _ in range(sentinels):
            jobs.put(None)
