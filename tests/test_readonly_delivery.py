"""Delivery from a spool that can be read but not written: stored events are sent
without a lease, what each answer means is kept in memory (never sent twice by that
process), and written down once writes work again.

The fault is real (tests/faults.py): the spool file and its ``-wal`` on an ext4 image
made immutable (``chattr +i``), so every write SQLite makes fails with EPERM (SQLite:
``SQLITE_IOERR_WRITE``, classified ``readonly``) while reads work; ``chattr -i``
clears it under the open files, which an ext4 read-only remount cannot (it needs them
closed). Loss accounting in each test: returned = uuids stored before the fault,
delivered (each once unless a crash makes at-least-once resend), dead by an answer,
dropped-and-counted captures; lost = 0.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from faults import can_ext4, ext4_disk, set_immutable
from kit import API_KEY, START, dead_letters, live, make_event

from spoolpost.clock import ManualClock
from spoolpost.delivery import DeliveryConfig, Dispatcher
from spoolpost.delivery.transport import HttpTransport
from spoolpost.spool import Spool, remembered
from spoolpost.testing import LocalEndpoint, Response
from spoolpost.testing.responses import reject_uuids

pytestmark = pytest.mark.skipif(can_ext4() is not None, reason=f"{can_ext4()}")

BATCHES_OF_20 = DeliveryConfig(flush_at=1, flush_interval=0.0, max_batch_size=20)


def write_errno(path: Path) -> int | None:
    """The errno of opening ``path`` for writing (the proof that the fault bites)."""
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        return exc.errno
    return None


def store(spool: Spool, n: int, now: float) -> list[str]:
    uuids = []
    for i in range(n):
        uuid, body = make_event(now, i)
        assert spool.append(uuid, body, now)
        uuids.append(uuid)
    return uuids


def run(dispatcher: Dispatcher, clock: ManualClock, seconds: float) -> None:
    """Send whatever may be sent at every half second of ``seconds`` (simulated)."""
    end = clock.now() + seconds
    while clock.now() < end:
        dispatcher.run_until_idle(clock.now())
        clock.advance(0.5)


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_a_read_only_spool_is_delivered_from_memory_and_written_down_once_writable(
    tmp_path: Path,
    endpoint: LocalEndpoint,
    caplog: pytest.LogCaptureFixture,
    record_property: pytest.RecordProperty,
) -> None:
    caplog.set_level(logging.INFO, logger="spoolpost")
    record_property("fault", "ext4, chattr +i on the spool and its -wal")
    clock = ManualClock(start=START)
    with ext4_disk(tmp_path) as disk:
        spool = Spool(disk.spool_path, min_free_bytes=0)
        transport = HttpTransport(endpoint.url, API_KEY)
        dispatcher = Dispatcher(spool, transport, config=BATCHES_OF_20, clock=clock)
        try:
            returned = store(spool, 100, clock.now())
            bad = returned[50]
            with Spool(disk.spool_path, min_free_bytes=0) as other:  # another live sender
                held = other.claim(clock.now(), max_events=10, max_bytes=1 << 20, lease_ttl=3600)
            assert held is not None
            theirs = {r.uuid for r in held.rows}
            set_immutable(disk.spool_path)
            try:
                assert write_errno(disk.spool_path) == errno.EPERM  # the fault bites
                uuid, body = make_event(clock.now(), 999)
                assert spool.append(uuid, body, clock.now()) is False  # dropped, counted
                endpoint.respond(Response(503))  # a retry, kept in memory
                endpoint.set_handler(reject_uuids([bad]))  # a dead letter by answer

                run(dispatcher, clock, 120)

                # (a) everything stored before the fault is delivered while read-only,
                # (b) each once: the answers are remembered, nothing is sent again.
                # Another process's unexpired lease is honoured: its rows are not sent.
                once = Counter(endpoint.delivered_uuids())
                assert set(once) == set(returned) - {bad} - theirs and set(once.values()) == {1}
                sent = len(endpoint.requests)
                run(dispatcher, clock, 60)
                assert len(endpoint.requests) == sent
                assert spool._leases.read_only and spool._leases.remembered == 90
                assert len(live(spool)) == 100  # nothing could be written
            finally:
                set_immutable(disk.spool_path, on=False)

            # (c) writes work again: what was remembered is written down, then leasing.
            run(dispatcher, clock, 5)
            assert not spool._leases.read_only and spool._leases.remembered == 0
            assert {e.uuid for e in live(spool)} == theirs  # still theirs
            assert spool.release(held.token) == 10  # the other sender gives them back
            run(dispatcher, clock, 5)
            assert live(spool) == []
            (dead,) = dead_letters(spool)
            assert (dead.uuid, dead.reason, dead.status) == (bad, "rejected", 400)
            counters = spool.counters()
            assert (counters["delivered"], counters["dead"], counters["dropped"]) == (99, 1, 1)
            sent = len(endpoint.requests)
            later = store(spool, 3, clock.now())
            run(dispatcher, clock, 5)
            assert len(endpoint.requests) == sent + 1  # only the new events
        finally:
            dispatcher.stop(1)
            spool.close()
    assert Counter(endpoint.delivered_uuids()) == Counter([*returned, *later]) - Counter([bad])
    # Accounting: returned 100 + 3 = delivered 102 (each once; 10 after the other
    # sender gave them back) + dead 1 (rejected); dropped 1 (captured during the
    # fault, counted); lost 0.
    (error,) = messages(caplog, logging.ERROR)
    assert str(disk.spool_path) in error and "cannot be written" in error
    (warning,) = [m for m in messages(caplog, logging.WARNING) if "read-only" in m]
    assert "delivery goes on read-only" in warning
    infos = messages(caplog, logging.INFO)
    assert any("wrote down 89 delivered, 1 dead" in m for m in infos), infos
    assert any("delivery leases again" in m for m in infos), infos


#: A delivering process on SPOOL (opened while writable) that, once told, sends
#: BATCHES batches from the spool the parent made read-only, then waits to be killed.
READ_ONLY_SENDER = """
import sys
from spoolpost.clock import ManualClock
from spoolpost.delivery import DeliveryConfig, Dispatcher
from spoolpost.delivery.transport import HttpTransport
from spoolpost.spool import Spool, remembered

