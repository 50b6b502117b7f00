"""Reads of the spool, and its bookkeeping: the meta table and the counters.

Each function runs on a :class:`~spoolpost.spool.db.Database` in one read (or,
for the bookkeeping writes, one ``BEGIN IMMEDIATE`` transaction); counts are
derived from the rows themselves. SQLite corruption met by any of them
quarantines the file with its readable rows carried over and tries once more
(:func:`~spoolpost.spool.db.recovering`), never a raw ``sqlite3`` error. The
flush barrier is a :data:`Watermark`.
:class:`SpoolSnapshot` answers the same questions inside one pinned WAL snapshot.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spoolpost.errors import HostMismatch, KeyMismatch, SpoolClosed, SpoolCorrupt
from spoolpost.spool import files, maintenance, migrations
from spoolpost.spool.db import Database, is_corrupt, recovering
from spoolpost.spool.maintenance import Filter, SpooledEvent
from spoolpost.spool.owner import Owner, current_owner, owner_alive
from spoolpost.spool.sql import add_counter

log = logging.getLogger("spoolpost")

#: A flush barrier: (newest event id, UTC seconds); see :func:`watermark`.
Watermark = tuple[int, float]


@dataclass(frozen=True)
class SpoolStats:
    """A snapshot of a spool, all derived from its rows and files.

    ``counts``/``bytes`` are per state (pending, leased, dead); ages are seconds;
    ``counters`` are the persisted totals (delivered, dead, dropped, …).
    """

    path: str
    schema_version: int
    counts: dict[str, int]
    bytes: dict[str, int]
    oldest_pending_age: float | None
    next_attempt_in: float | None
    dead_reasons: dict[str, int]
    counters: dict[str, int]
    file_bytes: int
    wal_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "schema_version": self.schema_version,
            "counts": self.counts,
            "bytes": self.bytes,
            "oldest_pending_age": self.oldest_pending_age,
            "next_attempt_in": self.next_attempt_in,
            "dead_reasons": self.dead_reasons,
            "counters": self.counters,
            "file_bytes": self.file_bytes,
            "wal_bytes": self.wal_bytes,
        }


def states_on(conn: sqlite3.Connection, watermark: Watermark) -> dict[str, int]:
    """:func:`states_through` on ``conn`` (inside one read transaction)."""
    last_id, at = watermark
    found = dict(
        conn.execute(
            "SELECT state, count(*) FROM events WHERE id <= ? AND captured_at <= ? GROUP BY state",
            (last_id, at),
        ).fetchall()
    )
    found["dead"] = dead_on(conn, watermark)
    return {state: int(found.get(state, 0)) for state in ("pending", "leased", "dead")}


def dead_on(conn: sqlite3.Connection, watermark: Watermark) -> int:
    """:func:`dead_through` on ``conn``."""
    return int(
        conn.execute(
            "SELECT count(*) FROM dead_events WHERE event_id <= ? AND captured_at <= ?",
            watermark,
        ).fetchone()[0]
    )


class SpoolSnapshot:
    """The spool as it was when :meth:`Spool.snapshot` was entered (one pinned
    WAL snapshot on a private connection); valid inside that ``with`` block."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._path = path

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpoolClosed(f"a snapshot of spool {self._path} is used after its with block")
        return self._conn

    def close(self) -> None:
        """End the snapshot (its ``with`` block does); later use raises SpoolClosed."""
        self._conn = None

    def states_through(self, watermark: Watermark) -> dict[str, int]:
        """:meth:`Spool.states_through`, as of the snapshot. Raises
        :class:`SpoolClosed` after the snapshot's ``with`` block, and
        :class:`SpoolCorrupt` when it meets a damaged page."""
        try:
            return states_on(self._open(), watermark)
        except sqlite3.DatabaseError as exc:
            if is_corrupt(exc):  # Spool.states_through would quarantine it
                raise SpoolCorrupt(f"spool {self._path} is damaged: {exc}") from None
            raise

    def events(self, where: Filter, now: float) -> Iterator[SpooledEvent]:
        """:meth:`Spool.events`, as of the snapshot. Raises :class:`SpoolClosed`
        after the snapshot's ``with`` block."""
        return maintenance.select(self._open(), where, now)


# -- the flush barrier -------------------------------------------------------------------


