"""How a leased batch is divided: the part that probes a closed gate, halves (a
split after a 413/4xx, a poison-isolation round), and the stored events a wire
format cannot send; see docs/architecture.md, "Delivery policy"."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from spoolpost.delivery.config import POISON_AFTER, STUCK_AFTER
from spoolpost.delivery.transport import HttpTransport
from spoolpost.spool import Row, Spool

log = logging.getLogger("spoolpost")


def halves(rows: Sequence[Row]) -> tuple[Sequence[Row], Sequence[Row]]:
    """``rows`` cut in two, the first half the smaller when the count is odd."""
    half = len(rows) // 2
    return rows[:half], rows[half:]


def ids_of(rows: Sequence[Row]) -> list[int]:
    """The spool ids of ``rows``, in order."""
    return [r.id for r in rows]


def probe_rows(rows: Sequence[Row]) -> Sequence[Row]:
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
        return halves(rows)[0]
    return rows


def unsendable(
    rows: Sequence[Row], bad: Mapping[int, str]
) -> tuple[dict[str, list[Row]], list[Row]]:
    """``rows`` parted by :class:`~spoolpost.delivery.wire.UnsendableEvents`'s
    ``bad`` (position → reason): the unsendable rows grouped by reason (each
    logged, WARNING, with its uuid), and the rest, in order."""
    groups: dict[str, list[Row]] = {}
    for n, why in bad.items():
        groups.setdefault(why, []).append(rows[n])
        log.warning("event %s cannot be sent: %s; it is dead-lettered", rows[n].uuid, why)
    return groups, [r for n, r in enumerate(rows) if n not in bad]


def leave_request(spool: Spool, transport: HttpTransport, token: str, rows: Sequence[Row]) -> None:
    """Before ``rows`` (held by ``token``) are divided (a split, an isolation
    round): under a per-event wire format (v1) they leave their stored request,
    so each part sent is a new request (new PostHog-Request-Id, attempt 1) and a
    part given back unsent has no identity (see docs/architecture.md, "An event
    row's states")."""
    if transport.for_lane(rows[0].lane).wire.per_event:
        spool.unstamp(token, ids_of(rows), forget=True)
