"""Long operator writes never starve capture: ``import``, ``replay`` and ``purge``
write in chunks of bounded time, yield the write lock between chunks, keep their
counts and idempotence, and an interrupted run is finished by a rerun.

Chunk sizes follow a fake monotonic clock (each transaction "takes" what the test
says), and the pause between chunks is a callback: nothing here sleeps or times
anything. Real spool files."""

from __future__ import annotations

import gc
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from kit import T0, counts, dead_letters, kill, make_event, states

from spoolpost.spool import Filter, Spool
from spoolpost.spool.chunks import FIRST_CHUNK, MAX_CHUNK, MIN_CHUNK, MIN_PAUSE, Chunking


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, raised between two chunks."""


def taking(seconds: float) -> Callable[[], float]:
    """A monotonic clock under which every transaction takes ``seconds``."""
    ticks = iter(range(10**9))
    return lambda: next(ticks) * seconds


def events(n: int, at: float = T0) -> list[tuple[str, bytes]]:
    return [make_event(at, i) for i in range(n)]


def writable_between_chunks(path: Path) -> Callable[[float], None]:
    """A pause callback that proves, at each pause, that the write lock is free:
    another connection writes with no busy wait at all."""

    def pause(seconds: float) -> None:
        assert seconds >= MIN_PAUSE
        probe = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")  # raises "database is locked" if held
            probe.execute("ROLLBACK")
        finally:
            probe.close()

    return pause


@pytest.fixture
def dead_spool(spool: Spool) -> Iterator[Spool]:
    """A spool with 300 dead letters and 5 pending events."""
    pairs = events(305)
    for uuid, body in pairs:
        assert spool.append(uuid, body, T0)
    kill(spool, [u for u, _ in pairs[:300]])
    yield spool


def test_a_slow_chunk_halves_the_next_and_a_fast_one_doubles_it(spool: Spool) -> None:
    slow = Chunking(clock=taking(0.020), sleep=lambda s: None)
    assert spool.import_events(events(200), now=T0, chunking=slow) == 200
    assert slow.sizes[:7] == [FIRST_CHUNK, 32, 16, 8, 4, 2, MIN_CHUNK]
    assert sum(slow.sizes) == 200 and max(slow.sizes[7:]) == MIN_CHUNK

    fast = Chunking(clock=taking(0.0001), sleep=lambda s: None)
    assert spool.import_events(events(40_000), now=T0, chunking=fast) == 40_000
    assert fast.sizes[:4] == [FIRST_CHUNK, 128, 256, 512]
    assert max(fast.sizes) == MAX_CHUNK and sum(fast.sizes) == 40_000
    assert counts(spool) == {"pending": 40_200, "leased": 0, "dead": 0}
    assert spool.counters()["imported"] == 40_200


def test_import_yields_the_write_lock_between_chunks(spool_path: Path, spool: Spool) -> None:
    pauses: list[float] = []
    probe = writable_between_chunks(spool_path)

    def pause(seconds: float) -> None:
        probe(seconds)
        pauses.append(seconds)

    chunking = Chunking(clock=taking(0.004), sleep=pause)
    assert spool.import_events(events(1000), now=T0, chunking=chunking) == 1000
    assert len(pauses) == len(chunking.sizes) - 1 > 1
    assert all(p == pytest.approx(0.008) for p in pauses)  # twice as long as the lock was held


def test_a_capture_between_chunks_is_stored_and_its_uuid_not_imported_twice(
    spool_path: Path, spool: Spool
) -> None:
    pairs = events(300)
    late_uuid, late_body = pairs[-1]
    other = Spool(spool_path, busy_timeout=0)
    captured: list[str] = []

    def capture_beside(seconds: float) -> None:
        # Another process captures the very event the import will reach last.
        if not captured:
            assert other.append(late_uuid, late_body, T0)
            captured.append(late_uuid)

    try:
        chunking = Chunking(clock=taking(0.001), sleep=capture_beside)
        assert spool.import_events(pairs, now=T0, chunking=chunking) == 299
    finally:
        other.close()
    # Loss accounting: 300 distinct events, each stored exactly once.
    assert sorted(states(spool)["pending"]) == sorted(u for u, _ in pairs)
    assert spool.counters()["imported"] == 299


def test_an_interrupted_import_is_finished_by_a_rerun(spool: Spool) -> None:
    pairs = events(500)
    chunks: list[int] = []

    def interrupt_after_two(seconds: float) -> None:
        chunks.append(1)
        if len(chunks) == 2:
            raise Interrupted

    first = Chunking(clock=taking(0.004), sleep=interrupt_after_two)
    with pytest.raises(Interrupted):
        spool.import_events(pairs, now=T0, chunking=first)
    done = sum(first.sizes)
    assert 0 < done < 500
    assert states(spool)["pending"] == [u for u, _ in pairs[:done]]  # whole chunks, in order

    assert spool.import_events(pairs, now=T0) == 500 - done  # the rerun skips by uuid
    assert states(spool)["pending"] == [u for u, _ in pairs]
    assert spool.counters()["imported"] == 500


def test_replay_in_chunks_keeps_its_count_and_order(dead_spool: Spool) -> None:
    before = [e.uuid for e in dead_letters(dead_spool)]
    chunking = Chunking(clock=taking(0.020), sleep=writable_between_chunks(dead_spool.path))
    assert dead_spool.replay(now=T0 + 10, chunking=chunking) == 300
    assert len(chunking.sizes) > 1
    live = states(dead_spool)["pending"]
    assert live[5:] == before  # replayed in the order they died, after the 5 pending
    assert counts(dead_spool) == {"pending": 305, "leased": 0, "dead": 0}
    assert dead_spool.counters()["replayed"] == 300


def test_an_interrupted_replay_is_finished_by_a_rerun(dead_spool: Spool) -> None:
    def interrupt(seconds: float) -> None:
        raise Interrupted

    first = Chunking(clock=taking(0.004), sleep=interrupt)
    with pytest.raises(Interrupted):
        dead_spool.replay(now=T0 + 10, chunking=first)
    assert first.sizes == [FIRST_CHUNK]
    assert counts(dead_spool) == {
        "pending": 5 + FIRST_CHUNK,
        "leased": 0,
        "dead": 300 - FIRST_CHUNK,
    }
    assert dead_spool.replay(now=T0 + 10) == 300 - FIRST_CHUNK
    assert counts(dead_spool) == {"pending": 305, "leased": 0, "dead": 0}
    assert dead_spool.counters()["replayed"] == 300


def test_purge_in_chunks_keeps_its_count_and_its_filter(dead_spool: Spool) -> None:
    chunking = Chunking(clock=taking(0.020), sleep=writable_between_chunks(dead_spool.path))
    assert dead_spool.purge(Filter(event="nobody"), now=T0) == 0
    assert dead_spool.purge(now=T0, chunking=chunking) == 300
    assert len(chunking.sizes) > 1
    assert counts(dead_spool) == {"pending": 5, "leased": 0, "dead": 0}
    assert dead_spool.counters()["purged"] == 300


def test_a_dead_letter_purged_by_another_process_meanwhile_is_not_counted_twice(
    dead_spool: Spool,
) -> None:
    other = Spool(dead_spool.path)
    purged_beside: list[int] = []

    def purge_beside(seconds: float) -> None:
        if not purged_beside:  # after the first chunk, another operator purges it all
            purged_beside.append(other.purge(now=T0))

    try:
        chunking = Chunking(clock=taking(0.004), sleep=purge_beside)
        mine = dead_spool.purge(now=T0, chunking=chunking)
    finally:
        other.close()
    assert mine == FIRST_CHUNK and purged_beside == [300 - FIRST_CHUNK]
    assert dead_spool.counters()["purged"] == 300
    assert counts(dead_spool)["dead"] == 0


def test_no_garbage_collection_runs_while_a_chunk_holds_the_lock(spool: Spool) -> None:
    seen: list[bool] = []

    def write(conn: sqlite3.Connection, chunk: Sequence[int]) -> int:
        seen.append(gc.isenabled())
        return len(chunk)

    assert gc.isenabled()
    assert (
        Chunking(clock=taking(0.001), sleep=lambda s: None).run(spool._db, list(range(500)), write)
        == 500
    )
    assert seen and not any(seen)
    assert gc.isenabled()  # given back after each chunk


def test_the_wal_is_folded_back_after_each_chunk(spool_path: Path, spool: Spool) -> None:
    wal = Path(f"{spool_path}-wal")
    sizes: list[int] = []
    chunking = Chunking(clock=taking(0.004), sleep=lambda s: sizes.append(wal.stat().st_size))
    pairs = events(20_000)
    assert spool.import_events(pairs, now=T0, chunking=chunking) == 20_000
    written = sum(len(body) for _, body in pairs)
    assert len(sizes) > 100
    # Folded back after each chunk, the WAL restarts small: it never holds the job's
    # ~5 MB (unfolded it would grow to wal_autocheckpoint's 1000 pages, ~4 MB).
    assert max(sizes) < written / 20, (max(sizes), written)
