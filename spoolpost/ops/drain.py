"""Deliver a spool from outside the app that captured into it: ``spoolpost drain``.

:func:`drain_spool` sends what was in the spool when it started until none is
left, a time budget runs out, the endpoint is down or delivery is paused, and
:func:`drain_exit_code` turns its result into the exit code cron reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from spoolpost.client import key_fingerprint
from spoolpost.delivery.dispatcher import DeliveryConfig, Dispatcher, FlushResult
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
    Returns a :class:`FlushResult`.

    Raises :class:`~spoolpost.errors.KeyMismatch` if the spool belongs to another
    API key (unless ``force_key``), :class:`~spoolpost.errors.SpoolLocked`.
    """
    spool.bind_key(key_fingerprint(transport.api_key), force=force_key)
    watermark = spool.watermark(time.time())
    if not spool.any_open_through(watermark):
        return FlushResult()
    dispatcher = Dispatcher(spool, transport, config=config or DRAIN_CONFIG, retry=retry)
    # The exact count of what is to be sent is a scan of the spool (~0.7 s per
    # million events): it reads a snapshot pinned before the senders start, so
    # the first request goes out at once and the count is still exact.
    interrupted = False
    try:
        with spool.snapshot() as before_start:
            dispatcher.start()
            before = before_start.states_through(watermark)
        total = before["pending"] + before["leased"]
        report: Callable[[int], None] | None = None
        if progress is not None:
            tell = progress

            def report(pending: int) -> None:
                tell(total, pending)

        timeout = float("inf") if budget is None else budget
        try:
            dispatcher.flush(watermark, timeout, before, outage_after=outage_after, progress=report)
        except KeyboardInterrupt:
            interrupted = True
    finally:
        dispatcher.stop(grace)
    # Requests that finished during the grace period settled their events: a flush
    # with no time left sends nothing and tallies the spool as it is now.
    result = dispatcher.flush(watermark, 0.0, before, outage_after=outage_after)
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
