"""Disk conditions: a full, read-only, unwritable or failing filesystem under the spool.

:func:`classify` tells which condition an SQLite error means (see
docs/architecture.md, "Failure policy", "The disk under the spool"):

- ``full``: ``SQLITE_FULL`` (ENOSPC, or ``max_page_count``), or an
  ``SQLITE_IOERR`` variant while the filesystem has no free block left or a
  probe write beside the spool fails with ENOSPC or EDQUOT (SQLite reports a
  quota as ``SQLITE_IOERR_WRITE``);
- ``readonly``: ``SQLITE_READONLY*``, ``SQLITE_CANTOPEN``, ``SQLITE_PERM``, or an
  ``SQLITE_IOERR`` variant while the filesystem is mounted read-only (EROFS);
- ``ioerror``: any other ``SQLITE_IOERR*`` (extended codes as in SQLite's
  "Result and Error Codes", sqlite.org/rescode.html).

:class:`DiskConditions` keeps one episode at a time per spool: the first error of
an episode is logged (a WARNING for ``full``, an ERROR naming the path and the
cause for the others), the rest are not, and drops that could not be counted in
the spool (its disk refused the write) are kept in memory until a write works
again, then persisted as ``dropped``.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from spoolpost.errors import SpoolpostError, SpoolUnwritable

log = logging.getLogger("spoolpost")

Condition = Literal["full", "readonly", "ioerror"]

_READONLY_PRIMARY = frozenset(
    {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM}
)


def fs_state(path: Path) -> tuple[int, bool] | None:
    """(free bytes for unprivileged users, read-only?) of the filesystem holding
    ``path`` (its folder), from ``os.statvfs``: ``f_bavail * f_frsize`` and
    ``ST_RDONLY``. None when it cannot be read."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, bool(st.f_flag & os.ST_RDONLY)


