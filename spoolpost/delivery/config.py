"""Delivery settings: what to send and when (:class:`DeliveryConfig`), what one
dispatch step did (:class:`Step`), and the dispatcher's timing constants."""

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
