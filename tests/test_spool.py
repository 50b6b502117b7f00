"""The Spool storage seam, on real SQLite files: append (group commit, on_full),
claim/ack/reschedule/release/dead_letter/extend (including stale lease tokens),
stats and counters, the flush watermark, file modes, corruption, fork."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kit import T0, dead_letters, live, rows

from spoolpost import Client
from spoolpost.errors import (
    ConfigError,
    SpoolClosed,
    SpoolCorrupt,
    SpoolFull,
    SpoolLocked,
    UnsupportedFilesystem,
)
from spoolpost.spool import (
    SQLITE_HEADER,
    Batch,
    Filter,
    Spool,
    check_filesystem,
    mount_of,
)
from spoolpost.spool.files import FileKind, check_spool_file, classify

BIG = 1 << 30


def body(i: int, size: int = 0) -> bytes:
    text = f'{{"n":{i}}}'.encode()
    return text + b" " * max(0, size - len(text))


def fill(spool: Spool, n: int, now: float = T0, size: int = 0, first: int = 0) -> None:
    for i in range(first, first + n):
        assert spool.append(f"u{i}", body(i, size), now)


def claim(spool: Spool, now: float = T0, **options: Any) -> Batch:
    options.setdefault("max_events", 100)
    options.setdefault("max_bytes", BIG)
    options.setdefault("lease_ttl", 60.0)
    batch = spool.claim(now, **options)
    assert batch is not None
    return batch


# -- settings and lifecycle -------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"durability": "disk"}, "durability must be one of"),
        ({"on_full": "wait"}, "on_full must be one of"),
        ({"max_spool_bytes": 0}, "max_spool_bytes must be positive"),
        ({"busy_timeout": -1.0}, "busy_timeout and block_timeout must be >= 0"),
        ({"block_timeout": -0.5}, "busy_timeout and block_timeout must be >= 0"),
    ],
)
def test_bad_settings_raise_config_error(
    spool_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Spool(spool_path, **options)
    assert not spool_path.exists()


@pytest.mark.parametrize(("durability", "synchronous"), [("process", 1), ("power", 2)])
def test_pragmas_are_set_explicitly(spool_path: Path, durability: Any, synchronous: int) -> None:
    with Spool(spool_path, durability=durability, busy_timeout=2.5) as s, s._db.read() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == 64 * 1024 * 1024


def test_append_stores_the_body_as_given(spool: Spool) -> None:
    payload = '{"event":"x","properties":{"é":1}}'.encode()
    assert spool.append("uuid-1", payload, T0) is True
    assert rows(live(spool), "uuid, body, size, captured_at, next_attempt_at, state, attempts") == [
        ("uuid-1", payload, len(payload), T0, T0, "pending", 0)
    ]


def test_a_closed_spool_refuses_work_and_close_is_idempotent(spool_path: Path) -> None:
    s = Spool(spool_path)
    s.close()
    s.close()
    assert s.closed
    with pytest.raises(SpoolClosed, match="is closed"):
        s.append("u", b"{}", T0)
    with pytest.raises(SpoolClosed, match="is closed"):
        s.stats(T0)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def spool_file_modes(path: Path) -> dict[str, int]:
    return {p.name: mode_of(p) for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))}


PRIVATE = {"events.spool": 0o600, "events.spool-wal": 0o600, "events.spool-shm": 0o600}


def test_files_and_every_folder_spoolpost_creates_are_private(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    existing.chmod(0o755)
    path = existing / "new" / "deeper" / "events.spool"
    with umask(0o022), Spool(path) as s:
        s.append("u", b"{}", T0)
        modes = spool_file_modes(path)
    assert modes == PRIVATE
    assert mode_of(existing / "new") == 0o700  # mkdir(parents=True) left this one 0755
    assert mode_of(existing / "new" / "deeper") == 0o700
    assert mode_of(existing) == 0o755  # not created by spoolpost: left alone


@pytest.mark.parametrize(
    ("below", "message"),
    [
        (
            "x/events.spool",
            "cannot create or reach the folder of spool {path}: {oserror} '{blocker}/x'",
        ),
        ("events.spool", "cannot open spool {path}: {oserror} '{path}'"),
    ],
)
def test_a_file_where_a_folder_should_be_raises_config_error(
    tmp_path: Path, below: str, message: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = blocker / below
    with pytest.raises(ConfigError) as caught:
        Spool(path)
    oserror = "[Errno 20] Not a directory:"
    assert str(caught.value) == message.format(path=path, blocker=blocker, oserror=oserror)
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


@pytest.mark.parametrize("mode", [0o644, 0o660, 0o604])
def test_an_existing_spool_others_may_read_is_made_private_with_its_wal_and_shm(
    spool_path: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    caplog.set_level(logging.INFO, "spoolpost")
    Spool(spool_path).close()
    other = sqlite3.connect(spool_path)  # keeps the -wal and -shm in place
    try:
        other.execute("SELECT count(*) FROM events").fetchone()
        for p in spool_file_modes(spool_path):
            (spool_path.parent / p).chmod(mode)

        with umask(0o022), Spool(spool_path) as s:
            assert s.append("u", b"{}", T0)
            assert spool_file_modes(spool_path) == PRIVATE
        with Spool(spool_path) as s:  # already private: nothing to say
            assert s.append("u2", b"{}", T0)
    finally:
        other.close()
    (info,) = [r.getMessage() for r in caplog.records if "made it 0600" in r.getMessage()]
    assert info == (
        f"spool {spool_path}: other users could access events.spool (was {mode:04o}),"
        f" events.spool-wal (was {mode:04o}), events.spool-shm (was {mode:04o});"
        " made it 0600 (events carry personal data)"
    )


def test_a_new_empty_file_others_may_read_gives_private_wal_and_shm(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The reported case: `touch s.spool` (0644); SQLite copies the spool file's
    # mode to the -wal and -shm it creates.
    caplog.set_level(logging.INFO, "spoolpost")
    spool_path.parent.mkdir(parents=True)
    spool_path.touch(mode=0o644)
    with umask(0o022), Spool(spool_path) as s:
        assert s.append("u", b"{}", T0)
        assert spool_file_modes(spool_path) == PRIVATE
    assert [r.getMessage() for r in caplog.records if "made it 0600" in r.getMessage()] == [
        f"spool {spool_path}: other users could access events.spool (was 0644);"
        " made it 0600 (events carry personal data)"
    ]


# -- group commit -------------------------------------------------------------------


def test_appends_from_many_threads_are_all_written_once(spool: Spool) -> None:
    threads, each = 8, 150
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        start.wait()
        try:
            for i in range(each):
                assert spool.append(f"t{t}-{i}", body(i), T0)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    assert errors == []
    uuids = [uuid for _, uuid, _, _ in rows(live(spool))]
    assert len(uuids) == threads * each
    assert set(uuids) == {f"t{t}-{i}" for t in range(threads) for i in range(each)}


# -- claim --------------------------------------------------------------------------


def test_claim_takes_due_retries_first_then_fresh_events_by_id(spool: Spool) -> None:
    fill(spool, 5)
    first = claim(spool, max_events=2)
    assert first.ids == [1, 2]
    spool.reschedule(first.token, [1], T0, T0 + 20, "503")
    spool.reschedule(first.token, [2], T0, T0 + 10, "503")

    early = claim(spool, T0 + 5)
    assert early.ids == [3, 4, 5]  # retries not due yet
    assert spool.release(early.token) == 3

    late = claim(spool, T0 + 20)
    assert late.ids == [2, 1, 3, 4, 5]  # by due time, then capture order
    assert [r.attempts for r in late.rows] == [1, 1, 0, 0, 0]
    assert spool.claim(T0 + 20, max_events=10, max_bytes=BIG, lease_ttl=60) is None


@pytest.mark.parametrize(
    ("max_events", "max_bytes", "ids"),
    [
        (3, BIG, [1, 2, 3]),
        (10, 250, [1, 2]),
        (10, 300, [1, 2, 3]),
        (10, 1, [1]),  # always at least one event, however large
        (1, BIG, [1]),
    ],
)
def test_claim_cuts_a_batch_at_max_events_or_max_bytes(
    spool: Spool, max_events: int, max_bytes: int, ids: list[int]
) -> None:
    fill(spool, 5, size=100)
    batch = claim(spool, max_events=max_events, max_bytes=max_bytes)
    assert batch.ids == ids
    assert batch.size == 100 * len(ids)
    assert batch.expires_at == T0 + 60
    assert [e.state for e in live(spool)][: len(ids) + 1] == ["leased"] * len(ids) + ["pending"] * (
        len(ids) < 5
    )


def test_claim_dead_letters_events_older_than_max_event_age(spool: Spool) -> None:
    fill(spool, 3, now=T0)
    fill(spool, 1, now=T0 + 100, first=3)

    batch = claim(spool, T0 + 150, max_events=1, max_event_age=120)

    assert batch.ids == [4]  # it looked past the expired ones
    assert rows(dead_letters(spool), "id, reason") == [
        (1, "expired"),
        (2, "expired"),
        (3, "expired"),
    ]
    assert spool.counters()["dead"] == 3
    assert spool.claim(T0 + 150, max_events=1, max_bytes=BIG, lease_ttl=60) is None


def test_claim_returns_none_when_nothing_is_due(spool: Spool) -> None:
    assert spool.claim(T0, max_events=10, max_bytes=BIG, lease_ttl=60) is None
    fill(spool, 1)
    claim(spool)
    assert spool.claim(T0, max_events=10, max_bytes=BIG, lease_ttl=60) is None


# -- settle by token ---------------------------------------------------------------------


def test_ack_deletes_the_rows_and_counts_them(spool: Spool) -> None:
    fill(spool, 3)
    batch = claim(spool)
    assert spool.ack(batch.token, [1, 2]) == 2
    assert [r[0] for r in rows(live(spool))] == [3]
    assert spool.ack(batch.token, [3]) == 1
    assert rows(live(spool)) == []
    assert spool.counters()["delivered"] == 3
    with sqlite3.connect(spool.path) as conn:  # the lease records, read from the file
        assert conn.execute("SELECT count(*) FROM leases").fetchone()[0] == 0


def test_reschedule_counts_an_attempt_and_records_the_error(spool: Spool) -> None:
    fill(spool, 2)
    batch = claim(spool)
    assert spool.reschedule(batch.token, batch.ids, T0 + 1, T0 + 31, "HTTP 503 " * 200) == (2, 0)
    got = rows(
        live(spool),
        "state, attempts, next_attempt_at, lease_token, lease_expires_at, length(last_error),"
        " first_failed_at, last_failed_at",
    )
    assert got == [("pending", 1, T0 + 31, None, None, 1000, T0 + 1, T0 + 1)] * 2
    assert spool.next_due_at() == T0 + 31


def test_reschedule_dead_letters_rows_at_max_attempts(spool: Spool) -> None:
    fill(spool, 2)
    batch = claim(spool)
    assert spool.reschedule(batch.token, batch.ids, T0, T0, "HTTP 503", 2, status=503) == (2, 0)
    batch = claim(spool, T0 + 1)
    assert spool.reschedule(batch.token, batch.ids, T0 + 1, T0 + 2, "HTTP 502", 2, 502) == (0, 2)
    assert rows(live(spool)) == []
    assert rows(dead_letters(spool), "id, uuid, reason, status, detail, attempts") == [
        (1, "u0", "max_attempts", 502, "HTTP 502", 2),
        (2, "u1", "max_attempts", 502, "HTTP 502", 2),
    ]
    assert spool.counters()["dead"] == 2


@pytest.mark.parametrize("ids", [None, [2]])
def test_release_gives_rows_back_due_now_without_an_attempt(
    spool: Spool, ids: list[int] | None
) -> None:
    fill(spool, 3)
    batch = claim(spool)
    released = spool.release(batch.token, ids)
    assert released == (3 if ids is None else 1)
    again = claim(spool)  # the fresh-row cursor went back for them
    assert again.ids == ([1, 2, 3] if ids is None else [2])
    assert [r.attempts for r in again.rows] == [0] * released


def test_dead_letter_keeps_reason_status_and_an_excerpt(spool: Spool) -> None:
    fill(spool, 2)
    batch = claim(spool)
    assert spool.dead_letter(batch.token, [1], T0, "rejected", 400, "bad " * 500) == 1
    (row,) = rows(dead_letters(spool), "id, uuid, reason, status, detail, attempts")
    assert row[:4] == (1, "u0", "rejected", 400) and len(row[4]) == 1000
    assert row[5] == 1  # the rejected request counts as an attempt, as max_attempts' do
    stats = spool.stats(T0)
    assert stats.dead_reasons == {"rejected": 1}
    assert stats.counts == {"pending": 0, "leased": 1, "dead": 1}


def test_rows_given_back_by_another_process_are_claimed_after_the_next_reclaim(
    spool_path: Path, spool: Spool
) -> None:
    fill(spool, 3)
    with Spool(spool_path) as other:
        theirs = claim(other, max_events=1)  # id 1, leased by "another process"
        assert claim(spool).ids == [2, 3]  # this spool's cursor moves past 1
        fill(spool, 2, first=3)  # ids 4, 5 keep the scan above the cursor busy
        assert other.release(theirs.token) == 1
    assert claim(spool, max_events=1).ids == [4]  # row 1 is behind the cursor
    spool.reclaim(T0)  # the dispatcher calls this every few seconds
    assert claim(spool).ids == [1, 5]


def test_extend_moves_the_lease_expiry(spool: Spool) -> None:
    fill(spool, 2)
    batch = claim(spool, lease_ttl=10)
    assert spool.extend(batch.token, T0 + 100) is True
    assert spool.reclaim(T0 + 50) == 0
    assert {r[0] for r in rows(live(spool), "lease_expires_at")} == {T0 + 100}
    assert spool.reclaim(T0 + 100) == 2


SETTLE_WITH_STALE_TOKEN: dict[str, tuple[Callable[[Spool, str, list[int]], Any], Any]] = {
    "ack": (lambda s, t, ids: s.ack(t, ids), 0),
    "reschedule": (lambda s, t, ids: s.reschedule(t, ids, T0 + 70, T0 + 99, "late", 1), (0, 0)),
    "release all": (lambda s, t, ids: s.release(t), 0),
    "release ids": (lambda s, t, ids: s.release(t, ids), 0),
    "dead_letter": (lambda s, t, ids: s.dead_letter(t, ids, T0 + 70, "rejected", 400), 0),
    "extend": (lambda s, t, ids: s.extend(t, T0 + 1000), False),
}


@pytest.mark.parametrize("op", list(SETTLE_WITH_STALE_TOKEN))
def test_a_stale_lease_token_changes_nothing(spool: Spool, op: str) -> None:
    settle, expected = SETTLE_WITH_STALE_TOKEN[op]
    fill(spool, 3)
    zombie = claim(spool, lease_ttl=60)
    assert spool.reclaim(T0 + 60) == 3  # the zombie's lease expired
    current = claim(spool, T0 + 60, lease_ttl=60)
    before = rows(
        live(spool), "id, state, attempts, lease_token, lease_expires_at, next_attempt_at"
    )

    assert settle(spool, zombie.token, zombie.ids) == expected

    assert (
        rows(live(spool), "id, state, attempts, lease_token, lease_expires_at, next_attempt_at")
        == before
    )
    assert {r[3] for r in before} == {current.token}
    assert dead_letters(spool) == []
    assert spool.counters() == {"delivered": 0, "dead": 0, "dropped": 0, "filtered": 0}
    assert spool.ack(current.token, current.ids) == 3


def test_reclaim_takes_back_leased_rows_whose_lease_record_is_missing(spool: Spool) -> None:
    fill(spool, 2)
    claim(spool, lease_ttl=10)
    with sqlite3.connect(spool.path) as conn:  # another process loses the lease records
        conn.execute("DELETE FROM leases")
    assert spool.reclaim(T0 + 9) == 0
    assert spool.reclaim(T0 + 10) == 2
    assert claim(spool, T0 + 10).ids == [1, 2]


# -- reading ----------------------------------------------------------------------------


def test_stats_and_counters(spool: Spool) -> None:
    fill(spool, 4, size=50)
    batch = claim(spool, T0 + 1, max_events=3)
    spool.ack(batch.token, [1])
    spool.dead_letter(batch.token, [2], T0 + 2, "too_large", 413, "")
    spool.reschedule(batch.token, [3], T0 + 2, T0 + 32, "HTTP 503")
    spool.add_counter("filtered", 2)

    stats = spool.stats(T0 + 12)

    assert stats.counts == {"pending": 2, "leased": 0, "dead": 1}
    assert stats.bytes == {"pending": 100, "leased": 0, "dead": 50}
    assert stats.oldest_pending_age == 12.0
    assert stats.next_attempt_in == 0.0  # event 4 is fresh: due since capture
    assert stats.dead_reasons == {"too_large": 1}
    assert stats.counters == {"delivered": 1, "dead": 1, "dropped": 0, "filtered": 2}
    assert stats.schema_version == 3
    assert stats.file_bytes > 0 and stats.wal_bytes > 0
    assert stats.as_dict()["counts"] == stats.counts
    assert spool.next_due_at() == T0 + 32
    assert spool.due(T0 + 12, 10) == (1, T0, 0)
    assert spool.due(T0 + 40, 10) == (2, T0, 1)


def test_watermark_covers_what_was_captured_before_it(spool: Spool) -> None:
    fill(spool, 3, now=T0)
    mark = spool.watermark(T0 + 1)
    assert mark == (3, T0 + 1)
    fill(spool, 1, now=T0 + 2, first=3)  # after the mark

    assert spool.states_through(mark) == {"pending": 3, "leased": 0, "dead": 0}
    assert spool.any_open_through(mark) and spool.dead_through(mark) == 0
    with spool.snapshot() as before:  # pinned now: later changes are not seen through it
        batch = claim(spool, T0 + 2, max_events=3)
        assert spool.states_through(mark) == {"pending": 0, "leased": 3, "dead": 0}
        spool.dead_letter(batch.token, [1], T0 + 3, "rejected", 400)
        spool.ack(batch.token, [2, 3])
        assert before.states_through(mark) == {"pending": 3, "leased": 0, "dead": 0}
    assert spool.states_through(mark) == {"pending": 0, "leased": 0, "dead": 1}
    assert not spool.any_open_through(mark) and spool.dead_through(mark) == 1
    assert spool.any_open_through(spool.watermark(T0 + 3))  # the event after the mark


def test_watermark_tells_reused_ids_apart_by_capture_time(spool: Spool) -> None:
    fill(spool, 2, now=T0)
    mark = spool.watermark(T0 + 1)
    batch = claim(spool, T0 + 1)
    spool.ack(batch.token, batch.ids)  # the spool is empty: ids start over

    fill(spool, 2, now=T0 + 5, first=10)
    assert [r[0] for r in rows(live(spool))] == [1, 2]

    assert spool.states_through(mark) == {"pending": 0, "leased": 0, "dead": 0}
    assert spool.states_through(spool.watermark(T0 + 5)) == {
        "pending": 2,
        "leased": 0,
        "dead": 0,
    }


# -- a full spool -------------------------------------------------------------------------

EVENT = 6000  # bytes: bodies larger than a page, so that deleting rows frees pages


def fill_until_full(spool: Spool) -> int:
    """Append until the spool first refuses; return how many fit."""
    for n in range(200):
        try:
            if not spool.append(f"fill-{n}", body(n, EVENT), T0):
                return n
        except SpoolFull:
            return n
    raise AssertionError("the spool never filled up")


def full_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "is full" in r.getMessage()
    ]


def free_everything(spool: Spool) -> None:
    while (batch := spool.claim(T0, max_events=500, max_bytes=BIG, lease_ttl=60)) is not None:
        spool.ack(batch.token, batch.ids)


def test_drop_newest_drops_counts_and_warns_once_per_episode(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "spoolpost")
    with Spool(spool_path, max_spool_bytes=128 * 1024) as s:
        fitted = fill_until_full(s)
        assert fitted >= 1
        assert [s.append(f"more-{i}", body(i, EVENT), T0) for i in range(3)] == [False] * 3
        assert s.stats(T0).counts["pending"] == fitted
        assert s.counters()["dropped"] == 4
        assert len(full_warnings(caplog)) == 1
        assert "on_full=drop_newest" in full_warnings(caplog)[0]

        free_everything(s)
        assert s.append("after", body(0, EVENT), T0) is True
        assert any("has room again; 4 event(s)" in r.getMessage() for r in caplog.records)
        fill_until_full(s)
        assert len(full_warnings(caplog)) == 2  # a second episode, a second warning


def test_drop_oldest_makes_room_by_dropping_the_oldest_pending(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Spool(spool_path, max_spool_bytes=128 * 1024, on_full="drop_oldest") as s:
        s.append("first", body(0, EVENT), T0)
        leased = claim(s, max_events=1)  # leased rows are never dropped
        for n in range(40):
            assert s.append(f"e{n}", body(n, EVENT), T0) is True
        uuids = [uuid for _, uuid, _, _ in rows(live(s))]
        dropped = s.counters()["dropped"]

    assert uuids[0] == "first" and leased.ids == [1]
    assert uuids[-1] == "e39"
    assert dropped > 0 and len(uuids) == 41 - dropped
    assert uuids[1:] == [f"e{n}" for n in range(40 - len(uuids) + 1, 40)]
    assert len(full_warnings(caplog)) == 1


def test_drop_oldest_warns_once_over_a_long_episode_and_counts_every_drop(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The reported flood: each drop made a little room, the next append saw it and
    # ended the episode, and the next drop began a new one (236 warnings here).
    caplog.set_level(logging.INFO, "spoolpost")
    with Spool(spool_path, max_spool_bytes=100_000, on_full="drop_oldest") as s:
        assert all(s.append(f"e{i}", body(i, 260), T0) for i in range(2000))
        kept = [uuid for _, uuid, _, _ in rows(live(s))]
        dropped = s.counters()["dropped"]
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert "is full (max_spool_bytes=100000); on_full=drop_oldest" in caplog.messages[0]
        assert "not logged again until it is back down to 87500 bytes" in caplog.messages[0]

        assert dropped == 2000 - len(kept) > 1000
        assert kept == [f"e{i}" for i in range(dropped, 2000)]  # the newest survive

        free_everything(s)
        # The used size is read again after at most max_spool_bytes / 64 bytes
        # of appends (1562 here: three of these appends at ~2x 260 bytes each).
        assert all(s.append(f"after-{i}", body(0, 260), T0) for i in range(4))
    assert caplog.messages[1:] == [
        f"spool {spool_path} has room again; {dropped} event(s) were dropped while it was full"
    ]


def try_append(spool: Spool, uuid: str) -> bool:
    try:
        return spool.append(uuid, body(0, EVENT), T0)
    except SpoolFull:
        return False


@pytest.mark.parametrize("on_full", ["drop_newest", "drop_oldest", "raise", "block"])
def test_deliveries_that_keep_a_spool_near_its_bound_do_not_start_new_episodes(
    spool_path: Path, caplog: pytest.LogCaptureFixture, on_full: Any
) -> None:
    caplog.set_level(logging.INFO, "spoolpost")
    # Each event takes ~1/32 of the bound: one delivery leaves the spool in the
    # top 1/8 of it (ROOM_AGAIN), near its bound.
    with Spool(spool_path, max_spool_bytes=256 * 1024, on_full=on_full, block_timeout=0) as s:
        for i in range(40):  # ~1.25x the bound
            try_append(s, f"fill-{i}")
        for n in range(20):  # one event delivered, three more captured, over and over
            batch = claim(s, max_events=1)
            assert s.ack(batch.token, batch.ids) == 1
            for i in range(3):
                try_append(s, f"more-{n}-{i}")
        assert s.stats(T0).counts["pending"] < 40
        assert len(full_warnings(caplog)) == 1
        assert not any("has room again" in m for m in caplog.messages)


def test_raise_policy_raises_spool_full_and_writes_nothing(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Spool(spool_path, max_spool_bytes=128 * 1024, on_full="raise") as s:
        fitted = fill_until_full(s)
        with pytest.raises(SpoolFull, match=r"is full \(max_spool_bytes=131072, on_full=raise\)"):
            s.append("more", body(0, EVENT), T0)
        assert s.stats(T0).counts["pending"] == fitted
        assert s.counters()["dropped"] == 0
    assert len(full_warnings(caplog)) == 1


def test_block_policy_times_out_with_spool_full(spool_path: Path) -> None:
    with Spool(spool_path, max_spool_bytes=128 * 1024, on_full="block", block_timeout=0.05) as s:
        fitted = fill_until_full(s)  # the first refusal already waited block_timeout
        with pytest.raises(SpoolFull, match="on_full=block"):
            s.append("more", body(0, EVENT), T0)
        assert s.stats(T0).counts["pending"] == fitted


def test_block_policy_unblocks_when_an_ack_frees_room(spool_path: Path) -> None:
    with Spool(spool_path, max_spool_bytes=128 * 1024, on_full="block", block_timeout=60) as s:
        n = 0
        while True:  # fill to just below the bound without blocking
            probe = Spool(spool_path, max_spool_bytes=128 * 1024, on_full="raise")
            try:
                probe.append(f"fill-{n}", body(n, EVENT), T0)
            except SpoolFull:
                break
            finally:
                probe.close()
            n += 1
        blocked = threading.Event()

        class Spy(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "is full" in record.getMessage():
                    blocked.set()

        spy = Spy()
        logging.getLogger("spoolpost").addHandler(spy)
        result: list[bool] = []
        try:
            writer = threading.Thread(
                target=lambda: result.append(s.append("waiting", body(0, EVENT), T0))
            )
            writer.start()
            assert blocked.wait(10)
            batch = claim(s, max_events=5)
            s.ack(batch.token, batch.ids)
            writer.join(10)
        finally:
            logging.getLogger("spoolpost").removeHandler(spy)

        assert not writer.is_alive() and result == [True]
        assert rows(live(s))[-1][1] == "waiting"


# -- corruption and schema -----------------------------------------------------------------


def test_a_corrupt_file_is_moved_aside_and_a_new_spool_started(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_path.parent.mkdir(parents=True)
    garbage = SQLITE_HEADER + b"this is not a database\x00" * 400  # damage after the header
    spool_path.write_bytes(garbage)
    Path(f"{spool_path}-wal").write_bytes(b"junk wal")

    with Spool(spool_path) as s:
        assert s.append("u", b"{}", T0)
        assert s.stats(T0).counts["pending"] == 1

    (aside,) = spool_path.parent.glob("events.spool.corrupt-*[0-9TZ]")
    assert aside.read_bytes() == garbage
    assert Path(f"{aside}-wal").read_bytes() == b"junk wal"
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert str(spool_path) in error.getMessage() and str(aside) in error.getMessage()


def test_corruption_found_while_capturing_moves_the_spool_aside_and_capture_goes_on(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Spool(spool_path) as s:
        fill(s, 50, size=200)
        s.checkpoint()
        with sqlite3.connect(spool_path) as conn:
            root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events'")
            (page,) = root.fetchone()
            (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    with open(spool_path, "r+b") as f:  # scribble over the events table's root page
        f.seek((page - 1) * page_size)
        f.write(b"\xff" * page_size)

    with Spool(spool_path) as s:  # the schema (page 1) still reads fine
        assert s.append("after", body(1), T0)
        assert [r[1] for r in rows(live(s))] == ["after"]
    (aside,) = spool_path.parent.glob("events.spool.corrupt-*[0-9TZ]")
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert str(aside) in error.getMessage()


def test_a_spool_replaced_by_another_process_is_followed(spool_path: Path) -> None:
    with Spool(spool_path) as s:
        fill(s, 1)
        os.replace(spool_path, spool_path.with_name("moved-aside"))
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(
                    f"{spool_path}{suffix}", f"{spool_path.with_name('moved-aside')}{suffix}"
                )
        with Spool(spool_path) as other:  # "another process" starts a new spool
            assert other.append("new", body(2), T0)
        s.reclaim(T0)  # the dispatcher's periodic check
        assert s.append("after", body(3), T0)
        # What the moved file held is carried into the spool now at the path.
        assert [r[1] for r in rows(live(s))] == ["new", "u0", "after"]


def test_a_second_corrupt_file_does_not_overwrite_the_first(spool_path: Path) -> None:
    spool_path.parent.mkdir(parents=True)
    contents = [SQLITE_HEADER + b"first garbage" * 100, SQLITE_HEADER + b"second garbage" * 100]
    for content in contents:
        spool_path.unlink(missing_ok=True)
        spool_path.write_bytes(content)
        Spool(spool_path).close()
    kept = sorted(p.read_bytes() for p in spool_path.parent.glob("events.spool.corrupt-*[0-9TZ]"))
    assert kept == sorted(contents)


@pytest.mark.parametrize(
    "content",
    [
        b"hello\n",
        b"\x00" * 4096,
        b"SQLite format 3",  # the header without its final NUL byte
        b"{}",
    ],
    ids=["text", "zeros", "short header", "json"],
)
def test_a_file_that_is_not_an_sqlite_database_is_refused_untouched(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(content)
    with pytest.raises(SpoolCorrupt) as caught:
        Spool(path)
    assert str(caught.value) == (
        f"spool {path} is not an SQLite database; refusing to change it. "
        "Point spoolpost at another path or remove the file"
    )
    assert path.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no -wal, -shm, corrupt-*
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@contextlib.contextmanager
def special_file(kind: str, path: Path) -> Iterator[None]:
    """A FIFO or a listening Unix socket at ``path`` (neither needs privileges)."""
    if kind == "fifo":
        os.mkfifo(path, 0o644)
        yield
        return
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        os.chmod(path, 0o644)
        yield


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_a_device_fifo_or_socket_is_refused_untouched(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "not-a-file"
    with special_file(kind, path):
        message = f"{path} is not a regular file (a device, FIFO or socket); a spool must be a file"
        with pytest.raises(ConfigError) as caught:
            Spool(path)
        assert str(caught.value) == message
        with pytest.raises(ConfigError) as caught:
            check_spool_file(path)
        assert str(caught.value) == message
        assert classify(path) is FileKind.SPECIAL
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # not made 0600: never opened
        assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-file"]  # no -wal, -shm


def test_a_snapshot_used_after_its_block_raises_spool_closed(spool: Spool) -> None:
    with spool.snapshot() as snap:
        assert snap.states_through(spool.watermark(T0)) == {"pending": 0, "leased": 0, "dead": 0}
    with pytest.raises(SpoolClosed, match="used after its with block"):
        snap.states_through(spool.watermark(T0))
    with pytest.raises(SpoolClosed, match="used after its with block"):
        snap.events(Filter(), T0)


@pytest.mark.parametrize(("limit", "expected"), [(2**63, 1), (10**30, 1), (0, 0), (-5, 0)])
def test_tail_takes_any_whole_number_as_its_limit(spool: Spool, limit: int, expected: int) -> None:
    spool.append("u", body(0), T0)
    assert len(spool.tail(limit=limit, now=T0)) == expected


def test_tail_refuses_a_limit_that_is_not_a_whole_number(spool: Spool) -> None:
    with pytest.raises(TypeError, match="limit must be a whole number, not float"):
        spool.tail(limit=2.5, now=T0)  # type: ignore[arg-type]


def test_a_body_stored_as_text_is_read_as_its_bytes(spool: Spool, spool_path: Path) -> None:
    """A row "repaired" by hand in the sqlite3 shell stores TEXT, not a BLOB: views and
    claims read its bytes (and show it damaged) instead of failing on every step."""
    fill(spool, 2)
    with contextlib.closing(sqlite3.connect(spool_path)) as conn, conn:
        conn.execute("UPDATE events SET body = '[1,2]' WHERE id = 1")
    assert [e.body for e in spool.events(now=T0)] == [b"[1,2]", body(1)]
    batch = claim(spool, T0)
    assert [r.body for r in batch.rows] == [b"[1,2]", body(1)]


def test_a_spool_whose_first_page_is_destroyed_is_moved_aside(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Spool(spool_path) as s:
        fill(s, 5)
    with open(spool_path, "r+b") as f:
        f.write(b"\x00" * 4096)  # the header page is gone
    Path(f"{spool_path}-wal").write_bytes(b"")  # as an app killed while running leaves it
    with Spool(spool_path) as s:  # the app keeps running on a new spool
        assert s.append("new", body(0), T0)
    (aside,) = spool_path.parent.glob("events.spool.corrupt-*[0-9TZ]")
    assert aside.read_bytes()[:4096] == b"\x00" * 4096
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert str(aside) in error.getMessage()


def test_an_empty_file_becomes_a_spool(spool_path: Path) -> None:
    spool_path.parent.mkdir(parents=True)
    spool_path.touch(mode=0o600)
    with Spool(spool_path) as s:
        assert s.append("u", b"{}", T0)
        assert s.stats(T0).schema_version == 3
    assert spool_path.read_bytes().startswith(SQLITE_HEADER)
    assert list(spool_path.parent.glob("*.corrupt-*")) == []


def test_a_sqlite_database_that_is_not_a_spool_is_left_alone(spool_path: Path) -> None:
    spool_path.parent.mkdir(parents=True)
    with sqlite3.connect(spool_path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()
    before = spool_path.read_bytes()
    with pytest.raises(SpoolCorrupt) as caught:
        Spool(spool_path)
    assert str(caught.value) == (
        f"spool {spool_path} is a SQLite database but not a spoolpost spool "
        "(it holds users); refusing to change it"
    )
    # Byte for byte: not even its journal mode was switched to WAL.
    assert spool_path.read_bytes() == before
    assert [p.name for p in spool_path.parent.iterdir()] == ["events.spool"]


def _make_at(path: Path, kind: FileKind) -> None:
    if kind is FileKind.FOLDER:
        path.mkdir()
    elif kind is FileKind.EMPTY:
        path.touch()
    elif kind is FileKind.SPOOL:
        Spool(path).close()
    elif kind is FileKind.NOT_SQLITE:
        path.write_bytes(b"hello\n")
    elif kind is FileKind.DESTROYED:
        path.write_bytes(b"\x00" * 4096)
        Path(f"{path}-wal").write_bytes(b"")
    elif kind is FileKind.FOREIGN:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("CREATE TABLE users (name TEXT)")
    elif kind is FileKind.SPECIAL:
        os.mkfifo(path)


@pytest.mark.parametrize("kind", list(FileKind), ids=lambda k: k.value)
def test_classify_tells_what_is_at_a_path_and_changes_nothing(
    tmp_path: Path, kind: FileKind
) -> None:
    path = tmp_path / "f"
    _make_at(path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    content = path.read_bytes() if path.is_file() else None
    assert classify(path) is kind
    # Reading a spool, even read-only, lets SQLite create its -wal and -shm.
    sqlite_own = {"f-wal", "f-shm"} if kind is FileKind.SPOOL else set()
    assert set(before) <= {p.name for p in tmp_path.iterdir()} <= set(before) | sqlite_own
    assert (path.read_bytes() if path.is_file() else None) == content


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "spool path is empty"),
        ("{tmp}/a-directory", "spool path {tmp}/a-directory is a directory; give a file path"),
        ("{tmp}/a-link", "spool path {tmp}/a-link is a directory; give a file path"),
    ],
    ids=["empty", "directory", "link to a directory"],
)
def test_an_empty_path_or_a_directory_raises_config_error(
    tmp_path: Path, given: str, message: str
) -> None:
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "a-link").symlink_to(tmp_path / "a-directory")
    with pytest.raises(ConfigError) as caught:
        Spool(given.format(tmp=tmp_path))
    assert str(caught.value) == message.format(tmp=tmp_path)
    assert list((tmp_path / "a-directory").iterdir()) == []


_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


@contextlib.contextmanager
def file_permissions_apply() -> Iterator[None]:
    """Make file permissions apply to this thread as they do to a normal user.

    Root passes every permission check through CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH; they are taken out of this thread's effective
    capabilities meanwhile (they stay permitted, so they can be put back).
    For a normal user this changes nothing.
    """
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3; 0: this thread
    data = (_CapData * 2)()
    assert libc.capget(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())
    saved = data[0].effective
    data[0].effective &= ~((1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH))
    assert libc.capset(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())
    try:
        yield
    finally:
        data[0].effective = saved
        assert libc.capset(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())


def read_only_folder_empty(folder: Path, path: Path) -> None:
    folder.chmod(0o500)


def read_only_file(folder: Path, path: Path) -> None:
    Spool(path).close()
    path.chmod(0o400)


def spool_in_a_read_only_folder(folder: Path, path: Path) -> None:
    Spool(path).close()
    folder.chmod(0o500)


def empty_file_in_a_read_only_folder(folder: Path, path: Path) -> None:
    path.touch(mode=0o600)
    folder.chmod(0o500)


def missing_folder_below_a_read_only_one(folder: Path, path: Path) -> None:
    folder.chmod(0o500)


DENIED = "[Errno 13] Permission denied:"
SQLITE_DENIED = (
    "attempt to write a readonly database (SQLite must create events.spool-wal and"
    " events.spool-shm in {folder}: Permission denied)"
)


@pytest.mark.parametrize(
    ("setup", "below", "message"),
    [
        (read_only_folder_empty, "", f"cannot open spool {{path}}: {DENIED} '{{path}}'"),
        (read_only_file, "", f"cannot open spool {{path}}: {DENIED} '{{path}}'"),
        (spool_in_a_read_only_folder, "", f"cannot open spool {{path}}: {SQLITE_DENIED}"),
        (empty_file_in_a_read_only_folder, "", f"cannot open spool {{path}}: {SQLITE_DENIED}"),
        (
            missing_folder_below_a_read_only_one,
            "new",
            f"cannot create or reach the folder of spool {{path}}: {DENIED} '{{folder}}/new'",
        ),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
def test_a_folder_or_file_this_process_cannot_write_raises_config_error(
    tmp_path: Path, setup: Callable[[Path, Path], None], below: str, message: str
) -> None:
    folder = tmp_path / "spool"
    folder.mkdir(mode=0o700)
    path = folder / below / "events.spool"
    setup(folder, path)
    before = sorted((p.name, p.read_bytes()) for p in folder.iterdir())
    try:
        with file_permissions_apply(), pytest.raises(ConfigError) as caught:
            Spool(path)
    finally:
        folder.chmod(0o700)
    assert str(caught.value) == message.format(path=path, folder=folder)
    assert sorted((p.name, p.read_bytes()) for p in folder.iterdir()) == before


def test_a_client_given_an_empty_spool_path_raises_config_error() -> None:
    # The reported case: spool="" became ".", "cannot open spool .: Is a directory".
    with pytest.raises(ConfigError) as caught:
        Client("phc_k", spool="", send=False)
    assert str(caught.value) == "spool path is empty"


# -- filesystems ------------------------------------------------------------------------

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid 0 0
server:/export /mnt/data nfs4 rw,vers=4.2 0 0
/dev/sdb1 /mnt/data/local ext4 rw 0 0
//nas/share /mnt/my\\040share cifs rw 0 0
tmpfs /mnt/data/local/tmp tmpfs rw 0 0
"""


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/home/app/events.spool", ("/", "ext4")),
        ("/mnt/data/spool/events.spool", ("/mnt/data", "nfs4")),
        ("/mnt/data", ("/mnt/data", "nfs4")),
        ("/mnt/database/x", ("/", "ext4")),  # a prefix of the name is not inside
        ("/mnt/data/local/events.spool", ("/mnt/data/local", "ext4")),
        ("/mnt/data/local/tmp/s", ("/mnt/data/local/tmp", "tmpfs")),
        ("/mnt/my share/events.spool", ("/mnt/my share", "cifs")),
    ],
)
def test_mount_of_finds_the_innermost_mount(target: str, expected: tuple[str, str]) -> None:
    assert mount_of(target, MOUNTS) == expected


