"""Delivery: claim leased batches from the spool, POST them, settle the outcome.

:class:`Dispatcher` owns the delivery policy of one process:

- :meth:`Dispatcher.step` does one unit of work at an explicit ``now`` and
  returns what it did (a :class:`Step`): reclaim abandoned leases, decide
  whether a batch is due (``flush_at``, ``flush_interval``, a flush), respect
  the endpoint gate and any pause, claim batches and hand them out.
- :meth:`Dispatcher.start` runs ``step`` in a dispatcher thread and hands the
  batches to ``senders`` sender threads through a ``queue.Queue``. Without
  :meth:`start`, ``step`` sends inline, which is how the cron drain and the
  deterministic tests drive it.

Outcomes follow DESIGN §5 through :mod:`spoolpost.policy`: delivered → delete;
transient → reschedule (``attempts += 1``, due after backoff/``Retry-After``)
and close the endpoint gate until one probe batch gets through; 413/4xx →
split to isolate, a lone event is dead-lettered; 401/403/404/3xx → release
everything and pause. Backoff never parks a sender thread: a rescheduled row
simply becomes due later.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from spoolpost.clock import SYSTEM_CLOCK, Clock
from spoolpost.errors import ConfigError
from spoolpost.policy import Action, PausePolicy, RetryPolicy, classify, parse_retry_after
from spoolpost.spool import Batch, Row, Spool, Watermark
from spoolpost.transport import HttpTransport, Reply

log = logging.getLogger("spoolpost")


def default_senders() -> int:
    """``min(cpu, 4)`` sender threads."""
    return max(1, min(os.cpu_count() or 1, 4))


@dataclass(frozen=True)
class DeliveryConfig:
    """When and how much to send.

    ``flush_at`` due events trigger a batch (default 100); so does the oldest due
    event reaching ``flush_interval`` seconds (default 5.0). A batch holds at
    most ``max_batch_size`` events (default 500) and ``max_batch_bytes`` bytes
    (default 5 MiB). ``lease_ttl`` (seconds, default 120) bounds how long a
    batch stays leased to a sender that went silent. ``senders`` threads
    (default ``min(cpu, 4)``).
    """

    flush_at: int = 100
    flush_interval: float = 5.0
    max_batch_size: int = 500
    max_batch_bytes: int = 5 * 1024 * 1024
    lease_ttl: float = 120.0
    senders: int = 0  # 0: default_senders()

    def __post_init__(self) -> None:
        if self.flush_at < 1 or self.max_batch_size < 1:
            raise ConfigError("flush_at and max_batch_size must be >= 1")
        if self.flush_interval < 0:
            raise ConfigError("flush_interval must be >= 0 seconds")
        if self.max_batch_bytes < 1024:
            raise ConfigError("max_batch_bytes must be >= 1024 bytes")
        if self.lease_ttl <= 0:
            raise ConfigError("lease_ttl must be > 0 seconds")
        if self.senders < 0:
            raise ConfigError("senders must be >= 0 (0 means min(cpu, 4))")

    @property
    def sender_count(self) -> int:
        return self.senders or default_senders()


@dataclass(frozen=True)
class Step:
    """What one :meth:`Dispatcher.step` did: ``batches`` handed out, ``reclaimed``
    events, and ``wait``: seconds until there is something to do (None: until woken)."""

    batches: int = 0
    reclaimed: int = 0
    wait: float | None = None
    blocked_by: str = ""  # "", "gate", "paused", "busy", "idle", "not_due"


@dataclass(frozen=True)
class FlushResult:
    """What a :meth:`Client.flush` came to, over the events captured before it.

    ``delivered`` and ``dead`` count what the flush settled; ``pending`` is what is
    still in the spool (not yet delivered, never lost); ``paused`` says why delivery
    is paused by a configuration fault (None if it is not); ``timed_out`` is True
    when the timeout ended the wait.
    """

    delivered: int = 0
    dead: int = 0
    pending: int = 0
    paused: str | None = None
    timed_out: bool = False
    outage: str | None = None

    @property
    def complete(self) -> bool:
        """True when nothing captured before the flush is still pending."""
        return self.pending == 0


RECLAIM_EVERY = 5.0
CHECKPOINT_EVERY = 60.0


class Dispatcher:
    """Delivery for one spool and one endpoint. See the module docstring.

    ``clock`` supplies ``now()`` for stored times and the waits of the threads.
    Thread-safe. :meth:`stop` releases batches not yet sent and joins the threads
    within its deadline; a request in flight past it is abandoned (its lease
    stays in the spool and expires, or is reclaimed once this process is gone).
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
        self.spool = spool
        self.transport = transport
        self.config = config or DeliveryConfig()
        self.retry = retry or RetryPolicy()
        self.pause_policy = pause or PausePolicy()
        self.clock = clock
        self._cond = threading.Condition()
        self._inflight = 0
        self._gate_until = 0.0
        self._gate_failures = 0
        self._probing = False
        self._pause_until = 0.0
        self._pause_faults = 0
        self._paused_reason: str | None = None
        self._last_success_at: float | None = None
        self._last_failure: str | None = None
        self._flushes: Counter[Watermark] = Counter()
        self._next_reclaim = 0.0
        self._next_checkpoint = 0.0
        self._captured_hint = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._halted = threading.Event()  # past the stop deadline: send nothing more
        self._queue: queue.Queue[Batch | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._pid = os.getpid()

    # -- state seen by the client ---------------------------------------------------

    @property
    def paused_reason(self) -> str | None:
        """Why delivery is paused (a configuration fault), or None."""
        with self._cond:
            return self._paused_reason

    @property
    def running(self) -> bool:
        return bool(self._threads) and self._pid == os.getpid()

    def notify_captured(self) -> None:
        """A hint from capture: wake the dispatcher once ``flush_at`` events arrived."""
        self._captured_hint += 1
        if self._captured_hint >= self.config.flush_at:
            self._captured_hint = 0
            self._wake.set()

    def begin_flush(self, watermark: Watermark) -> None:
        """Send events inside ``watermark`` now, ignoring ``flush_at``/``flush_interval``."""
        with self._cond:
            self._flushes[watermark] += 1
        self._wake.set()

    def end_flush(self, watermark: Watermark) -> None:
        with self._cond:
            self._flushes[watermark] -= 1
            if self._flushes[watermark] <= 0:
                del self._flushes[watermark]

    def flush(
        self,
        watermark: Watermark,
        timeout: float,
        before: dict[str, int] | None = None,
        *,
        outage_after: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> FlushResult:
        """Send every event inside ``watermark`` (:meth:`Spool.watermark`) now; wait
        up to ``timeout`` seconds.

        Returns when each is delivered or dead, when delivery is paused, when
        ``outage_after`` transient failures in a row suggest an outage (for the
        cron drain), or at the timeout. ``progress(pending)`` is called on each
        check. ``before`` is
        ``spool.states_through(watermark)`` as it was when the caller's flush began.
        Backoff and ``Retry-After`` are honoured throughout.
        """
        if before is None:
            before = self.spool.states_through(watermark)
        deadline = self.clock.monotonic() + max(0.0, timeout)
        outage: str | None = None
        self.begin_flush(watermark)
        try:
            while True:
                states = self.spool.states_through(watermark)
                pending = states.get("pending", 0) + states.get("leased", 0)
                with self._cond:
                    paused = self._paused_reason
                    if outage_after is not None and self._gate_failures >= outage_after:
                        outage = self._last_failure
                if progress is not None:
                    progress(pending)
                remaining = deadline - self.clock.monotonic()
                if pending == 0 or paused is not None or outage or remaining <= 0:
                    break
                if self.running:
                    with self._cond:
                        self._cond.wait(min(remaining, 1.0))
                else:
                    step = self.step(self.clock.now())
                    if step.batches == 0 and step.wait:
                        self.clock.sleep(min(step.wait, remaining))
        finally:
            self.end_flush(watermark)
        dead = states.get("dead", 0) - before.get("dead", 0)
        unsettled = before.get("pending", 0) + before.get("leased", 0)
        return FlushResult(
            delivered=max(0, unsettled - pending - dead),
            dead=dead,
            pending=pending,
            paused=paused,
            timed_out=pending > 0 and paused is None and outage is None,
            outage=outage,
        )

    # -- one step ------------------------------------------------------------------

    def step(self, now: float) -> Step:
        """One unit of dispatch work at wall-clock ``now`` (UTC seconds).

        Without started threads the claimed batches are sent inline before this
        returns, so a test or the cron drain can drive delivery step by step.
        """
        reclaimed = 0
        if now >= self._next_reclaim:
            self._next_reclaim = now + min(RECLAIM_EVERY, self.config.lease_ttl / 4)
            reclaimed = self.spool.reclaim(now)
        with self._cond:
            if now < self._pause_until:
                return Step(reclaimed=reclaimed, wait=self._pause_until - now, blocked_by="paused")
            if now < self._gate_until:
                return Step(reclaimed=reclaimed, wait=self._gate_until - now, blocked_by="gate")
            threaded = self.running
            limit = self.config.sender_count if threaded else 1
            capacity = (1 if self._probing else limit) - self._inflight
            if capacity <= 0:
                return Step(reclaimed=reclaimed, blocked_by="busy")
            flushing = bool(self._flushes)
        count, first_due_at, attempts = self.spool.due(now, self.config.flush_at)
        if count == 0:
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
            )
            if batch is None:
                break
            batches += 1
            if threaded:
                with self._cond:
                    self._inflight += 1
                self._queue.put(batch)
            else:
                self.deliver(batch)
                break
        return Step(batches=batches, reclaimed=reclaimed, wait=0.0 if batches else None)

    def _cap_wait(self, wait: float | None, now: float) -> float:
        nxt = self._next_reclaim - now
        return max(0.0, nxt if wait is None else min(wait, nxt))

    def _maybe_checkpoint(self, now: float) -> None:
        if now >= self._next_checkpoint and self._inflight == 0:
            self._next_checkpoint = now + CHECKPOINT_EVERY
            try:
                self.spool.checkpoint()
            except Exception:  # an idle-time nicety; never worth failing a step
                log.debug("WAL checkpoint skipped", exc_info=True)

    # -- sending and settling -----------------------------------------------------

    def deliver(self, batch: Batch) -> None:
        """Send one leased batch and settle every row of it (in this thread)."""
        if self._halted.is_set():
            self.spool.release(batch.token)
            return
        self._send(batch.token, list(batch.rows))

    def _send(self, token: str, rows: Sequence[Row]) -> None:
        reply = self.transport.post([r.body for r in rows], self.clock.now())
        now = self.clock.now()
        action = Action.RETRY if reply.status is None else classify(reply.status)
        ids = [r.id for r in rows]
        if action is Action.DELIVERED:
            self.spool.ack(token, ids)
            self._on_success(now)
        elif action is Action.PAUSE:
            self.spool.release(token, ids)
            self._on_config_fault(now, reply)
        elif action is Action.RETRY:
            if len(rows) > 1 and self._looks_poisoned(rows, now):
                self._split(token, rows, now)
                return
            retry_after = parse_retry_after(reply.retry_after, now)
            attempt = max(r.attempts for r in rows) + 1
            self.spool.reschedule(
                token,
                ids,
                now,
                now + self.retry.delay(attempt, retry_after),
                reply.describe(),
                self.retry.max_attempts,
            )
            self._on_transient(now, retry_after, reply)
        elif len(rows) > 1:
            self._split(token, rows, now)
        else:
            self.spool.dead_letter(
                token, ids, now, action.value, reply.status, reply.excerpt or reply.describe()
            )
            self._on_success(now)  # the endpoint answered: it is up

    def _split(self, token: str, rows: Sequence[Row], now: float) -> None:
        self.spool.extend(token, now + self.config.lease_ttl)
        half = len(rows) // 2
        for part in (rows[:half], rows[half:]):
            if self._halted.is_set():
                self.spool.release(token, [r.id for r in part])
            else:
                self._send(token, part)

    def _looks_poisoned(self, rows: Sequence[Row], now: float) -> bool:
        """A batch failing transiently again while other batches get through."""
        recent = self._last_success_at is not None and (
            now - self._last_success_at <= 2 * self.retry.max_backoff
        )
        return recent and min(r.attempts for r in rows) >= 2

    def _on_success(self, now: float) -> None:
        with self._cond:
            self._last_success_at = now
            self._probing = False
            self._gate_failures = 0
            if self._paused_reason is not None:
                log.warning("delivery resumed after a configuration fault")
                self._paused_reason = None
                self._pause_faults = 0

    def _on_transient(self, now: float, retry_after: float | None, reply: Reply) -> None:
        with self._cond:
            if self._probing or now >= self._gate_until:
                self._gate_failures += 1
                self._last_failure = reply.describe()
                wait = self.retry.delay(self._gate_failures, retry_after)
                self._gate_until = now + wait
                self._probing = True
                log.warning(
                    "delivery to %s failed (%s); retrying in %.1fs",
                    self.transport.url,
                    reply.describe(),
                    wait,
                )

    def _on_config_fault(self, now: float, reply: Reply) -> None:
        with self._cond:
            self._pause_faults += 1
            pause = self.pause_policy.pause(self._pause_faults)
            self._pause_until = now + pause
            self._probing = True
            if self._paused_reason is None:
                log.error(
                    "delivery to %s paused: %s — a configuration fault (check host and "
                    "api_key); events are kept in the spool and retried every %.0fs or more",
                    self.transport.url,
                    reply.describe(),
                    pause,
                )
            self._paused_reason = f"{reply.describe()} from {self.transport.url}"

    # -- threads -------------------------------------------------------------------

    def start(self) -> None:
        """Start the dispatcher thread and the sender threads (idempotent)."""
        if self.running:
            return
        if self._pid != os.getpid():  # a forked child: nothing from the parent is ours
            self._after_fork()
        self._stopping.clear()
        self._halted.clear()
        names = ["spoolpost-dispatcher"] + [
            f"spoolpost-sender-{i}" for i in range(self.config.sender_count)
        ]
        targets = [self._run] + [self._sender] * self.config.sender_count
        self._threads = [
            threading.Thread(target=t, name=n, daemon=True)
            for t, n in zip(targets, names, strict=True)
        ]
        for thread in self._threads:
            thread.start()

    def _after_fork(self) -> None:
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._halted = threading.Event()
        self._queue = queue.Queue()
        self._threads = []
        self._inflight = 0
        self._flushes = Counter()
        self.transport.reset()
        self._pid = os.getpid()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            wait: float | None = 1.0
            try:
                wait = self.step(self.clock.now()).wait
            except Exception:
                log.exception("dispatcher step failed; going on")
            if wait == 0.0:
                continue
            self.clock.wait(self._wake, 5.0 if wait is None else min(wait, 5.0))

    def _sender(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            try:
                if self._stopping.is_set() and self._halted.is_set():
                    self.spool.release(batch.token)
                else:
                    self.deliver(batch)
            except Exception:
                log.exception("sender failed on a batch of %d event(s); going on", len(batch.rows))
                self._release_quietly(batch.token)
            finally:
                with self._cond:
                    self._inflight -= 1
                    self._cond.notify_all()
                self._wake.set()

    def _release_quietly(self, token: str) -> None:
        try:
            self.spool.release(token)
        except Exception:
            log.exception("could not release lease %s; it will expire", token[:8])

    def stop(self, timeout: float) -> None:
        """Stop the threads within ``timeout`` seconds: batches not yet sent go back
        to the spool; a request still in flight at the deadline is abandoned."""
        if not self.running:
            return
        deadline = self.clock.monotonic() + max(0.0, timeout)
        self._stopping.set()
        self._halted.set()
        self._wake.set()
        self._drain_queue()
        for _ in range(self.config.sender_count):
            self._queue.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - self.clock.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning(
                "shutdown deadline reached with %d request(s) in flight; their events "
                "stay in the spool and are sent again later",
                len(alive),
            )
        self._drain_queue()
        self._threads = []
        with self._cond:
            self._cond.notify_all()

    def _drain_queue(self) -> None:
        while True:
            try:
                batch = self._queue.get_nowait()
            except queue.Empty:
                return
            if batch is not None:
                self._release_quietly(batch.token)
                with self._cond:
                    self._inflight -= 1
