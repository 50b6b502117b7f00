"""A full filesystem under the spool: capture drops (or raises SpoolFull) and never
raises an sqlite3 error, delivery frees the space by itself, and nothing whose
capture() returned is lost.

Every test runs on a real tmpfs (see tests/faults.py; the kind is recorded as the
``fault`` property) and states its loss accounting: returned = uuids capture()
gave back, delivered = uuids the endpoint acknowledged, dropped = the spool's
``dropped`` counter; lost = returned - delivered must be empty.
"""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from faults import (
    CaptureChild,
    SmallDisk,
    can_mount,
    free_bytes,
    integrity,
    probe_write,
    small_disk,
)
from kit import API_KEY, INLINE, T0, make_event

from spoolpost import Client, SpoolFull, SpoolUnwritable
from spoolpost.cli import cli
from spoolpost.clock import ManualClock
from spoolpost.delivery import DeliveryConfig, Dispatcher
from spoolpost.delivery.transport import HttpTransport
from spoolpost.spool import DEFAULT_MAX_SPOOL_BYTES, Spool
from spoolpost.testing import LocalEndpoint, RecordedRequest, Response

pytestmark = pytest.mark.skipif(can_mount() is not None, reason=f"{can_mount()}")

PAD = "x" * 2000


def stored_counter(path: Path, name: str) -> int:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    finally:
        conn.close()
    return 0 if row is None else int(row[0])


def hold(endpoint: LocalEndpoint) -> threading.Event:
    """Hold every request until the returned event is set, then answer 200."""
    gate = threading.Event()

    def held(request: RecordedRequest) -> Response | None:
        gate.wait(60)
        return None

    endpoint.set_handler(held)
    return gate


def fill_with_captures(client: Client, drops: int) -> list[str]:
    """Capture padded events until ``drops`` of them were dropped; the uuids returned."""
    returned: list[str] = []
    dropped = 0
    while dropped < drops:
        uuid = client.capture("fill", distinct_id="u1", properties={"pad": PAD})
        if uuid is None:
            dropped += 1
        else:
            returned.append(uuid)
        assert len(returned) < 50_000, "the disk never filled"
    return returned


def full_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "spoolpost" and r.levelno == logging.WARNING and "is full" in r.getMessage()
    ]


@pytest.fixture
def disk(tmp_path: Path, record_property: pytest.RecordProperty) -> SmallDisk:
    with small_disk(tmp_path, 24 << 20) as d:
        record_property("fault", d.kind)
        yield d  # type: ignore[misc]


def test_default_client_on_a_full_filesystem_drops_warns_once_then_delivery_frees_space(
    disk: SmallDisk, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="spoolpost")
    gate = hold(endpoint)
    # min_free_bytes=0: the spool itself fills the disk to its last byte (the
    # floor would stop capture first; test_the_min_free_bytes_floor_... covers it).
    client = Client(API_KEY, endpoint.url, spool=disk.spool_path, min_free_bytes=0, flush_at=1)
    try:
        first = client.capture("first", distinct_id="u1")
        assert first is not None
        assert endpoint.wait_for_requests(1)
        reserve = disk.folder / "events.spool-reserve"
        assert reserve.stat().st_size == 8 << 20  # the first claim made the reserve

        returned = [first, *fill_with_captures(client, drops=25)]

        # The fault bit: a fresh write fails with ENOSPC, capture took the
        # SQLITE_FULL path, and enough was stored before it.
        assert probe_write(disk.folder) == errno.ENOSPC
        warned = full_warnings(caplog)
        assert len(warned) == 1, [r.getMessage() for r in warned]
        assert "SQLITE_FULL" in warned[0].getMessage()
        assert len(returned) > 1000
        assert client.spool.counters()["dropped"] == 25  # in memory: the disk is full
        assert integrity(disk.spool_path) == "ok"

        # The endpoint answers: acks on a disk with zero free bytes go through the
        # reserve, the WAL is checkpointed, and capture resumes by itself.
        gate.set()
        assert client.flush(timeout=60).pending == 0
        assert endpoint.wait_for_uuids(returned, timeout=60)
        later = client.capture("after the disk filled", distinct_id="u1")
        assert later is not None
        assert client.flush(timeout=30).pending == 0
        assert endpoint.wait_for_uuids([later], timeout=30)
    finally:
        client.shutdown(timeout=5)

    delivered = set(endpoint.delivered_uuids())
    lost = set(returned) - delivered
    assert lost == set()  # returned = delivered, dropped = 25, lost = 0
    assert stored_counter(disk.spool_path, "dropped") == 25  # persisted once writes worked
    assert len(full_warnings(caplog)) == 1
    assert integrity(disk.spool_path) == "ok"
    assert any("gave up the" in r.getMessage() for r in caplog.records)


