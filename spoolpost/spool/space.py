"""Room on the filesystem: the free-space floor, the reserve file, and delivery's
writes on a full disk (see docs/architecture.md, "The disk under the spool").

- :class:`Floor`: ``min_free_bytes``, read with ``os.statvfs`` at most once per
  :data:`FLOOR_EVERY` seconds, folded into capture's space budget.
- :class:`Reserve`: ``<spool>-reserve``, :data:`RESERVE_BYTES` allocated next to
  the spool by the first delivery write, given up when a delivery write meets a
  full disk, and allocated again once there is room.
- :class:`SpaceGuard`: runs delivery's writes (claim, ack, reschedule, release,
  dead-letter, settle, …). On a full disk it gives up the reserve, checkpoints
  the WAL into the file and tries once more, so that delivery frees space with
  zero free bytes; once rows were freed it checkpoints again
  (``wal_checkpoint(TRUNCATE)``) so the WAL's bytes go back to the filesystem. A
  disk condition it cannot get past is raised as :class:`SpoolUnwritable`
  (logged once per episode), never as an ``sqlite3`` error.
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
from typing import Concatenate, ParamSpec, Protocol, TypeVar, cast

from spoolpost.errors import SpoolpostError, SpoolUnwritable
from spoolpost.spool.conditions import Condition, DiskConditions, classify, fs_state

log = logging.getLogger("spoolpost")

P = ParamSpec("P")
R = TypeVar("R")

#: Default ``min_free_bytes``: capture stops (``on_full``) before the filesystem's
#: free space falls below this. 64 MiB is the WAL's own bound (``journal_size_limit``)
#: and leaves the last of a shared disk to the system and other programs.
DEFAULT_MIN_FREE_BYTES = 64 * 1024 * 1024
#: Seconds between two ``statvfs`` reads of the floor (never one per capture).
FLOOR_EVERY = 1.0
#: Size of the reserve file: twice the WAL a checkpoint must fold into the file
#: (``wal_autocheckpoint`` = 1000 pages of 4 KiB), so that a claim, an ack and
#: the checkpoint after them fit in it on a disk with zero free bytes.
RESERVE_BYTES = 8 * 1024 * 1024
RESERVE_SUFFIX = "-reserve"
#: The reserve is made once the filesystem has less than this free (a spool on a
#: roomy disk does not need one, and a test suite's thousands of spools do not
#: take 8 MiB each).
RESERVE_AT = 1024 * 1024 * 1024
#: Bytes the WAL may take before a checkpoint recycles it (``wal_autocheckpoint`` =
#: 1000 pages of 4 KiB): a capture's WAL frames are not in the space budget's
#: estimate, so the floor keeps them free too.
WAL_ALLOWANCE = 4 * 1024 * 1024


class Floor:
    """``min_free_bytes`` for the spool at ``path``: bytes of the filesystem that
    capture leaves free (0: no floor). While ``reserve`` is not held (given up on
    a full disk, or not made yet), capture leaves its size free too, so that the
    bytes delivery needs on a full disk are kept one way or the other.

    The filesystem is read (``statvfs``) only when capture's space budget is read
    again, which happens after the budget (at most half the room left) is spent:
    rarely while there is room, and at most once per :data:`FLOOR_EVERY` seconds
    below the floor. A read that finds less than :data:`RESERVE_AT` free makes
    the reserve file if it is missing."""

    def __init__(self, path: Path, min_free_bytes: int) -> None:
        self.path = path
        self.min_free_bytes = min_free_bytes
        self.reserve: Reserve | None = None
        self._read_at = -FLOOR_EVERY
        self._free: int | None = None
        self._extra = 0
        self._below = False

    def free(self) -> int | None:
        """The filesystem's free bytes (``f_bavail * f_frsize``); None when unknown.
        Below the floor, read at most once per :data:`FLOOR_EVERY` seconds."""
        now = time.monotonic()
        if self._below and now - self._read_at < FLOOR_EVERY:
            return self._free
        self._read_at = now
        state = fs_state(self.path)
        self._free = None if state is None else state[0]
        reserve = self.reserve
        if reserve is not None and self._free is not None and self._free < RESERVE_AT:
            reserve.ensure(self.min_free_bytes)
        self._extra = 0 if reserve is None or reserve.held() else reserve.size
        return self._free

    def room(self, reusable: int) -> int | None:
        """Bytes capture may still add above the floor (``reusable``: free pages
        inside the file, which a write reuses without growing it), or None for no
        floor. Less than 0 when below it."""
        free = self.free()
        floor = self.min_free_bytes + self._extra
        if free is None or floor <= 0:
            self._below = False
            return None
        room = free + reusable - floor - WAL_ALLOWANCE
        self._below = room <= 0
        return room

    def forget(self) -> None:
        """Read the filesystem again on the next :meth:`room`."""
        self._below = False


class Reserve:
    """The reserve file next to the spool ``path`` (``<path>-reserve``, ``0600``)."""

    def __init__(self, path: Path, size: int = RESERVE_BYTES) -> None:
        self.path = path.with_name(path.name + RESERVE_SUFFIX)
        self.size = size

    def held(self) -> bool:
        return self.path.exists()

    def ensure(self, min_free_bytes: int) -> bool:
        """Allocate the reserve if it is missing and the filesystem has room for it
        above ``min_free_bytes`` (at least :attr:`size` more). Written to a
        temporary name and renamed, so a reserve at the path is always whole.
        Returns True if the reserve is held afterwards."""
        if self.held():
            return True
        state = fs_state(self.path)
        if state is None or state[1] or state[0] < self.size + max(min_free_bytes, self.size):
            return False
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, self.size)  # not on macOS: AttributeError
                except (OSError, AttributeError):  # no fallocate here: write the bytes
                    block = bytes(1 << 20)
                    for _ in range(self.size // len(block)):
                        os.write(fd, block)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.debug("spool %s: no reserve file (%s)", self.path, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False
        return True

    def release(self) -> bool:
        """Give the reserve's bytes back to the filesystem. True if it was held."""
        try:
            os.unlink(self.path)
        except OSError:
            return False
        return True


