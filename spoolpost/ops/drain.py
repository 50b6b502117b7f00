"""Deliver a spool from outside the app that captured into it: ``spoolpost drain``.

:func:`drain_spool` sends what was in the spool when it started until none is
left, a time budget runs out, the endpoint is down or delivery is paused, and
:func:`drain_exit_code` turns its result into the exit code cron reads.
"""

from __future__ import annotations

from collections.abc import Callable

from spoolpost.client import key_fingerprint
from spoolpost.clock import SYSTEM_CLOCK, Clock
from spoolpost.delivery.barrier import FlushBarrier, FlushResult
from spoolpost.delivery.dispatcher import DeliveryConfig, Dispatcher
from spoolpost.delivery.policy import RetryPolicy
from spoolpost.delivery.transport import HttpTransport
from spoolpost.spool import Spool

#: ``spoolpost drain`` exit codes, for cron.
EXIT_EMPTY = 0
EXIT_ERROR = 1
EXIT_REMAIN = 3
EXIT_OUTAGE = 4
EXIT_PAUSED = 5
EXIT_DEAD = 6


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
    grace: float = 5.0,
    config: DeliveryConfig | None = None,
    retry: RetryPolicy | None = None,
    progress: Callable[[int, int], None] | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> FlushResult:
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
    and the waits. Returns a :class:`FlushResult`.

    Raises :class:`~spoolpost.errors.KeyMismatch` if the spool belongs to another
    API key (unless ``force_key``), :class:`~spoolpost.errors.SpoolLocked`.
    """
    spool.bind_key(key_fingerprint(transport.api_key), force=force_key)
    dispatcher = Dispatcher(
        spool, transport, config=config or DRAIN_CONFIG, retry=retry, clock=clock
    )
    # The exact count of what is to be sent is a scan of the spool (~0.7 s per
    # million events): it reads a snapshot pinned before the senders start, so
    # the first request goes out at once and the count is still exact.
    interrupted = False
    try:
        barrier = FlushBarrier.take_starting(spool, clock.now(), dispatcher.start)
        if barrier is None:
            return FlushResult()  # nothing to send: no thread was started
        total = barrier.unsettled
        report: Callable[[int], None] | None = None
        if progress is not None:
            tell = progress

            def report(pending: int) -> None:
                tell(total, pending)

        timeout = float("inf") if budget is None else budget
        try:
            dispatcher.flush(barrier, timeout, outage_after=outage_after, progress=report)
        except KeyboardInterrupt:
            interrupted = True
    finally:
        dispatcher.stop(grace)
    # Requests that finished during the grace period settled their events: a flush
    # with no time left sends nothing and tallies the spool as it is now.
    result = dispatcher.flush(barrier, 0.0, outage_after=outage_after)
    if interrupted:
        raise DrainInterrupted(result)
    return result


def drain_exit_code(result: FlushResult) -> int:
    """The documented ``spoolpost drain`` exit code for a drain's result:
    events remain → 5 paused, 4 outage, 3 budget; none remain → 6 if this run
    dead-lettered any, else 0."""
    if result.pending:
        if result.paused:
            return EXIT_PAUSED
        return EXIT_OUTAGE if result.outage else EXIT_REMAIN
    return EXIT_DEAD if result.dead else EXIT_EMPTY
