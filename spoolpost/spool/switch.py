"""Leaving a spool file for a new one at its path, with its rows carried over.

:class:`FileSwitch` is the part of :class:`~spoolpost.spool.db.Database` that
notices that the file it has open is no longer the one at the path (deleted,
moved, replaced, or moved aside as corrupt by another process:
:meth:`FileSwitch.follow_file`, checked at most once a second by
:meth:`FileSwitch.check_file`), and that quarantines a file whose pages SQLite
finds damaged on any path (:meth:`FileSwitch.recover`, :meth:`FileSwitch.guarded`,
the :func:`recovering` decorator). Either way the rows the open connection can
still read are carried into the new spool (:mod:`~spoolpost.spool.carry`) before
it is closed. See docs/architecture.md, "The file replaced, deleted or damaged".
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from spoolpost.errors import SpoolClosed, SpoolCorrupt
from spoolpost.spool import aside, carry, files

log = logging.getLogger("spoolpost")

CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
#: Seconds between two checks that the file at the path is still the one open
#: (:meth:`FileSwitch.check_file`, on the capture path and the dispatcher's loop).
FILE_CHECK_EVERY = 1.0

_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S", bound="FileSwitch")


def is_corrupt(exc: BaseException) -> bool:
    """True for an SQLite error saying the file is corrupt or not a database."""
    return isinstance(exc, sqlite3.DatabaseError) and exc.sqlite_errorcode in CORRUPT_CODES


def recovering(fn: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
    """Decorate a function of a database so that SQLite corruption it meets is
    handled by :meth:`FileSwitch.guarded` (quarantine with the rows carried over,
    then once more), never raised as a raw ``sqlite3`` error."""

    @functools.wraps(fn)
    def wrapper(db: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return db.guarded(lambda: fn(db, *args, **kwargs))

    return wrapper


class FileSwitch:
    """Switching files; mixed into :class:`~spoolpost.spool.db.Database`, which
    sets the attributes below and implements the two abstract hooks."""

    path: Path
    closed: bool
    wlock: threading.Lock
    rlock: threading.Lock
    writer_conn: sqlite3.Connection | None
    reader_conn: sqlite3.Connection | None
    file_id: files.FileId | None
    #: Bumped by every switch to a new file (:meth:`recover`, :meth:`follow_file`).
    generation: int
    #: One line per file this object left (damaged, deleted, moved), oldest first.
    switches: list[str]
    _next_check: float
    _side_ids: set[files.FileId]
    #: ``[what is at the path]`` (None: nothing) when no spool could be opened
    #: there; not tried again until that changes. Empty otherwise.
    _refused: list[files.FileId | None]
    #: The last error :meth:`reopen` switched files for.
    _handled: BaseException | None = None

    def _start_over(self, forked: bool) -> None:
        raise NotImplementedError

    def _connect_and_migrate(self) -> None:
        raise NotImplementedError

    def reopen(self, exc: BaseException | None) -> None:
        """Start over on a new spool at ``path``: after ``exc`` (a corruption found
        in use) the corrupt file is moved aside first, unless another process
        already did; with ``exc`` None, after the file was deleted, moved or
        replaced. Either way every row the open connection can still read is
        carried into the new spool first (:mod:`~spoolpost.spool.carry`)."""
        with self.wlock, self.rlock:
            # A group commit hands one error to every capture in it: switch once.
            if exc is None or exc is not self._handled:
                self._handled = exc
                self._switch(exc, None)

    def recover(self, exc: BaseException, generation: int) -> bool:
        """After ``exc`` met by an operation begun at :attr:`generation`
        ``generation``: if it is SQLite corruption, quarantine the file with its
        rows carried over (:meth:`reopen`), unless another thread already did
        since, and return True (try the operation again); False for any other
        error. Raises :class:`SpoolClosed`, and what opening a spool raises."""
        if not is_corrupt(exc):
            return False
        with self.wlock, self.rlock:
            if self.closed:
                raise SpoolClosed(f"spool {self.path} is closed")
            if self.generation == generation:
                self._switch(exc, None)
        return True

    def check_file(self) -> None:
        """:meth:`follow_file`, at most once per :data:`FILE_CHECK_EVERY` seconds
        (monotonic clock): cheap enough for the capture path."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + FILE_CHECK_EVERY
            self.follow_file()

    def follow_file(self) -> None:
        """Switch to the spool at ``path`` if the file there is no longer the one
        open: another process moved a corrupt spool aside (WARNING), or the file
        was deleted, moved or replaced (ERROR naming what happened). The rows the
        open connection still reads are carried into the spool now at ``path``
        (a new one if none is), so nothing whose capture returned is lost."""
        if not self._left():
            return
        with self.wlock, self.rlock:
            if self.closed or self.file_id is None or not self._left():
                return  # closed, another thread switched first, or no spool can be there
            current = files.file_id(self.path)
            where = aside.whereabouts(self.file_id)
            if where and Path(where).name.startswith(f"{self.path.name}.corrupt-"):
                what = f"moved aside as corrupt to {where} by another process"
            elif where == "deleted":
                what = "deleted"
            elif where:
                what = f"moved to {where}"
            else:
                what = "deleted or moved"
            if current is not None and ".corrupt-" not in what:
                what += ", and another file now is at its path"
            self._switch(None, what)

    def _left(self) -> bool:
        """True when the file at ``path`` is not the one open (nor one refused)."""
        current = files.file_id(self.path)
        return current != self.file_id and [current] != self._refused

    def _switch(self, exc: BaseException | None, what: str | None) -> None:
        """Leave the open file for a new spool at ``path``, carrying its rows over;
        under both locks. ``exc``: the corruption that makes it leave (the file is
        moved aside); else ``what`` happened to it.

        If no spool can be opened at ``path`` (another application's file is
        there, the folder is gone or unwritable), the open file is kept: after
        ``exc`` the error is raised; otherwise one ERROR says so, this process
        goes on with the file it has open (its own delivery still drains it),
        and that file at ``path`` is not tried again."""
        source = self.writer_conn or self.reader_conn
        rescue: Path | None = None
        marker: Path | None = None
        old = [c for c in (self.writer_conn, self.reader_conn) if c is not None]
        kept = (self.writer_conn, self.reader_conn, self.file_id, self._side_ids)
        self.writer_conn = self.reader_conn = None
        try:
            files.make_folders(self.path)  # the folder may be gone with the file
            if exc is not None:
                corrupt_at = files.move_aside(self.path, self.file_id, exc, logged=False)
                what = f"moved aside as corrupt to {corrupt_at or 'another name'} ({exc})"
                if corrupt_at is not None and source is not None:
                    # Until its rows are carried: the next process finishes if we die.
                    marker = aside.carrying_marker(corrupt_at)
                    marker.touch()
                    log.info("spool %s: carrying the readable rows of %s", self.path, corrupt_at)
            elif source is not None:
                # Fold the WAL into the file that is left, so a moved file is whole,
                # and keep a copy until it is carried: a deleted file dies with us.
                with contextlib.suppress(sqlite3.Error):
                    source.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                rescue = self._rescue(source, what or "left")
            files.set_orphans_aside(self.path, kept[3])
            self._start_over(False)
            self._connect_and_migrate()
        except Exception as failure:
            self.writer_conn, self.reader_conn, self.file_id, self._side_ids = kept
            if exc is not None:
                raise
            self._refused = [files.file_id(self.path)]
            log.error(
                "spool %s was %s, and no spool can be opened there (%s); this process goes"
                " on with the file it has open",
                self.path,
                what,
                failure,
            )
            return
        self.generation += 1
        self._refused = []
        complete = False
        try:
            if source is not None:
                complete = self._carry(source, what or "left")
                if marker is not None:
                    _remove(marker)
        finally:
            for conn in old:
                # SQLite does not checkpoint or delete side files on closing a
                # file that was moved or deleted ("databaseIsUnmoved").
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        if complete and rescue is not None:
            _remove(rescue)
        if complete and exc is None:
            # Side files of the file left, moved aside: everything they held is carried.
            for file in aside.quarantined(self.path):
                if ".orphaned-" in file.name and files.file_id(file) in kept[3]:
                    with contextlib.suppress(OSError):
                        file.unlink()

    def _rescue(self, source: sqlite3.Connection, what: str) -> Path | None:
        """Copy the file being left, through ``source`` (SQLite's backup API), to
        :func:`aside.rescue_path`; the path, or None if it could not be made
        (logged; the carry goes on without it)."""
        final = aside.rescue_path(self.path)
        partial = final.with_name(f"{final.name}.partial")
        try:
            copy = sqlite3.connect(partial)
            try:
                source.backup(copy)
            finally:
                copy.close()
            os.replace(partial, final)
        except (sqlite3.Error, OSError) as exc:
            log.error(
                "spool %s was %s; it could not be copied to %s: %s", self.path, what, final, exc
            )
            _remove(partial)
            return None
        log.info(
            "spool %s was %s; copied it to %s until its rows are carried", self.path, what, final
        )
        return final

    def carry_left_behind(self) -> None:
        """Carry into this spool the rows a process that is gone was carrying when
        it stopped: its rescue copies (:func:`aside.rescues`) and the corrupt files
        it had moved aside (:func:`aside.carrying`); then remove the copies and
        markers. The next process to open the spool finishes what a killed one
        began; rows already here (by uuid) are not carried twice."""
        left = [(file, file, pid) for file, pid in aside.rescues(self.path)]
        left += aside.carrying(self.path)
        for done_with, file, pid in left:
            if pid == os.getpid() or _alive(pid) or self.writer_conn is None:
                continue
            conn = sqlite3.connect(file)
            try:
                done = carry.carry_rows(conn, self.writer_conn)
            except sqlite3.Error as exc:
                log.error("spool %s: carrying the rows of %s failed: %s", self.path, file, exc)
                continue
            finally:
                conn.close()
            log.warning(
                "spool %s: carried %d event(s) and %d dead letter(s) (%d already here) from %s,"
                " left by process %d, which stopped while carrying them%s",
                self.path,
                done.events,
                done.dead,
                done.known,
                file,
                pid,
                f"; could not read {', '.join(done.skipped)}" if done.skipped else "",
            )
            if done_with == file:
                _remove(file)  # a rescue copy, carried
            else:
                done_with.unlink(missing_ok=True)  # the marker; the corrupt file stays

    def _carry(self, source: sqlite3.Connection, what: str) -> bool:
        """Carry what ``source`` reads into the new spool and log it; True when
        nothing was skipped. A failure to carry is logged, never raised: the new
        spool is open either way, and the old file keeps what was not carried."""
        assert self.writer_conn is not None
        try:
            done = carry.carry_rows(source, self.writer_conn)
        except sqlite3.Error as exc:
            line = f"spool {self.path} was {what}; carrying its rows failed ({exc})"
            log.error("%s; a new spool is started", line)
            self.switches.append(line)
            return False
        line = (
            f"spool {self.path} was {what}; carried {done.events} event(s) and"
            f" {done.dead} dead letter(s) into a new spool at the same path"
        )
        if done.known:
            line += f" ({done.known} already there)"
        if done.skipped:
            line += f"; could not read {', '.join(done.skipped)}"
        if what.startswith("moved aside as corrupt to") and "by another process" in what:
            log.warning("%s", line)
        else:
            log.error("%s", line)
        self.switches.append(line)
        return not done.skipped

    def guarded(self, call: Callable[[], _R]) -> _R:
        """``call()``, and when it meets SQLite corruption, :meth:`recover` and
        ``call()`` once more on the new spool. Raises :class:`SpoolCorrupt` when
        it fails again."""
        generation = self.generation
        try:
            return call()
        except sqlite3.DatabaseError as exc:
            if not self.recover(exc, generation):
                raise
        try:
            return call()
        except sqlite3.DatabaseError as exc:
            if is_corrupt(exc):
                raise SpoolCorrupt(f"spool {self.path} is corrupt again: {exc}") from None
            raise


def _remove(path: Path) -> None:
    """Remove ``path`` and the -wal/-shm SQLite may have made beside it."""
    for file in (path, *files.side_files(path)):
        with contextlib.suppress(OSError):
            file.unlink()


def _alive(pid: int) -> bool:
    """True while process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