class SpaceGuard:
    """Runs delivery's writes to the spool ``path`` through :meth:`run`; thread-safe.

    ``checkpoint()``: the spool's ``wal_checkpoint(TRUNCATE)`` (True when whole).
    ``guard(write)``: runs one try of a write so that SQLite corruption it meets
    quarantines the file (rows carried over) and runs the write once more on the
    new spool (the database's ``guarded``; default: the write alone).
    """

    def __init__(
        self,
        path: Path,
        conditions: DiskConditions,
        floor: Floor,
        checkpoint: Callable[[], bool],
        guard: Callable[[Callable[[], object]], object] = lambda write: write(),
    ) -> None:
        self.path = path
        self._guard = guard
        self.conditions = conditions
        self.floor = floor
        self.reserve = floor.reserve = Reserve(path)
        self._checkpoint = checkpoint
        self._lock = threading.Lock()
        self._released = False
        self._check_at = 0.0

    def run(self, write: Callable[[], R], frees: bool = False) -> R:
        """``write()``, one delivery write; ``frees``: it may delete rows (an ack, a
        settlement, a dead-letter), so a checkpoint after it gives bytes back.
        Raises :class:`SpoolUnwritable` for a disk condition it cannot get past, and
        :class:`SpoolCorrupt` when the spool is still corrupt after a quarantine."""
        try:
            result = self._guarded(write)
        except (sqlite3.Error, SpoolUnwritable) as exc:
            condition = classify(exc, self.path)
            if condition is None:
                raise
            if condition != "full":
                raise self._refused(condition, exc) from exc
            self._give_up_reserve()
            try:
                result = self._guarded(write)
            except (sqlite3.Error, SpoolUnwritable) as again:
                condition = classify(again, self.path)
                if condition is None:
                    raise
                raise self._refused(condition, again) from again
        self._after_write(frees)
        return result

    def _guarded(self, write: Callable[[], R]) -> R:
        return cast(R, self._guard(write))

    def opening(self, open_spool: Callable[[], None]) -> None:
        """``open_spool()``; if it fails while the filesystem has less free than the
        reserve's size (opening needs the ``-wal`` and ``-shm`` files, which a spool
        closed cleanly no longer has), give up the reserve and open once more, so
        that a delivering process can start on a full disk."""
        try:
            open_spool()
        except (sqlite3.Error, SpoolpostError):
            state = fs_state(self.path)
            if state is None or state[0] >= self.reserve.size or not self.reserve.held():
                raise
            self._give_up_reserve(checkpoint=False)
            open_spool()

    def _refused(self, condition: Condition, exc: BaseException) -> SpoolpostError:
        doing = "delivery retries after a backoff; what is stored stays"
        return self.conditions.enter(condition, exc, doing)

    def _give_up_reserve(self, checkpoint: bool = True) -> None:
        with self._lock:
            released = self.reserve.release()
            if released:
                self._released = True
        if released:
            # INFO: the full episode itself is the one WARNING.
            log.info(
                "the filesystem under spool %s is full; gave up the %d-byte reserve %s so "
                "that delivery can free space",
                self.path,
                self.reserve.size,
                self.reserve.path,
            )
        # Fold the WAL into the file so the write after this finds its frames reusable.
        if checkpoint:
            self._try_checkpoint()

    def _try_checkpoint(self) -> None:
        with contextlib.suppress(sqlite3.Error, SpoolpostError):
            self._checkpoint()

    def _after_write(self, frees: bool) -> None:
        if frees:
            if self._released or self.conditions.active == "full":
                self._try_checkpoint()  # give the WAL's bytes back to the filesystem
            self.floor.forget()  # capture below the floor sees the freed room at once
        now = time.monotonic()
        if now < self._check_at:
            return
        # At most once per FLOOR_EVERY: (re)make the reserve once the disk is tight.
        self._check_at = now + FLOOR_EVERY
        state = fs_state(self.path)
        if state is not None and state[0] < RESERVE_AT and not self.reserve.held():
            self._released = not self.reserve.ensure(self.floor.min_free_bytes)


class _Guarded(Protocol):
    space: SpaceGuard | None


S = TypeVar("S", bound=_Guarded)


def delivery_write(
    frees: bool = False,
) -> Callable[[Callable[Concatenate[S, P], R]], Callable[Concatenate[S, P], R]]:
    """Decorate a method of an object with a ``space`` :class:`SpaceGuard` (or None)
    so that it runs through :meth:`SpaceGuard.run`."""

    def decorate(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
        def guarded(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
            if self.space is None:
                return method(self, *args, **kwargs)
            return self.space.run(lambda: method(self, *args, **kwargs), frees)

        functools.update_wrapper(guarded, method)
        return guarded

    return decorate