@recovering
def watermark(db: Database, now: float) -> Watermark:
    """:meth:`Spool.watermark`: (newest event id, ``now``)."""
    with db.read() as conn:
        row = conn.execute("SELECT max(id) FROM events").fetchone()
    return (int(row[0] or 0), now)


@recovering
def any_open_through(db: Database, watermark: Watermark) -> bool:
    """:meth:`Spool.any_open_through`: is an event inside ``watermark`` still live?"""
    last_id, at = watermark
    with db.read() as conn:
        row = conn.execute(
            "SELECT 1 FROM events WHERE id <= ? AND captured_at <= ? LIMIT 1", (last_id, at)
        ).fetchone()
    return row is not None


@recovering
def dead_through(db: Database, watermark: Watermark) -> int:
    """:meth:`Spool.dead_through`: dead letters inside ``watermark``."""
    with db.read() as conn:
        return dead_on(conn, watermark)


@recovering
def states_through(db: Database, watermark: Watermark) -> dict[str, int]:
    """:meth:`Spool.states_through`: counts by state inside ``watermark``."""
    with db.read(snapshot=True) as conn:
        return states_on(conn, watermark)


# -- schedule and totals -------------------------------------------------------------------


@recovering
def next_due_at(db: Database) -> float | None:
    """:meth:`Spool.next_due_at`: when the earliest retry becomes due, or None."""
    with db.read() as conn:
        row = conn.execute(
            "SELECT min(next_attempt_at) FROM events WHERE attempts > 0 AND state = 'pending'"
        ).fetchone()
    return None if row[0] is None else float(row[0])


@recovering
def earliest_due(db: Database, now: float) -> tuple[float, str | None] | None:
    """:meth:`Spool.earliest_due`: (when the first live event can be sent, why not
    before), or None when no event is live."""
    with db.read(snapshot=True) as conn:
        if conn.execute(
            "SELECT 1 FROM events WHERE state = 'pending' AND attempts = 0 LIMIT 1"
        ).fetchone():
            return now, None
        retry = conn.execute(
            "SELECT next_attempt_at, last_error FROM events WHERE attempts > 0"
            " AND state = 'pending' ORDER BY next_attempt_at LIMIT 1"
        ).fetchone()
        lease = conn.execute(
            "SELECT min(lease_expires_at) FROM events WHERE lease_token IS NOT NULL"
        ).fetchone()
        owners = conn.execute("SELECT host, pid, pid_start FROM leases").fetchall()
    found: list[tuple[float, str | None]] = []
    if retry is not None:
        found.append((float(retry[0]), retry[1]))
    if lease[0] is not None:
        # A lease whose owner is gone from this host is taken back at once (reclaim),
        # whatever its expiry: its events are due now. Read /proc outside the snapshot.
        if any(not owner_alive(Owner(host, pid, start)) for host, pid, start in owners):
            found.append((now, None))
        else:
            found.append((float(lease[0]), "leased by another process until its lease ends"))
    return min(found, key=lambda f: f[0]) if found else None


def _counters(conn: sqlite3.Connection) -> dict[str, int]:
    found = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    base = dict.fromkeys(("delivered", "dead", "dropped", "filtered"), 0)
    return base | {str(k): int(v) for k, v in found.items()}


@recovering
def counters(db: Database) -> dict[str, int]:
    """:meth:`Spool.counters`: the persisted totals."""
    with db.read() as conn:
        return _counters(conn)


@recovering
def stats(db: Database, now: float) -> SpoolStats:
    """:meth:`Spool.stats`: a :class:`SpoolStats` at ``now`` (UTC seconds)."""
    with db.read(snapshot=True) as conn:
        return stats_on(conn, db.path, now)


