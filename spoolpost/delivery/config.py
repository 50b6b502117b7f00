"""Delivery settings and the values delivery reports: what to send and when
(:class:`DeliveryConfig`), what one dispatch step did (:class:`Step`), what one
flush came to (:class:`FlushResult`), and the dispatcher's timing constants."""

from __future__ import annotations

import os
from dataclasses import dataclass

from spoolpost.errors import ConfigError

#: Seconds between two reclaims of abandoned leases (at most a quarter of ``lease_ttl``).
RECLAIM_EVERY = 5.0
#: Seconds between two WAL checkpoints, taken only when the dispatcher is idle.
CHECKPOINT_EVERY = 60.0
#: Seconds an inline flush waits when a step has nothing better to say.
IDLE_POLL = 0.05
#: Failed attempts after which an event is suspected of making the server fail, when
#: other requests get through (a poison batch: see docs/architecture.md, "Failure policy").
POISON_AFTER = 2
#: Failed attempts after which a batch that is probed alone is probed by halves.
STUCK_AFTER = 5


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
