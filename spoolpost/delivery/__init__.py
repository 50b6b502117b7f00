"""Delivery: claim leased batches from the spool, POST them, settle the outcome
(see docs/architecture.md)."""

from spoolpost.delivery.barrier import FlushBarrier, FlushResult
from spoolpost.delivery.config import DeliveryConfig, Step
from spoolpost.delivery.dispatcher import Dispatcher
from spoolpost.delivery.policy import Action, PausePolicy, RetryPolicy, classify
from spoolpost.delivery.transport import DEFAULT_HOST, HttpTransport, PostHogV0, Reply, WireFormat

__all__ = [
    "DEFAULT_HOST",
    "Action",
    "DeliveryConfig",
    "Dispatcher",
    "FlushBarrier",
    "FlushResult",
    "HttpTransport",
    "PausePolicy",
    "PostHogV0",
    "Reply",
    "RetryPolicy",
    "Step",
    "WireFormat",
    "classify",
]
