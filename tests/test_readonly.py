"""A spool whose filesystem turns read-only, or whose folder loses its permissions,
under a running app: capture drops and counts (one ERROR naming the path and the
cause), never raises an sqlite3 error, and resumes once the condition clears.

The faults are real (tests/faults.py): an ext4 image that the kernel remounts
read-only after an error (``errors=remount-ro``), and ``chmod 000`` on the spool's
folder seen by a process running as uid 65534 (root ignores permission bits). Loss
accounting in each test: returned = uuids capture() gave back, stored/delivered,
dropped = counted; lost = returned - stored must be empty.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import NOBODY, CaptureChild, can_ext4, ext4_disk, integrity, probe_write
from kit import API_KEY, live

from spoolpost import Client
from spoolpost.spool import Spool
from spoolpost.testing import LocalEndpoint


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "spoolpost" and r.levelno >= logging.ERROR]


@pytest.mark.skipif(can_ext4() is not None, reason=f"{can_ext4()}")
def test_a_filesystem_remounted_read_only_under_a_running_client_drops_with_one_error(
    tmp_path: Path,
    endpoint: LocalEndpoint,
    caplog: pytest.LogCaptureFixture,
    record_property: pytest.RecordProperty,
) -> None:
    caplog.set_level(logging.INFO, logger="spoolpost")
    record_property("fault", "ext4 errors=remount-ro, trigger_fs_error")
    with ext4_disk(tmp_path, 48 << 20) as disk:
        # durability="power": the kernel's error aborts the ext4 journal, which loses
        # writes not yet synced as power loss does; "process" (synchronous=NORMAL)
        # promises to survive a crash of the process only (README, guarantees).
        client = Client(
            API_KEY,
            endpoint.url,
            spool=disk.spool_path,
            send=False,
            min_free_bytes=0,
            durability="power",
        )
        try:
            returned = [client.capture("before", distinct_id="u1") for _ in range(200)]
            assert None not in returned

            disk.make_readonly()
            assert probe_write(disk.folder) == errno.EROFS  # the fault bites
            after = [client.capture("read-only", distinct_id="u1") for _ in range(30)]
            assert after == [None] * 30  # dropped, never raised
            assert client.spool.counters()["dropped"] == 30  # in memory: nothing can be written
            assert client.spool._disk.hits["readonly"] >= 1
            logged = errors(caplog)
            assert len(logged) == 1, [r.getMessage() for r in logged]
            assert str(disk.spool_path) in logged[0].getMessage()
            assert "read-only (EROFS)" in logged[0].getMessage()
            # Delivery's claim cannot be written: it leases in memory instead (see
            # test_readonly_delivery.py), never raising an sqlite3 error.
            batch = client.spool.claim(0.0, max_events=10, max_bytes=1 << 20, lease_ttl=60)
            assert batch is not None and batch.token.startswith("ro-")
            client.flush(timeout=0)  # reads still work: no error
        finally:
            client.shutdown(timeout=1)
        assert len(errors(caplog)) == 1

        # The operator clears it (the kernel keeps such a mount read-only until it
        # is mounted again); a new client delivers everything that was returned.
        disk.remount()
        assert integrity(disk.spool_path) == "ok"
        client = Client(API_KEY, endpoint.url, spool=disk.spool_path, min_free_bytes=0)
        try:
            later = client.capture("after the remount", distinct_id="u1")
            assert later is not None
            assert client.flush(timeout=30).pending == 0
        finally:
            client.shutdown(timeout=5)
    # returned 200 + 1 = delivered; dropped 30 (counted in the first process's
    # memory and its ERROR: the disk never took them); lost = 0.
    assert {*returned, later} <= set(endpoint.delivered_uuids())


@pytest.fixture
def nobody_folder() -> Iterator[Path]:
    """A folder owned by uid 65534 that uid 65534 can reach (pytest's own temporary
    folders sit under a 0700 folder of root's); removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="spoolpost-perm-", dir="/tmp"))
    try:
        base.chmod(0o755)
        folder = base / "spool"
        folder.mkdir()
        os.chown(folder, NOBODY, NOBODY)
        yield folder
    finally:
        (base / "spool").chmod(0o700)
        shutil.rmtree(base, ignore_errors=True)


# Runs as root until it has imported what it needs (the interpreter's library lies
# under /root, which uid 65534 cannot read), then as uid/gid 65534.
CHMOD_CHILD = """
import os, sqlite3, sys, tempfile
from spoolpost import Client, SpoolUnwritable
with tempfile.TemporaryDirectory() as warm:  # imports everything capture and flush use
    c = Client(sys.argv[1], "http://127.0.0.1:9", spool=warm + "/w.spool", send=False)
    c.capture("warm", distinct_id="u1"); c.flush(timeout=0); c.shutdown(timeout=0)
os.setgroups([]); os.setgid(65534); os.setuid(65534)
spool = sys.argv[2]
client = Client(sys.argv[1], "http://127.0.0.1:9", spool=spool, send=False, min_free_bytes=0)
for _ in range(int(sys.argv[3])):
    print(client.capture("before", distinct_id="u1"), flush=True)
print("READY", flush=True)
sys.stdin.readline()  # the parent made the folder chmod 000
pid = os.fork()  # a worker forked now opens its own connections: the fault bites
if pid:
    os.waitpid(pid, 0)
    os._exit(0)
try:
    sqlite3.connect(spool).execute("SELECT 1")
    print("PROBE-WORKED", flush=True)
except sqlite3.Error as exc:
    print("PROBE-FAILED", exc.sqlite_errorname, flush=True)
for _ in range(int(sys.argv[4])):
    print(client.capture("no permission", distinct_id="u1"), flush=True)
try:
    client.spool.counters()
except SpoolUnwritable as exc:  # not even a read works now: a spoolpost error, not sqlite3's
    print("UNREADABLE", exc.condition, flush=True)
print("FAULTED", client.spool._disk.unpersisted, flush=True)  # counted in memory
sys.stdin.readline()  # the parent gave the permissions back
for _ in range(int(sys.argv[5])):
    print(client.capture("after", distinct_id="u1"), flush=True)
if sys.argv[6] == "kill":
    print("KILL-ME", flush=True)
    sys.stdin.readline()
print("DONE", client.spool.counters()["dropped"], flush=True)
os._exit(0)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to uid 65534 needs root")
@pytest.mark.parametrize("end", ["exit", "kill"], ids=["then-exit", "then-sigkill"])
def test_chmod_000_on_the_folder_drops_with_one_error_and_capture_resumes_when_it_clears(
    nobody_folder: Path, end: str
) -> None:
    folder = nobody_folder
    path = folder / "events.spool"
    child = subprocess.Popen(
        [sys.executable, "-c", CHMOD_CHILD, API_KEY, str(path), "50", "20", "10", end],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None

    def until(marker: str) -> tuple[list[str], str]:
        seen = []
        for line in child.stdout:  # type: ignore[union-attr]
            if line.startswith(marker):
                return seen, line.strip()
            seen.append(line.strip())
        raise AssertionError(f"the child ended before {marker}: {child.communicate()}")

    def tell() -> None:
        child.stdin.write("go\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]

    try:
        before, _ = until("READY")
        folder.chmod(0o000)
        tell()
        _, probe = until("PROBE-")
        during, faulted = until("FAULTED")
        folder.chmod(0o700)
        tell()
        if end == "kill":
            after, _ = until("KILL-ME")
            os.kill(child.pid, signal.SIGKILL)  # no clean exit after the fault
            done = ""
        else:
            after, done = until("DONE")
    finally:
        folder.chmod(0o700)
        child.kill()
        _, err = child.communicate()
    assert None not in before and "None" not in before and len(before) == 50
    assert probe.startswith("PROBE-FAILED")  # the fault bites: a new connection fails
    assert during == ["None"] * 20 + ["UNREADABLE readonly"]  # dropped, never raised
    assert faulted == "FAULTED 20"  # counted in memory while nothing can be written
    assert "None" not in after and len(after) == 10  # capture resumed without a restart
    if done:
        assert done == "DONE 20"
    assert "Traceback" not in err
    logged = [line for line in err.splitlines() if "cannot be written" in line]
    assert len(logged) == 1, err  # one ERROR, naming the path and the cause
    assert str(path) in logged[0] and f"no write permission on the folder {folder}" in logged[0]

    # Loss accounting: returned 50 + 10 = stored; dropped 20 = the persisted counter
    # (written by the first capture that worked again); lost = 0.
    with Spool(path) as spool:
        assert [e.uuid for e in live(spool)] == before + after
        assert spool.counters()["dropped"] == 20


@pytest.mark.skipif(can_ext4() is not None, reason=f"{can_ext4()}")
def test_sigkill_while_the_filesystem_is_read_only_loses_nothing_returned(
    tmp_path: Path, endpoint: LocalEndpoint, record_property: pytest.RecordProperty
) -> None:
    record_property("fault", "ext4 errors=remount-ro, trigger_fs_error")
    with ext4_disk(tmp_path, 48 << 20) as disk:
        # durability="power": see the test above (the journal abort loses unsynced writes).
        with CaptureChild(disk.spool_path, API_KEY, before=200, durability="power") as child:
            returned = child.until("READY")
            assert len(returned) == 200 and "None" not in returned
            disk.make_readonly()
            assert probe_write(disk.folder) == errno.EROFS  # the fault bites
            child.go()
            returned += child.until("REFUSED")
            child.kill()  # SIGKILL in the middle of captures on a read-only filesystem
        logged = [line for line in child.stderr.splitlines() if "cannot be written" in line]
        assert len(logged) == 1, child.stderr  # one ERROR, naming the path and the cause
        assert str(disk.spool_path) in logged[0] and "read-only (EROFS)" in logged[0]
        assert "Traceback" not in child.stderr

        disk.remount()  # the operator clears it; the killed app held the last open file
        assert integrity(disk.spool_path) == "ok"
        client = Client(API_KEY, endpoint.url, spool=disk.spool_path, min_free_bytes=0)
        try:
            assert client.flush(timeout=30).pending == 0
        finally:
            client.shutdown(timeout=5)
    # returned (200 before, any during) = delivered; the child's 5+ drops were
    # counted in its memory and logged, and died with it; lost = 0.
    assert set(returned) <= set(endpoint.delivered_uuids())