def classify(exc: BaseException, path: Path) -> Condition | None:
    """The disk condition the SQLite error ``exc`` on the spool ``path`` means, or
    None (busy, corrupt, misuse, …: not a disk condition)."""
    if isinstance(exc, SpoolUnwritable):
        return exc.condition  # type: ignore[return-value]
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return None
    primary = code & 0xFF
    if primary == sqlite3.SQLITE_FULL:
        return "full"
    if primary in _READONLY_PRIMARY:
        return "readonly"
    if primary == sqlite3.SQLITE_IOERR:
        # SQLite does not pass errno on; the filesystem tells ENOSPC and EROFS apart.
        state = fs_state(path)
        if (state is not None and state[1]) or _open_for_write_fails(path):
            return "readonly"
        if (state is not None and state[0] == 0) or _probe_errno(path) in _NO_ROOM:
            return "full"
        return "ioerror"
    return None


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def _probe_errno(path: Path) -> int | None:
    """The errno of writing one page to a new file beside the spool (ENOSPC, or
    EDQUOT: SQLite reports a quota as ``SQLITE_IOERR_WRITE``, and a quota leaves
    ``statvfs`` showing free blocks), or None when it worked. The failure path
    only: three syscalls."""
    probe = path.with_name(f".{path.name}-probe-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(4096))
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return exc.errno
    return None


def _write_errno(path: Path) -> int | None:
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        return exc.errno
    return None


def _open_for_write_fails(path: Path) -> bool:
    """True if opening the spool file for writing fails with EROFS or EACCES (a
    filesystem the kernel remounted read-only after an error still says "rw" in
    its mount flags; this open tells)."""
    return _write_errno(path) in (errno.EROFS, errno.EACCES, errno.EPERM)


def describe(condition: Condition, path: Path, exc: BaseException) -> str:
    """One line naming the spool ``path``, the condition and its likely cause."""
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    if condition == "full":
        return f"the filesystem under spool {path} is full ({name}: {exc})"
    if condition == "readonly":
        state = fs_state(path)
        if (state is not None and state[1]) or _write_errno(path) == errno.EROFS:
            cause = "the filesystem is read-only (EROFS)"
        elif not os.access(path.parent, os.W_OK | os.X_OK):
            cause = f"no write permission on the folder {path.parent}"
        elif path.exists() and not os.access(path, os.W_OK):
            cause = f"no write permission on the file {path}"
        else:
            cause = "the file cannot be opened for writing"
        return f"spool {path} cannot be written: {cause} ({name}: {exc})"
    return f"spool {path} met an I/O error ({name}: {exc})"


def refusal(exc: BaseException, path: Path) -> SpoolUnwritable | None:
    """``exc`` as the :class:`SpoolUnwritable` it means, or None when it is not a
    disk condition (nothing is logged here)."""
    condition = classify(exc, path)
    if condition is None:
        return None
    return SpoolUnwritable(describe(condition, path, exc), condition=condition, path=path)


class DiskConditions:
    """The disk-condition episode of one spool, shared by capture and delivery;
    thread-safe.

    ``active``: the condition of the episode in progress, or None. ``unpersisted``:
    events dropped during it that are not in the spool's ``dropped`` counter yet.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.active: Condition | None = None
        self.unpersisted = 0
        self.episode_drops = 0
        #: How many times a disk-condition path was taken (tests prove a fault bites).
        self.hits: dict[Condition, int] = {"full": 0, "readonly": 0, "ioerror": 0}
        self._lock = threading.Lock()

    def enter(self, condition: Condition, exc: BaseException, doing: str) -> SpoolUnwritable:
        """Note a write refused by ``condition`` (``doing``: what this process does
        about it, for the log line); log it if it starts an episode. Returns the
        :class:`SpoolUnwritable` to raise, should the caller raise."""
        message = (
            str(exc) if isinstance(exc, SpoolUnwritable) else describe(condition, self.path, exc)
        )
        with self._lock:
            self.hits[condition] += 1
            starts = self.active != condition
            self.active = condition
        if starts:
            level = logging.WARNING if condition == "full" else logging.ERROR
            log.log(
                level,
                "%s; %s (not logged again until writes work again)",
                message,
                doing,
            )
        return SpoolUnwritable(message, condition=condition, path=self.path)

    def dropped(self, n: int = 1) -> None:
        """Count ``n`` events dropped because the disk refused them."""
        with self._lock:
            self.unpersisted += n
            self.episode_drops += n

    def counted(self, counters: dict[str, int]) -> dict[str, int]:
        """``counters`` with the drops not persisted yet added to ``dropped``."""
        with self._lock:
            if self.unpersisted:
                counters["dropped"] = counters.get("dropped", 0) + self.unpersisted
        return counters

    def take_unpersisted(self) -> int:
        """The drops to persist now (the caller adds them to the spool's counter,
        or gives them back with :meth:`give_back`)."""
        with self._lock:
            n, self.unpersisted = self.unpersisted, 0
        return n

    def give_back(self, n: int) -> None:
        """Drops taken by :meth:`take_unpersisted` that could not be persisted."""
        with self._lock:
            self.unpersisted += n

    def clear(self) -> None:
        """A write worked: end the episode in progress (INFO with what it dropped)."""
        with self._lock:
            was, self.active = self.active, None
            dropped, self.episode_drops = self.episode_drops, 0
        if was is not None:
            log.info(
                "spool %s is writable again; %d event(s) were dropped while it was %s",
                self.path,
                dropped,
                {"full": "full", "readonly": "read-only", "ioerror": "failing"}[was],
            )


def persist_drops(conditions: DiskConditions, add: Callable[[int], None]) -> None:
    """Persist the drops ``conditions`` holds with ``add(n)`` (which writes the
    ``dropped`` counter); if that write fails they stay in memory."""
    n = conditions.take_unpersisted()
    if not n:
        return
    try:
        add(n)
    except (sqlite3.Error, SpoolpostError):
        conditions.give_back(n)
