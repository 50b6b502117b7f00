"""SQL pieces that several of the spool's modules share.

- :data:`IN_IDS` with :func:`ids_json` — "id is one of these", one parameter
  however many ids (a JSON array read by ``json_each``);
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


def add_counter(conn: sqlite3.Connection, name: str, n: int) -> None:
    """Add ``n`` to the persisted counter ``name`` (nothing for 0)."""
    if n:
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )
