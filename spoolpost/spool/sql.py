"""SQL pieces that several of the spool's modules share.

- :data:`IN_IDS` with :func:`ids_json` — "id is one of these", one parameter
  however many ids (a JSON array read by ``json_each``); :func:`ids_where`, the
  same condition as a primary-key range when the ids are a run without a gap
  (a batch of a drain usually is: no JSON built or read, one range seek);
- :data:`INSERT_EVENT` — a new pending event (uuid, body, size, captured_at,
  next_attempt_at, lane);
- :func:`add_counter` — bump a persisted counter inside the caller's transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

IN_IDS = "id IN (SELECT value FROM json_each(?))"
INSERT_EVENT = (
    "INSERT INTO events (uuid, body, size, captured_at, next_attempt_at, lane)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
#: The lane of ``capture_ai`` events (PostHog's ``/i/v0/ai/batch/``); None: analytics.
AI_LANE = "ai"


def ids_json(ids: Sequence[int]) -> str:
    """The parameter for :data:`IN_IDS`: ``ids`` as a JSON array."""
    return "[" + ",".join(map(str, ids)) + "]"


def ids_where(ids: Sequence[int]) -> tuple[str, tuple[int | str, ...]]:
    """The condition "id is one of ``ids``" and its parameters: ``id BETWEEN ? AND ?``
    when the ids are every integer from the lowest to the highest (then that range
    holds exactly these ids), else :data:`IN_IDS`."""
    if not ids:
        return IN_IDS, ("[]",)
    low, high = min(ids), max(ids)
    if high - low + 1 == len(ids) and (len(ids) < 2 or len(set(ids)) == len(ids)):
        return "id BETWEEN ? AND ?", (low, high)
    return IN_IDS, (ids_json(ids),)


def add_counter(conn: sqlite3.Connection, name: str, n: int) -> None:
    """Add ``n`` to the persisted counter ``name`` (nothing for 0)."""
    if n:
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )
