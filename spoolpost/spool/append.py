"""Capture's write path: group commit of appends, and the full-spool policy.

:class:`Appender` writes each captured event before ``capture()`` returns.
Concurrent appends share one transaction (group commit: a leader writes every
waiting event while the others wait); a lone append within the space budget is
one autocommit INSERT. Every path here runs on each capture: no statement, lock
or allocation is added lightly.

The spool's size is bounded by ``max_spool_bytes``; ``on_full`` says what a full
spool does to new events (``drop_newest``, ``drop_oldest``, ``block``,
``raise``), with one WARNING per full episode (see docs/architecture.md,
"Failure policy"). The same policy applies below the filesystem's free-space
floor (``min_free_bytes``, :class:`~spoolpost.spool.space.Floor`) and when the
disk refuses a capture's write (full, read-only, permissions, I/O:
:mod:`~spoolpost.spool.conditions`; see "The disk under the spool").
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from spoolpost.errors import SpoolFull, SpoolLocked, SpoolUnwritable
from spoolpost.spool.conditions import DiskConditions, classify, persist_drops
from spoolpost.spool.db import BUSY_CODES, Database, is_corrupt
from spoolpost.spool.queries import count
from spoolpost.spool.space import Floor
from spoolpost.spool.sql import IN_IDS, INSERT_EVENT, add_counter, ids_json

log = logging.getLogger("spoolpost")

OnFull = Literal["drop_newest", "drop_oldest", "block", "raise"]
ON_FULL_POLICIES: tuple[str, ...] = ("drop_newest", "drop_oldest", "block", "raise")
DEFAULT_MAX_SPOOL_BYTES = 512 * 1024 * 1024
DEFAULT_ON_FULL: OnFull = "drop_newest"
#: Seconds ``on_full="block"`` waits for room before :class:`SpoolFull`.
DEFAULT_BLOCK_TIMEOUT = 5.0
#: A full spool's episode ends once its used size is back down to this fraction
#: of ``max_spool_bytes`` (then the next time it fills, it is warned about again).
ROOM_AGAIN = 7 / 8


@dataclass(slots=True)
class _Append:
    uuid: str
    body: bytes
    now: float
    lane: str | None = None
    done: bool = False
    written: bool = False
    error: BaseException | None = None


@dataclass
class _FullEpisode:
    active: bool = False
    dropped: int = 0


@dataclass
class _Space:
    # Bytes (estimated) that appends may still write before the used size is
    # read again from the file; 0: read it on the next append.
    budget: int = 0
    episode: _FullEpisode = field(default_factory=_FullEpisode)
    # Which bound the full episode met: max_spool_bytes or min_free_bytes.
    reason: str = "max_spool_bytes"


class Appender:
    """Appends to the spool ``db``; thread-safe.

    ``max_spool_bytes``: bound on the file's used pages. ``on_full``: what a full
    spool does to new events. ``block_timeout``: seconds ``block`` waits for room.
    """

    def __init__(
        self,
        db: Database,
        *,
        max_spool_bytes: int,
        on_full: OnFull,
        block_timeout: float,
        floor: Floor | None = None,
        conditions: DiskConditions | None = None,
    ) -> None:
        self._db = db
        self.path = db.path
        self.max_spool_bytes = max_spool_bytes
        self.on_full: OnFull = on_full
        self.block_timeout = block_timeout
        self.floor = floor or Floor(db.path, 0)
        self.disk = conditions or DiskConditions(db.path)
        self._space = _Space()
        self._reset_locks()
        db.on_start_over(self._start_over)

    def _start_over(self, forked: bool) -> None:
        # The space budget belongs to the file that was open; a forked child
        # also gets new locks (another thread may have held them at the fork).
        self._space = _Space()
        if forked:
            self._reset_locks()

    def _reset_locks(self) -> None:
        self.gc_lock = threading.Lock()
        self._gc_cond = threading.Condition(self.gc_lock)
        self._gc_queue: list[_Append] = []
        self._gc_leader = False
        self._gc_waiting = 0
        self._space_freed = threading.Condition(threading.Lock())
        self._freed = 0  # bumped when an ack frees room (on_full='block')

    def append(self, uuid: str, body: bytes, now: float, lane: str | None = None) -> bool:
        """:meth:`Spool.append <spoolpost.spool.Spool.append>`: write one event
        (``now``: its capture time, UTC seconds; ``lane``: None or ``"ai"``);
        return once it is committed."""
        self._db.check_file()  # a deleted or replaced file: at most once a second
        deadline = None
        recovered = False
        while True:
            freed = self._freed
            item = _Append(uuid, body, now, lane)
            self._group_commit(item)
            if item.error is None:
                if self.disk.active is not None:
                    self._disk_writable()
                return item.written
            if is_corrupt(item.error) and not recovered:
                # A corrupt spool never stops the app: move it aside, go on in a new one.
                recovered = True
                self._db.reopen(item.error)
                continue
            item.error = self._disk_refused(item.error)
            if item.error is None:
                return False  # dropped and counted (in memory until the disk takes it)
            if not (isinstance(item.error, _Full | SpoolUnwritable) and self.on_full == "block"):
                raise item.error.as_public() if isinstance(item.error, _Full) else item.error
            if deadline is None:
                deadline = time.monotonic() + self.block_timeout
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise item.error.as_public() if isinstance(item.error, _Full) else item.error
            with self._space_freed:
                # Woken by an ack in this process; polled for frees by others.
                if self._freed == freed:
                    self._space_freed.wait(min(remaining, 0.5))
            self._space.budget = 0

    def _disk_refused(self, exc: BaseException) -> BaseException | None:
        """A capture's write failed with ``exc``: if the disk refused it (full,
        read-only, permissions, I/O; see spool/conditions.py), apply ``on_full``
        and return None (dropped, counted) or the :class:`SpoolUnwritable` to raise
        (``raise``, ``block``); any other error is returned as it is. Dropping the
        oldest events needs the disk too, so ``drop_oldest`` drops the new one."""
        condition = classify(exc, self.path)
        if condition is None:
            return exc
        self._space.budget = 0
        self.floor.forget()
        if self.on_full == "drop_newest" or self.on_full == "drop_oldest":
            self.disk.dropped(1)
            self.disk.enter(condition, exc, "dropping new events until writes work again")
            return None
        doing = {"raise": "refusing new events", "block": "blocking capture"}[self.on_full]
        error = self.disk.enter(condition, exc, f"{doing} (SpoolUnwritable, a SpoolFull)")
        error.__cause__ = exc
        return error

    def _disk_writable(self) -> None:
        """A write worked after a disk condition: end its episode and persist the
        drops counted in memory meanwhile (one short write)."""
        self.disk.clear()
        persist_drops(self.disk, lambda n: count(self._db, "dropped", n))

    def _group_commit(self, item: _Append) -> None:
        # The bare lock, not the Condition's Python-level context manager: this
        # runs on every capture.
        with self.gc_lock:
            self._gc_queue.append(item)
            while self._gc_leader:
                self._gc_waiting += 1
                self._gc_cond.wait()
                self._gc_waiting -= 1
                if item.done:
                    return
            self._gc_leader = True
            batch, self._gc_queue = self._gc_queue, []
        try:
            self._write_appends(batch)
        except BaseException as exc:
            for it in batch:
                if not it.done:
                    it.error, it.done = exc, True
        finally:
            with self.gc_lock:
                self._gc_leader = False
                if self._gc_waiting:
                    self._gc_cond.notify_all()

    def _write_appends(self, batch: list[_Append]) -> None:
        # The capture path. A lone event within the size budget is one INSERT in
        # autocommit mode: a single-statement transaction, which takes the write
        # lock (waiting up to busy_timeout) before it reads anything, exactly as
        # BEGIN IMMEDIATE would, and spares two statements (~20% of a capture).
        # Groups and size checks use an explicit BEGIN IMMEDIATE transaction.
        cost = 2 * (len(batch[0].body) if len(batch) == 1 else sum(len(it.body) for it in batch))
        db = self._db
        with db.wlock:
            conn = db.writer_conn or db.writer()
            space = self._space
            if len(batch) == 1 and cost < space.budget:
                it = batch[0]
                try:
                    conn.execute(
                        INSERT_EVENT, (it.uuid, it.body, len(it.body), it.now, it.now, it.lane)
                    )
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode in BUSY_CODES:
                        raise SpoolLocked(f"spool {self.path} stayed locked: {exc}") from exc
                    raise
                space.budget -= cost
                it.written = it.done = True
                return
            db.begin(conn)
            try:
                if cost < space.budget:
                    space.budget -= cost
                    keep = batch
                else:
                    keep = self._make_room(conn, batch, cost)
                if keep:
                    conn.executemany(
                        INSERT_EVENT,
                        [(it.uuid, it.body, len(it.body), it.now, it.now, it.lane) for it in keep],
                    )
                conn.execute("COMMIT")
            except BaseException:
                db.abort(conn)
                raise
        for it in keep:
            it.written = it.done = True

    def _used_bytes(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """(bytes of the file's used pages, bytes of its free pages)."""
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size), int(free * page_size)

    def _make_room(
        self, conn: sqlite3.Connection, batch: list[_Append], cost: int
    ) -> list[_Append]:
        """Apply ``max_spool_bytes`` and ``on_full`` to a group of appends that
        will take about ``cost`` bytes (each event costs its body plus index
        entries and row overhead: ~2x); return the appends to write.

        The used size is read from the file's page counts. It is read again
        once appends wrote half the headroom left, or 1/64 of the bound (so
        that other processes' writes and deletes are seen too).

        A full episode (one WARNING) lasts until the used size is back down to
        :data:`ROOM_AGAIN` of the bound: the little room that ``drop_oldest``
        makes for each append, or that one delivery makes while captures keep
        the spool at its bound, does not end it.
        """
        space = self._space
        used, reusable = self._used_bytes(conn)
        headroom = self.max_spool_bytes - used
        floor = self.floor.room(reusable)
        below_floor = floor is not None and floor < headroom
        if below_floor:
            assert floor is not None
            headroom = floor
        if cost <= headroom:
            space.budget = min(self.max_spool_bytes // 64, (headroom - cost) // 2)
            roomy = not below_floor or headroom >= self.floor.min_free_bytes // 8
            if space.episode.active and used <= self.max_spool_bytes * ROOM_AGAIN and roomy:
                self._end_full_episode()
            return batch
        space.reason = "min_free_bytes" if below_floor else "max_spool_bytes"
        need = cost - headroom
        space.budget = 0
        if self.on_full == "drop_oldest" and self._drop_oldest(conn, need) >= need:
            return batch
        self._note_full(len(batch))
        if self.on_full == "drop_newest" or self.on_full == "drop_oldest":
            add_counter(conn, "dropped", len(batch))
            for it in batch:
                it.done = True
            return []
        full = _Full(self.path, self.max_spool_bytes, self.on_full)
        for it in batch:
            it.error, it.done = full, True
        return []

    def _drop_oldest(self, conn: sqlite3.Connection, need: int) -> int:
        """Delete the oldest pending events until about ``need`` bytes are free
        (at most 10 000 at a time); count them as dropped. Returns the estimate freed."""
        freed, ids = 0, []
        rows = conn.execute(
            "SELECT id, size FROM events WHERE state = 'pending' ORDER BY id LIMIT 10000"
        )
        for row_id, size in rows:
            ids.append(row_id)
            freed += 2 * size
            if freed >= need:
                break
        if ids:
            conn.execute(f"DELETE FROM events WHERE {IN_IDS}", (ids_json(ids),))
            add_counter(conn, "dropped", len(ids))
            self._note_full(len(ids))
        return freed

    def _note_full(self, dropped: int) -> None:
        """One WARNING per full episode, whatever the policy; counts what it dropped."""
        episode = self._space.episode
        if self.on_full in ("drop_newest", "drop_oldest"):
            episode.dropped += dropped
        if not episode.active and self.disk.active is not None:
            episode.active = True  # the disk's own episode was logged already
        if not episode.active:
            episode.active = True
            doing = {
                "drop_newest": "dropping new events",
                "drop_oldest": "dropping the oldest pending events",
                "block": "blocking capture until there is room",
                "raise": "refusing new events (SpoolFull)",
            }[self.on_full]
            if self._space.reason == "min_free_bytes":
                log.warning(
                    "the filesystem under spool %s is down to its floor (min_free_bytes=%d,"
                    " plus room kept for the WAL and delivery's reserve; %s bytes free); "
                    "on_full=%s is %s (drops are counted as 'dropped'; not logged again "
                    "until there is room)",
                    self.path,
                    self.floor.min_free_bytes,
                    self.floor.free(),
                    self.on_full,
                    doing,
                )
                return
            log.warning(
                "spool %s is full (max_spool_bytes=%d); on_full=%s is %s "
                "(drops are counted as 'dropped'; not logged again until it is back down to"
                " %d bytes)",
                self.path,
                self.max_spool_bytes,
                self.on_full,
                doing,
                int(self.max_spool_bytes * ROOM_AGAIN),
            )

    def _end_full_episode(self) -> None:
        episode = self._space.episode
        log.info(
            "spool %s has room again; %d event(s) were dropped while it was full",
            self.path,
            episode.dropped,
        )
        self._space.episode = _FullEpisode()

    @property
    def full_episode(self) -> bool:
        """True from the WARNING of a full episode until it ends (see :meth:`_make_room`)."""
        return self._space.episode.active

    def signal_space(self) -> None:
        if self.on_full == "block":
            with self._space_freed:
                self._freed += 1
                self._space_freed.notify_all()


class _Full(Exception):
    """Internal: a group of appends found the spool full (on_full raise/block)."""

    def __init__(self, path: Path, limit: int, policy: str) -> None:
        super().__init__(path, limit, policy)
        self.message = (
            f"spool {path} is full (max_spool_bytes={limit}, on_full={policy}); "
            "the event was not written"
        )

    def as_public(self) -> SpoolFull:
        return SpoolFull(self.message)
