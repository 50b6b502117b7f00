"""Delivery: claim leased batches from the spool, POST them, settle the outcome.

:class:`Dispatcher` owns the delivery policy of one process:

- :meth:`Dispatcher.step` does one unit of work at an explicit ``now`` and
  returns what it did (a :class:`Step`): reclaim abandoned leases, decide
  whether a batch is due (``flush_at``, ``flush_interval``, a flush), respect
  the endpoint gate and any pause, claim batches and hand them out.
- :meth:`Dispatcher.start` runs ``step`` in a dispatcher thread and hands the
  batches to ``senders`` sender threads through a ``queue.Queue``. Without
  :meth:`start`, ``step`` sends inline, which is how the cron drain and the
  deterministic tests drive it (:meth:`Dispatcher.run_until_idle` steps until
  nothing more can be sent at one ``now``).

Outcomes follow DESIGN §5 through :mod:`spoolpost.delivery.policy`:

- 2xx → delete the rows.
- Transient (408/429/5xx, no response) → reschedule in the spool
  (``attempts += 1``, due after ``max(backoff, Retry-After)``; ``max_attempts``
  ends in the dead state) and close the endpoint gate: nothing is sent until
  the backoff is over, then one probe batch at a time until a request gets
  through. An outage costs about one request per backoff interval.
- 413/other 4xx → split in halves, recursively; a lone event is dead-lettered
  (``too_large``/``rejected``) with the status and a body excerpt.
- 401/403/404/3xx → give everything back and pause (growing pause, one ERROR
  per episode); :meth:`Dispatcher.flush` returns at once while paused.
- Poison: a batch holding events that failed twice, failing again while other
  requests get through, is halved until the event that makes the server fail
  is alone (two requests per halving; when both halves fail, it is an outage
  after all: three requests, then the gate).

Backoff never parks a sender thread: a rescheduled row simply becomes due
later. No exception ends a thread: it is logged, the batch is rescheduled, and
the thread goes on. :meth:`Dispatcher.stop` returns by its deadline whatever a
sender is blocked in.
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
from spoolpost.delivery.policy import Action, PausePolicy, RetryPolicy, classify, parse_retry_after
from spoolpost.delivery.transport import HttpTransport, Reply
from spoolpost.errors import ConfigError, SpoolClosed
from spoolpost.spool import Batch, Row, Spool, Watermark

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


RECLAIM_EVERY = 5.0
CHECKPOINT_EVERY = 60.0


IDLE_POLL = 0.05
#: Failed attempts after which an event is suspected of making the server fail, when
#: other requests get through (DESIGN §5, poison batches).
POISON_AFTER = 2
#: Failed attempts after which a batch that is probed alone is probed by halves.
STUCK_AFTER = 5  # seconds an inline flush waits when a step has nothing better to say


@dataclass(frozen=True)
class _Try:
    """One POST: the ``reply``, what it means (``action``), when it came (``at``,
    UTC seconds) and the gate ``epoch`` the request was sent in."""

    reply: Reply
    action: Action
    at: float
    epoch: int


def _halves(rows: Sequence[Row]) -> tuple[Sequence[Row], Sequence[Row]]:
    half = len(rows) // 2
    return rows[:half], rows[half:]


def _ids(rows: Sequence[Row]) -> list[int]:
    return [r.id for r in rows]


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
        self.spool = spool
        self.transport = transport
        self.config = config or DeliveryConfig()
        self.retry = retry or RetryPolicy()
        self.pause_policy = pause or PausePolicy()
        self.clock = clock
        self._cond = threading.Condition()
        self._inflight = 0  # batches handed to senders and not yet settled
        self._requests: dict[int, str] = {}  # thread id → name, while inside a POST
        # The endpoint gate: closed until _gate_until after a transient failure;
        # then one probe batch at a time (_probing) until a request gets through.
        self._gate_until = 0.0
        self._gate_failures = 0
        self._probing = False
        # Bumped whenever the gate closes or a pause begins: a success of a request
        # sent before that proves nothing about the endpoint now.
        self._epoch = 0
        self._pause_until = 0.0
        self._pause_faults = 0
        self._paused_reason: str | None = None
        self._last_success_at: float | None = None
        self._last_failure: str | None = None
        self._settled = 0  # events settled (delivered or dead) by this dispatcher
        self._flushes: Counter[Watermark] = Counter()
        self._next_reclaim = 0.0
        self._next_checkpoint = 0.0
        self._captured_hint = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()  # set by halt(): send nothing more
        self._queue: queue.Queue[Batch | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._pid = os.getpid()

    # -- state seen by the client ---------------------------------------------------

    @property
    def paused_reason(self) -> str | None:
        """Why delivery is paused by a configuration fault (401/403/404/3xx), or None.

        Set from the first fault of an episode until a request gets through; the
        pause itself lasts until :attr:`paused_until`, then one probe batch is sent.
        """
        with self._cond:
            return self._paused_reason

    @property
    def paused_until(self) -> float:
        """When the current pause ends (UTC seconds); in the past when not paused."""
        with self._cond:
            return self._pause_until

    @property
    def gate_until(self) -> float:
        """When the endpoint gate opens for the next probe (UTC seconds); in the
        past when it is open."""
        with self._cond:
            return self._gate_until

    @property
    def requests_in_flight(self) -> int:
        """How many POSTs are under way right now (started, no reply yet)."""
        with self._cond:
            return len(self._requests)

    @property
    def running(self) -> bool:
        return bool(self._threads) and self._pid == os.getpid()

    @property
    def stopping(self) -> bool:
        """True once :meth:`halt` (or :meth:`stop`) was called, until :meth:`start`."""
        return self._stopping.is_set()

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

        Returns when each is delivered or dead, when delivery is paused by a
        configuration fault (at once if a pause is in effect: ``paused`` says
        why), when ``outage_after`` transient failures in a row suggest an outage
        (for the cron drain), or at the timeout. ``progress(pending)`` is called
        on each check. ``before`` is ``spool.states_through(watermark)`` as it was
        when the caller's flush began. Backoff and ``Retry-After`` are honoured
        throughout. Without started threads the sending happens inline, in this
        thread, driven by ``clock``.
        """
        if before is None:
            before = self.spool.states_through(watermark)
        unsettled = before.get("pending", 0) + before.get("leased", 0)
        settled_at_start = self._settled
        deadline = self.clock.monotonic() + max(0.0, timeout)
        outage: str | None = None
        timed_out = False
        self.begin_flush(watermark)
        try:
            while True:
                # O(log n) per wake-up; the exact (O(n)) count is taken once, at the end.
                still_open = self.spool.any_open_through(watermark)
                now = self.clock.now()
                with self._cond:
                    paused = self._paused_reason if now < self._pause_until else None
                    if outage_after is not None and self._gate_failures >= outage_after:
                        outage = self._last_failure
                    settled = self._settled - settled_at_start
                if progress is not None:
                    progress(max(0, unsettled - settled) if still_open else 0)
                remaining = deadline - self.clock.monotonic()
                if not still_open or paused is not None or outage:
                    break
                if remaining <= 0:
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
        if still_open:
            states = self.spool.states_through(watermark)
            pending, dead_now = states["pending"] + states["leased"], states["dead"]
        else:
            pending, dead_now = 0, self.spool.dead_through(watermark)
        dead = dead_now - before.get("dead", 0)
        return FlushResult(
            delivered=max(0, unsettled - pending - dead),
            dead=dead,
            pending=pending,
            paused=self.paused_reason if pending else None,
            timed_out=timed_out,
            outage=outage,
        )

    # -- one step ------------------------------------------------------------------

    def step(self, now: float) -> Step:
        """One unit of dispatch work at wall-clock ``now`` (UTC seconds).

        Without started threads one claimed batch is sent inline and settled
        before this returns, so a test or the cron drain can drive delivery step
        by step (see also :meth:`run_until_idle`).
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
        if now >= self._next_checkpoint and self._inflight == 0:
            self._next_checkpoint = now + CHECKPOINT_EVERY
            try:
                self.spool.checkpoint()
            except Exception:  # an idle-time nicety; never worth failing a step
                log.debug("WAL checkpoint skipped", exc_info=True)

    # -- sending and settling -----------------------------------------------------

    def deliver(self, batch: Batch) -> None:
        """Send one leased batch and settle every row of it, in this thread.

        Never raises: an unexpected error is logged and the rows still held by the
        lease are rescheduled with backoff (an attempt is counted, so a batch that
        always breaks something here ends at ``max_attempts``/``max_event_age``
        instead of spinning). A batch handed out before :meth:`halt`, a pause or
        the closing of the endpoint gate goes back to the spool unsent.
        """
        try:
            now = self.clock.now()
            with self._cond:
                hold = now < self._pause_until or now < self._gate_until
                probing = self._probing
            if self._stopping.is_set() or hold:
                self.spool.release(batch.token)
                return
            rows = self._probe_rows(batch.rows) if probing else batch.rows
            if len(rows) < len(batch.rows):
                sent = {r.id for r in rows}
                self.spool.release(batch.token, [i for i in batch.ids if i not in sent])
            self._send(batch.token, rows)
        except SpoolClosed:
            log.info(
                "spool closed with %d event(s) in flight; they stay leased in the spool "
                "and are sent again once the lease ends",
                len(batch.rows),
            )
        except Exception as exc:
            log.exception(
                "delivering a batch of %d event(s) failed unexpectedly; they are "
                "rescheduled and delivery goes on",
                len(batch.rows),
            )
            self._reschedule_after_crash(batch, exc)

    def _reschedule_after_crash(self, batch: Batch, exc: Exception) -> None:
        now = self.clock.now()
        attempt = max(r.attempts for r in batch.rows) + 1
        try:
            self.spool.reschedule(
                batch.token,
                batch.ids,
                now,
                now + self.retry.backoff(attempt),
                f"internal error: {type(exc).__name__}: {exc}",
                self.retry.max_attempts,
            )
        except Exception:
            log.exception(
                "could not reschedule lease %s; its events are sent again once it expires",
                batch.token[:8],
            )

    def _post(self, rows: Sequence[Row]) -> _Try:
        me = threading.current_thread()
        with self._cond:
            epoch = self._epoch
            self._requests[me.ident or 0] = me.name
        try:
            reply = self.transport.post([r.body for r in rows], self.clock.now())
        finally:
            with self._cond:
                self._requests.pop(me.ident or 0, None)
        action = Action.RETRY if reply.status is None else classify(reply.status)
        return _Try(reply, action, self.clock.now(), epoch)

    def _send(self, token: str, rows: Sequence[Row]) -> Action:
        """POST ``rows`` (held by ``token``) and settle them; return what the reply meant."""
        attempt = self._post(rows)
        self._settle(token, rows, attempt)
        return attempt.action

    def _settle(self, token: str, rows: Sequence[Row], t: _Try) -> None:
        """Apply DESIGN §5 to ``rows`` for the reply ``t``."""
        ids = _ids(rows)
        if t.action is Action.DELIVERED:
            self._count_settled(self.spool.ack(token, ids))
            self._on_success(t)
        elif t.action is Action.PAUSE:
            self.spool.release(token, ids)
            self._on_config_fault(t)
        elif t.action is Action.RETRY:
            poisoned = self._looks_poisoned(rows, t.at)
            if poisoned and len(rows) > 1:
                self._isolate(token, rows, t)
                return
            self._retry_later(token, rows, t)
            if not poisoned:  # a lone event failing while others get through: not an outage
                self._on_transient(t)
        elif len(rows) > 1:
            self._split(token, rows, t.at)
        else:
            detail = t.reply.excerpt or t.reply.describe()
            self._count_settled(
                self.spool.dead_letter(token, ids, t.at, t.action.value, t.reply.status, detail)
            )
            self._on_success(t)  # the endpoint answered: it is up

    def _retry_later(self, token: str, rows: Sequence[Row], t: _Try) -> None:
        """Reschedule ``rows`` after ``max(backoff, Retry-After)``; those reaching
        ``max_attempts`` die (reason ``max_attempts``, with the status)."""
        retry_after = parse_retry_after(t.reply.retry_after, t.at)
        attempt = max(r.attempts for r in rows) + 1
        _, dead = self.spool.reschedule(
            token,
            _ids(rows),
            t.at,
            t.at + self.retry.delay(attempt, retry_after),
            t.reply.describe(),
            self.retry.max_attempts,
            status=t.reply.status,
        )
        self._count_settled(dead)

    def _count_settled(self, n: int) -> None:
        """Tally events this dispatcher delivered or dead-lettered (for progress)."""
        with self._cond:
            self._settled += n

    def _split(self, token: str, rows: Sequence[Row], now: float) -> None:
        """413/4xx for several events: send each half (recursively, so a bad event
        is isolated in about 2·log2(n) requests). Once a half meets endpoint
        trouble (a retry or a pause), or :meth:`halt` was called, the rest goes
        back to the spool unsent."""
        self.spool.extend(token, now + self.config.lease_ttl)
        first, second = _halves(rows)
        if self._stopping.is_set():
            self.spool.release(token, _ids(rows))
            return
        outcome = self._send(token, first)
        if outcome in (Action.RETRY, Action.PAUSE) or self._stopping.is_set():
            self.spool.release(token, _ids(second))
            return
        self._send(token, second)

    def _isolate(self, token: str, rows: Sequence[Row], t: _Try) -> None:
        """``rows`` failed transiently again (``t``) while other batches get through:
        find the event(s) that make the endpoint fail, so they cannot hold the
        rest back.

        Each round sends both halves (2 requests) and settles the half that
        passes; a half that fails is halved again. When both halves fail, the
        endpoint itself is in trouble: both are rescheduled and the gate closes
        (3 requests in all). A single event left failing is rescheduled on its
        own backoff, and logged.
        """
        while len(rows) > 1 and not self._stopping.is_set():
            self.spool.extend(token, t.at + self.config.lease_ttl)
            first, second = _halves(rows)
            a = self._post(first)
            if a.action is not Action.RETRY:
                self._settle(token, first, a)
                if a.action is Action.PAUSE or self._stopping.is_set():
                    self.spool.release(token, _ids(second))
                    return
                b = self._post(second)
                if b.action is not Action.RETRY:
                    self._settle(token, second, b)  # the failure went away
                    return
                rows, t = second, b
                continue
            if self._stopping.is_set():
                self._retry_later(token, first, a)
                self.spool.release(token, _ids(second))
                return
            b = self._post(second)
            if b.action is Action.RETRY:
                self._retry_later(token, first, a)
                self._retry_later(token, second, b)
                self._on_transient(b)
                return
            self._settle(token, second, b)
            if b.action is Action.PAUSE:
                self._retry_later(token, first, a)
                return
            rows, t = first, a
        self._retry_later(token, rows, t)
        if len(rows) == 1:
            log.warning(
                "event %s makes %s fail (%s) while other events get through; it is "
                "retried on its own schedule",
                rows[0].uuid,
                self.transport.display_url,
                t.reply.describe(),
            )

    @staticmethod
    def _probe_rows(rows: Sequence[Row]) -> Sequence[Row]:
        """The part of a claimed batch that probes a closed gate; the rest goes back
        to the spool unsent, so a probe is still one request.

        - Events that failed fewer than :data:`POISON_AFTER` times go first when
          the batch mixes them with events that did (retries are claimed first: a
          poison event would otherwise be in every probe, and no probe could
          succeed).
        - A batch made only of events that failed :data:`STUCK_AFTER` times or
          more is probed by its first half, so a poison event in a batch that
          nothing else ever joins cannot hold the others back. Costs one request
          more after a long outage.
        """
        fresher = [r for r in rows if r.attempts < POISON_AFTER]
        if 0 < len(fresher) < len(rows):
            return fresher
        if len(rows) > 1 and min(r.attempts for r in rows) >= STUCK_AFTER:
            return _halves(rows)[0]
        return rows

    def _looks_poisoned(self, rows: Sequence[Row], now: float) -> bool:
        """Rows of which one failed transiently at least twice before, while other
        requests got through lately (within ``2 * max_backoff``)."""
        with self._cond:
            last = self._last_success_at
        recent = last is not None and now - last <= 2 * self.retry.max_backoff
        return recent and max(r.attempts for r in rows) >= POISON_AFTER

    def _on_success(self, t: _Try) -> None:
        resumed = recovered = False
        with self._cond:
            self._last_success_at = t.at
            if t.epoch != self._epoch:
                return  # sent before the latest failure: says nothing about now
            recovered = self._gate_failures > 0
            resumed = self._paused_reason is not None
            self._probing = False
            self._gate_failures = 0
            self._paused_reason = None
            self._pause_faults = 0
        if resumed:
            log.warning(
                "delivery to %s resumed after a configuration fault", self.transport.display_url
            )
        elif recovered:
            log.info("delivery to %s recovered", self.transport.display_url)

    def _on_transient(self, t: _Try) -> None:
        """Close the endpoint gate for ``max(backoff, Retry-After)``; a failure of
        a request sent while it was already closed only extends it to the
        ``Retry-After`` it carries."""
        retry_after = parse_retry_after(t.reply.retry_after, t.at)
        with self._cond:
            self._last_failure = t.reply.describe()
            if t.at < self._gate_until:
                if retry_after is not None:
                    capped = min(retry_after, self.retry.max_retry_after)
                    self._gate_until = max(self._gate_until, t.at + capped)
                return
            self._gate_failures += 1
            self._epoch += 1
            failures = self._gate_failures
            wait = self.retry.delay(failures, retry_after)
            self._gate_until = t.at + wait
            self._probing = True
        log.log(
            logging.WARNING if failures == 1 else logging.DEBUG,
            "delivery to %s failed (%s, %d in a row); next attempt in %.1fs",
            self.transport.display_url,
            t.reply.describe(),
            failures,
            wait,
        )

    def _on_config_fault(self, t: _Try) -> None:
        """Pause delivery (growing pause); ERROR once per episode."""
        with self._cond:
            self._last_failure = t.reply.describe()
            if t.at < self._pause_until:
                return  # a request sent before the pause began
            self._pause_faults += 1
            self._epoch += 1
            pause = self.pause_policy.pause(self._pause_faults)
            self._pause_until = t.at + pause
            self._probing = True
            first = self._paused_reason is None
            self._paused_reason = f"{t.reply.describe()} from {self.transport.display_url}"
        if first:
            log.error(
                "delivery to %s paused: %s — a configuration fault (check host and "
                "api_key); events are kept in the spool and retried every %.0fs or more",
                self.transport.display_url,
                t.reply.describe(),
                pause,
            )
        else:
            log.debug("delivery still paused (%s); next probe in %.0fs", t.reply.describe(), pause)

    # -- threads -------------------------------------------------------------------

    def start(self) -> None:
        """Start the dispatcher thread and the sender threads (idempotent)."""
        if self.running:
            return
        if self._pid != os.getpid():  # a forked child: nothing from the parent is ours
            self._after_fork()
        self._stopping.clear()
        self._queue = queue.Queue()  # senders abandoned by an earlier stop() keep the old one
        names = ["spoolpost-dispatcher"] + [
            f"spoolpost-sender-{i}" for i in range(self.config.sender_count)
        ]
        self._threads = [threading.Thread(target=self._run, name=names[0], daemon=True)] + [
            threading.Thread(target=self._sender, args=(self._queue,), name=name, daemon=True)
            for name in names[1:]
        ]
        for thread in self._threads:
            thread.start()

    def _after_fork(self) -> None:
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._queue = queue.Queue()
        self._threads = []
        self._inflight = 0
        self._requests = {}
        self._flushes = Counter()
        self.transport.reset()
        self._pid = os.getpid()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            wait: float | None = 1.0
            try:
                wait = self.step(self.clock.now()).wait
            except SpoolClosed:
                return
            except Exception:
                log.exception("dispatcher step failed; going on")
            if wait == 0.0:
                continue
            self.clock.wait(self._wake, 5.0 if wait is None else min(wait, 5.0))

    def _sender(self, jobs: queue.Queue[Batch | None]) -> None:
        while True:
            batch = jobs.get()
            if batch is None:
                return
            try:
                self.deliver(batch)  # never raises
            finally:
                with self._cond:
                    self._inflight -= 1
                    self._cond.notify_all()
                self._wake.set()

    def halt(self) -> None:
        """Send nothing more: from now on no request is started (a request in
        flight is still settled); batches handed out go back to the spool.
        :meth:`stop` begins with this; :meth:`start` undoes it."""
        self._stopping.set()
        self._wake.set()

    def stop(self, timeout: float) -> None:
        """Stop the threads within ``timeout`` seconds: batches not yet sent go back
        to the spool; a request still in flight at the deadline is abandoned (its
        sender thread settles it if it ever returns, or the lease expires).
        Returns by the deadline whatever the senders are blocked in (a hung
        server, a hung name resolution). Logs a WARNING only when requests are
        still in flight at the deadline (their events stay leased in the spool);
        threads that are merely idle or finishing up end on their own."""
        if not self.running:
            return
        deadline = self.clock.monotonic() + max(0.0, timeout)
        self.halt()
        jobs = self._queue
        self._release_queued(jobs)
        for _ in range(self.config.sender_count):
            jobs.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - self.clock.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        with self._cond:
            busy = sorted(self._requests.values())
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
        self._release_queued(jobs)  # one the dispatcher thread queued as it stopped
        self._threads = []
        with self._cond:
            self._cond.notify_all()

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
                self.spool.release(batch.token)
            except Exception:
                log.exception("could not release lease %s; it will expire", batch.token[:8])
            with self._cond:
                self._inflight -= 1
        for _ in range(sentinels):
            jobs.put(None)
