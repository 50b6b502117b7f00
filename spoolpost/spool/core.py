"""The spool: one SQLite file (WAL) holding every captured event until it is
delivered or dead-lettered.

:class:`Spool` is the storage seam. Everything above it (client, dispatcher, CLI)
talks only to its short surface:

- :meth:`Spool.append` — write one event (group commit across threads);
- :meth:`Spool.claim` — lease a batch of due events to one sender;
- :meth:`Spool.ack`, :meth:`Spool.reschedule`, :meth:`Spool.dead_letter`,
  :meth:`Spool.release` — settle a leased batch, by lease token;
- :meth:`Spool.reclaim` — take back leases that expired or whose owner died;
- :meth:`Spool.stats` and friends — counts derived from the rows themselves.

Rules kept here: every write transaction starts with ``BEGIN IMMEDIATE`` and does
no network I/O; a settle call carrying a stale lease token changes nothing;
stored times are wall-clock UTC seconds passed in as ``now``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from spoolpost.errors import (
    ConfigError,
    KeyMismatch,
)
from spoolpost.spool import files, maintenance, migrations
from spoolpost.spool.append import DEFAULT_MAX_SPOOL_BYTES, ON_FULL_POLICIES, Appender, OnFull
from spoolpost.spool.db import (
    DEFAULT_BUSY_TIMEOUT,
    DURABILITY_MODES,
    Database,
    Durability,
)
from spoolpost.spool.maintenance import Filter, SpooledEvent
from spoolpost.spool.owner import Owner, current_owner, owner_alive
from spoolpost.spool.sql import IN_IDS, add_counter, ids_json

log = logging.getLogger("spoolpost")

Watermark = tuple[int, float]

#: Rows a claim may dead-letter as ``expired`` in one transaction, per ``max_events``.
_EXPIRE_ROUNDS = 8


class Row(NamedTuple):
    """One leased event: spool ``id``, ``uuid``, encoded ``body``, prior ``attempts``.

    A NamedTuple rather than a dataclass: a claim builds hundreds at a time."""

    id: int
    uuid: str
    body: bytes
    attempts: int
    captured_at: float


@dataclass(frozen=True)
class Batch:
    """Events leased to one sender under ``token`` until ``expires_at`` (UTC seconds)."""

    token: str
    rows: tuple[Row, ...]
    expires_at: float

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.rows]

    @property
    def size(self) -> int:
        """Sum of the encoded event sizes, in bytes."""
        return sum(len(r.body) for r in self.rows)


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


def _states_through(conn: sqlite3.Connection, watermark: Watermark) -> dict[str, int]:
    last_id, at = watermark
    found = dict(
        conn.execute(
            "SELECT state, count(*) FROM events WHERE id <= ? AND captured_at <= ? GROUP BY state",
            (last_id, at),
        ).fetchall()
    )
    found["dead"] = conn.execute(
        "SELECT count(*) FROM dead_events WHERE event_id <= ? AND captured_at <= ?",
        (last_id, at),
    ).fetchone()[0]
    return {state: int(found.get(state, 0)) for state in ("pending", "leased", "dead")}


class SpoolSnapshot:
    """The spool as it was when :meth:`Spool.snapshot` was entered (one pinned
    WAL snapshot on a private connection); valid inside that ``with`` block."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def states_through(self, watermark: Watermark) -> dict[str, int]:
        """:meth:`Spool.states_through`, as of the snapshot."""
        return _states_through(self._conn, watermark)

    def events(self, where: Filter, now: float) -> Iterator[SpooledEvent]:
        """:meth:`Spool.events`, as of the snapshot."""
        return maintenance.select(self._conn, where, now)


