"""The stored identity of a v1 request (see docs/architecture.md, "An event row's
states"): what a claim or :meth:`Spool.stamp_request` writes on the rows a request
carries, read back with ``RETURNING``, and its inverse for rows given back unsent.
Every function runs inside the caller's write transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from spoolpost.spool.sql import IN_IDS, ids_json


class RequestStamp(NamedTuple):
    """The stored identity of one v1 request: ``request_id`` (PostHog-Request-Id),
    ``created_at`` (the body's, RFC 3339) and ``attempt`` (PostHog-Attempt: 1 for the
    first request, counting every request that carried these rows)."""

    request_id: str
    created_at: str
    attempt: int


#: Gives the v1 request identity (request id, ``created_at``) a claim stores for a
#: batch of a lane, or None when that lane's requests carry none (v0).
Stamper = Callable[[str | None], tuple[str, str] | None]
#: Stores one more request for rows: their identity unless they have one, attempts + 1.
STAMP_SET = (
    "request_id = coalesce(request_id, ?),"
    " request_created_at = coalesce(request_created_at, ?),"
    " request_attempts = coalesce(request_attempts, 0) + 1"
)
STAMP_RETURNING = "request_id, request_created_at, request_attempts"


def stamped_identity(
    conn: sqlite3.Connection,
    token: str,
    ids: Sequence[int],
    stamped: list[Any],
    request_id: str,
    created_at: str,
) -> RequestStamp | None:
    """The identity to send for rows just stamped (``stamped``: their
    ``RETURNING`` rows), in the stamp's transaction ``conn``."""
    if not stamped:
        return None
    if len({(r[0], r[1]) for r in stamped}) > 1:
        # Rows of different stored requests (a claim never makes such a
        # batch): they become one new request.
        conn.execute(
            "UPDATE events SET request_id = ?, request_created_at = ?,"
            f" request_attempts = 1 WHERE {IN_IDS} AND lease_token = ?",
            (request_id, created_at, ids_json(ids), token),
        )
        return RequestStamp(request_id, created_at, 1)
    first = stamped[0]
    return RequestStamp(first[0], first[1], max(int(r[2]) for r in stamped))


def unstamp_rows(
    conn: sqlite3.Connection, token: str, ids: Sequence[int] | None, forget: bool = False
) -> None:
    """Undo one :data:`STAMP_SET` on rows ``token`` holds (``ids`` None: all of
    them), for a request that was stamped but not sent: one attempt fewer, and
    no identity when none is left. ``forget``: no identity at all, whatever the
    count (the rows' request was split: each part is a new request, so no part
    repeats its PostHog-Request-Id or attempt number)."""
    where = "lease_token = ?" if ids is None else f"{IN_IDS} AND lease_token = ?"
    params: tuple[Any, ...] = (token,) if ids is None else (ids_json(ids), token)
    if forget:
        conn.execute(
            "UPDATE events SET request_id = NULL, request_created_at = NULL,"
            f" request_attempts = NULL WHERE {where} AND request_attempts IS NOT NULL",
            params,
        )
        return
    conn.execute(
        "UPDATE events SET"
        " request_id = CASE WHEN request_attempts > 1 THEN request_id END,"
        " request_created_at = CASE WHEN request_attempts > 1 THEN request_created_at END,"
        " request_attempts = nullif(request_attempts - 1, 0)"
        f" WHERE {where} AND request_attempts IS NOT NULL",
        params,
    )
