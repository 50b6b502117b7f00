"""The spool file deleted, moved or replaced under a running app: the client notices
(inode check at most once a second on the capture path, and at every reclaim of the
dispatcher), logs an ERROR naming what happened, and carries every row its open
connection still reads into a new spool at the path. Nothing whose capture()
returned is lost; a second process that opens the path in the gap reads no wrong data.

Each test states its loss accounting: events whose capture() returned, delivered,
dropped-and-counted; lost is 0.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from faults_files import replace_spool, unlink_spool
from kit import API_KEY, T0, add_events, live

from spoolpost import Client
from spoolpost.delivery.transport import HttpTransport
from spoolpost.errors import SpoolCorrupt
from spoolpost.ops import drain_spool
from spoolpost.spool import Spool, switch
from spoolpost.testing import LocalEndpoint

#: A second process: capture with a capture-only Client on SPOOL, then print the uuids
#: it captured and every uuid it can read at the path.
SECOND = """
import json, sys, time
from spoolpost import Client
from spoolpost.spool import Spool, Filter
c = Client(sys.argv[2], "http://127.0.0.1:9", spool=sys.argv[1], send=False)
mine = [c.capture("second", distinct_id="p2") for _ in range(3)]
c.shutdown(0)
with Spool(sys.argv[1]) as s:
    seen = [e.uuid for e in s.events(Filter(), now=time.time())]
print(json.dumps({"mine": mine, "seen": seen}))
"""


@pytest.fixture
def no_timed_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The capture path's once-a-second check never fires: the test decides when the
    client notices (``Spool.reclaim``, the dispatcher's periodic call)."""
    monkeypatch.setattr(switch, "FILE_CHECK_EVERY", 1e9)


def deliver_all(path: Path, endpoint: LocalEndpoint) -> int:
    """Drain ``path`` (a new process's view) to ``endpoint``; return the delivered count."""
    with Spool(path) as spool:
        result = drain_spool(spool, HttpTransport(endpoint.url, API_KEY), budget=30)
    assert result.pending == 0
    return result.delivered


