"""A damaged page met on a read path (the flush barrier's counts, the dispatcher's
claim, a drain) is handled like damage met on a write: the file is set aside as
``<spool>.corrupt-<time>`` after every row that can still be read is carried into a
new spool at the path. No raw ``sqlite3`` error reaches the app; delivery resumes.

The damage is real: one leaf page of the events table's b-tree (found with SQLite's
dbstat) is overwritten in the file after a checkpoint. Each test states its loss
accounting: events whose capture() returned, delivered, and those on the damaged
page (destroyed by the fault itself, named in the ERROR); spoolpost loses none.
"""

from __future__ import annotations

import itertools
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from faults_files import damage_page, leaf_pages, rowids_on_page
from kit import API_KEY, T0, add_events, live
from prometheus_client.parser import text_string_to_metric_families

from spoolpost import Client
from spoolpost.cli import cli
from spoolpost.clock import ManualClock
from spoolpost.delivery import Step
from spoolpost.delivery.threads import Threads
from spoolpost.errors import SpoolCorrupt
from spoolpost.ops import EXIT_DAMAGED
from spoolpost.spool import Spool
from spoolpost.testing import LocalEndpoint

#: Bodies this big put about a dozen events on a 4 KiB leaf page.
PAD = {"pad": "x" * 250}


def checkpointed(spool: Spool) -> None:
    """Fold the whole WAL into the file, so that damage written there is what is read."""
    for _ in range(100):  # a reader of this process may hold a snapshot for a moment
        if spool.checkpoint():
            return
    raise AssertionError("the WAL could not be checkpointed")


