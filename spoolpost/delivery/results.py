"""What a v1 ``results`` map means for each row of the batch that got it.

PostHog's v1 capture answers a 2xx with a verdict per event uuid
(posthog-python 7.x ``posthog/capture_v1.py``; the v1 compliance suite's
``per_event_results`` tests). :func:`settlement_for` turns one into a
:class:`~spoolpost.spool.Settlement` that the spool applies in one transaction:

==============  ============================================================
result          row
==============  ============================================================
``ok``          delivered (deleted)
``warning``     delivered (deleted); the details are logged at DEBUG
``retry``       rescheduled, ``attempts += 1``; dead ``max_attempts`` at the limit
``drop``        dead, reason ``dropped``, the server's details in ``detail``
``limited``     dead, reason ``limited`` (see below)
unknown value   dead, reason ``unknown_result``, the value and details in ``detail``
no entry        rescheduled; dead ``missing_result`` at ``max_attempts``
==============  ============================================================

``limited`` means the project is over its quota (billing limits): PostHog
discards the event, the suite's ``does_not_retry_limited_events`` asks that it
is not resent, and resending before the quota changes (a new billing period or
a higher limit) would only be limited again. The event is kept as a dead letter
so an operator can ``spoolpost replay --reason limited`` once it is lifted.

An unknown value is not resent (the suite's ``unknown_result_treated_as_terminal``)
and, unlike posthog-python, not taken as delivered either: it is kept as a dead
letter. Uuids in the map that are not in the batch are ignored (and logged).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from spoolpost.delivery.wire import OK, EventResult
from spoolpost.spool import Doomed, Row, Settlement

DELIVERED_RESULTS = frozenset({"ok", "warning"})


def settlement_for(
    rows: Sequence[Row], results: Mapping[str, EventResult]
) -> tuple[Settlement, list[str]]:
    """The :class:`Settlement` of ``rows`` for a 2xx ``results`` map, and the uuids
    of the map that name no row of the batch (ignored)."""
    delivered: list[int] = []
    retry: list[int] = []
    missing: list[int] = []
    dead: list[Doomed] = []
    for row in rows:
        verdict = results.get(row.uuid)
        if verdict is OK:  # the usual verdict, shared by parse_results
            delivered.append(row.id)
        elif verdict is None:
            missing.append(row.id)
        elif verdict.result in DELIVERED_RESULTS:
            delivered.append(row.id)
        elif verdict.result == "retry":
            retry.append(row.id)
        elif verdict.result == "drop":
            dead.append(Doomed(row.id, "dropped", verdict.details or "dropped by the server"))
        elif verdict.result == "limited":
            dead.append(Doomed(row.id, "limited", verdict.details or "quota limited"))
        else:
            detail = f"result {verdict.result!r}" + (
                f": {verdict.details}" if verdict.details else ""
            )
            dead.append(Doomed(row.id, "unknown_result", detail))
    known = {row.uuid for row in rows}
    strangers = [u for u in results if u not in known]
    return Settlement(delivered, retry, missing, dead), strangers


def dead_groups(
    rows: Sequence[Row], settlement: Settlement, max_attempts: int | None, status: int | None
) -> list[tuple[list[Row], str, str]]:
    """The rows a v1 answer dead-letters, as ``(rows, reason, detail)`` groups for the
    drop-in's ``on_error``: by their verdict (``dropped``, ``limited``, …), and those
    that reach ``max_attempts`` (asked to retry) or ``missing_result`` (left out of
    the answer) with this attempt."""
    by_id = {r.id: r for r in rows}
    groups: dict[tuple[str, str], list[Row]] = {}
    for doomed in settlement.dead:
        groups.setdefault((doomed.reason, doomed.detail), []).append(by_id[doomed.id])
    if max_attempts is not None:
        for ids, reason in (
            (settlement.retry, "max_attempts"),
            (settlement.missing, "missing_result"),
        ):
            died = [by_id[i] for i in ids if by_id[i].attempts + 1 >= max_attempts]
            if died:
                groups.setdefault((reason, f"HTTP {status}"), []).extend(died)
    return [(died, reason, detail) for (reason, detail), died in groups.items()]