@pytest.mark.parametrize(
    ("path", "fstype"),
    [("/mnt/data/spool/events.spool", "nfs4"), ("/mnt/my share/events.spool", "cifs")],
)
def test_check_filesystem_refuses_a_network_mount(path: str, fstype: str) -> None:
    with pytest.raises(UnsupportedFilesystem, match=f"is on a {fstype} filesystem mounted at"):
        check_filesystem(Path(path), MOUNTS)


def test_check_filesystem_accepts_a_local_disk() -> None:
    check_filesystem(Path("/mnt/data/local/events.spool"), MOUNTS)
    check_filesystem(Path("/home/app/events.spool"), MOUNTS)


# -- fork -------------------------------------------------------------------------------------


def in_child(work: Callable[[], None]) -> int:
    """Run ``work`` in a forked child; return its exit code (0: it returned)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_forked_child_appends_through_its_own_connection(spool: Spool) -> None:
    fill(spool, 1)

    assert in_child(lambda: fill(spool, 5, first=1)) == 0

    fill(spool, 1, first=6)  # the parent's connection still works
    assert [r[1] for r in rows(live(spool))] == [f"u{i}" for i in range(7)]


def test_a_forked_childs_commits_survive_the_parent_closing_the_spool(
    spool_path: Path,
) -> None:
    # Regression: the child kept the parent's connections open, so SQLite in the
    # child believed it held the parent's file locks; the parent's close then
    # checkpointed and deleted the WAL under the child's later commits.
    parent = Spool(spool_path)
    fill(parent, 1)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def child_work() -> None:
        fill(parent, 1, first=1)
        os.write(ready_w, b"1")
        assert os.read(go_r, 1) == b"1"
        fill(parent, 10, first=2)

    pid = os.fork()
    if pid == 0:  # pragma: no cover
        code = 1
        try:
            child_work()
            code = 0
        finally:
            os._exit(code)
    assert os.read(ready_r, 1) == b"1"
    parent.close()
    os.write(go_w, b"1")
    _, status = os.waitpid(pid, 0)
    for fd in (ready_r, ready_w, go_r, go_w):
        os.close(fd)

    assert os.waitstatus_to_exitcode(status) == 0
    with Spool(spool_path) as again:
        assert len(rows(live(again))) == 12


# -- locks held by others -----------------------------------------------------------------


def test_a_writer_lock_held_past_busy_timeout_raises_spool_locked(spool_path: Path) -> None:
    with Spool(spool_path, busy_timeout=0.05) as s:
        other = sqlite3.connect(spool_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(SpoolLocked, match="stayed locked"):
                s.append("u1", b"{}", T0)
        finally:
            other.execute("COMMIT")
            other.close()
        assert s.append("u2", b"{}", T0) is True  # nothing was left half-done
        assert [r[1] for r in rows(live(s))] == ["u2"]


def test_opening_a_file_another_process_holds_exclusively_raises_spool_locked(
    spool_path: Path,
) -> None:
    spool_path.parent.mkdir(parents=True)
    other = sqlite3.connect(spool_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(SpoolLocked, match="is locked"):
            Spool(spool_path, busy_timeout=0.05)
    finally:
        other.execute("COMMIT")
        other.close()
    assert list(spool_path.parent.glob("*.corrupt-*")) == []
    with Spool(spool_path) as s:
        assert s.append("u", b"{}", T0)


def test_a_failed_write_transaction_is_rolled_back_and_the_spool_goes_on(spool: Spool) -> None:
    with (
        pytest.raises(sqlite3.OperationalError, match="no such table"),
        spool._db.write() as conn,
    ):
        conn.execute("INSERT INTO counters (name, value) VALUES ('delivered', 5)")
        conn.execute("DELETE FROM no_such_table")
    assert spool.counters()["delivered"] == 0
    assert spool.append("u", b"{}", T0) is True
