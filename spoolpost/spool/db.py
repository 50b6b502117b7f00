"""The spool's SQLite connections: opening, pragmas, transactions, reopening, fork.

:class:`Database` holds a write connection and a read connection to one spool
file, each behind its own lock, and hands them out only inside
:meth:`Database.write` (``BEGIN IMMEDIATE`` … ``COMMIT``; a busy lock past
``busy_timeout`` raises :class:`SpoolLocked`) and :meth:`Database.read`. The
rules kept here: a write transaction does no network I/O and is never left
open; a connection never crosses a fork (the child closes its copies and
reopens on first use); a file SQLite finds corrupt is moved aside and a new
spool started (see docs/architecture.md, "Failure policy").
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from spoolpost.errors import ConfigError, SpoolClosed, SpoolCorrupt, SpoolLocked
from spoolpost.spool import files, migrations
from spoolpost.spool.conditions import refusal
from spoolpost.spool.switch import BUSY_CODES, CORRUPT_CODES, FileSwitch, is_corrupt, recovering

log = logging.getLogger("spoolpost")

Durability = Literal["process", "power"]
DURABILITY_MODES: tuple[str, ...] = ("process", "power")
DEFAULT_BUSY_TIMEOUT = 10.0
DEFAULT_DURABILITY: Durability = "process"
#: WAL growth bound: SQLite truncates the -wal file to this after a checkpoint.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
#: Seconds a checkpoint may wait for other connections; it runs under the writer
#: lock, so it must never hold captures up for a whole ``busy_timeout``.
CHECKPOINT_BUSY_TIMEOUT = 0.1

__all__ = ["BUSY_CODES", "CORRUPT_CODES", "Database", "is_corrupt", "recovering"]

# Every open Database, so that one set of fork hooks serves them all without
# keeping any of them alive.
_LIVE: weakref.WeakSet[Database] = weakref.WeakSet()


def _before_fork() -> None:
    for db in list(_LIVE):
        db._hold_for_fork()


def _after_fork_in_parent() -> None:
    for db in list(_LIVE):
        db._release_after_fork()


def _after_fork_in_child() -> None:
    for db in list(_LIVE):
        db._after_fork_in_child()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


class Database(FileSwitch):
    """The connections to the spool file ``path``; thread-safe.

    ``durability``: ``"process"`` (``synchronous=NORMAL``) or ``"power"``
    (``synchronous=FULL``). ``busy_timeout``: seconds a writer waits for another
    process's write lock. Nothing is opened until :meth:`open`.

    ``writer_conn`` and ``wlock`` are public for the capture path only
    (:mod:`spoolpost.spool.append`), which runs its own autocommit INSERT and
    ``BEGIN IMMEDIATE`` under ``wlock``; everything else uses :meth:`write` and
    :meth:`read`.
    """

    def __init__(
        self,
        path: Path,
        *,
        durability: Durability,
        busy_timeout: float,
        allow_network_fs: bool,
    ) -> None:
        self.path = path
        self.durability: Durability = durability
        self.busy_timeout = busy_timeout
        self.allow_network_fs = allow_network_fs
        self.closed = False
        self.wlock = threading.Lock()
        self.rlock = threading.Lock()
        self.writer_conn: sqlite3.Connection | None = None
        self.reader_conn: sqlite3.Connection | None = None
        #: (device, inode) of the file the connections have open.
        self.file_id: files.FileId | None = None
        self._fork_held: list[threading.Lock] = []
        self._failed_conn: sqlite3.Connection | None = None
        self._opening = False
        self._resets: list[weakref.WeakMethod[Callable[[bool], None]]] = []
        self.generation = 0
        self.switches: list[str] = []
        self._next_check = 0.0
        self._side_ids: set[files.FileId] = set()
        self._refused: list[files.FileId | None] = []

    def on_start_over(self, reset: Callable[[bool], None]) -> None:
        """Call the bound method ``reset(forked)`` whenever state tied to the open
        file must be dropped: after :meth:`reopen` (``forked`` False, under the
        write and read locks) and in a forked child (``forked`` True). Held
        weakly, so that a listener holding this database makes no cycle."""
        self._resets.append(weakref.WeakMethod(reset))

    def _start_over(self, forked: bool) -> None:
        for ref in self._resets:
            reset = ref()
            if reset is not None:
                reset(forked)

    # -- opening ---------------------------------------------------------------

    def open(self) -> None:
        """Open the spool: create it (folders ``0700``, file ``0600``) or check and
        migrate it. Raises as :class:`~spoolpost.spool.Spool` documents."""
        self._opening = True
        self._open()
        self._opening = False
        _LIVE.add(self)
        with self.wlock:
            self.carry_left_behind()  # rows a killed process was carrying over

    def _open(self) -> None:
        files.make_folders(self.path)
        if not self.allow_network_fs:
            files.check_filesystem(self.path)
        try:
            self._connect_and_migrate()
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode in BUSY_CODES:
                raise SpoolLocked(f"spool {self.path} is locked: {exc}") from exc
            if exc.sqlite_errorcode not in CORRUPT_CODES:
                why = files.folder_problem(self.path)
                raise ConfigError(f"cannot open spool {self.path}: {exc}{why}") from exc
            failed, self._failed_conn = self._failed_conn, None
            try:
                aside = files.move_aside(self.path, self.file_id, exc, logged=False)
                self._connect_and_migrate()
                if failed is not None and self.writer_conn is not None:
                    self._carry(failed, f"moved aside as corrupt to {aside} ({exc})")
            finally:
                # Closed only now: closing it first would let SQLite delete the
                # -wal file, which may hold the last commits (and is evidence).
                if failed is not None:
                    with contextlib.suppress(sqlite3.Error):
                        failed.close()

    def _discard(self, conn: sqlite3.Connection, exc: BaseException) -> None:
        """Close a connection that failed while opening, unless the file is corrupt
        (then :meth:`_open` closes it after moving the files aside)."""
        if is_corrupt(exc) and self._opening and self._failed_conn is None:
            self._failed_conn = conn
        else:
            conn.close()

    def _connect_and_migrate(self) -> None:
        self.file_id = files.prepare_file(self.path)
        conn = self.connect(first=True)
        try:
            migrations.migrate(conn, f"spool {self.path}")
        except BaseException as exc:
            self._discard(conn, exc)
            raise
        self.writer_conn = conn
        # Both connections are opened on the same file now, never later by path:
        # the file at the path may be another one by then (docs/architecture.md,
        # "The file replaced, deleted or damaged").
        if self.reader_conn is None:
            self.reader_conn = self.connect()
        # The side files this connection uses: when the spool is deleted they may
        # be moved aside (files.set_orphans_aside), and are removed once carried.
        self._side_ids = {i for i in map(files.file_id, files.side_files(self.path)) if i}

    def connect(self, first: bool = False) -> sqlite3.Connection:
        """A connection with spoolpost's pragmas set. ``first``: the spool is being
        opened, so refuse another application's database before any pragma (even
        the journal mode, which is stored in the file) changes it. A later
        connection the disk refuses (read-only, permissions, I/O: see
        spool/conditions.py) raises :class:`SpoolUnwritable`, not an sqlite3 error."""
        try:
            return self._connect(first)
        except sqlite3.Error as exc:
            refused = None if first else refusal(exc, self.path)
            if refused is None:
                raise
            raise refused from exc

    def _connect(self, first: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            if first:
                self._refuse_foreign(conn)
                migrations.prepare_new_file(conn)  # auto_vacuum: before WAL writes page 1
            mode = self._enable_wal(conn)
            if str(mode).lower() != "wal":
                raise SpoolCorrupt(f"spool {self.path} could not be put in WAL mode (got {mode})")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            sync = "FULL" if self.durability == "power" else "NORMAL"
            conn.execute(f"PRAGMA synchronous={sync}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            conn.execute("PRAGMA wal_autocheckpoint=1000")
            # Touch the schema so a non-database file fails here, not later.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except BaseException as exc:
            self._discard(conn, exc)
            raise
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> str:
        """``PRAGMA journal_mode=WAL``, retried within ``busy_timeout``: switching a
        new file to WAL needs an exclusive lock, and SQLite answers "database is
        locked" at once, without its busy handler, while another process opening
        the same new spool holds the file."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in BUSY_CODES or time.monotonic() >= deadline:
                    raise
            time.sleep(0.005)

    def _refuse_foreign(self, conn: sqlite3.Connection) -> None:
        """Raise :class:`SpoolCorrupt` if the file is another application's database
        (:func:`files.foreign_tables`; :func:`migrations.migrate` checks again under
        its write lock; this check runs before the journal mode is switched to WAL).
        Both reads share one snapshot: another process may be migrating a new spool."""
        conn.execute("BEGIN")
        try:
            foreign = files.foreign_tables(conn)
        finally:
            conn.execute("COMMIT")
        if foreign:
            raise files.foreign_error(f"spool {self.path}", foreign)

    # -- transactions ------------------------------------------------------------

    def writer(self) -> sqlite3.Connection:
        """The write connection (reopened if it was dropped); call under ``wlock``.
        Raises :class:`SpoolClosed`."""
        if self.closed:
            raise SpoolClosed(f"spool {self.path} is closed")
        if self.writer_conn is None:
            self.writer_conn = self.connect()
        return self.writer_conn

    def begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``; raises :class:`SpoolLocked` if the write lock stays
        taken past ``busy_timeout``."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode in BUSY_CODES:
                raise SpoolLocked(f"spool {self.path} stayed locked: {exc}") from exc
            raise

    def abort(self, conn: sqlite3.Connection) -> None:
        """Roll back after a failed statement or COMMIT; a connection that cannot
        even roll back is dropped (reopened on next use), never left mid-transaction."""
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("spool %s: ROLLBACK failed; reopening the connection", self.path)
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            if self.writer_conn is conn:
                self.writer_conn = None

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction: ``BEGIN IMMEDIATE`` … ``COMMIT``, rolled
        back if the block raises. Raises :class:`SpoolLocked`, :class:`SpoolClosed`."""
        with self.wlock:
            conn = self.writer()
            try:
                if conn.in_transaction:  # left open by an interrupted caller
                    self.abort(conn)
                    conn = self.writer()
                self.begin(conn)
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                self.abort(conn)
                raise

    @contextlib.contextmanager
    def read(self, snapshot: bool = False) -> Iterator[sqlite3.Connection]:
        """The read connection; ``snapshot``: inside one read transaction, so that
        several statements see one state of the spool. Raises :class:`SpoolClosed`."""
        with self.rlock:
            if self.closed:
                raise SpoolClosed(f"spool {self.path} is closed")
            if self.reader_conn is None:
                self.reader_conn = self.connect()
            conn = self.reader_conn
            if not snapshot:
                yield conn
                return
            try:
                if conn.in_transaction:  # left open by an interrupted caller
                    conn.execute("ROLLBACK")
                conn.execute("BEGIN")
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A private read connection holding one WAL snapshot, taken on entry and
        closed on exit. Raises :class:`SpoolClosed`, and :class:`SpoolCorrupt`
        when the file at the path is not a spool (see :meth:`follow_file`)."""
        if self.closed:
            raise SpoolClosed(f"spool {self.path} is closed")
        self.follow_file()  # it opens the file at the path: the one open, or a new spool
        if files.file_id(self.path) != self.file_id:
            raise SpoolCorrupt(
                f"spool {self.path}: the file there is not a spool; this process still"
                " has the spool it had open, but cannot open a snapshot of it"
            )
        conn = self.connect()
        try:
            conn.execute("BEGIN")
            try:
                conn.execute("SELECT 1 FROM events LIMIT 1").fetchall()  # pins the snapshot
            except sqlite3.DatabaseError as exc:
                if is_corrupt(exc):
                    raise SpoolCorrupt(f"spool {self.path} is damaged: {exc}") from None
                raise
            yield conn
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def checkpoint(self) -> bool:
        """``PRAGMA wal_checkpoint(TRUNCATE)``, waiting at most
        :data:`CHECKPOINT_BUSY_TIMEOUT` seconds for other connections. Returns True
        if the whole WAL was folded back."""
        with self.wlock:
            conn = self.writer()
            conn.execute(f"PRAGMA busy_timeout={int(CHECKPOINT_BUSY_TIMEOUT * 1000)}")
            try:
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        return not busy

    def close(self) -> None:
        """Close the connections. Idempotent."""
        if self.closed:
            return
        with self.wlock, self.rlock:
            self.closed = True
            self._close_connections()
        _LIVE.discard(self)

    def _close_connections(self) -> None:
        for conn in (self.writer_conn, self.reader_conn):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self.writer_conn = self.reader_conn = None

    # -- fork ------------------------------------------------------------------

    def _hold_for_fork(self) -> None:
        # No transaction of ours may be open when the process forks, or the
        # child would inherit SQLite's view of locks it does not hold.
        # Bounded, so that a fork from inside write() cannot deadlock.
        for lock in (self.wlock, self.rlock):
            if lock.acquire(timeout=self.busy_timeout + 1.0):
                self._fork_held.append(lock)
            else:
                log.warning("spool %s: forking while a transaction is open", self.path)

    def _release_after_fork(self) -> None:
        held, self._fork_held = self._fork_held, []
        for lock in held:
            lock.release()

    def _after_fork_in_child(self) -> None:
        # A connection never crosses a fork. The child closes its copies: SQLite
        # keeps per-process lock state for each file, and a copy left open would
        # make the child's new connections believe they hold locks that belong to
        # the parent, so the parent could checkpoint and delete the WAL under the
        # child's writes. Closing a copy cannot release the parent's locks (POSIX
        # locks belong to the process that took them).
        self._close_connections()
        self._fork_held = []
        self.wlock = threading.Lock()
        self.rlock = threading.Lock()
        self._start_over(True)