url, key, path, batches = sys.argv[1:5]
clock = ManualClock(start=1.7e9)
spool = Spool(path, min_free_bytes=0)
config = DeliveryConfig(flush_at=1, flush_interval=0.0, max_batch_size=20)
dispatcher = Dispatcher(spool, HttpTransport(url, key), config=config, clock=clock)
print("READY", flush=True)
sys.stdin.readline()
for _ in range(int(batches)):
    assert dispatcher.step(clock.now()).batches == 1
print("SENT", spool._leases.read_only, spool._leases.remembered, flush=True)
sys.stdin.readline()  # SIGKILL comes here
"""


def test_sigkill_during_read_only_delivery_resends_only_the_unsettled(
    tmp_path: Path, endpoint: LocalEndpoint, record_property: pytest.RecordProperty
) -> None:
    record_property("fault", "ext4, chattr +i on the spool and its -wal; SIGKILL")
    with ext4_disk(tmp_path) as disk:
        with Spool(disk.spool_path, min_free_bytes=0) as spool:
            returned = store(spool, 100, START)
        args = [endpoint.url, API_KEY, str(disk.spool_path), "3"]
        child = subprocess.Popen(
            [sys.executable, "-c", READ_ONLY_SENDER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            assert child.stdout.readline().strip() == "READY"
            set_immutable(disk.spool_path)
            try:
                assert write_errno(disk.spool_path) == errno.EPERM  # the fault bites
                child.stdin.write("go\n")
                child.stdin.flush()
                assert child.stdout.readline().split() == ["SENT", "True", "60"]
                os.kill(child.pid, signal.SIGKILL)  # before anything was written down
                assert child.wait(timeout=60) == -signal.SIGKILL
            finally:
                set_immutable(disk.spool_path, on=False)
        finally:
            if child.poll() is None:
                child.kill()
            _, err = child.communicate()
        assert "Traceback" not in err
        first = endpoint.delivered_uuids()
        assert len(first) == 60 and set(first) <= set(returned)

        # The next process sends everything again that the killed one could not
        # write down: the 60 it delivered (same uuids: PostHog deduplicates) and the
        # 40 it never sent.
        clock = ManualClock(start=START)
        with Spool(disk.spool_path, min_free_bytes=0) as spool:
            dispatcher = Dispatcher(
                spool, HttpTransport(endpoint.url, API_KEY), config=BATCHES_OF_20, clock=clock
            )
            run(dispatcher, clock, 10)
            assert live(spool) == []
    delivered = Counter(endpoint.delivered_uuids())
    assert set(delivered) == set(returned)
    assert {u for u, n in delivered.items() if n == 2} == set(first)
    # Accounting: returned 100 = delivered 100 (60 of them twice, at-least-once); lost 0.


def test_read_only_delivery_stops_at_its_memory_bound_and_says_so_once(
    tmp_path: Path,
    endpoint: LocalEndpoint,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(remembered, "MAX_REMEMBERED", 40)  # 100 000 in use
    clock = ManualClock(start=START)
    with ext4_disk(tmp_path) as disk:
        spool = Spool(disk.spool_path, min_free_bytes=0)
        transport = HttpTransport(endpoint.url, API_KEY)
        dispatcher = Dispatcher(spool, transport, config=BATCHES_OF_20, clock=clock)
        try:
            returned = store(spool, 100, clock.now())
            set_immutable(disk.spool_path)
            try:
                assert write_errno(disk.spool_path) == errno.EPERM  # the fault bites
                run(dispatcher, clock, 30)
                assert len(endpoint.delivered_uuids()) == 40  # then nothing more is sent
                full = [m for m in messages(caplog, logging.WARNING) if "nothing more" in m]
                assert len(full) == 1 and "keeps 40 outcomes in memory" in full[0]
            finally:
                set_immutable(disk.spool_path, on=False)
            run(dispatcher, clock, 10)  # written down, then the rest is leased and sent
            assert live(spool) == []
        finally:
            dispatcher.stop(1)
            spool.close()
    assert Counter(endpoint.delivered_uuids()) == Counter(returned)
    # Accounting: returned 100 = delivered 100 (40 while read-only), each once; lost 0.
