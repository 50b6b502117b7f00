"""Operators' bulk writes (``import``, ``replay``, ``purge``) in chunks of bounded
time, so that a capture beside them, in any process, waits a few milliseconds at
most instead of the whole job.

Each chunk is one ``BEGIN IMMEDIATE`` … ``COMMIT`` that holds the write lock for
about :data:`CHUNK_SECONDS`; the chunk size adapts to what the last one took.
After each commit the job pauses twice as long as it held the lock (at least
:data:`MIN_PAUSE`): SQLite's busy handler polls the lock on a schedule of its
own (sleeps of 1, 2, 5, 10 … ms: ``sqliteDefaultBusyCallback``, main.c) rather than
queueing, so a writer that took the lock again at once could starve a waiting
capture. With a hold of h ≤ 5 ms and a pause of 2h, a capture that found the lock
taken finds it free at one of its retries at +1, +3 or +8 ms. Every chunk is
committed on its own: a job interrupted half way leaves the chunks before it
done, and its rerun does the rest (see docs/architecture.md, "Space and long
writes").
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from spoolpost.spool.vacuum import fold_wal

if TYPE_CHECKING:
    import sqlite3

    from spoolpost.spool.db import Database

T = TypeVar("T")

#: Seconds one chunk aims to hold the write lock.
CHUNK_SECONDS = 0.005
#: Seconds a job pauses after a chunk, at least.
MIN_PAUSE = 0.001
#: Rows in the first chunk, and the bounds of the chunk size.
FIRST_CHUNK = 64
MIN_CHUNK = 1
MAX_CHUNK = 8192


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """No cyclic garbage collection inside: a full collection over a bulk job's
    millions of objects is slow, and must not run while the write lock is held;
    it runs after the chunk instead."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class Chunking:
    """How one bulk write is cut into transactions.

    ``seconds``: the time a chunk aims to hold the write lock (default
    :data:`CHUNK_SECONDS`, 5 ms): a chunk that took less than half of it is
    followed by one twice as large, one that took longer by one half as large
    (between :data:`MIN_CHUNK` and :data:`MAX_CHUNK` rows). ``clock``: monotonic
    seconds; ``sleep``: the pause after each chunk (twice as long as the chunk
    held the lock, at least :data:`MIN_PAUSE`). ``sizes`` records each chunk's rows.
    """

    seconds: float = CHUNK_SECONDS
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    sizes: list[int] = field(default_factory=list)

    def run(
        self,
        db: Database,
        items: Sequence[T],
        write: Callable[[sqlite3.Connection, Sequence[T]], int],
    ) -> int:
        """Call ``write(conn, chunk)`` for consecutive chunks of ``items``, each in
        its own write transaction of ``db``; return the sum of what the calls
        returned. Raises what ``db.write`` and ``write`` raise (the chunks
        committed before stay committed)."""
        done = 0
        size = FIRST_CHUNK
        start = 0
        while start < len(items):
            chunk = items[start : start + size]
            with _no_gc(), db.write() as conn:
                began = self.clock()
                done += write(conn, chunk)
            held = self.clock() - began
            self.sizes.append(len(chunk))
            start += len(chunk)
            if held < self.seconds / 2:
                size = min(MAX_CHUNK, size * 2)
            elif held > self.seconds:
                size = max(MIN_CHUNK, size // 2)
            fold_wal(db)
            if start < len(items):
                self.sleep(max(MIN_PAUSE, 2 * held))
        return done