def delivered_uuids(endpoint: LocalEndpoint) -> list[str]:
    return [e["uuid"] for r in endpoint.requests for e in r.events]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_deleting_the_spool_under_a_capturing_client_loses_nothing(
    spool_path: Path,
    endpoint: LocalEndpoint,
    make_client: Callable[..., Client],
    caplog: pytest.LogCaptureFixture,
    no_timed_check: None,
) -> None:
    client = make_client(send=False)
    before = [client.capture("before", distinct_id="u") for _ in range(5)]
    left = unlink_spool(spool_path)
    assert {p.name for p in left} == {"events.spool-wal", "events.spool-shm"}

    # Captured between the unlink and its detection: committed into the unlinked file.
    gap = [client.capture("gap", distinct_id="u") for _ in range(5)]
    assert not spool_path.exists()  # nothing noticed yet: no new spool at the path

    # A second process opens the path during the gap. The orphaned -wal/-shm are moved
    # aside first, so it reads only its own events and keeps them.
    second = subprocess.run(
        [sys.executable, "-c", SECOND, str(spool_path), API_KEY],
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(second.stdout)
    assert seen["seen"] == seen["mine"]
    assert "moved them aside" in second.stderr

    client.spool.reclaim(time.time())  # the dispatcher's periodic check: noticed here
    (error,) = errors(caplog)
    assert f"spool {spool_path} was deleted, and another file now is at its path" in error
    assert "carried 10 event(s)" in error

    after = [client.capture("after", distinct_id="u") for _ in range(5)]  # capture resumes
    assert client.stats().counters["dropped"] == 0
    client.shutdown(0)

    # The orphaned side files were the client's: carried, then removed.
    assert [p.name for p in spool_path.parent.iterdir() if ".orphaned-" in p.name] == []
    returned = before + gap + seen["mine"] + after
    assert deliver_all(spool_path, endpoint) == len(returned) == 18
    assert sorted(delivered_uuids(endpoint)) == sorted(returned)  # lost: 0, dropped: 0


def test_deleting_the_spool_is_noticed_by_a_capture(
    spool_path: Path,
    endpoint: LocalEndpoint,
    make_client: Callable[..., Client],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every capture checks here (by default at most one a second does).
    monkeypatch.setattr(switch, "FILE_CHECK_EVERY", 0.0)
    client = make_client(send=False)
    first = client.capture("first", distinct_id="u")
    unlink_spool(spool_path)
    second = client.capture("second", distinct_id="u")
    assert spool_path.exists()  # the capture noticed, and the new spool is at the path
    assert [e.uuid for e in live(spool_path)] == [first, second]
    (error,) = errors(caplog)
    assert "was deleted;" in error and "carried 1 event(s)" in error
    client.shutdown(0)
    assert deliver_all(spool_path, endpoint) == 2  # returned 2, delivered 2, lost 0


def test_a_spool_replaced_by_another_file_keeps_both_files_events(
    spool_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, no_timed_check: None
) -> None:
    other = tmp_path / "restored.spool"
    with Spool(other) as restored:
        theirs = add_events(restored, ["restored"])
    with Spool(spool_path) as spool:
        mine = add_events(spool, ["a", "b"])
        replace_spool(spool_path, other)
        late = add_events(spool, ["late"])  # into the file no longer at the path
        spool.reclaim(time.time())
        assert [e.uuid for e in live(spool)] == theirs + mine + late
    (error,) = errors(caplog)
    assert "was deleted, and another file now is at its path" in error
    assert "carried 3 event(s)" in error  # returned 4, in the spool 4, lost 0


def test_a_spool_moved_elsewhere_is_whole_there_and_carried_here(
    spool_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, no_timed_check: None
) -> None:
    moved = tmp_path / "moved.spool"
    with Spool(spool_path) as spool:
        mine = add_events(spool, ["a", "b"])
        spool_path.rename(moved)  # the main file only: its -wal stays behind
        late = add_events(spool, ["late"])
        spool.reclaim(time.time())
        assert [e.uuid for e in live(spool)] == mine + late
    (error,) = errors(caplog)
    assert f"was moved to {moved};" in error
    # The WAL was folded into the moved file before it was left: it is whole there too.
    assert [e.uuid for e in live(moved)] == mine + late


def test_a_spool_moved_aside_as_corrupt_by_another_process_is_a_warning(
    spool_path: Path, caplog: pytest.LogCaptureFixture, no_timed_check: None
) -> None:
    with Spool(spool_path) as spool:
        mine = add_events(spool, ["a"])
        aside = spool_path.with_name("events.spool.corrupt-20260101T000000Z")
        for suffix in ("", "-wal", "-shm"):  # as files.move_aside does it
            Path(f"{spool_path}{suffix}").rename(f"{aside}{suffix}")
        with Spool(spool_path) as other:
            theirs = add_events(other, ["new"])
        spool.reclaim(time.time())
        assert sorted(e.uuid for e in live(spool)) == sorted(mine + theirs)
    assert errors(caplog) == []
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"moved aside as corrupt to {aside} by another process" in warning


def test_a_spool_replaced_by_a_file_that_is_not_a_spool_is_left_alone_and_kept_open(
    spool_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, no_timed_check: None
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("someone's notes\n")
    with Spool(spool_path) as spool:
        mine = add_events(spool, ["a"])
        replace_spool(spool_path, notes)
        spool.reclaim(time.time())
        spool.reclaim(time.time())  # not tried again: one ERROR
        late = add_events(spool, ["late"], at=T0 + 10)  # into the file this process has open
        assert spool.stats(time.time()).counts["pending"] == 2  # its own delivery drains them
        batch = spool.claim(time.time(), max_events=10, max_bytes=1 << 20, lease_ttl=60)
        assert batch is not None and [r.uuid for r in batch.rows] == mine + late
        with pytest.raises(SpoolCorrupt, match="the file there is not a spool"):
            list(spool.events(None, now=time.time()))  # a private snapshot opens the path
    assert spool_path.read_text() == "someone's notes\n"  # refused untouched
    (error,) = errors(caplog)
    assert "and no spool can be opened there" in error and "not an SQLite database" in error


#: A process that captured N events into SPOOL, then (on a line from stdin) notices
#: that its file was deleted. Its log lines go to stdout, so the parent knows when the
#: copy is made; the parent holds the new spool's write lock, so the carry waits there.
HANDLER = """
import logging, sys, time
from spoolpost.spool import Spool

class Out(logging.Handler):
    def emit(self, record):
        print(record.getMessage(), flush=True)

logging.getLogger("spoolpost").addHandler(Out())
logging.getLogger("spoolpost").setLevel(logging.INFO)
spool = Spool(sys.argv[1], busy_timeout=600)
for i in range(int(sys.argv[2])):
    spool.append(f"u{i}", b'{"n": %d}' % i, time.time())
print("ready", flush=True)
sys.stdin.readline()
spool.reclaim(time.time())  # notices the deletion: copies the file, then carries
print("carried", flush=True)
"""


def test_sigkill_while_carrying_a_deleted_spools_rows_loses_nothing(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_path.parent.mkdir(parents=True)
    child = subprocess.Popen(
        [sys.executable, "-c", HANDLER, str(spool_path), "300"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"  # 300 appends returned
        unlink_spool(spool_path)
        Spool(spool_path).close()  # another process starts a new spool at the path
        blocker = sqlite3.connect(spool_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the child's carry will wait for this lock
        child.stdin.write("go\n")
        child.stdin.flush()
        line = child.stdout.readline()
        assert "copied it to" in line, line
        child.kill()  # SIGKILL: after the copy, before a single row was carried
        assert child.wait(timeout=60) == -signal.SIGKILL
        blocker.execute("ROLLBACK")
        blocker.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()
    (rescue,) = spool_path.parent.glob("events.spool.rescue-*")
    assert rescue.name.endswith(f"-{child.pid}")

    # The next process to open the spool carries what the killed one was carrying.
    with Spool(spool_path) as spool:
        assert sorted(e.uuid for e in live(spool)) == sorted(f"u{i}" for i in range(300))
    assert list(spool_path.parent.glob("events.spool.rescue-*")) == []
    (warning,) = [r.getMessage() for r in caplog.records if "left by process" in r.getMessage()]
    assert f"carried 300 event(s) and 0 dead letter(s) (0 already here) from {rescue}" in warning
    assert f"left by process {child.pid}, which stopped while carrying them" in warning
    # Accounting: appends returned 300, in the spool 300, lost 0.


def test_the_spools_folder_removed_under_a_delivering_client_loses_nothing(
    spool_path: Path,
    endpoint: LocalEndpoint,
    make_client: Callable[..., Client],
    caplog: pytest.LogCaptureFixture,
    no_timed_check: None,
) -> None:
    # Delivery threads run; nothing is due before flush().
    client = make_client(flush_at=100_000, flush_interval=3600.0)
    before = [client.capture("before", distinct_id="u") for _ in range(5)]
    shutil.rmtree(spool_path.parent)  # `rm -rf` of the folder: the file and its side files
    gap = [client.capture("gap", distinct_id="u") for _ in range(5)]
    assert not spool_path.parent.exists()  # not noticed yet

    client.spool.reclaim(time.time())  # the dispatcher's periodic check
    assert spool_path.exists()  # the folder made again, a new spool in it
    assert client.flush(timeout=30).complete
    (error,) = errors(caplog)
    assert f"spool {spool_path} was deleted; carried 10 event(s)" in error
    after = client.capture("after", distinct_id="u")
    assert client.flush(timeout=30).complete
    returned = [*before, *gap, after]
    assert sorted(delivered_uuids(endpoint)) == sorted(returned)  # lost 0, dropped 0
    assert [p.name for p in spool_path.parent.iterdir() if ".rescue-" in p.name] == []
