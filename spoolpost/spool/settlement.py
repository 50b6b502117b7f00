"""Settling one leased batch event by event, in one transaction.

PostHog's v1 capture endpoint answers a 2xx with a verdict per event (see
docs/architecture.md, "Per-event settlement"). :class:`Settlement` says what
becomes of each leased row; :func:`settle` applies all of it in one
``BEGIN IMMEDIATE`` transaction, by lease token like every other settle call: a
stale token changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from spoolpost.spool.db import Database
from spoolpost.spool.leases import Leases
from spoolpost.spool.sql import add_counter, ids_where


class Doomed(NamedTuple):
    """A row to dead-letter: its spool ``id``, the ``reason`` and the ``detail``."""

    id: int
    reason: str
    detail: str


@dataclass(frozen=True)
class Settlement:
    """What becomes of each row of a batch.

    ``delivered``: ids to delete (counted ``delivered``). ``retry``: ids the
    server asked to resend: rescheduled (``attempts += 1``), dead ``max_attempts``
    at the limit. ``missing``: ids the answer said nothing about: rescheduled the
    same way, dead ``missing_result`` at the limit (never taken as delivered).
    ``dead``: rows dead-lettered at once, each with its reason and detail.
    """

    delivered: Sequence[int] = ()
    retry: Sequence[int] = ()
    missing: Sequence[int] = ()
    dead: Sequence[Doomed] = field(default_factory=tuple)

    @property
    def retried(self) -> list[int]:
        """The rows to reschedule: ``retry`` and ``missing``."""
        return [*self.retry, *self.missing]


class Settled(NamedTuple):
    """What :func:`settle` did: rows ``delivered``, ``rescheduled`` and ``dead``
    (only rows the token still held count)."""

    delivered: int
    rescheduled: int
    dead: int


def settle(
    db: Database,
    leases: Leases,
    token: str,
    settlement: Settlement,
    *,
    now: float,
    next_attempt_at: float,
    error: str,
    max_attempts: int | None,
    status: int | None,
) -> Settled:
    """Apply ``settlement`` to the rows ``token`` holds; see :meth:`Spool.settle`."""
    with db.write() as conn:
        delivered = 0
        if settlement.delivered:
            where, params = ids_where(settlement.delivered)
            delivered = conn.execute(
                f"DELETE FROM events WHERE {where} AND lease_token = ?", (*params, token)
            ).rowcount
            add_counter(conn, "delivered", delivered)
        rescheduled = dead = 0
        for ids, reason, why in (
            (settlement.retry, "max_attempts", f"{error}: the server asked to retry"),
            (settlement.missing, "missing_result", f"{error}: no result for this event"),
        ):
            if ids:
                r, d = leases.reschedule_in(
                    conn, token, ids, now, next_attempt_at, why, max_attempts, status, reason
                )
                rescheduled, dead = rescheduled + r, dead + d
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for row_id, reason, detail in settlement.dead:
            groups[(reason, detail)].append(row_id)
        for (reason, detail), ids in groups.items():
            dead += leases.kill(conn, ids, token, now, reason, status, detail, tried=1)
        leases.forget_lease(conn, token)
    return Settled(delivered, rescheduled, dead)