def test_on_full_raise_on_a_full_filesystem_raises_spoolfull_never_sqlite3(
    disk: SmallDisk, endpoint: LocalEndpoint
) -> None:
    client = Client(
        API_KEY, endpoint.url, spool=disk.spool_path, send=False, on_full="raise", min_free_bytes=0
    )
    returned: list[str] = []
    raised: list[BaseException] = []
    try:
        while len(raised) < 5:
            try:
                uuid = client.capture("fill", distinct_id="u1", properties={"pad": PAD})
            except SpoolFull as exc:
                raised.append(exc)
            else:
                assert uuid is not None
                returned.append(uuid)
            assert len(returned) < 50_000, "the disk never filled"
        assert probe_write(disk.folder) == errno.ENOSPC
        for exc in raised:
            assert isinstance(exc, SpoolUnwritable)
            assert exc.condition == "full"
            assert str(disk.spool_path) in str(exc)
        assert not any(isinstance(exc, sqlite3.Error) for exc in raised)
        assert client.spool.counters()["dropped"] == 0  # raised, not dropped
        assert client.flush(timeout=0).pending == len(returned)  # no sqlite3 error here either
    finally:
        client.shutdown(timeout=1)
    assert integrity(disk.spool_path) == "ok"


def test_the_min_free_bytes_floor_stops_capture_before_the_disk_is_full_and_lifts_after_delivery(
    tmp_path: Path,
    endpoint: LocalEndpoint,
    caplog: pytest.LogCaptureFixture,
    record_property: pytest.RecordProperty,
) -> None:
    caplog.set_level(logging.INFO, logger="spoolpost")
    with small_disk(tmp_path, 128 << 20) as disk:
        record_property("fault", disk.kind)
        gate = hold(endpoint)
        # The default floor: 64 MiB.
        client = Client(API_KEY, endpoint.url, spool=disk.spool_path, flush_at=1)
        try:
            assert client.spool.min_free_bytes == 64 << 20
            returned = fill_with_captures(client, drops=10)
            # Stopped by the floor, not by the disk: 64 MiB are still free, no
            # write ever failed, and the drops are already in the spool's counter.
            assert free_bytes(disk.folder) >= 64 << 20
            assert probe_write(disk.folder) is None
            assert len(returned) > 10_000
            assert client.spool._disk.hits == {"full": 0, "readonly": 0, "ioerror": 0}
            assert stored_counter(disk.spool_path, "dropped") == 10
            warned = full_warnings(caplog) + [
                r for r in caplog.records if "down to its floor" in r.getMessage()
            ]
            assert len(warned) == 1 and "min_free_bytes=67108864" in warned[0].getMessage()

            gate.set()
            assert client.flush(timeout=120).pending == 0
            later = client.capture("after delivery", distinct_id="u1")
            assert later is not None  # the delivered rows' pages are room again
            assert client.flush(timeout=30).pending == 0
        finally:
            client.shutdown(timeout=5)
        # returned = delivered, dropped = 10 (counted), lost = 0
        assert set(returned) | {later} <= set(endpoint.delivered_uuids())


