"""Disk conditions without a mount: the classification of real SQLite errors, the
``min_free_bytes`` setting's bad input, and ``PRAGMA max_page_count`` standing in
for a full filesystem (what tests/faults.py uses where ``mount`` is refused).

Loss accounting for the page-capped spool: returned = appends that returned True,
stored = rows in the file, dropped = the ``dropped`` counter; lost = 0.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from faults import SmallDisk
from kit import API_KEY, make_event, states

from spoolpost import Client, ConfigError, SpoolFull, SpoolUnwritable
from spoolpost.spool import OnFull, Spool
from spoolpost.spool.conditions import classify


def _full(tmp: Path) -> sqlite3.Error:
    conn = sqlite3.connect(tmp / "capped.db")
    conn.execute("CREATE TABLE t (b BLOB)")
    conn.execute("PRAGMA max_page_count=3")
    try:
        conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError("max_page_count did not bite")


def _readonly(tmp: Path) -> sqlite3.Error:
    sqlite3.connect(tmp / "ro.db").execute("CREATE TABLE t (x)").connection.close()
    conn = sqlite3.connect(f"file:{tmp / 'ro.db'}?mode=ro", uri=True)
    try:
        conn.execute("INSERT INTO t VALUES (1)")
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError("a read-only connection wrote")


def _cantopen(tmp: Path) -> sqlite3.Error:
    try:
        sqlite3.connect(tmp / "no such folder" / "x.db")
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("opened a file in a missing folder")


def _busy(tmp: Path) -> sqlite3.Error:
    a = sqlite3.connect(tmp / "busy.db", isolation_level=None)
    b = sqlite3.connect(tmp / "busy.db", isolation_level=None, timeout=0)
    a.execute("BEGIN IMMEDIATE")
    try:
        b.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        return exc
    finally:
        a.close()
        b.close()
    raise AssertionError("two writers at once")


@pytest.mark.parametrize(
    ("make", "name", "condition"),
    [
        (_full, "SQLITE_FULL", "full"),
        (_readonly, "SQLITE_READONLY", "readonly"),
        (_cantopen, "SQLITE_CANTOPEN", "readonly"),
        (_busy, "SQLITE_BUSY", None),
    ],
    ids=["full", "readonly", "cantopen", "busy-is-not-a-disk-condition"],
)
def test_real_sqlite_errors_are_classified_by_their_codes(
    tmp_path: Path,
    make: Callable[[Path], sqlite3.Error],
    name: str,
    condition: str | None,
) -> None:
    exc = make(tmp_path)
    assert exc.sqlite_errorname == name
    assert classify(exc, tmp_path / "x.db") == condition


@pytest.mark.parametrize("value", [-1, -(64 << 20)])
def test_min_free_bytes_below_zero_is_refused(tmp_path: Path, value: int) -> None:
    with pytest.raises(ConfigError, match=rf"^min_free_bytes must be >= 0, not {value}$"):
        Spool(tmp_path / "s.spool", min_free_bytes=value)
    with pytest.raises(ConfigError, match=rf"^min_free_bytes must be >= 0, not {value}$"):
        Client(API_KEY, spool=tmp_path / "c.spool", send=False, min_free_bytes=value)
    assert not (tmp_path / "s.spool").exists()


def test_a_page_capped_spool_drops_and_counts_like_a_full_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, record_property: pytest.RecordProperty
) -> None:
    caplog.set_level(logging.INFO, logger="spoolpost")
    record_property("fault", "max_page_count")
    disk = SmallDisk(tmp_path, "max_page_count", 0)
    with Spool(disk.spool_path) as spool:
        disk.limit(spool, extra_pages=20)
        returned, refused = [], 0
        while refused < 5:
            uuid, body = make_event(1.0, pad=1500)
            if spool.append(uuid, body, 1.0):
                returned.append(uuid)
            else:
                refused += 1
        assert spool._disk.hits["full"] >= 1  # the SQLITE_FULL path, not the floor's
        assert spool.counters()["dropped"] == 5
        warned = [r for r in caplog.records if "SQLITE_FULL" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        stored = states(spool)["pending"]
    assert stored == returned  # lost = 0


@pytest.mark.parametrize("on_full", ["raise", "block"])
def test_a_page_capped_spool_with_on_full_raise_or_block_raises_spoolfull(
    tmp_path: Path, on_full: OnFull
) -> None:
    disk = SmallDisk(tmp_path, "max_page_count", 0)
    # block_timeout=0: "block" gives up at once (no wall-clock wait in a test).
    with Spool(disk.spool_path, on_full=on_full, block_timeout=0.0) as spool:
        disk.limit(spool, extra_pages=20)
        with pytest.raises(SpoolFull) as raised:
            for i in range(1000):
                uuid, body = make_event(1.0, i, pad=1500)
                spool.append(uuid, body, 1.0)
        assert isinstance(raised.value, SpoolUnwritable)
        assert raised.value.condition == "full"
        assert raised.value.path == disk.spool_path
        assert spool.counters()["dropped"] == 0