class Spool:
    """One spool file. Thread-safe; one instance per process and path is enough.

    ``path``: the SQLite file. It is created ``0600``, and an existing file (and
    its -wal, -shm) that group or others may access is made ``0600`` (logged at
    INFO). Missing folders are created ``0700``; existing ones are left alone.
    ``durability``: ``"process"`` (WAL + ``synchronous=NORMAL``: survives a crash
    of the process) or ``"power"`` (``synchronous=FULL``: survives power loss).
    ``max_spool_bytes``: bound on the file's used pages (default 512 MiB).
    ``on_full``: ``drop_newest`` (default), ``drop_oldest``, ``block`` (up to
    ``block_timeout`` seconds, then :class:`SpoolFull`) or ``raise``.
    ``busy_timeout``: seconds a writer waits for another process's write lock.

    Raises :class:`ConfigError` for bad settings, an empty path or a directory,
    or a file that cannot be opened (permissions, I/O; the message names the path
    and the OS error), :class:`UnsupportedFilesystem` on a network filesystem,
    :class:`SchemaTooNew` for a spool from a newer spoolpost, :class:`SpoolCorrupt`
    for a file that is not an SQLite database (a non-empty file without the
    SQLite header) or an SQLite database that is not a spool (both left
    untouched), :class:`SpoolLocked` when another process holds the file locked
    past ``busy_timeout``. An SQLite file that SQLite finds corrupt (damaged
    pages, a bad WAL) is moved aside to ``<path>.corrupt-<timestamp>`` and a new
    spool is started (logged at ERROR, naming both files).

    Fork: a child process never uses the parent's connections; it closes its
    copies and reopens the spool on first use.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "process",
        max_spool_bytes: int = DEFAULT_MAX_SPOOL_BYTES,
        on_full: OnFull = "drop_newest",
        block_timeout: float = 5.0,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        allow_network_fs: bool = False,
    ) -> None:
        if durability not in DURABILITY_MODES:
            raise ConfigError(f"durability must be one of {DURABILITY_MODES}, not {durability!r}")
        if on_full not in ON_FULL_POLICIES:
            raise ConfigError(f"on_full must be one of {ON_FULL_POLICIES}, not {on_full!r}")
        if max_spool_bytes <= 0:
            raise ConfigError(f"max_spool_bytes must be positive, not {max_spool_bytes!r}")
        if busy_timeout < 0 or block_timeout < 0:
            raise ConfigError("busy_timeout and block_timeout must be >= 0 seconds")
        if not os.fspath(path):
            raise ConfigError("spool path is empty")
        self.path = Path(path).expanduser()
        if os.path.isdir(self.path):
            raise ConfigError(f"spool path {self.path} is a directory; give a file path")
        self.durability: Durability = durability
        self.max_spool_bytes = max_spool_bytes
        self.on_full: OnFull = on_full
        self.block_timeout = block_timeout
        self.busy_timeout = busy_timeout
        self.allow_network_fs = allow_network_fs
        self._cursor = 0
        self._db = Database(
            self.path,
            durability=durability,
            busy_timeout=busy_timeout,
            allow_network_fs=allow_network_fs,
        )
        self._appender = Appender(
            self._db, max_spool_bytes=max_spool_bytes, on_full=on_full, block_timeout=block_timeout
        )
        self._db.on_start_over(self._start_over)
        self._db.open()

    # -- opening ---------------------------------------------------------------

    def _start_over(self, forked: bool) -> None:
        self._cursor = 0

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[SpoolSnapshot]:
        """A :class:`SpoolSnapshot`: a private read connection holding one WAL
        snapshot, taken on entry, so that what it reads is the spool as it was
        then, whatever is written meanwhile. For counting a large spool while
        delivery already runs. Raises :class:`SpoolClosed`."""
        with self._db.snapshot() as conn:
            yield SpoolSnapshot(conn)

    def close(self) -> None:
        """Close the connections. Idempotent. SQLite checkpoints the WAL into the
        file when the last connection to it (in any process) closes."""
        if self._db.closed:
            return
        with self._appender.gc_lock:  # no group of appends is formed meanwhile
            self._db.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._db.closed

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- meta ------------------------------------------------------------------

    def bind_key(self, fingerprint: str, *, force: bool = False) -> None:
        """Record the project-key ``fingerprint`` this spool belongs to, or check it.

        Raises :class:`KeyMismatch` if the spool belongs to another key, unless
        ``force`` (then the spool is re-bound to the new key, logged at WARNING).
        """
        with self._db.write() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key='key_fingerprint'").fetchone()
            if row is not None and row[0] != fingerprint:
                if not force:
                    raise KeyMismatch(
                        f"spool {self.path} holds events for another project API key "
                        f"(fingerprint {row[0]}, this key {fingerprint}); refusing to deliver "
                        "them with this key. Use another spool, or force=True / --force-key."
                    )
                log.warning("spool %s re-bound to key fingerprint %s", self.path, fingerprint)
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

    def add_counter(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the persisted counter ``name`` (one short write)."""
        with self._db.write() as conn:
            add_counter(conn, name, n)

    def meta(self) -> dict[str, str]:
        """The spool's meta table as a dict (host, key_fingerprint, …)."""
        with self._db.read() as conn:
            return dict(conn.execute("SELECT key, value FROM meta").fetchall())

    # -- append (group commit) -----------------------------------------------

    def append(self, uuid: str, body: bytes, now: float) -> bool:
        """Write one encoded event (``now``: its capture time, UTC seconds); return
        once it is committed.

        Concurrent callers share transactions (group commit): one of them writes
        every waiting event in one ``BEGIN IMMEDIATE`` … ``COMMIT`` while the
        others wait for it. A lone event is one autocommit INSERT (a
        single-statement transaction that takes the write lock first, like
        ``BEGIN IMMEDIATE``).

        Returns True if the event is in the spool, False if ``on_full`` dropped
        it (counted as ``dropped``). Raises :class:`SpoolFull` (``raise``, or
        ``block`` past ``block_timeout`` seconds), :class:`SpoolLocked`,
        :class:`SpoolClosed`.
        """
        return self._appender.append(uuid, body, now)

    # -- claim and settle -------------------------------------------------------

    def _due_rows(
        self, conn: sqlite3.Connection, now: float, limit: int, columns: str
    ) -> list[Any]:
        """Due pending rows, retries (oldest schedule first) before fresh rows
        (capture order). Fresh rows are found from an in-memory cursor, so rows
        already leased are not scanned again; the cursor restarts from the
        beginning when it finds nothing (ids are reused once the spool empties)."""
        rows = conn.execute(
            f"SELECT {columns} FROM events WHERE attempts > 0 AND state = 'pending'"
            " AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
            (now, limit),
        ).fetchall()
        if len(rows) < limit:
            fresh_sql = (
                f"SELECT {columns} FROM events WHERE id > ? AND attempts = 0"
                " AND state = 'pending' ORDER BY id LIMIT ?"
            )
            fresh = conn.execute(fresh_sql, (self._cursor, limit - len(rows))).fetchall()
            if not fresh and self._cursor:
                self._cursor = 0
                fresh = conn.execute(fresh_sql, (0, limit - len(rows))).fetchall()
            rows += fresh
        return rows

    def claim(
        self,
        now: float,
        *,
        max_events: int,
        max_bytes: int,
        lease_ttl: float,
        max_event_age: float | None = None,
        owner: Owner | None = None,
    ) -> Batch | None:
        """Lease due pending events to one sender: retries whose backoff is over
        first, then fresh events in capture order.

        At most ``max_events`` events and ``max_bytes`` bytes of bodies (always at
        least one event). The lease lasts ``lease_ttl`` seconds. Due events older
        than ``max_event_age`` seconds are dead-lettered (``expired``) instead.
        Returns None when nothing is due. Expired events do not end a claim: it
        looks further (up to a bound per transaction) for events to lease.
        ``owner`` (default: this process) is recorded with the lease.
        """
        owner = owner or current_owner()
        with self._db.write() as conn:
            for _ in range(_EXPIRE_ROUNDS):
                rows = self._due_rows(
                    conn, now, max_events, "id, uuid, body, attempts, captured_at"
                )
                if not rows:
                    return None
                taken: list[Row] = []
                expired: list[int] = []
                total = 0
                for row_id, uuid, body, attempts, captured_at in rows:
                    if max_event_age is not None and captured_at < now - max_event_age:
                        expired.append(row_id)
                        continue
                    if taken and total + len(body) > max_bytes:
                        break
                    total += len(body)
                    taken.append(Row(row_id, uuid, bytes(body), attempts, captured_at))
                if expired:
                    self._kill(
                        conn, expired, None, now, "expired", None, "older than max_event_age"
                    )
                if taken:
                    break
            else:
                return None
            fresh = [r.id for r in taken if r.attempts == 0]
            if fresh:
                self._cursor = max(self._cursor, max(fresh))
            token = secrets.token_hex(16)
            expires_at = now + lease_ttl
            conn.execute(
                "INSERT INTO leases (token, host, pid, pid_start, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (token, owner.host, owner.pid, owner.start, now, expires_at),
            )
            conn.execute(
                f"UPDATE events SET state = 'leased', lease_token = ?, lease_expires_at = ?"
                f" WHERE {IN_IDS}",
                (token, expires_at, ids_json([r.id for r in taken])),
            )
        return Batch(token, tuple(taken), expires_at)

    def _forget_lease(self, conn: sqlite3.Connection, token: str) -> None:
        conn.execute(
            "DELETE FROM leases WHERE token = ?"
            " AND NOT EXISTS (SELECT 1 FROM events WHERE lease_token = ?)",
            (token, token),
        )

    def ack(self, token: str, ids: Sequence[int]) -> int:
        """Delivered: delete these rows if ``token`` still holds their lease.

        Returns the number deleted (0 for a stale token: the rows were re-leased).
        """
        with self._db.write() as conn:
            n = conn.execute(
                f"DELETE FROM events WHERE {IN_IDS} AND lease_token = ?",
                (ids_json(ids), token),
            ).rowcount
            add_counter(conn, "delivered", n)
            self._forget_lease(conn, token)
        self._appender.signal_space()
        return n

    def reschedule(
        self,
        token: str,
        ids: Sequence[int],
        now: float,
        next_attempt_at: float,
        error: str,
        max_attempts: int | None = None,
        status: int | None = None,
    ) -> tuple[int, int]:
        """A failed attempt: back to pending, ``attempts += 1``, due at ``next_attempt_at``.

        Rows reaching ``max_attempts`` are dead-lettered (``max_attempts``)
        instead, keeping the HTTP ``status`` of the last attempt (None: no
        response) and ``error``. Returns (rescheduled, dead); (0, 0) for a stale token.
        """
        with self._db.write() as conn:
            updated = conn.execute(
                "UPDATE events SET state = 'pending', lease_token = NULL,"
                " lease_expires_at = NULL, attempts = attempts + 1, next_attempt_at = ?,"
                " last_error = ?, first_failed_at = coalesce(first_failed_at, ?),"
                f" last_failed_at = ? WHERE {IN_IDS} AND lease_token = ?"
                " RETURNING id, attempts",
                (next_attempt_at, error[:1000], now, now, ids_json(ids), token),
            ).fetchall()
            dead_ids = []
            if max_attempts is not None:
                dead_ids = [row_id for row_id, attempts in updated if attempts >= max_attempts]
                self._kill(conn, dead_ids, None, now, "max_attempts", status, error)
            self._forget_lease(conn, token)
        return len(updated) - len(dead_ids), len(dead_ids)

    def release(self, token: str, ids: Sequence[int] | None = None) -> int:
        """Give leased rows back, due now, without counting an attempt.

        ``ids`` None releases the whole lease. Returns the number released.
        """
        with self._db.write() as conn:
            n = self._release(conn, token, ids)
            self._forget_lease(conn, token)
        return n

    def _release(self, conn: sqlite3.Connection, token: str, ids: Sequence[int] | None) -> int:
        where = "lease_token = ?" if ids is None else f"{IN_IDS} AND lease_token = ?"
        params: tuple[Any, ...] = (token,) if ids is None else (ids_json(ids), token)
        n = int(
            conn.execute(
                f"UPDATE events SET state = 'pending', lease_token = NULL,"
                f" lease_expires_at = NULL WHERE {where}",
                params,
            ).rowcount
        )
        if n:
            self._cursor = 0
        return n

    def dead_letter(
        self,
        token: str,
        ids: Sequence[int],
        now: float,
        reason: str,
        status: int | None = None,
        detail: str = "",
    ) -> int:
        """Move leased rows to the dead letters with a ``reason`` (``too_large``,
        ``rejected``, …), the HTTP ``status`` if any and a ``detail`` (a body
        excerpt). Returns the number dead-lettered (0 for a stale token)."""
        with self._db.write() as conn:
            n = self._kill(conn, ids, token, now, reason, status, detail, tried=1)
            self._forget_lease(conn, token)
        return n

    def _kill(
        self,
        conn: sqlite3.Connection,
        ids: Sequence[int],
        token: str | None,
        now: float,
        reason: str,
        status: int | None,
        detail: str,
        tried: int = 0,
    ) -> int:
        """Move rows ``ids`` (held by ``token``, or unleased when None) to dead_events;
        ``tried`` is 1 when a request that was not yet counted in ``attempts`` failed."""
        if not ids:
            return 0
        params: tuple[str, ...]
        if token is None:
            where, params = f"{IN_IDS} AND lease_token IS NULL", (ids_json(ids),)
        else:
            where, params = f"{IN_IDS} AND lease_token = ?", (ids_json(ids), token)
        n = int(
            conn.execute(
                "INSERT INTO dead_events (event_id, uuid, body, size, captured_at, attempts,"
                " reason, status, detail, first_failed_at, last_failed_at, dead_at)"
                " SELECT id, uuid, body, size, captured_at, attempts + ?, ?, ?, ?,"
                f" coalesce(first_failed_at, ?), ?, ? FROM events WHERE {where}",
                (tried, reason, status, detail[:1000], now, now, now, *params),
            ).rowcount
        )
        conn.execute(f"DELETE FROM events WHERE {where}", params)
        add_counter(conn, "dead", n)
        if n:
            log.warning("dead-lettered %d event(s): %s %s", n, reason, status or "")
        return n

    def extend(self, token: str, expires_at: float) -> bool:
        """Extend a lease to ``expires_at``; False if the token no longer holds it."""
        with self._db.write() as conn:
            n = conn.execute(
                "UPDATE leases SET expires_at = ? WHERE token = ?", (expires_at, token)
            ).rowcount
            conn.execute(
                "UPDATE events SET lease_expires_at = ? WHERE lease_token = ?",
                (expires_at, token),
            )
        return n > 0

    def reclaim(self, now: float) -> int:
        """Take back leases that expired by ``now`` (UTC seconds), or whose owner
        process on this host is gone (at once, whatever their expiry).

        A live owner's lease is never taken before it expires; a lease extended
        or settled while this runs is left alone. Leased rows whose lease record
        is missing are taken back once their expiry passed. Returns the number of
        events made pending again.
        """
        # Rows that other processes gave back may lie behind the fresh-row
        # cursor; this runs every few seconds, so they wait at most that long.
        self._cursor = 0
        self._db.follow_file()
        with self._db.read() as conn:
            leases = conn.execute(
                "SELECT token, host, pid, pid_start, expires_at FROM leases"
            ).fetchall()
            orphans = conn.execute(
                "SELECT DISTINCT lease_token FROM events WHERE lease_token IS NOT NULL"
                " AND lease_expires_at <= ? AND lease_token NOT IN (SELECT token FROM leases)",
                (now,),
            ).fetchall()
        # Owner checks read /proc: done before the write transaction, not in it.
        owner_gone = {
            token
            for token, host, pid, start, expires_at in leases
            if expires_at > now and not owner_alive(Owner(host, pid, start))
        }
        candidates = [token for token, *_, expires_at in leases if expires_at <= now]
        candidates += [*owner_gone, *(token for (token,) in orphans)]
        if not candidates:
            return 0
        n = taken = 0
        with self._db.write() as conn:
            for token in candidates:
                row = conn.execute(
                    "SELECT expires_at FROM leases WHERE token = ?", (token,)
                ).fetchone()
                if row is not None and row[0] > now and token not in owner_gone:
                    continue  # extended since it was read: its owner is still at work
                n += self._release(conn, token, None)
                conn.execute("DELETE FROM leases WHERE token = ?", (token,))
                taken += 1
        if n:
            log.info("reclaimed %d event(s) from %d abandoned lease(s)", n, taken)
        return n

    # -- reading -----------------------------------------------------------------

    def watermark(self, now: float) -> Watermark:
        """A flush barrier: (newest event id, ``now``). The events "captured before"
        it are those with ``id <= wm[0]`` and ``captured_at <= wm[1]`` (ids are
        reused once the spool empties; the time tells those apart)."""
        with self._db.read() as conn:
            row = conn.execute("SELECT max(id) FROM events").fetchone()
        return (int(row[0] or 0), now)

    def any_open_through(self, watermark: Watermark) -> bool:
        """True while an event inside ``watermark`` is pending or leased.

        O(log n), unlike :meth:`states_through`: the lowest remaining id answers it.
        """
        last_id, at = watermark
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT 1 FROM events WHERE id <= ? AND captured_at <= ? LIMIT 1", (last_id, at)
            ).fetchone()
        return row is not None

    def dead_through(self, watermark: Watermark) -> int:
        """How many dead letters lie inside ``watermark`` (an index range count)."""
        last_id, at = watermark
        with self._db.read() as conn:
            return int(
                conn.execute(
                    "SELECT count(*) FROM dead_events WHERE event_id <= ? AND captured_at <= ?",
                    (last_id, at),
                ).fetchone()[0]
            )

    def states_through(self, watermark: Watermark) -> dict[str, int]:
        """Counts by state (pending, leased, dead) of the events inside ``watermark``
        (a scan of the events table, in one read snapshot)."""
        with self._db.read(snapshot=True) as conn:
            return _states_through(conn, watermark)

    def due(self, now: float, limit: int) -> tuple[int, float | None, int]:
        """For the dispatcher: (how many pending events are due, up to ``limit``;
        when the first of them became due; the most attempts among them)."""
        with self._db.read() as conn:
            rows = self._due_rows(conn, now, limit, "next_attempt_at, attempts")
        if not rows:
            return 0, None, 0
        return len(rows), min(float(r[0]) for r in rows), max(int(r[1]) for r in rows)

    def next_due_at(self) -> float | None:
        """When the earliest retry becomes due (UTC seconds), or None.
        (Fresh events are due as soon as they are captured.)"""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT min(next_attempt_at) FROM events WHERE attempts > 0 AND state = 'pending'"
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def counters(self) -> dict[str, int]:
        """The persisted totals: delivered, dead, dropped, … (0 when never counted)."""
        with self._db.read() as conn:
            return self._counters(conn)

    @staticmethod
    def _counters(conn: sqlite3.Connection) -> dict[str, int]:
        found = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        base = dict.fromkeys(("delivered", "dead", "dropped", "filtered"), 0)
        return base | {str(k): int(v) for k, v in found.items()}

    def stats(self, now: float) -> SpoolStats:
        """A :class:`SpoolStats` snapshot at ``now`` (UTC seconds): one read
        transaction, one scan of the events table."""
        with self._db.read(snapshot=True) as conn:
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
            counters = self._counters(conn)
        wal = files.side_files(self.path)[0]
        return SpoolStats(
            path=str(self.path),
            schema_version=version,
            counts=counts,
            bytes=sizes,
            oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
            next_attempt_in=None if next_at is None else max(0.0, next_at - now),
            dead_reasons={str(k): int(v) for k, v in reasons.items()},
            counters=counters,
            file_bytes=self.path.stat().st_size if self.path.exists() else 0,
            wal_bytes=wal.stat().st_size if wal.exists() else 0,
        )

    # -- operators' views and repairs (SQL in spool/maintenance.py) ---------------

    def events(self, where: Filter | None = None, *, now: float) -> Iterator[SpooledEvent]:
        """Every event matching ``where`` (None: all) at ``now`` (UTC seconds, for
        ``older_than``): live events in capture order, then dead letters in the
        order they died. Streams from one read snapshot on a private connection,
        held until the iterator is exhausted or closed; writers are never blocked.
        Raises :class:`SpoolClosed`."""
        with self.snapshot() as snap:
            yield from snap.events(where or Filter(), now)

    def tail(
        self, where: Filter | None = None, limit: int = 20, *, now: float
    ) -> list[SpooledEvent]:
        """The ``limit`` most recent events matching ``where``, newest first: live
        events by capture time, dead letters by the time they were dead-lettered."""
        if limit < 1:
            return []
        with self._db.read(snapshot=True) as conn:
            return maintenance.tail(conn, where or Filter(), limit, now)

    def count_dead(self, where: Filter | None = None, *, now: float) -> int:
        """How many dead letters match ``where`` (None: all)."""
        with self._db.read() as conn:
            return maintenance.count_dead(conn, where or Filter(), now)

    def replay(self, where: Filter | None = None, *, now: float) -> int:
        """Move the dead letters matching ``where`` back to pending, due at ``now``,
        with ``attempts``, errors and the ``max_event_age`` clock reset (their
        ``captured_at`` becomes ``now``; the event's own timestamp is unchanged).
        Returns how many; counted as ``replayed``. Raises :class:`SpoolLocked`."""
        with self._db.write() as conn:
            return maintenance.replay(conn, where or Filter(), now)

    def purge(self, where: Filter | None = None, *, now: float) -> int:
        """Delete the dead letters matching ``where``; return how many, counted as
        ``purged``. Raises :class:`SpoolLocked`."""
        with self._db.write() as conn:
            return maintenance.purge(conn, where or Filter(), now)

    def import_events(self, events: Sequence[tuple[str, bytes]], *, now: float) -> int:
        """Add encoded ``(uuid, body)`` events as pending, due at ``now``, in one
        transaction; uuids already in the spool in any state, or repeated, are
        skipped. ``max_spool_bytes``/``on_full`` do not apply. Returns how many
        were added, counted as ``imported``. Raises :class:`SpoolLocked`."""
        with self._db.write() as conn:
            return maintenance.insert_new(conn, events, now)

    def checkpoint(self) -> bool:
        """``PRAGMA wal_checkpoint(TRUNCATE)``: fold the WAL back and truncate it.

        Call when idle. It waits at most :data:`CHECKPOINT_BUSY_TIMEOUT` seconds
        for other connections (it holds this spool's writer lock meanwhile); a
        busy reader or writer makes it a partial, harmless checkpoint. Returns
        True if the whole WAL was folded back.
        """
        return self._db.checkpoint()