def test_sigkill_while_the_disk_is_full_loses_nothing_and_a_new_client_delivers_it_all(
    disk: SmallDisk, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="spoolpost")
    with CaptureChild(disk.spool_path, API_KEY, before=500, pad=2000) as child:
        returned = child.until("READY")
        assert len(returned) == 500 and "None" not in returned
        disk.fill()  # another program takes every byte left
        assert probe_write(disk.folder) == errno.ENOSPC
        child.go()
        returned += child.until("REFUSED")
        child.kill()  # SIGKILL in the middle of captures on a full disk
    err = child.stderr
    warned = err.count("dropping new events until writes work again")
    assert warned == 1 and "SQLITE_FULL" in err  # the full-disk path, warned once
    assert "Traceback" not in err  # and never raised

    # A new delivering client on the still-full disk: its own start-up writes and
    # the acks go through the reserve the first process made.
    assert disk.folder.joinpath("events.spool-reserve").exists()
    client = Client(API_KEY, endpoint.url, spool=disk.spool_path, min_free_bytes=0)
    try:
        assert client.flush(timeout=60).pending == 0
        disk.unfill()
        later = client.capture("after", distinct_id="u1")
        assert later is not None
        assert client.flush(timeout=30).pending == 0
    finally:
        client.shutdown(timeout=5)
    # returned (500 before, the rest while full) = delivered, lost = 0; the child's
    # drops were counted in its memory and warned, and died with it.
    assert set(returned) | {later} <= set(endpoint.delivered_uuids())
    assert integrity(disk.spool_path) == "ok"


def test_inspect_shows_both_bounds_and_where_the_spool_stands_below_the_floor(
    tmp_path: Path, endpoint: LocalEndpoint, record_property: pytest.RecordProperty
) -> None:
    with small_disk(tmp_path, 128 << 20) as disk:
        record_property("fault", disk.kind)
        client = Client(API_KEY, endpoint.url, spool=disk.spool_path, send=False)
        returned = [client.capture("e", distinct_id="u1") for _ in range(50)]
        client.shutdown(timeout=1)
        assert None not in returned
        disk.fill(leave=32 << 20)  # another program leaves 32 MiB: under the 64 MiB floor

        shown = CliRunner().invoke(cli, ["inspect", str(disk.spool_path), "--json"])
        assert shown.exit_code == 0, shown.output
        data = json.loads(shown.output)
        assert data["max_spool_bytes"] == DEFAULT_MAX_SPOOL_BYTES
        assert data["min_free_bytes"] == 64 << 20 and data["floor_source"] == "recorded"
        assert data["used_bytes"] > 0
        assert data["fs_free_bytes"] <= 32 << 20 and data["below_floor"] is True
        assert data["state"] == "stuck" and "min_free_bytes" in data["summary"]

        text = CliRunner().invoke(cli, ["inspect", str(disk.spool_path)])
        assert text.exit_code == 0, text.output
        assert f"floor min_free_bytes={64 << 20} B (recorded): BELOW IT" in text.output
        assert f"of {DEFAULT_MAX_SPOOL_BYTES} B (recorded)" in text.output


def test_delivery_on_a_full_disk_with_no_reserve_logs_once_raises_no_sqlite3_and_resumes(
    disk: SmallDisk, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="spoolpost")
    clock = ManualClock(start=T0)
    with Spool(disk.spool_path, min_free_bytes=0) as spool:
        uuids = []
        for i in range(50):
            uuid, body = make_event(T0, i, pad=2000)
            assert spool.append(uuid, body, T0)
            uuids.append(uuid)
        spool.checkpoint()
        disk.folder.joinpath("events.spool-reserve").unlink(missing_ok=True)
        disk.fill()  # another program took every byte, the reserve's too
        assert probe_write(disk.folder) == errno.ENOSPC
        transport = HttpTransport(endpoint.url, API_KEY)
        dispatcher = Dispatcher(spool, transport, config=INLINE, clock=clock)
        refused = 0
        for _ in range(5):  # what the dispatcher thread does, a second apart
            try:
                dispatcher.step(clock.now())
            except SpoolUnwritable as exc:  # never an sqlite3 error
                assert exc.condition == "full"
                refused += 1
            clock.advance(1.0)
        assert refused >= 1
        warned = full_warnings(caplog)
        assert len(warned) == 1, [r.getMessage() for r in warned]  # once per episode
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

        disk.unfill()  # space comes back: delivery resumes by itself
        clock.advance(DeliveryConfig().lease_ttl + 1)  # a batch whose ack was refused
        for _ in range(20):
            dispatcher.run_until_idle(clock.now())
            clock.advance(1.0)
        dispatcher.stop(1.0)
        assert spool.stats(clock.now()).counts == {"pending": 0, "leased": 0, "dead": 0}
    # returned 50 = delivered (a batch whose ack was refused is sent again: at-least-once)
    assert set(uuids) <= set(endpoint.delivered_uuids())