def damage_a_middle_leaf(path: Path) -> list[int]:
    """Damage the middle leaf page of the events table; return the ids it held."""
    leaves = leaf_pages(path)
    assert len(leaves) >= 5, leaves
    victim = leaves[len(leaves) // 2]
    ids = rowids_on_page(path, victim)
    damage_page(path, victim)
    return ids


def delivered(endpoint: LocalEndpoint) -> list[str]:
    return [e["uuid"] for r in endpoint.requests for e in r.events]


def test_a_damaged_page_under_a_running_client(
    spool_path: Path,
    endpoint: LocalEndpoint,
    make_client: Callable[..., Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Delivery threads run, but nothing is due before flush().
    client = make_client(flush_at=100_000, flush_interval=3600.0)
    captured = [client.capture("e", distinct_id="u", properties=PAD) for _ in range(120)]
    checkpointed(client.spool)
    lost_ids = damage_a_middle_leaf(spool_path)
    destroyed = [captured[i - 1] for i in lost_ids]  # ids follow capture order here
    with Spool(spool_path) as other:  # another process captures: every cache is stale now
        (theirs,) = add_events(other, ["other process"], at=time.time())

    result = client.flush(timeout=30)  # meets the damage: nothing raised

    assert result.complete
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    (aside,) = spool_path.parent.glob("events.spool.corrupt-*[0-9TZ]")
    assert f"spool {spool_path} was moved aside as corrupt to {aside}" in error
    assert f"carried {len(captured) + 1 - len(lost_ids)} event(s)" in error
    assert f"could not read events:{min(lost_ids)}-{max(lost_ids)}" in error
    assert client.spool.switches == [error]

    # Delivery resumes for new events, and shutdown raises nothing either.
    after = [client.capture("after", distinct_id="u") for _ in range(3)]
    assert client.flush(timeout=30).complete
    client.shutdown(timeout=5)

    returned = [*captured, theirs, *after]
    assert sorted(delivered(endpoint)) == sorted(set(returned) - set(destroyed))
    # Accounting: returned 124 = delivered 124 - len(destroyed) + destroyed by the fault.
    assert len(delivered(endpoint)) + len(destroyed) == len(returned)


def test_a_claim_that_meets_a_damaged_page_quarantines_and_goes_on(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Spool(spool_path) as spool:
        uuids = add_events(spool, [f"e{i}" for i in range(120)])
        checkpointed(spool)
        lost_ids = damage_a_middle_leaf(spool_path)
        with Spool(spool_path) as other:
            (late,) = add_events(other, ["late"], at=T0 + 500)
        leased: list[str] = []
        while batch := spool.claim(T0 + 1000, max_events=50, max_bytes=1 << 22, lease_ttl=60):
            leased += [r.uuid for r in batch.rows]
        lost = {uuids[i - 1] for i in lost_ids}
        # Leases taken before the damage was met were carried with their rows: each
        # event is leased once. Returned 121 = leased 121 - 15 + 15 destroyed.
        assert sorted(leased) == sorted({*uuids, late} - lost)
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert f"could not read events:{min(lost_ids)}-{max(lost_ids)}" in error


def test_drain_of_a_damaged_spool_exits_7_with_no_traceback(
    spool_path: Path, endpoint: LocalEndpoint
) -> None:
    with Spool(spool_path) as spool:  # captured now: none is past max_event_age
        uuids = add_events(spool, [f"e{i}" for i in range(120)], at=time.time())
        checkpointed(spool)
    lost_ids = damage_a_middle_leaf(spool_path)

    command = [sys.executable, "-m", "spoolpost", "drain", str(spool_path)]
    command += ["--host", endpoint.url, "--api-key", API_KEY]
    drain = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=120)

    assert drain.returncode == EXIT_DAMAGED == 7, drain.stderr
    assert "Traceback" not in drain.stderr
    (line,) = drain.stderr.splitlines()  # one ERROR line, naming both files
    assert line.startswith(f"spoolpost: ERROR spool {spool_path} was moved aside as corrupt")
    summary = json.loads(drain.stdout)
    lost = {uuids[i - 1] for i in lost_ids}
    assert summary["exit_code"] == 7 and summary["remaining"] == 0
    assert summary["damaged"] == [line.removeprefix("spoolpost: ERROR ")]
    assert sorted(delivered(endpoint)) == sorted(set(uuids) - lost)
    assert live(spool_path) == []  # the new spool at the path is drained
    # A second run finds a healthy spool: exit 0.
    again = subprocess.run([*command, "--quiet"], capture_output=True, text=True, timeout=120)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")


# -- what the operator's read-only commands say about it --------------------------------


def run(*args: str | Path) -> Result:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def metric_values(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def damaged_file(path: Path) -> bytes:
    """A spool at ``path`` whose schema page is destroyed past the header: SQLite
    calls it corrupt on opening. Returns its bytes."""
    with Spool(path) as spool:
        add_events(spool, ["a", "b"])
    raw = bytearray(path.read_bytes())
    raw[100:4096] = b"\xff" * (4096 - 100)
    path.write_bytes(bytes(raw))
    return bytes(raw)


@pytest.mark.parametrize("state", ["missing", "corrupt"])
def test_inspect_json_and_metrics_answer_for_a_spool_that_cannot_be_read(
    spool_path: Path, tmp_path: Path, state: str
) -> None:
    spool_path.parent.mkdir(parents=True)
    before = damaged_file(spool_path) if state == "corrupt" else None

    inspected = run("inspect", spool_path, "--json")
    metrics = run("metrics", spool_path)
    target = tmp_path / "spoolpost.prom"
    written = run("metrics", spool_path, "--textfile", target)

    assert inspected.exit_code == metrics.exit_code == written.exit_code == 1
    answer = json.loads(inspected.stdout)
    assert answer["path"] == str(spool_path) and answer["state"] == state
    assert answer["quarantined"] == []
    assert answer["error"] in inspected.stderr  # and one "Error: …" line
    assert inspected.stderr.startswith("Error: ") and inspected.stderr.count("\n") == 1
    for text in (metrics.stdout, target.read_text()):
        assert metric_values(text) == {"spoolpost_up": 0.0, "spoolpost_quarantined_files": 0.0}
    # Read-only: nothing created, nothing moved.
    if before is None:
        assert not spool_path.exists()
    else:
        assert spool_path.read_bytes() == before
    assert [p.name for p in spool_path.parent.iterdir() if ".corrupt-" in p.name] == []


def test_inspect_and_check_report_quarantined_files_and_move_nothing(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Spool(spool_path) as spool:
        add_events(spool, [f"e{i}" for i in range(120)])
        checkpointed(spool)
        damage_a_middle_leaf(spool_path)
        with Spool(spool_path) as other:
            add_events(other, ["late"])
        assert spool.stats(T0).counts["pending"] == 121 - 15  # met the damage, carried
    (aside,) = spool_path.parent.glob("events.spool.corrupt-*[0-9TZ]")
    listing = sorted(spool_path.parent.glob("events.spool.*"))

    r = run("inspect", spool_path, "--json")
    check = run("check", spool_path)
    human = run("inspect", spool_path)
    metrics = metric_values(run("metrics", spool_path).stdout)

    files = [Path(f"{aside}{suffix}") for suffix in ("", "-shm", "-wal")]  # by name
    assert r.exit_code == 0 and json.loads(r.stdout)["quarantined"] == [
        {"path": str(f), "kind": "corrupt", "bytes": f.stat().st_size} for f in files
    ]
    assert check.exit_code == 1
    names = ", ".join(f.name for f in files)
    assert check.stdout.endswith(f"3 file(s) set aside: {names} (WARNING)\n")
    assert f"set aside       {aside} (corrupt spool, " in human.stdout
    assert metrics["spoolpost_up"] == 1.0 and metrics["spoolpost_quarantined_files"] == 3.0
    # Moved nothing (a read-only connection may add an empty -wal/-shm to the spool).
    assert sorted(spool_path.parent.glob("events.spool.*")) == listing


def test_a_dispatcher_step_that_keeps_failing_logs_once_and_backs_off(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(start=T0)
    threads = Threads(spool, clock, threading.Condition(), senders=1)
    calls: list[float] = []
    done = threading.Event()

    def step(now: float) -> Step:  # a spool that stays damaged for four steps
        calls.append(clock.monotonic())
        if len(calls) <= 4:
            raise SpoolCorrupt(f"spool {spool.path} is corrupt again: malformed")
        threads.halt()
        done.set()
        return Step()

    threads.start(step, lambda batch: None)
    assert done.wait(60)
    threads.stop(5)
    assert [b - a for a, b in itertools.pairwise(calls)] == [1.0, 2.0, 4.0, 5.0]
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        ("ERROR", f"delivery step failed: spool {spool.path} is corrupt again: malformed;"
                  " retrying with backoff"),
        ("WARNING", "delivery steps work again after 4 failure(s)"),
    ]  # fmt: skip


#: A process that opens SPOOL (damaged by the parent), then, on a line from stdin, meets
#: the damage. Its logging handler holds it inside the quarantine (after the file was
#: moved aside, before any row is carried) until the parent kills it.
QUARANTINING = """
import logging, sys, time
from spoolpost.spool import Spool

class Hold(logging.Handler):
    def emit(self, record):
        print(record.getMessage(), flush=True)
        if "carrying the readable rows" in record.getMessage():
            sys.stdin.readline()  # never answered: SIGKILL comes here

logging.getLogger("spoolpost").addHandler(Hold())
logging.getLogger("spoolpost").setLevel(logging.INFO)
spool = Spool(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
spool.stats(time.time())
"""


def test_sigkill_while_quarantining_a_damaged_spool_strands_nothing(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Spool(spool_path) as spool:
        uuids = add_events(spool, [f"e{i}" for i in range(120)])
        checkpointed(spool)
    lost = {uuids[i - 1] for i in damage_a_middle_leaf(spool_path)}
    child = subprocess.Popen(
        [sys.executable, "-c", QUARANTINING, str(spool_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        child.stdin.write("go\n")
        child.stdin.flush()
        line = child.stdout.readline()
        assert "carrying the readable rows of" in line, line
        child.kill()  # SIGKILL: moved aside, nothing carried yet
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()
    (aside,) = spool_path.parent.glob("events.spool.corrupt-*Z")
    assert Path(f"{aside}.carrying-{child.pid}").exists()
    assert not spool_path.exists()  # killed before a new spool was made

    with Spool(spool_path) as spool:  # the next process carries what was readable
        assert sorted(e.uuid for e in live(spool)) == sorted(set(uuids) - lost)
    assert not Path(f"{aside}.carrying-{child.pid}").exists() and aside.exists()
    (warning,) = [r.getMessage() for r in caplog.records if "left by process" in r.getMessage()]
    assert f"carried {120 - len(lost)} event(s)" in warning and str(aside) in warning
    # Accounting: returned 120 = in the new spool 120 - len(lost) + destroyed on the page.