def stats_on(conn: sqlite3.Connection, path: Path, now: float) -> SpoolStats:
    """:func:`stats` on ``conn`` (inside one read transaction), for the spool at ``path``."""
    counts = {"pending": 0, "leased": 0, "dead": 0}
    sizes = dict.fromkeys(counts, 0)
    for state, n, size in conn.execute(
        "SELECT state, count(*), coalesce(sum(size), 0) FROM events GROUP BY state"
        " UNION ALL SELECT 'dead', count(*), coalesce(sum(size), 0) FROM dead_events"
    ):
        counts[state], sizes[state] = int(n), int(size)
    oldest, next_at = conn.execute(
        "SELECT min(captured_at), min(next_attempt_at) FROM events WHERE state = 'pending'"
    ).fetchone()
    reasons = dict(
        conn.execute("SELECT reason, count(*) FROM dead_events GROUP BY reason").fetchall()
    )
    version = migrations.schema_version(conn)
    totals = _counters(conn)
    wal = files.side_files(path)[0]
    return SpoolStats(
        path=str(path),
        schema_version=version,
        counts=counts,
        bytes=sizes,
        oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
        next_attempt_in=None if next_at is None else max(0.0, next_at - now),
        dead_reasons={str(k): int(v) for k, v in reasons.items()},
        counters=totals,
        file_bytes=path.stat().st_size if path.exists() else 0,
        wal_bytes=wal.stat().st_size if wal.exists() else 0,
    )


# -- bookkeeping -----------------------------------------------------------------------------


@recovering
def bind_key(db: Database, fingerprint: str, force: bool) -> None:
    """:meth:`Spool.bind_key`: record or check the project-key ``fingerprint``."""
    if _meta_value(db, "key_fingerprint") == fingerprint:
        return  # bound already: no write (a full or read-only disk can still open it)
    with db.write() as conn:
        row = conn.execute("SELECT value FROM meta WHERE key='key_fingerprint'").fetchone()
        if row is not None and row[0] != fingerprint:
            if not force:
                raise KeyMismatch(
                    f"spool {db.path} holds events for another project API key "
                    f"(fingerprint {row[0]}, this key {fingerprint}); refusing to deliver "
                    "them with this key. Use another spool, or force=True / --force-key."
                )
            log.warning("spool %s re-bound to key fingerprint %s", db.path, fingerprint)
        if row is None or row[0] != fingerprint:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('key_fingerprint', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (fingerprint,),
            )
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('host', ?)",
                (current_owner().host,),
            )


@recovering
def count(db: Database, name: str, n: int) -> None:
    """:meth:`Spool.add_counter`: add ``n`` to the counter ``name``, one short write."""
    with db.write() as conn:
        add_counter(conn, name, n)


def _meta_value(db: Database, key: str) -> str | None:
    with db.read() as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


@recovering
def meta(db: Database) -> dict[str, str]:
    """:meth:`Spool.meta`: the meta table as a dict."""
    with db.read() as conn:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())


@recovering
def record_bound(db: Database, bounds: dict[str, int]) -> None:
    """:meth:`Spool.record_bound`: keep the ``bounds`` (``max_spool_bytes``,
    ``min_free_bytes``) in the meta table."""
    with db.write() as conn:
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(key, str(value)) for key, value in bounds.items()],
        )


@recovering
def bind_host(db: Database, url: str, force: bool) -> str:
    """:meth:`Spool.bind_host`: record or check the ingestion endpoint ``url``."""
    if _meta_value(db, "ingestion_host") == url:
        return url  # bound already: no write
    with db.write() as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'ingestion_host'").fetchone()
        if row is not None and row[0] != url:
            if not force:
                raise HostMismatch(
                    f"spool {db.path} delivers to {row[0]}, not {url}; refusing to send "
                    "its events elsewhere. Give that host, or force_host=True / --force-host."
                )
            log.warning("spool %s re-bound from %s to endpoint %s", db.path, row[0], url)
        if row is None or row[0] != url:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('ingestion_host', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (url,),
            )
    return url if row is None else str(row[0])


#: Meta keys holding one delivering process's endpoint state each.
ENDPOINT_PREFIX = "endpoint:"
#: How many endpoint records a spool keeps (the most recently updated).
KEEP_ENDPOINT_RECORDS = 16


@recovering
def save_endpoint(db: Database, key: str, value: str) -> None:
    """:meth:`Spool.save_endpoint_state`: one short write; the oldest records past
    :data:`KEEP_ENDPOINT_RECORDS` are deleted in the same transaction."""
    with db.write() as conn:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )
        conn.execute(
            "DELETE FROM meta WHERE substr(key, 1, 9) = 'endpoint:' AND key NOT IN ("
            " SELECT key FROM meta WHERE substr(key, 1, 9) = 'endpoint:'"
            " ORDER BY json_extract(value, '$.updated_at') DESC LIMIT ?)",
            (KEEP_ENDPOINT_RECORDS,),
        )