class _Warned(logging.Handler):
    """Sets ``event`` when spoolpost logs a WARNING (a full episode began)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.event.set()


def test_on_full_block_on_a_full_filesystem_waits_until_delivery_frees_space(
    disk: SmallDisk, endpoint: LocalEndpoint
) -> None:
    warned = _Warned()
    logging.getLogger("spoolpost").addHandler(warned)
    clock = ManualClock(start=T0)
    spool = Spool(disk.spool_path, min_free_bytes=0, on_full="block", block_timeout=120.0)
    dispatcher = Dispatcher(spool, HttpTransport(endpoint.url, API_KEY), config=INLINE, clock=clock)
    returned: list[str] = []
    outcome: list[bool | BaseException] = []

    def fill_until_blocked() -> None:
        # Append until an append finds the disk full and blocks; it returns once
        # delivery made room (block never drops).
        try:
            for i in range(50_000):
                uuid, body = make_event(T0, i, pad=2000)
                if warned.event.is_set():  # the previous append waited, then got in
                    outcome.append(spool.append(uuid, body, T0))
                    returned.append(uuid)
                    return
                assert spool.append(uuid, body, T0)
                returned.append(uuid)
            raise AssertionError("the disk never filled")
        except BaseException as exc:
            outcome.append(exc)

    try:
        worker = threading.Thread(target=fill_until_blocked)
        worker.start()
        assert warned.event.wait(60)  # an append met the full disk and is blocked
        # The disk itself is full (SQLITE_FULL), or the floor refused just before it
        # (it keeps room for the WAL): block waits on either.
        assert probe_write(disk.folder) == errno.ENOSPC or spool._disk.active is None
        assert not outcome, outcome  # blocked, not raised
        for _ in range(100):  # deliver: acks free space and wake the blocked append
            dispatcher.run_until_idle(clock.now())
            clock.advance(1.0)
            if not worker.is_alive():
                break
        worker.join(60)
        assert outcome == [True], outcome
        dispatcher.run_until_idle(clock.now())
        assert spool.counters()["dropped"] == 0
    finally:
        logging.getLogger("spoolpost").removeHandler(warned)
        dispatcher.stop(1.0)
        spool.close()
    assert set(returned) <= set(endpoint.delivered_uuids())  # lost = 0, dropped = 0


def test_a_client_starts_on_a_disk_another_program_filled_after_a_clean_close(
    disk: SmallDisk, endpoint: LocalEndpoint
) -> None:
    capturer = Client(API_KEY, endpoint.url, spool=disk.spool_path, send=False, min_free_bytes=0)
    returned = [
        capturer.capture("e", distinct_id="u1", properties={"pad": PAD}) for _ in range(200)
    ]
    capturer.shutdown(timeout=1)  # a clean close: SQLite removes the -wal and -shm files
    assert None not in returned
    assert not disk.folder.joinpath("events.spool-wal").exists()
    assert disk.folder.joinpath("events.spool-reserve").exists()
    disk.fill()  # another program takes every byte: opening needs new -wal/-shm files
    assert probe_write(disk.folder) == errno.ENOSPC

    client = Client(API_KEY, endpoint.url, spool=disk.spool_path, min_free_bytes=0)
    try:  # it gave up the reserve to open, and delivers
        assert not disk.folder.joinpath("events.spool-reserve").exists()
        assert client.flush(timeout=60).pending == 0
    finally:
        client.shutdown(timeout=5)
    assert set(returned) <= set(endpoint.delivered_uuids())  # returned = delivered, lost = 0
