"""The :class:`Spool` facade: one spool file, and the storage seam everything
above it (client, dispatcher, CLI) talks to.

The surface, each method documented here and implemented in one module:

- :meth:`Spool.append` — write one event (group commit across threads;
  ``max_spool_bytes``/``on_full``) — :mod:`~spoolpost.spool.append`;
- :meth:`Spool.claim` — lease a batch of due events to one sender;
  :meth:`Spool.ack`, :meth:`Spool.reschedule`, :meth:`Spool.dead_letter`,
  :meth:`Spool.release`, :meth:`Spool.extend` — settle or keep a lease, by token;
  :meth:`Spool.reclaim` — take back leases that expired or whose owner died;
  :meth:`Spool.due` — what a claim would find — :mod:`~spoolpost.spool.leases`;
- :meth:`Spool.watermark`, :meth:`Spool.any_open_through`,
  :meth:`Spool.dead_through`, :meth:`Spool.states_through` — the flush barrier
  (:mod:`~spoolpost.spool.barriermethods`);
  :meth:`Spool.stats`, :meth:`Spool.counters`, :meth:`Spool.next_due_at`,
  :meth:`Spool.snapshot`; :meth:`Spool.bind_key`, :meth:`Spool.meta`,
  :meth:`Spool.add_counter` — :mod:`~spoolpost.spool.queries`;
- :meth:`Spool.events`, :meth:`Spool.tail`, :meth:`Spool.count_dead`,
  :meth:`Spool.replay`, :meth:`Spool.purge`, :meth:`Spool.import_events` —
  operators' views and repairs — :mod:`~spoolpost.spool.maintenance`;
- :meth:`Spool.checkpoint`, :meth:`Spool.close` — :mod:`~spoolpost.spool.db`
  (connections, transactions, reopening, fork); files at the path:
  :mod:`~spoolpost.spool.files`.

Rules kept underneath: every write transaction starts with ``BEGIN IMMEDIATE``
and does no network I/O; a settle call carrying a stale lease token changes
nothing; stored times are wall-clock UTC seconds passed in as ``now``; no
connection leaves the spool.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from spoolpost.errors import ConfigError
from spoolpost.spool import queries
from spoolpost.spool.append import (
    DEFAULT_BLOCK_TIMEOUT,
    DEFAULT_MAX_SPOOL_BYTES,
    DEFAULT_ON_FULL,
    ON_FULL_POLICIES,
    Appender,
    OnFull,
)
from spoolpost.spool.barriermethods import BarrierMethods
from spoolpost.spool.conditions import DiskConditions
from spoolpost.spool.db import (
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_DURABILITY,
    DURABILITY_MODES,
    Database,
    Durability,
)
from spoolpost.spool.leases import Batch, Row
from spoolpost.spool.metamethods import MetaMethods
from spoolpost.spool.operator import OperatorMethods
from spoolpost.spool.owner import Owner
from spoolpost.spool.queries import SpoolSnapshot, SpoolStats
from spoolpost.spool.readonly import ReadOnlyLeases
from spoolpost.spool.settlement import Settled, Settlement, settle
from spoolpost.spool.space import DEFAULT_MIN_FREE_BYTES, Floor, SpaceGuard
from spoolpost.spool.stamps import RequestStamp, Stamper


class Spool(BarrierMethods, MetaMethods, OperatorMethods):
    """One spool file. Thread-safe; one instance per process and path is enough.

    ``path``: the SQLite file. It is created ``0600``, and an existing file (and
    its -wal, -shm) that group or others may access is made ``0600`` (logged at
    INFO). Missing folders are created ``0700``; existing ones are left alone.
    ``durability``: ``"process"`` (WAL + ``synchronous=NORMAL``: survives a crash
    of the process) or ``"power"`` (``synchronous=FULL``: survives power loss).
    ``max_spool_bytes``: bound on the file's used pages (default 512 MiB).
    ``min_free_bytes``: free space capture leaves on the filesystem (default 64
    MiB; 0: none); ``statvfs`` is read only when capture's space budget is read
    again (at most once a second below the floor).
    ``on_full``: ``drop_newest`` (default), ``drop_oldest``, ``block`` (up to
    ``block_timeout`` seconds, then :class:`SpoolFull`) or ``raise``; it also
    decides when the disk refuses a capture (full, read-only, permissions, I/O:
    drops are counted, :class:`SpoolUnwritable` is a :class:`SpoolFull`).
    ``busy_timeout``: seconds a writer waits for another process's write lock.

    Raises :class:`ConfigError` for bad settings, an empty path or a directory,
    or a file that cannot be opened (permissions, I/O; the message names the path
    and the OS error), :class:`UnsupportedFilesystem` on a network filesystem,
    :class:`SchemaTooNew` for a spool from a newer spoolpost, :class:`SpoolCorrupt`
    for a file that is not an SQLite database (a non-empty file without the
    SQLite header) or an SQLite database that is not a spool (both left
    untouched), :class:`SpoolLocked` when another process holds the file locked
    past ``busy_timeout``. A file found corrupt (opening, writing or reading) is moved
    aside to ``<path>.corrupt-<timestamp>``; a new spool takes its readable rows, as
    it does a file's deleted or replaced under it (one ERROR; docs/architecture.md).

    Delivery's writes (claim, ack, reschedule, release, dead-letter, settle, …)
    get through a full disk by giving up a reserve file next to the spool; a disk
    that still refuses them (or a read the disk refuses: a folder without
    permission) raises :class:`SpoolUnwritable`, never an ``sqlite3`` error (see
    docs/architecture.md, "The disk under the spool").

    Fork: a child process never uses the parent's connections; it closes its
    copies and reopens the spool on first use.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = DEFAULT_DURABILITY,
        max_spool_bytes: int = DEFAULT_MAX_SPOOL_BYTES,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        on_full: OnFull = DEFAULT_ON_FULL,
        block_timeout: float = DEFAULT_BLOCK_TIMEOUT,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        allow_network_fs: bool = False,
    ) -> None:
        if durability not in DURABILITY_MODES:
            raise ConfigError(f"durability must be one of {DURABILITY_MODES}, not {durability!r}")
        if on_full not in ON_FULL_POLICIES:
            raise ConfigError(f"on_full must be one of {ON_FULL_POLICIES}, not {on_full!r}")
        if max_spool_bytes <= 0:
            raise ConfigError(f"max_spool_bytes must be positive, not {max_spool_bytes!r}")
        if min_free_bytes < 0:
            raise ConfigError(f"min_free_bytes must be >= 0, not {min_free_bytes!r}")
        if busy_timeout < 0 or block_timeout < 0:
            raise ConfigError("busy_timeout and block_timeout must be >= 0 seconds")
        if not os.fspath(path):
            raise ConfigError("spool path is empty")
        self.path = Path(path).expanduser()
        if os.path.isdir(self.path):
            raise ConfigError(f"spool path {self.path} is a directory; give a file path")
        self.durability: Durability = durability
        self.max_spool_bytes = max_spool_bytes
        self.min_free_bytes = min_free_bytes
        self.on_full: OnFull = on_full
        self.block_timeout = block_timeout
        self.busy_timeout = busy_timeout
        self.allow_network_fs = allow_network_fs
        self._db = Database(
            self.path,
            durability=durability,
            busy_timeout=busy_timeout,
            allow_network_fs=allow_network_fs,
        )
        self._disk = DiskConditions(self.path)
        floor = Floor(self.path, min_free_bytes)
        self._appender = Appender(
            self._db,
            max_spool_bytes=max_spool_bytes,
            on_full=on_full,
            block_timeout=block_timeout,
            floor=floor,
            conditions=self._disk,
        )
        self._leases = ReadOnlyLeases(self._db)  # delivery goes on from a read-only spool
        self._leases.space = self._space = SpaceGuard(
            self.path, self._disk, floor, self.checkpoint, self._db.guarded
        )
        self._space.opening(self._db.open)

    # -- lifecycle ---------------------------------------------------------------

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[SpoolSnapshot]:
        """A :class:`SpoolSnapshot`: a private read connection holding one WAL
        snapshot, taken on entry, so that what it reads is the spool as it was
        then, whatever is written meanwhile. For counting a large spool while
        delivery already runs. Raises :class:`SpoolClosed`."""
        with self._db.snapshot() as conn:
            snap = SpoolSnapshot(conn, self.path)
            try:
                yield snap
            finally:
                snap.close()

    def close(self) -> None:
        """Close the connections. Idempotent. SQLite checkpoints the WAL into the
        file when the last connection to it (in any process) closes."""
        if self._db.closed:
            return
        self._leases.close()  # read-only delivery's memory written down, or a WARNING
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

    # -- append (group commit) -----------------------------------------------

    def append(self, uuid: str, body: bytes, now: float, lane: str | None = None) -> bool:
        """Write one encoded event (``now``: its capture time, UTC seconds; ``lane``:
        None, or :data:`~spoolpost.spool.sql.AI_LANE` for ``capture_ai``); return
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
        return self._appender.append(uuid, body, now, lane)

    @property
    def full(self) -> bool:
        """True in a full episode: from its WARNING (on_full acts) until room is back."""
        return self._appender.full_episode

    # -- claim and settle -------------------------------------------------------

    def set_on_expired(self, hook: Callable[[list[Row]], None] | None) -> None:
        """Call ``hook(rows)`` after a claim of this object dead-letters ``rows`` as
        ``expired`` (older than ``max_event_age``); it must not raise or block."""
        self._leases.on_expired = hook

    def claim(
        self,
        now: float,
        *,
        max_events: int,
        max_bytes: int,
        lease_ttl: float,
        max_event_age: float | None = None,
        owner: Owner | None = None,
        stamp: Stamper | None = None,
    ) -> Batch | None:
        """Lease due pending events to one sender: retries whose backoff is over
        first, then fresh events in capture order.

        At most ``max_events`` events and ``max_bytes`` bytes of bodies (always at
        least one event). The lease lasts ``lease_ttl`` seconds. Due events older
        than ``max_event_age`` seconds are dead-lettered (``expired``) instead.
        Returns None when nothing is due. Expired events do not end a claim: it
        looks further (up to a bound per transaction) for events to lease.
        ``owner`` (default: this process) is recorded with the lease.

        ``stamp(lane)``, when given, names the v1 request identity (request id,
        ``created_at``) of the batch's first request, or None for a lane sent
        without one: the claim stores it as :meth:`stamp_request` would, in its own
        transaction, and returns it as :attr:`Batch.stamp`. A batch not sent whole
        must give the stamp back (:meth:`release` ``unstamp``, :meth:`unstamp`).
        """
        return self._leases.claim(
            now,
            max_events=max_events,
            max_bytes=max_bytes,
            lease_ttl=lease_ttl,
            max_event_age=max_event_age,
            owner=owner,
            stamp=stamp,
        )

    def ack(self, token: str, ids: Sequence[int]) -> int:
        """Delivered: delete these rows if ``token`` still holds their lease.

        Returns the number deleted (0 for a stale token: the rows were re-leased).
        """
        n = self._leases.ack(token, ids)
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
        return self._leases.reschedule(
            token, ids, now, next_attempt_at, error, max_attempts, status
        )

    def release(self, token: str, ids: Sequence[int] | None = None, unstamp: bool = False) -> int:
        """Give leased rows back, due now, without counting an attempt.

        ``ids`` None releases the whole lease. ``unstamp``: the rows were never
        sent under the request identity their claim stored; it is taken back
        (see :meth:`unstamp`). Returns the number released.
        """
        return self._leases.release(token, ids, unstamp)

    def unstamp(self, token: str, ids: Sequence[int], forget: bool = False) -> None:
        """Take back the request identity a claim stored on rows ``token`` holds,
        for a request never sent: one attempt fewer, and no identity when it was
        their first. Their next request is stamped by :meth:`stamp_request`.
        ``forget``: drop the identity whatever its count (a split request: each
        part sent after is a new request, attempt 1)."""
        self._leases.unstamp(token, ids, forget)

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
        return self._leases.dead_letter(token, ids, now, reason, status, detail)

    def settle(
        self,
        token: str,
        settlement: Settlement,
        *,
        now: float,
        next_attempt_at: float,
        error: str,
        max_attempts: int | None = None,
        status: int | None = None,
    ) -> Settled:
        """Per-row outcomes of one answer, in one transaction (see
        :class:`~spoolpost.spool.settlement.Settlement`): delete, reschedule (due at
        ``next_attempt_at``, ``error`` as ``last_error``; ``max_attempts`` ends in
        the dead state), dead-letter (with HTTP ``status``). Rows no longer held by
        ``token`` are untouched. Returns the counts."""
        settled = self._leases.settle_or_remember(
            token,
            settlement,
            lambda: self._space.run(
                lambda: settle(
                    self._db,
                    self._leases,
                    token,
                    settlement,
                    now=now,
                    next_attempt_at=next_attempt_at,
                    error=error,
                    max_attempts=max_attempts,
                    status=status,
                ),
                frees=True,
            ),
            now=now,
            next_attempt_at=next_attempt_at,
            error=error,
            max_attempts=max_attempts,
            status=status,
        )
        if settled.delivered or settled.dead:
            self._appender.signal_space()
        return settled

    def stamp_request(
        self, token: str, ids: Sequence[int], request_id: str, created_at: str
    ) -> RequestStamp | None:
        """Before a v1 POST: give rows held by ``token`` a stored request identity
        (``request_id``, ``created_at``) unless they have one, and count one more
        attempt. Returns the identity to send (a retry keeps its id, created_at
        and goes on counting, across restarts), or None for a stale token."""
        return self._leases.stamp_request(token, ids, request_id, created_at)

    def extend(self, token: str, expires_at: float) -> bool:
        """Extend a lease to ``expires_at``; False if the token no longer holds it."""
        return self._leases.extend(token, expires_at)

    def reclaim(self, now: float) -> int:
        """Take back leases that expired by ``now`` (UTC seconds), or whose owner
        process on this host is gone (at once, whatever their expiry).

        A live owner's lease is never taken before it expires; a lease extended
        or settled while this runs is left alone. Leased rows whose lease record
        is missing are taken back once their expiry passed. Returns the number of
        events made pending again.
        """
        return self._leases.reclaim(now)

    # -- reading -----------------------------------------------------------------

    def due(self, now: float, limit: int) -> tuple[int, float | None, int]:
        """For the dispatcher: (how many pending events are due, up to ``limit``;
        when the first of them became due; the most attempts among them)."""
        return self._leases.due(now, limit)

    def next_due_at(self) -> float | None:
        """When the earliest retry becomes due (UTC seconds), or None.
        (Fresh events are due as soon as they are captured.)"""
        return queries.next_due_at(self._db)

    def earliest_due(self, now: float) -> tuple[float, str | None] | None:
        """When the first live event can be sent (UTC seconds; ``now`` if a fresh
        event is pending) and why not before (the retry's ``last_error``, or a
        lease held by another process), or None when no event is live."""
        return queries.earliest_due(self._db, now)

    def counters(self) -> dict[str, int]:
        """The persisted totals: delivered, dead, dropped, … (0 when never counted),
        with drops the disk refused to count yet (kept in memory until it takes them)."""
        return self._disk.counted(queries.counters(self._db))

    def stats(self, now: float) -> SpoolStats:
        """A :class:`SpoolStats` snapshot at ``now`` (UTC seconds): one read
        transaction, one scan of the events table."""
        return queries.stats(self._db, now)

    def checkpoint(self) -> bool:
        """``PRAGMA wal_checkpoint(TRUNCATE)``: fold the WAL back and truncate it.

        Call when idle. It waits at most :data:`CHECKPOINT_BUSY_TIMEOUT` seconds
        for other connections (it holds this spool's writer lock meanwhile); a
        busy reader or writer makes it a partial, harmless checkpoint. Returns
        True if the whole WAL was folded back.
        """
        return self._db.checkpoint()
