"""Crash acceptance: real child processes SIGKILLed after capture() returned or while
they hold leases; a new process on the same spool delivers every such event."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO

import pytest
from kit import CRASH_API_KEY, T0, live

from spoolpost import Client
from spoolpost.spool import Spool
from spoolpost.spool.owner import Owner, current_owner, owner_alive, process_start
from spoolpost.testing import LocalEndpoint, Response

CHILD = Path(__file__).with_name("crash_child.py")


class Child:
    """A running crash_child.py; read its lines, then kill it."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    @property
    def stdout(self) -> IO[str]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def lines_until_ready(self) -> list[str]:
        lines: list[str] = []
        for line in self.stdout:
            if line.strip() == "ready":
                return lines
            lines.append(line.strip())
        raise AssertionError(f"child exited early with {self.proc.wait()} after {lines}")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def child() -> Iterator[Callable[..., Child]]:
    started: list[Child] = []

    def start(*args: str) -> Child:
        c = Child(*args)
        started.append(c)
        return c

    yield start
    for c in started:
        c.close()


def test_events_captured_by_a_killed_capture_only_process_are_delivered_by_a_new_one(
    spool_path: Path,
    endpoint: LocalEndpoint,
    child: Callable[..., Child],
    make_client: Callable[..., Client],
) -> None:
    proc = child("capture", str(spool_path), endpoint.url, "40", "0")
    captured = proc.lines_until_ready()
    proc.kill()

    assert len(captured) == 40 and len(set(captured)) == 40
    client = make_client(api_key=CRASH_API_KEY)
    result = client.flush(timeout=20)

    assert result.pending == 0 and result.delivered == 40
    assert set(captured) <= set(endpoint.delivered_uuids())


@pytest.mark.slow
def test_batches_in_flight_when_the_sender_is_killed_are_reclaimed_at_once(
    spool_path: Path,
    endpoint: LocalEndpoint,
    child: Callable[..., Child],
    make_client: Callable[..., Client],
) -> None:
    # The child's requests hang: their batches stay leased (for an hour) when it
    # dies. Only the dead-owner check can give them back before the flush below
    # times out. After the kill every request gets a plain 200.
    hanging = threading.Event()
    hanging.set()
    endpoint.set_handler(lambda _: Response(hang=True) if hanging.is_set() else None)
    proc = child("capture", str(spool_path), endpoint.url, "30", "1")
    captured = proc.lines_until_ready()
    assert endpoint.wait_for_requests(1, timeout=20)
    proc.kill()
    hanging.clear()
    endpoint.release_hung()
    with Spool(spool_path) as probe:
        leased_by_dead_child = probe.stats(T0).counts["leased"]

    client = make_client(api_key=CRASH_API_KEY)
    result = client.flush(timeout=20)

    assert leased_by_dead_child > 0
    assert result.pending == 0 and not result.timed_out
    assert set(captured) <= set(endpoint.delivered_uuids())


def test_a_killed_owners_lease_is_reclaimed_before_expiry_and_its_stale_ack_deletes_nothing(
    spool_path: Path, child: Callable[..., Child]
) -> None:
    proc = child("lease", str(spool_path), "5", "3600")
    (line,) = proc.lines_until_ready()
    stale = json.loads(line)
    proc.kill()
    spool = Spool(spool_path)
    try:
        now = max(e.captured_at for e in live(spool))  # the child stamped real wall-clock times
        assert spool.claim(now, max_events=10, max_bytes=1 << 20, lease_ttl=60) is None

        assert spool.reclaim(now) == 5  # long before the hour is up
        batch = spool.claim(now, max_events=10, max_bytes=1 << 20, lease_ttl=60)
        assert batch is not None and batch.ids == stale["ids"]
        assert spool.ack(stale["token"], stale["ids"]) == 0  # the zombie's late ack
        assert spool.stats(now).counts["leased"] == 5
        assert spool.ack(batch.token, batch.ids) == 5
        assert spool.stats(now).counts == {"pending": 0, "leased": 0, "dead": 0}
        assert spool.counters()["delivered"] == 5
    finally:
        spool.close()


def test_a_live_owners_lease_is_not_taken_before_it_expires(spool_path: Path) -> None:
    spool = Spool(spool_path)
    try:
        for i in range(3):
            spool.append(f"u{i}", b"{}", T0)
        held = spool.claim(T0, max_events=10, max_bytes=1 << 20, lease_ttl=60)
        assert held is not None

        assert spool.reclaim(T0 + 59.9) == 0
        assert spool.claim(T0 + 59.9, max_events=10, max_bytes=1 << 20, lease_ttl=60) is None
        assert spool.reclaim(T0 + 60) == 3
        again = spool.claim(T0 + 60, max_events=10, max_bytes=1 << 20, lease_ttl=60)
        assert again is not None and again.ids == held.ids

        assert spool.ack(held.token, held.ids) == 0
        assert spool.ack(again.token, again.ids) == 3
    finally:
        spool.close()


def dead_pid() -> tuple[int, str]:
    """The pid and start token of a process that ran and was reaped."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    start = process_start(proc.pid)
    assert start is not None
    proc.kill()
    proc.wait()
    assert proc.stdin is not None
    proc.stdin.close()
    return proc.pid, start


def _with_start(
    owner: Owner, *, boot: str | None = None, ns: str | None = None, start: str | None = None
) -> Owner:
    """``owner`` with parts of its ``boot/namespace/start`` token replaced."""
    b, n, t = owner.start.split("/")
    return replace(owner, start=f"{boot or b}/{ns or n}/{start or t}")


def _exited() -> Owner:
    pid, start = dead_pid()
    return _with_start(replace(current_owner(), pid=pid), start=start)


OWNERS: dict[str, tuple[Callable[[], Owner], bool]] = {
    "this process": (current_owner, True),
    "this pid, another start time (pid reused)": (
        lambda: _with_start(current_owner(), start="1"),
        False,
    ),
    "a process that exited": (_exited, False),
    "before the last reboot": (
        lambda: _with_start(current_owner(), boot="00000000-0000-0000-0000-000000000000"),
        False,
    ),
    "another pid namespace (a container)": (
        lambda: _with_start(current_owner(), ns="pid:[1]"),
        True,
    ),
    "another host": (lambda: replace(current_owner(), host=socket.gethostname() + "-other"), True),
    "an unreadable start time": (lambda: _with_start(current_owner(), start="?"), True),
}


@pytest.mark.parametrize("case", list(OWNERS))
def test_owner_alive(case: str) -> None:
    make, alive = OWNERS[case]
    assert owner_alive(make()) is alive


@pytest.mark.parametrize("case", list(OWNERS))
def test_reclaim_takes_a_dead_owners_lease_at_once_and_waits_for_a_live_ones_expiry(
    spool_path: Path, case: str
) -> None:
    make, alive = OWNERS[case]
    spool = Spool(spool_path)
    try:
        spool.append("u1", b"{}", T0)
        spool.append("u2", b"{}", T0)
        held = spool.claim(T0, max_events=10, max_bytes=1 << 20, lease_ttl=30, owner=make())
        assert held is not None

        assert spool.reclaim(T0 + 1) == (0 if alive else 2)
        assert spool.reclaim(T0 + 30) == (2 if alive else 0)
        assert spool.stats(T0 + 30).counts == {"pending": 2, "leased": 0, "dead": 0}
        with sqlite3.connect(spool.path) as conn:  # the lease records, read from the file
            assert conn.execute("SELECT count(*) FROM leases").fetchone()[0] == 0
    finally:
        spool.close()
