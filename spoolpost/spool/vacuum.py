"""Giving disk space back: how big the spool file is, the bounded
``incremental_vacuum`` steps the delivery thread takes when it is idle, and the
one full ``VACUUM`` of ``spoolpost compact``.

A spool made by this spoolpost is created with ``PRAGMA auto_vacuum=INCREMENTAL``
(:func:`spoolpost.spool.migrations.prepare_new_file`), so that the pages its
deleted rows leave on the freelist can be cut off the end of the file a few at a
time. SQLite allows switching an existing database from ``auto_vacuum=NONE`` only
by a full ``VACUUM`` ("PRAGMA auto_vacuum", sqlite.org/pragma.html#pragma_auto_vacuum).
A spool made before has that one ``VACUUM`` done for it automatically once it
holds little (at most :data:`CONVERT_MAX_BYTES` of live pages, as right after a
drain, so the copy takes a few milliseconds), or at once by ``spoolpost compact``.
See docs/architecture.md, "Space and long writes".
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spoolpost.errors import SpoolLocked, SpoolpostError

if TYPE_CHECKING:
    from spoolpost.spool.db import Database

log = logging.getLogger("spoolpost")

#: ``PRAGMA auto_vacuum`` values, by name (sqlite.org/pragma.html#pragma_auto_vacuum).
AUTO_VACUUM_MODES = {0: "none", 1: "full", 2: "incremental"}
#: Free pages are worth giving back once they are more than this share of the file ...
FREE_SHARE = 0.25
#: ... and more than this many bytes.
FREE_MIN_BYTES = 1024 * 1024
#: Seconds one step may hold the write lock (it frees pages until this is spent).
STEP_SECONDS = 0.005
#: Seconds a caller waits between two steps, so that captures in other processes
#: get the lock (SQLite's busy handler polls; it does not queue).
STEP_PAUSE = 0.02
#: Seconds a step waits for the write lock before giving up until the next one.
STEP_BUSY_TIMEOUT = 0.1
#: Live bytes up to which an ``auto_vacuum=NONE`` spool is converted by the
#: delivery thread on its own (one ``VACUUM`` copies them, a few milliseconds).
CONVERT_MAX_BYTES = 4 * 1024 * 1024
#: ``PRAGMA incremental_vacuum(N)`` argument per call. Python's ``sqlite3`` steps a
#: statement without result columns once, and each step frees one page, so a step
#: calls it in a loop and reads ``freelist_count`` to know what it freed.
_PAGES_PER_CALL = 16
_CALLS_PER_CHECK = 16


@dataclass(frozen=True)
class FileUsage:
    """The spool file's size: ``page_size`` (bytes), ``page_count`` (pages in the
    database file, after the WAL is folded back), ``free_pages`` (on the
    freelist: space the file holds but no row uses), ``auto_vacuum`` (``none``,
    ``full`` or ``incremental``) and ``wal_bytes`` (the ``-wal`` file's size)."""

    page_size: int
    page_count: int
    free_pages: int
    auto_vacuum: str
    wal_bytes: int

    @property
    def file_bytes(self) -> int:
        """Bytes of the database (``page_count * page_size``)."""
        return self.page_count * self.page_size

    @property
    def free_bytes(self) -> int:
        """Bytes of free pages."""
        return self.free_pages * self.page_size

    @property
    def used_bytes(self) -> int:
        """Bytes of pages in use."""
        return self.file_bytes - self.free_bytes

    @property
    def worth_giving_back(self) -> bool:
        """True when free pages exceed :data:`FREE_SHARE` of the file and
        :data:`FREE_MIN_BYTES`."""
        return self.free_bytes > FREE_MIN_BYTES and self.free_pages > FREE_SHARE * self.page_count


@dataclass(frozen=True)
class Compacted:
    """What ``spoolpost compact`` did: the file's bytes (database plus ``-wal``)
    ``before`` and ``after``; ``converted``: the spool was switched to incremental
    ``auto_vacuum`` by this ``VACUUM``."""

    before: int
    after: int
    converted: bool


def _pragma(conn: sqlite3.Connection, name: str) -> int:
    return int(conn.execute(f"PRAGMA {name}").fetchone()[0])


def usage(db: Database) -> FileUsage:
    """The :class:`FileUsage` of ``db``'s file, read on its read connection."""
    with db.read() as conn:
        page_size, pages, free, mode = (
            _pragma(conn, n) for n in ("page_size", "page_count", "freelist_count", "auto_vacuum")
        )
    wal = db.path.with_name(db.path.name + "-wal")
    try:
        wal_bytes = wal.stat().st_size
    except OSError:
        wal_bytes = 0
    return FileUsage(page_size, pages, free, AUTO_VACUUM_MODES.get(mode, str(mode)), wal_bytes)


@contextlib.contextmanager
def _writer(db: Database, busy_timeout: float) -> Iterator[sqlite3.Connection]:
    """The write connection under ``db.wlock``, waiting at most ``busy_timeout``
    seconds for other processes' locks meanwhile."""
    with db.wlock:
        conn = db.writer()
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        try:
            yield conn
        finally:
            with contextlib.suppress(sqlite3.Error):  # a connection dropped by abort()
                conn.execute(f"PRAGMA busy_timeout={int(db.busy_timeout * 1000)}")


def vacuum_step(db: Database, seconds: float | None = None) -> int:
    """One ``BEGIN IMMEDIATE`` … ``COMMIT`` of ``PRAGMA incremental_vacuum``
    calls (at least one round of them), stopped once ``seconds`` (default
    :data:`STEP_SECONDS`) are spent or the freelist is empty. Returns the free
    pages left. Raises :class:`SpoolLocked` when another process holds the write
    lock past :data:`STEP_BUSY_TIMEOUT`."""
    budget = STEP_SECONDS if seconds is None else seconds
    with _writer(db, STEP_BUSY_TIMEOUT) as conn:
        try:
            db.begin(conn)
            started = time.monotonic()
            left = _pragma(conn, "freelist_count")
            while left:
                for _ in range(_CALLS_PER_CHECK):
                    conn.execute(f"PRAGMA incremental_vacuum({_PAGES_PER_CALL})")
                left = _pragma(conn, "freelist_count")
                if time.monotonic() - started >= budget:
                    break
            conn.execute("COMMIT")
        except BaseException:
            db.abort(conn)
            raise
    return left


def full_vacuum(db: Database, busy_timeout: float) -> bool:
    """``PRAGMA auto_vacuum=INCREMENTAL`` then ``VACUUM`` (outside any
    transaction, as SQLite requires), then a WAL checkpoint. Waits up to
    ``busy_timeout`` seconds for the write lock. Returns True if the spool was
    switched from another ``auto_vacuum`` mode to incremental."""
    with _writer(db, busy_timeout) as conn:
        if conn.in_transaction:  # left open by an interrupted caller
            db.abort(conn)
            conn = db.writer()
        converted = _pragma(conn, "auto_vacuum") != 2
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("VACUUM")
    db.checkpoint()
    return converted


def fold_wal(db: Database) -> None:
    """``PRAGMA wal_checkpoint(PASSIVE)`` on this process's write connection: copy
    what the WAL holds into the database file without taking the write lock or
    waiting for anyone, so that the WAL is restarted small at the next write.
    A bulk writer calls it after each chunk, so that the commit of a capture in
    another process never finds the WAL past ``wal_autocheckpoint`` (1000 pages)
    and does that checkpoint's copy and fsync itself."""
    with db.wlock:
        db.writer().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def file_bytes(db: Database) -> int:
    """Bytes on disk of the spool file and its ``-wal``."""
    total = 0
    for path in (db.path, db.path.with_name(db.path.name + "-wal")):
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


class VacuumMethods:
    """Mixed into :class:`~spoolpost.spool.Spool` (through
    :class:`~spoolpost.spool.operator.OperatorMethods`), which provides ``_db``."""

    _db: Database
    #: An episode of giving back is under way (begun at :data:`FREE_SHARE`, run
    #: until the freelist is empty).
    _giving_back: bool = False
    _giving_back_from: int = 0

    def file_usage(self) -> FileUsage:
        """How big the spool file is and how much of it is free (:class:`FileUsage`).
        Raises :class:`SpoolClosed`."""
        return usage(self._db)

    def give_back_space(self) -> float | None:
        """One bounded step of giving free pages back to the filesystem; for the
        delivery thread when it is idle, and the end of a drain.

        An episode begins when free pages exceed :data:`FREE_SHARE` of the file
        and :data:`FREE_MIN_BYTES`; each call then frees pages from the end of
        the file for at most :data:`STEP_SECONDS` under the write lock, until the
        freelist is empty; the last call checkpoints the WAL
        (``wal_checkpoint(TRUNCATE)``), which cuts the file to its new size, and
        logs one INFO line. A spool made before incremental ``auto_vacuum``
        (``auto_vacuum=NONE``) is converted by one ``VACUUM`` instead, once its
        live pages are at most :data:`CONVERT_MAX_BYTES`.

        Returns the seconds to wait before the next call (:data:`STEP_PAUSE`)
        when pages were freed and more remain, else None. Never raises: a
        failure (another process holding the lock, a closed spool) is logged at
        DEBUG and the step is taken again at a later call.
        """
        try:
            return STEP_PAUSE if self._give_back_step() else None
        except Exception:
            log.debug("spool %s: giving space back skipped", self._db.path, exc_info=True)
            return None

    def _give_back_step(self) -> bool:
        if not self._giving_back:
            now = self.file_usage()
            if not now.worth_giving_back:
                return False
            if now.auto_vacuum == "none":
                if now.used_bytes <= CONVERT_MAX_BYTES:
                    self._convert(now)
                return False
            self._giving_back, self._giving_back_from = True, file_bytes(self._db)
        if vacuum_step(self._db):
            return True
        self._giving_back = False
        self._db.checkpoint()
        after = file_bytes(self._db)
        log.info(
            "spool %s gave back %.1f MiB of free space (%d -> %d bytes)",
            self._db.path,
            max(0, self._giving_back_from - after) / 2**20,
            self._giving_back_from,
            after,
        )
        return False

    def _convert(self, now: FileUsage) -> None:
        before = file_bytes(self._db)
        full_vacuum(self._db, STEP_BUSY_TIMEOUT)
        log.info(
            "spool %s switched to incremental auto_vacuum by one VACUUM of %d live bytes "
            "(%d -> %d bytes); from now on it gives space back as it drains",
            self._db.path,
            now.used_bytes,
            before,
            file_bytes(self._db),
        )

    def compact(self) -> Compacted:
        """One full ``VACUUM``: rewrite the spool without free pages, and switch a
        spool made before incremental ``auto_vacuum`` to it. Then a WAL checkpoint.

        It holds the spool's write lock for the whole copy (seconds for a large
        backlog): captures in every process wait meanwhile, up to their
        ``busy_timeout``, and those that wait longer follow ``on_full`` or raise
        :class:`SpoolLocked`. It needs free disk space of up to twice the live
        data (a temporary copy, then the new pages in the WAL). Waits for the
        write lock up to the spool's ``busy_timeout``. Returns a
        :class:`Compacted`. Raises :class:`SpoolLocked`, :class:`SpoolClosed`,
        :class:`SpoolpostError` for any other failure (e.g. the disk is full; a
        ``VACUUM`` that fails leaves the spool as it was).
        """
        before = file_bytes(self._db)
        try:
            converted = full_vacuum(self._db, self._db.busy_timeout)
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise SpoolLocked(f"spool {self._db.path} stayed locked: {exc}") from exc
            raise SpoolpostError(
                f"compact of spool {self._db.path} failed: {exc}; the spool is unchanged"
            ) from exc
        self._giving_back = False
        return Compacted(before, file_bytes(self._db), converted)
