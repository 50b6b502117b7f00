"""Deliver a spool from outside the app that captured into it: ``spoolpost drain``.

:func:`drain_spool` sends what was in the spool when it started until none is
left, a time budget runs out, the endpoint is down or delivery is paused, and
:func:`drain_exit_code` turns its result into the exit code cron reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from spoolpost.client import key_fingerprint
from spoolpost.clock import SYSTEM_CLOCK, Clock
from spoolpost.delivery.barrier import FlushBarrier, FlushResult
from spoolpost.delivery.dispatcher import DeliveryConfig, Dispatcher
from spoolpost.delivery.hosts import canonical_host
from spoolpost.delivery.policy import RetryPolicy
from spoolpost.delivery.transport import DEFAULT_HOST, HttpTransport
from spoolpost.spool import Spool
from spoolpost.spool.vacuum import STEP_PAUSE

log = logging.getLogger("spoolpost")

#: ``spoolpost drain`` exit codes, for cron.
EXIT_EMPTY = 0
EXIT_ERROR = 1
EXIT_REMAIN = 3
EXIT_OUTAGE = 4
EXIT_PAUSED = 5
EXIT_DEAD = 6
#: The spool was damaged: its file was set aside and what could be read carried
#: into a new spool at the same path (delivered as far as the run went).
EXIT_DAMAGED = 7


@dataclass(frozen=True)
class DrainResult(FlushResult):
    """A :class:`FlushResult` whose counts are this run's own (events another
    process delivered meanwhile are not counted), plus, when nothing could
    become due within its budget (before it started, or once a failure's
    backoff or ``Retry-After`` closed the endpoint gate past the budget's end),
    ``waiting_until`` (UTC seconds: when the first event becomes due, or the
    gate opens) and ``waiting_for`` (why: the last error stored with it and its
    ``Retry-After``, or a lease held by another process); ``damaged``: one line
    per spool file this run found damaged (set aside as
    ``<spool>.corrupt-<time>``, its readable rows carried into a new spool at the
    same path, and what could not be read), as :attr:`Spool.switches` says."""

    waiting_until: float | None = None
    waiting_for: str | None = None
    damaged: tuple[str, ...] = ()


def drain_host(spool: Spool, host: str | None) -> str:
    """The endpoint a drain of ``spool`` delivers to: ``host`` if given, else the
    one the spool recorded (:meth:`Spool.bind_host`), else :data:`DEFAULT_HOST`."""
    if host:
        return host
    return spool.meta().get("ingestion_host") or DEFAULT_HOST


# -- delivering ---------------------------------------------------------------------------


class DrainInterrupted(KeyboardInterrupt):
    """Raised by :func:`drain_spool` when a ``KeyboardInterrupt`` (raised by its
    ``progress`` callback, its safe point) stopped it; ``result`` is the drain's
    :class:`FlushResult` once delivery stopped."""

    def __init__(self, result: FlushResult) -> None:
        super().__init__()
        self.result = result


#: Delivery settings of a backlog drain: send at once, and bigger batches than an
#: app's (fewer requests and transactions per event; ``max_batch_bytes`` still
#: bounds a request at 5 MiB). Measured in BENCHMARKS.md (proposal H).
DRAIN_CONFIG = DeliveryConfig(flush_interval=0.0, max_batch_size=2000)


def drain_spool(
    spool: Spool,
    transport: HttpTransport,
    *,
    budget: float | None = None,
    outage_after: int = 3,
    force_key: bool = False,
    force_host: bool = False,
    retry_now: bool = False,
    grace: float = 5.0,
    config: DeliveryConfig | None = None,
    retry: RetryPolicy | None = None,
    progress: Callable[[int, int], None] | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> DrainResult:
    """Deliver every event in ``spool`` captured before the call.

    Stops when none is pending, at ``budget`` seconds (None: no limit), after
    ``outage_after`` transient failures in a row (an outage), or when a
    configuration fault (401/403/404/3xx) pauses delivery. Then waits up to
    ``grace`` seconds for requests in flight; any still in flight are abandoned
    (their events stay leased to this process and are reclaimed as soon as it is
    gone). Backoff and ``Retry-After`` are honoured. ``progress(total, pending)``
    is called as delivery goes; a ``KeyboardInterrupt`` it raises stops the drain
    (within ``grace``) and becomes :class:`DrainInterrupted` carrying the result.
    ``clock`` supplies the time of the barrier (what "before the call" means)
    and the waits. Returns a :class:`DrainResult` counting what this run settled.

    When no event can become due within ``budget`` (every pending one waits for
    a stored backoff or ``Retry-After`` past it), it returns at once without
    starting a thread, with ``waiting_until`` and ``waiting_for`` set. So it
    does when a reply met while draining (a 429 or 503 with ``Retry-After``)
    closes the endpoint gate past the budget's end: it stops at once (requests
    in flight get ``grace``) instead of idling until the budget is spent.
    ``retry_now`` first makes stored retries due now (:meth:`Spool.retry_now`):
    this run tries at once, ignoring stored backoff.

    Raises :class:`~spoolpost.errors.KeyMismatch` if the spool belongs to another
    API key (unless ``force_key``), :class:`~spoolpost.errors.HostMismatch` if it
    delivers to another endpoint than ``transport``'s (unless ``force_host``;
    the first drain records it), :class:`~spoolpost.errors.SpoolLocked`.
    """
    spool.bind_key(key_fingerprint(transport.api_key), force=force_key)
    spool.bind_host(canonical_host(transport.host), force=force_host)
    now = clock.now()
    ends_at = None if budget is None else now + budget  # UTC seconds
    if retry_now:
        spool.retry_now(now)
    elif budget is not None:
        due = spool.earliest_due(now)
        if due is not None and due[0] > now + budget:
            states = spool.states_through(spool.watermark(now))
            return DrainResult(
                pending=states["pending"] + states["leased"],
                timed_out=True,
                waiting_until=due[0],
                waiting_for=due[1],
                damaged=tuple(spool.switches),
            )
    dispatcher = Dispatcher(
        spool, transport, config=config or DRAIN_CONFIG, retry=retry, clock=clock
    )
    # The exact count of what is to be sent is a scan of the spool (~0.7 s per
    # million events): it reads a snapshot pinned before the senders start, so
    # the first request goes out at once and the count is still exact.
    interrupted = False
    try:
        barrier = FlushBarrier.take_starting(spool, clock.now(), dispatcher.start)
        if barrier is None:  # nothing to send: no thread was started
            return DrainResult(damaged=tuple(spool.switches))
        total = barrier.unsettled
        report: Callable[[int], None] | None = None
        if progress is not None:
            tell = progress

            def report(pending: int) -> None:
                tell(total, pending)

        timeout = float("inf") if budget is None else budget
        try:
            dispatcher.flush(
                barrier,
                timeout,
                outage_after=outage_after,
                progress=report,
                wait_past_timeout=False,
            )
        except KeyboardInterrupt:
            interrupted = True
    finally:
        dispatcher.stop(grace)
    gate_until, gate_failure = dispatcher.gate_until, dispatcher.gate_failure
    # Requests that finished during the grace period settled their events: a flush
    # with no time left sends nothing and tallies the spool as it is now.
    flushed = dispatcher.flush(barrier, 0.0, outage_after=outage_after)
    # The barrier's count includes what other processes delivered meanwhile;
    # this run delivered no more than its own senders settled.
    counts = vars(flushed) | {"delivered": min(flushed.delivered, dispatcher.settled)}
    counts |= {"damaged": tuple(spool.switches)}
    stopped_by = flushed.paused or flushed.outage or interrupted
    if flushed.pending and not stopped_by and ends_at is not None and gate_until > ends_at:
        # The gate opens past the budget's end: say until when and why.
        counts |= {"waiting_until": gate_until, "waiting_for": gate_failure}
    result = DrainResult(**counts)
    if interrupted:
        raise DrainInterrupted(result)
    give_back_space(spool, clock, steps=not result.timed_out)  # a spent budget: checkpoint only
    return result


#: Seconds a drain may spend giving space back after it delivered.
GIVE_BACK_BUDGET = 60.0


def give_back_space(spool: Spool, clock: Clock = SYSTEM_CLOCK, *, steps: bool = True) -> None:
    """After a drain: give the spool's free pages back to the filesystem in
    bounded steps (:meth:`Spool.give_back_space`, pausing between them so that
    running apps capture meanwhile), for at most :data:`GIVE_BACK_BUDGET`
    seconds (none when ``steps`` is False: the drain's budget is spent), then
    checkpoint the WAL, so that a spool drained from cron shrinks with no app
    running (docs/architecture.md, "Space and long writes"). Never raises."""
    deadline = clock.monotonic() + GIVE_BACK_BUDGET
    while steps and spool.give_back_space() and clock.monotonic() < deadline:
        clock.sleep(STEP_PAUSE)
    try:
        spool.checkpoint()
    except Exception:  # a nicety after the drain's work is done
        log.debug("WAL checkpoint after the drain skipped", exc_info=True)


def drain_exit_code(result: FlushResult) -> int:
    """The documented ``spoolpost drain`` exit code for a drain's result: 7 if
    the run found the spool damaged (a :class:`DrainResult` with ``damaged``);
    else events remain → 5 paused, 4 outage, 3 budget; none remain → 6 if this
    run dead-lettered any, else 0."""
    if getattr(result, "damaged", ()):
        return EXIT_DAMAGED
    if result.pending:
        if result.paused:
            return EXIT_PAUSED
        return EXIT_OUTAGE if result.outage else EXIT_REMAIN
    return EXIT_DEAD if result.dead else EXIT_EMPTY
