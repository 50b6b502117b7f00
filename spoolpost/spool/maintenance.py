"""Operators' views and repairs of a spool, as SQL over one connection.

The :class:`~spoolpost.spool.Spool` facade runs each of these inside its own
read snapshot or ``BEGIN IMMEDIATE`` write transaction; nothing here opens,
commits or holds a connection. Pending and leased events live in ``events``,
dead letters in ``dead_events`` (``migrations/0001_init.sql``).

- :class:`Filter` — which events a command applies to;
- :class:`SpooledEvent` — one stored event with its bookkeeping, as views return it;
- :func:`select`, :func:`tail`, :func:`count_dead` — reads;
- :func:`replay`, :func:`purge`, :func:`insert_new` — writes of one chunk of an
  operator's job (:mod:`spoolpost.spool.chunks`), each counted in a persisted
  counter (``replayed``, ``purged``, ``imported``); :func:`dead_ids` and
  :class:`KnownUuids` read what a job is to do before its first chunk.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from spoolpost.errors import ConfigError, SpoolpostError
from spoolpost.spool.sql import IN_IDS, INSERT_EVENT, add_counter

STATES: tuple[str, ...] = ("pending", "leased", "dead")
LIVE_STATES: tuple[str, ...] = ("pending", "leased")
#: Every reason a dead letter can have (docs/architecture.md, "An event row's states"):
#: a lone event the endpoint refused (413, other 4xx), the limits, the verdicts of
#: PostHog's v1 per-event results, and a stored body v1 cannot reshape (``malformed``).
DEAD_REASONS: tuple[str, ...] = (
    "rejected",
    "too_large",
    "max_attempts",
    "expired",
    "dropped",
    "limited",
    "missing_result",
    "unknown_result",
    "malformed",
)
#: The key ``export`` adds to each event line (state, attempts, reason, …);
#: ``import`` drops it.
META_KEY = "spoolpost"

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_EVENT_NAME = "json_extract(CAST(body AS TEXT), '$.event') = ?"


@dataclass(frozen=True)
class Filter:
    """Which events an operator command applies to; an empty field matches all.

    ``states``: some of ``pending``, ``leased``, ``dead``. ``event``: the event
    name. ``reason``: the dead-letter reason (``rejected``, ``too_large``,
    ``max_attempts``, ``expired``); it matches dead letters only. ``uuids``:
    canonical lowercase uuids. ``older_than``: seconds; a dead letter older than
    that since it was dead-lettered, a live event since it was captured.
    Raises :class:`~spoolpost.errors.ConfigError` for an unknown state or a
    negative age.
    """

    states: frozenset[str] = frozenset()
    event: str | None = None
    reason: str | None = None
    uuids: tuple[str, ...] = ()
    older_than: float | None = None

    def __post_init__(self) -> None:
        states: object = self.states  # a str is a common slip for a set of one state
        if isinstance(states, str):
            raise ConfigError(
                f"states must be a set of state names, e.g. frozenset({{{states!r}}}), not a str"
            )
        unknown = set(self.states) - set(STATES)
        if unknown:
            raise ConfigError(f"unknown state(s) {sorted(unknown)}; use {', '.join(STATES)}")
        if self.older_than is not None and self.older_than < 0:
            raise ConfigError("older_than must be >= 0 seconds")

    def _common(self, time_column: str, now: float) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.event is not None:
            clauses.append(_EVENT_NAME)
            params.append(self.event)
        if self.uuids:
            clauses.append("uuid IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(list(self.uuids)))
        if self.older_than is not None:
            clauses.append(f"{time_column} <= ?")
            params.append(now - self.older_than)
        return clauses, params

    def live_where(self, now: float) -> tuple[str, list[Any]] | None:
        """SQL for matching rows of ``events``, or None when none can match."""
        states = [s for s in LIVE_STATES if not self.states or s in self.states]
        if not states or self.reason is not None:
            return None
        clauses, params = self._common("captured_at", now)
        clauses.insert(0, f"state IN ({','.join('?' * len(states))})")
        return " AND ".join(clauses), [*states, *params]

    def dead_where(self, now: float) -> tuple[str, list[Any]] | None:
        """SQL for matching rows of ``dead_events``, or None when none can match."""
        if self.states and "dead" not in self.states:
            return None
        clauses, params = self._common("dead_at", now)
        if self.reason is not None:
            clauses.append("reason = ?")
            params.append(self.reason)
        return " AND ".join(clauses) or "1", params


@dataclass(frozen=True)
class SpooledEvent:
    """One event in a spool. ``state``: pending, leased or dead; ``id``: its id in
    ``events`` (capture order); ``body``: the stored event JSON; times are
    wall-clock UTC seconds. ``reason``/``status``/``detail``/``dead_at`` are set
    for dead letters, ``next_attempt_at``/``last_error`` for live events,
    ``lease_token``/``lease_expires_at`` while leased, and
    ``first_failed_at``/``last_failed_at`` once an attempt failed."""

    state: str
    id: int
    uuid: str
    body: bytes
    captured_at: float
    attempts: int
    next_attempt_at: float | None = None
    last_error: str | None = None
    reason: str | None = None
    status: int | None = None
    detail: str | None = None
    dead_at: float | None = None
    lease_expires_at: float | None = None
    first_failed_at: float | None = None
    last_failed_at: float | None = None
    lease_token: str | None = None

    @functools.cached_property
    def event(self) -> dict[str, Any]:
        """The stored event, decoded. Raises :class:`SpoolpostError` if it is not
        a JSON object (a damaged row)."""
        try:
            event = json.loads(self.body)
        except ValueError as exc:
            raise SpoolpostError(f"event {self.uuid} holds a body that is not JSON: {exc}") from exc
        if not isinstance(event, dict):
            raise SpoolpostError(f"event {self.uuid} holds a body that is not a JSON object")
        return event

    @property
    def recent_at(self) -> float:
        """When it last changed state: dead-lettered, or else captured."""
        return self.dead_at if self.dead_at is not None else self.captured_at

    def meta(self) -> dict[str, Any]:
        """The spool's bookkeeping for this event, as ``export`` writes it (no
        ``None`` values)."""
        fields = {
            "state": self.state,
            "id": self.id,
            "attempts": self.attempts,
            "captured_at": self.captured_at,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
            "reason": self.reason,
            "status": self.status,
            "detail": self.detail,
            "dead_at": self.dead_at,
        }
        return {k: v for k, v in fields.items() if v is not None}

    def json_line(self) -> str:
        """The event as one JSON line: the stored PostHog event plus
        ``"spoolpost": meta``. The stored bytes are spliced, not re-encoded."""
        meta = _COMPACT.encode(self.meta())
        text = self.body.decode("utf-8", "replace")
        if text.startswith("{") and text.endswith("}") and text[1:-1].strip():
            return f'{text[:-1]},"{META_KEY}":{meta}}}'
        return json.dumps({**self.event, META_KEY: self.meta()}, ensure_ascii=False)


_LIVE_COLUMNS = (
    "state, id, uuid, CAST(body AS BLOB), captured_at, attempts, next_attempt_at, last_error,"
    " NULL, NULL, NULL, NULL, lease_expires_at, first_failed_at, last_failed_at, lease_token"
)
_DEAD_COLUMNS = (
    "'dead', event_id, uuid, CAST(body AS BLOB), captured_at, attempts, NULL, NULL,"
    " reason, status, detail, dead_at, NULL, first_failed_at, last_failed_at, NULL"
)


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def _event_from_row(row: tuple[Any, ...]) -> SpooledEvent:
    state, row_id, uuid, body, captured_at, attempts, next_at, last_error, *rest = row
    reason, status, detail, dead_at, lease_expires_at, first_failed, last_failed, token = rest
    return SpooledEvent(
        state=str(state),
        id=int(row_id),
        uuid=str(uuid),
        body=bytes(body),
        captured_at=float(captured_at),
        attempts=int(attempts),
        next_attempt_at=_optional(next_at),
        last_error=last_error,
        reason=reason,
        status=None if status is None else int(status),
        detail=detail,
        dead_at=_optional(dead_at),
        lease_expires_at=_optional(lease_expires_at),
        first_failed_at=_optional(first_failed),
        last_failed_at=_optional(last_failed),
        lease_token=token,
    )


def select(conn: sqlite3.Connection, where: Filter, now: float) -> Iterator[SpooledEvent]:
    """Every event matching ``where``: live events in capture order, then dead
    letters in the order they died."""
    live = where.live_where(now)
    if live is not None:
        sql = f"SELECT {_LIVE_COLUMNS} FROM events WHERE {live[0]} ORDER BY id"
        for row in conn.execute(sql, live[1]):
            yield _event_from_row(row)
    dead = where.dead_where(now)
    if dead is not None:
        sql = f"SELECT {_DEAD_COLUMNS} FROM dead_events WHERE {dead[0]} ORDER BY id"
        for row in conn.execute(sql, dead[1]):
            yield _event_from_row(row)


def tail(conn: sqlite3.Connection, where: Filter, limit: int, now: float) -> list[SpooledEvent]:
    """The ``limit`` most recent events matching ``where``, newest first: live
    events by capture time, dead letters by the time they were dead-lettered."""
    found: list[SpooledEvent] = []
    for table, columns, clause in (
        ("events", _LIVE_COLUMNS, where.live_where(now)),
        ("dead_events", _DEAD_COLUMNS, where.dead_where(now)),
    ):
        if clause is None:
            continue
        sql = f"SELECT {columns} FROM {table} WHERE {clause[0]} ORDER BY id DESC LIMIT ?"
        found += [_event_from_row(r) for r in conn.execute(sql, [*clause[1], limit])]
    found.sort(key=lambda e: (e.recent_at, e.id), reverse=True)
    return found[:limit]


def count_dead(conn: sqlite3.Connection, where: Filter, now: float) -> int:
    """How many dead letters match ``where``."""
    clause = where.dead_where(now)
    if clause is None:
        return 0
    row = conn.execute(f"SELECT count(*) FROM dead_events WHERE {clause[0]}", clause[1])
    return int(row.fetchone()[0])


def dead_ids(conn: sqlite3.Connection, where: Filter, now: float) -> list[int]:
    """The ids (in ``dead_events``) of the dead letters matching ``where``, in the
    order they died."""
    clause = where.dead_where(now)
    if clause is None:
        return []
    sql = f"SELECT id FROM dead_events WHERE {clause[0]} ORDER BY id"
    return [int(r[0]) for r in conn.execute(sql, clause[1])]


def replay(conn: sqlite3.Connection, ids: Sequence[int], now: float) -> int:
    """Move the dead letters ``ids`` (those still there) back to ``events``,
    pending and due at ``now``, attempts and errors reset, ``captured_at`` =
    ``now``. Returns how many."""
    ids_json = json.dumps(list(ids))
    moved = conn.execute(
        "INSERT INTO events (uuid, body, size, captured_at, next_attempt_at, lane)"
        f" SELECT uuid, body, size, ?, ?, lane FROM dead_events WHERE {IN_IDS} ORDER BY id",
        (now, now, ids_json),
    ).rowcount
    if moved:
        conn.execute(f"DELETE FROM dead_events WHERE {IN_IDS}", (ids_json,))
        add_counter(conn, "replayed", moved)
    return moved


def purge(conn: sqlite3.Connection, ids: Sequence[int]) -> int:
    """Delete the dead letters ``ids`` (those still there); return how many."""
    gone = conn.execute(f"DELETE FROM dead_events WHERE {IN_IDS}", (json.dumps(list(ids)),))
    if gone.rowcount:
        add_counter(conn, "purged", gone.rowcount)
    return gone.rowcount


class KnownUuids:
    """The uuids an import skips: those of its input that were in the spool (any
    state) when it began, read once (one scan), those it wrote, and those written
    since by others, found as rows above the highest ids seen (a range of the
    primary key, not a scan), so that each chunk of an import stays short."""

    def __init__(self, conn: sqlite3.Connection, uuids: Sequence[str]) -> None:
        self.wanted = frozenset(uuids)
        self.seen = {
            str(r[0])
            for r in conn.execute(
                "SELECT uuid FROM events WHERE uuid IN (SELECT value FROM json_each(?1)) UNION"
                " SELECT uuid FROM dead_events WHERE uuid IN (SELECT value FROM json_each(?1))",
                (json.dumps(sorted(self.wanted)),),
            )
        }
        self.marks = self._marks(conn)

    @staticmethod
    def _marks(conn: sqlite3.Connection) -> tuple[int, int]:
        row = conn.execute(
            "SELECT (SELECT coalesce(max(id), 0) FROM events),"
            " (SELECT coalesce(max(id), 0) FROM dead_events)"
        ).fetchone()
        return int(row[0]), int(row[1])

    def catch_up(self, conn: sqlite3.Connection) -> None:
        """Add the wanted uuids of rows written since the last call (or the scan)."""
        live, dead = self.marks
        for (uuid,) in conn.execute(
            "SELECT uuid FROM events WHERE id > ? UNION SELECT uuid FROM dead_events WHERE id > ?",
            (live, dead),
        ):
            if uuid in self.wanted:
                self.seen.add(str(uuid))
        self.marks = self._marks(conn)


def insert_new(
    conn: sqlite3.Connection, events: Sequence[tuple[str, bytes]], now: float, known: KnownUuids
) -> int:
    """Insert ``(uuid, body)`` pairs as pending events due at ``now``, skipping
    uuids ``known`` (already in the spool in any state, or earlier in the
    input). Returns how many were inserted."""
    known.catch_up(conn)
    rows = []
    for uuid, body in events:
        if uuid not in known.seen:
            known.seen.add(uuid)
            rows.append((uuid, body, len(body), now, now, None))
    conn.executemany(INSERT_EVENT, rows)
    add_counter(conn, "imported", len(rows))
    known.marks = KnownUuids._marks(conn)
    return len(rows)


def make_due(conn: sqlite3.Connection, now: float) -> int:
    """:meth:`Spool.retry_now`: pending retries whose backoff is not over become
    due at ``now``; attempts and errors are kept. Returns how many."""
    return conn.execute(
        "UPDATE events SET next_attempt_at = ? WHERE attempts > 0 AND state = 'pending'"
        " AND next_attempt_at > ?",
        (now, now),
    ).rowcount
