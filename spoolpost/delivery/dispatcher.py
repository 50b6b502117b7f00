"""Dispatch: decide when a batch is due, claim it, hand it to a sender.

:class:`Dispatcher` owns the delivery policy of one process:

- :meth:`Dispatcher.step` does one unit of work at an explicit ``now`` and
  returns what it did (a :class:`Step`, saying why nothing was sent): reclaim
  abandoned leases, decide whether a batch is due (``flush_at``,
  ``flush_interval``, a flush), respect the endpoint gate and any pause
  (:mod:`spoolpost.delivery.health`), claim batches and hand them out.
- :meth:`Dispatcher.start` runs ``step`` in a dispatcher thread and hands the batches to
  ``senders`` sender threads through a ``queue.Queue``. Without :meth:`start`, ``step``
  sends inline, which is how the deterministic tests drive it
  (:meth:`Dispatcher.run_until_idle` steps until nothing more can be sent at one ``now``).
- :meth:`Dispatcher.flush` waits at a :class:`FlushBarrier` until everything
  captured before it is settled.

Each batch is settled by :mod:`spoolpost.delivery.settle`. Backoff never parks a sender
thread: a rescheduled row simply becomes due later. No exception ends a thread: it is
logged, the batch is rescheduled, and the thread goes on. :meth:`Dispatcher.stop` returns
by its deadline whatever a sender is blocked in. See docs/architecture.md, "Delivery policy".
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable

from spoolpost.clock import SYSTEM_CLOCK, Clock
from spoolpost.delivery.barrier import FlushBarrier, FlushResult
from spoolpost.delivery.config import (
    CHECKPOINT_EVERY,
    IDLE_POLL,
    RECLAIM_EVERY,
    DeliveryConfig,
    Step,
)
from spoolpost.delivery.health import EndpointHealth
from spoolpost.delivery.policy import PausePolicy, RetryPolicy
from spoolpost.delivery.settle import DeadHook, EpisodeHook, Settler
from spoolpost.delivery.threads import Threads
from spoolpost.delivery.transport import HttpTransport
from spoolpost.errors import ConfigError
from spoolpost.spool import Batch, Spool, Watermark
from spoolpost.spool.owner import current_owner

__all__ = ["DeliveryConfig", "Dispatcher", "FlushBarrier", "FlushResult", "Step"]

log = logging.getLogger("spoolpost")

_OLD = "older than max_event_age"  # the detail of an expired dead letter
#: Seconds between refreshes of the recorded last success while no episode changes.
RECORD_SUCCESS_EVERY = 60.0


class Dispatcher:
    """Delivery for one spool and one endpoint. See the module docstring.

    ``clock`` supplies ``now()`` for stored times and the waits of the threads.
    Thread-safe. :meth:`stop` releases batches not yet sent and joins the threads
    within its deadline; a request in flight past it is abandoned (its lease
    stays in the spool and expires, or is reclaimed once this process is gone).

    The endpoint gate, the pause and the poison detection are state of this
    object, i.e. of this process: a new dispatcher (a new client, a cron drain)
    sends at once. The per-event retry schedule lives in the spool and is shared.
    """

    def __init__(
        self,
        spool: Spool,
        transport: HttpTransport,
        *,
        config: DeliveryConfig | None = None,
        retry: RetryPolicy | None = None,
        pause: PausePolicy | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        for name, value, kind in (
            ("config", config, DeliveryConfig),
            ("retry", retry, RetryPolicy),
            ("pause", pause, PausePolicy),
        ):
            if value is not None and not isinstance(value, kind):
                hint = (
                    " (a tenacity strategy goes in its wait=)" if kind is not DeliveryConfig else ""
                )
                raise ConfigError(
                    f"{name} must be a {kind.__name__}, not {type(value).__name__}{hint}"
                )
        self.spool = spool
        self.transport = transport
        self.config = config or DeliveryConfig()
        self.retry = retry or RetryPolicy()
        self.pause_policy = pause or PausePolicy()
        self.clock = clock
        self._health = EndpointHealth(self.retry, self.pause_policy, transport.display_url)
        self._cond = threading.Condition()  # guards health, the settler's tallies, the rest
        self._flushes: Counter[Watermark] = Counter()
        self._next_reclaim = 0.0
        self._next_checkpoint = 0.0
        self._captured_hint = 0
        self._recorded: tuple[object, ...] | None = None
        self._recorded_success: float | None = None
        self._threads = Threads(spool, clock, self._cond, self.config.sender_count)
        self._on_dead: DeadHook | None = None
        self._on_episode: EpisodeHook | None = None
        self._settler = self._new_settler()

    def set_on_dead(self, hook: DeadHook | None, on_episode: EpisodeHook | None = None) -> None:
        """Call ``hook(rows, reason, detail)`` after rows are dead-lettered by a reply
        (``rejected``, ``too_large``, ``max_attempts``, in a sender thread) or by age
        at a claim (``expired``); and ``on_episode(kind, failure)`` once when an outage
        or a pause begins. Hooks must not raise or block."""
        self._on_dead, self._on_episode = hook, on_episode
        self._settler.on_dead, self._settler.on_episode = hook, on_episode
        expired = None if hook is None else (lambda rows: hook(rows, "expired", _OLD))
        self.spool.set_on_expired(expired)

    def _new_settler(self) -> Settler:
        settler = Settler(
            self.spool,
            self.transport,
            self.retry,
            self._health,
            lock=self._cond,
            stopping=self._threads.stopping,
            clock=self.clock,
            lease_ttl=self.config.lease_ttl,
        )
        settler.on_dead, settler.on_episode = self._on_dead, self._on_episode
        return settler

    # -- state seen by the client ---------------------------------------------------

    @property
    def paused_reason(self) -> str | None:
        """Why delivery is paused by a configuration fault (401/403/404/3xx), or None.

        Set from the first fault of an episode until a request gets through; the
        pause itself lasts until :attr:`paused_until`, then one probe batch is sent.
        """
        with self._cond:
            return self._health.paused_reason

    @property
    def paused_until(self) -> float:
        """When the current pause ends (UTC seconds); in the past when not paused."""
        with self._cond:
            return self._health.pause_until

    @property
    def gate_until(self) -> float:
        """When the endpoint gate opens for the next probe (UTC seconds); in the
        past when it is open."""
        with self._cond:
            return self._health.gate_until

    @property
    def gate_failure(self) -> str | None:
        """What last closed the endpoint gate (:meth:`EndpointHealth.gate_failure`)."""
        return self._health.gate_failure()  # two attribute reads, for display

    @property
    def requests_in_flight(self) -> int:
        """How many POSTs are under way right now (started, no reply yet)."""
        with self._cond:
            return len(self._settler.requests)

    @property
    def settled(self) -> int:
        """Events this dispatcher delivered or dead-lettered since it was made
        (not those of other processes)."""
        with self._cond:
            return self._settler.settled

    @property
    def running(self) -> bool:
        return self._threads.running

    @property
    def stopping(self) -> bool:
        """True once :meth:`halt` (or :meth:`stop`) was called, until :meth:`start`."""
        return self._threads.stopping.is_set()

    def notify_captured(self) -> None:
        """A hint from capture: wake the dispatcher once ``flush_at`` events arrived."""
        self._captured_hint += 1
        if self._captured_hint >= self.config.flush_at:
            self._captured_hint = 0
            self._threads.wake.set()

    def begin_flush(self, watermark: Watermark) -> None:
        """Send events inside ``watermark`` now, ignoring ``flush_at``/``flush_interval``."""
        with self._cond:
            self._flushes[watermark] += 1
        self._threads.wake.set()

    def end_flush(self, watermark: Watermark) -> None:
        with self._cond:
            self._flushes[watermark] -= 1
            if self._flushes[watermark] <= 0:
                del self._flushes[watermark]

    def flush(
        self,
        barrier: FlushBarrier,
        timeout: float,
        *,
        outage_after: int | None = None,
        progress: Callable[[int], None] | None = None,
        wait_past_timeout: bool = True,
    ) -> FlushResult:
        """Send every event inside ``barrier`` (:meth:`FlushBarrier.take`) now; wait
        up to ``timeout`` seconds; return what the flush came to
        (:meth:`FlushBarrier.result`).

        Returns when each is delivered or dead, when delivery is paused by a
        configuration fault (at once if a pause is in effect: ``paused`` says
        why), when ``outage_after`` transient failures in a row suggest an outage
        (for the cron drain), or at the timeout. ``progress(pending)`` is called
        on each check. Backoff and ``Retry-After`` are honoured; ``wait_past_timeout``
        False returns at once when the endpoint gate opens only after the timeout.
        Without started threads the sending happens inline, in this thread,
        driven by ``clock``.
        """
        watermark = barrier.watermark
        with self._cond:
            settled_at_start = self._settler.settled
        deadline = self.clock.monotonic() + max(0.0, timeout)
        outage: str | None = None
        timed_out = False
        self.begin_flush(watermark)
        try:
            while True:
                # O(log n) per wake-up; the exact (O(n)) count is taken once, at the end.
                still_open = self.spool.any_open_through(watermark)
                now = self.clock.now()
                self.record_health(now)
                with self._cond:
                    paused = self._health.paused_at(now)
                    if outage_after is not None:
                        outage = self._health.outage(outage_after)
                    settled = self._settler.settled - settled_at_start
                    by, held = self._health.blocked(now)
                if progress is not None:
                    progress(max(0, barrier.unsettled - settled) if still_open else 0)
                remaining = deadline - self.clock.monotonic()
                if not still_open or paused is not None or outage:
                    break
                if remaining <= 0 or (by == "gate" and held > remaining and not wait_past_timeout):
                    timed_out = True
                    break
                if self.running:
                    with self._cond:
                        self._cond.wait(min(remaining, 1.0))
                else:
                    step = self.step(now)
                    if step.batches == 0:
                        self.clock.sleep(min(step.wait or IDLE_POLL, remaining))
        finally:
            self.end_flush(watermark)
        return barrier.result(
            self.spool,
            open_left=still_open,
            paused=self.paused_reason,
            timed_out=timed_out,
            outage=outage,
        )

    def record_health(self, now: float) -> bool:
        """Store the endpoint's state (:meth:`EndpointHealth.record`) in the spool
        under ``endpoint:<host>:<pid>:<start>`` when an episode changed, or the last
        success is older than :data:`RECORD_SUCCESS_EVERY` in the record: one
        short write, outside any request and outside this object's lock, for
        ``spoolpost inspect`` in other processes (display only: the pause stays
        this process's). Returns True if it wrote. Never raises: a failed write is
        logged at DEBUG and tried again at the next call."""
        with self._cond:
            episode = self._health.episode()
            success = self._health.last_success_at
            if episode == self._recorded and (
                success is None or (self._recorded_success or 0.0) + RECORD_SUCCESS_EVERY > success
            ):
                return False
            if self._recorded is None and success is None and not any(episode):
                return False  # nothing happened yet: nothing to tell
            record = self._health.record()
        me = current_owner()
        record |= {
            "owner_host": me.host,
            "pid": me.pid,
            "start": me.start,
            "updated_at": now,
            "max_spool_bytes": self.spool.max_spool_bytes,
        }
        try:
            self.spool.save_endpoint_state(
                f"endpoint:{me.host}:{me.pid}:{me.start}", json.dumps(record, sort_keys=True)
            )
        except Exception:
            log.debug("could not record the endpoint state in the spool", exc_info=True)
            return False
        self._recorded, self._recorded_success = episode, success
        return True

    # -- one step ------------------------------------------------------------------

    def step(self, now: float) -> Step:
        """One unit of dispatch work at wall-clock ``now`` (UTC seconds).

        Without started threads one claimed batch is sent inline and settled
        before this returns, so a test or the cron drain can drive delivery step
        by step (see also :meth:`run_until_idle`).
        """
        self.record_health(now)
        reclaimed = 0
        if now >= self._next_reclaim:
            self._next_reclaim = now + min(RECLAIM_EVERY, self.config.lease_ttl / 4)
            reclaimed = self.spool.reclaim(now)
        with self._cond:
            blocked_by, blocked_for = self._health.blocked(now)
            if blocked_by:
                return Step(reclaimed=reclaimed, wait=blocked_for, blocked_by=blocked_by)
            threaded = self.running
            limit = self.config.sender_count if threaded else 1
            capacity = (1 if self._health.probing else limit) - self._threads.inflight
            if capacity <= 0:
                return Step(reclaimed=reclaimed, blocked_by="busy")
            flushing = bool(self._flushes)
        count, first_due_at, attempts = self.spool.due(now, self.config.flush_at)
        if count == 0:
            if self._threads.inflight == 0 and (pause := self.spool.give_back_space()):
                return Step(reclaimed=reclaimed, wait=pause, blocked_by="idle")  # see its doc
            next_due = self.spool.next_due_at()
            self._maybe_checkpoint(now)
            wait = None if next_due is None else max(0.0, next_due - now)
            return Step(reclaimed=reclaimed, wait=self._cap_wait(wait, now), blocked_by="idle")
        assert first_due_at is not None
        ripe_at = first_due_at + self.config.flush_interval
        if not (count >= self.config.flush_at or flushing or attempts > 0 or ripe_at <= now):
            return Step(reclaimed=reclaimed, wait=ripe_at - now, blocked_by="not_due")
        batches = 0
        while batches < capacity:
            batch = self.spool.claim(
                now,
                max_events=self.config.max_batch_size,
                max_bytes=self.config.max_batch_bytes,
                lease_ttl=self.config.lease_ttl,
                max_event_age=self.retry.max_event_age,
                stamp=self._settler.request_identity,
            )
            if batch is None:
                break
            batches += 1
            if threaded:
                self._threads.hand_out(batch)
            else:
                self.deliver(batch)
                break
        return Step(batches=batches, reclaimed=reclaimed, wait=0.0 if batches else None)

    def run_until_idle(self, now: float, max_steps: int = 100_000) -> int:
        """Inline only: :meth:`step` at ``now`` until a step sends nothing (all due
        events settled, or the gate or a pause blocks); return the batches sent.

        Raises ``RuntimeError`` while the threads run (they own the sending).
        """
        if self.running:
            raise RuntimeError("run_until_idle() drives an unstarted dispatcher; stop() first")
        sent = 0
        for _ in range(max_steps):
            done = self.step(now).batches
            if not done:
                break
            sent += done
        return sent

    def _cap_wait(self, wait: float | None, now: float) -> float:
        nxt = self._next_reclaim - now
        return max(0.0, nxt if wait is None else min(wait, nxt))

    def _maybe_checkpoint(self, now: float) -> None:
        if now >= self._next_checkpoint and self._threads.inflight == 0:
            self._next_checkpoint = now + CHECKPOINT_EVERY
            try:
                self.spool.checkpoint()
            except Exception:  # an idle-time nicety; never worth failing a step
                log.debug("WAL checkpoint skipped", exc_info=True)

    def deliver(self, batch: Batch) -> None:
        """Send one leased batch and settle every row of it, in this thread (see
        :meth:`Settler.deliver`). Never raises; a batch handed out before
        :meth:`halt`, a pause or the closing of the endpoint gate goes back to the
        spool unsent."""
        self._settler.deliver(batch)

    # -- threads -------------------------------------------------------------------

    def start(self) -> None:
        """Start the dispatcher thread and the sender threads (idempotent)."""
        if self.running:
            return
        if self._threads.pid != os.getpid():  # a forked child: nothing from the parent is ours
            self._after_fork()
        self._threads.start(self.step, self.deliver)

    def _after_fork(self) -> None:
        self._cond = threading.Condition()
        self._threads = Threads(self.spool, self.clock, self._cond, self.config.sender_count)
        self._flushes = Counter()
        self._settler = self._new_settler()  # its lock and requests were the parent's
        self.transport.reset()

    def halt(self) -> None:
        """Send nothing more: from now on no request is started (a request in
        flight is still settled); batches handed out go back to the spool.
        :meth:`stop` begins with this; :meth:`start` undoes it."""
        self._threads.halt()

    def stop(self, timeout: float) -> None:
        """Stop the threads within ``timeout`` seconds: batches not yet sent go back
        to the spool; a request still in flight at the deadline is abandoned (its
        sender thread settles it if it ever returns, or the lease expires).
        Returns by the deadline whatever the senders are blocked in (a hung
        server, a hung name resolution). Logs a WARNING only when requests are
        still in flight at the deadline (their events stay leased in the spool);
        threads that are merely idle or finishing up end on their own."""
        if not self.running:
            self.record_health(self.clock.now())
            return
        alive = self._threads.stop(timeout)
        with self._cond:
            busy = sorted(self._settler.requests.values())
            self._health.on_stop(self.clock.now(), len(busy))  # recorded for inspect
        self.record_health(self.clock.now())
        if busy:
            log.warning(
                "stop deadline reached with %d request(s) still in flight (%s) to %s; "
                "their events stay leased in the spool and are sent again once the "
                "lease ends or this process is gone",
                len(busy),
                ", ".join(busy),
                self.transport.display_url,
            )
        elif alive:
            log.debug("stop deadline reached; idle thread(s) %s end on their own", alive)
