"""The flush barrier of a client delivering from a read-only spool: rows delivered
(or dead-lettered by an answer) from memory count as settled for the process that
remembers them, so ``flush()`` and ``shutdown()`` return once everything captured
before them is answered, not at their timeout.

The fault is real (tests/faults.py): the spool file and its ``-wal`` on an ext4
image made immutable (``chattr +i``): every write fails with EPERM while reads
work, and ``chattr -i`` clears it under the open files. The client is the
threaded one (dispatcher and sender threads on the real clock) against the
loopback endpoint. Loss accounting in each test: returned = uuids captured
before the fault; delivered (each once, unless the memory dies with its process:
then at-least-once); dead by an answer; dropped-and-counted; lost = 0.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import Counter
from pathlib import Path

import pytest
from faults import can_ext4, ext4_disk, set_immutable
from kit import API_KEY, dead_letters, live

from spoolpost import Client
from spoolpost.delivery.policy import RetryPolicy
from spoolpost.spool import Spool
from spoolpost.testing import LocalEndpoint, Response
from spoolpost.testing.responses import reject_uuids

pytestmark = pytest.mark.skipif(can_ext4() is not None, reason=f"{can_ext4()}")

N = 300
#: Nothing is sent before flush() asks (flush_at and flush_interval out of reach);
#: batches of 50; a retried batch is due again within 0.1 s.
HOLD = {
    "flush_at": 100_000,
    "flush_interval": 3600.0,
    "max_batch_size": 50,
    "min_free_bytes": 0,
    "retry": RetryPolicy(initial_backoff=0.05, max_backoff=0.1),
}


def write_errno(path: Path) -> int | None:
    """The errno of opening ``path`` for writing (the proof that the fault bites)."""
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        return exc.errno
    return None


def capture(client: Client, n: int) -> list[str]:
    uuids = [client.capture("before", distinct_id="u1", properties={"i": i}) for i in range(n)]
    assert all(uuids)
    return [u for u in uuids if u is not None]


@pytest.mark.parametrize("cleared", ["before_shutdown", "after_shutdown"])
def test_flush_on_a_read_only_spool_returns_once_memory_settled_everything(
    tmp_path: Path,
    endpoint: LocalEndpoint,
    caplog: pytest.LogCaptureFixture,
    record_property: pytest.RecordProperty,
    cleared: str,
) -> None:
    caplog.set_level(logging.INFO, logger="spoolpost")
    record_property("fault", "ext4, chattr +i on the spool and its -wal")
    with ext4_disk(tmp_path) as disk:
        client = Client(API_KEY, endpoint.url, spool=disk.spool_path, **HOLD)  # type: ignore[arg-type]
        try:
            returned = capture(client, N)
            bad = returned[120]
            assert endpoint.requests == []  # all still in the spool
            set_immutable(disk.spool_path)
            immutable = True
            assert write_errno(disk.spool_path) == errno.EPERM  # the fault bites
            assert client.capture("during", distinct_id="u1") is None  # dropped
            assert client.spool.counters()["dropped"] == 1  # and counted
            endpoint.respond(Response(503))  # one retry, kept in memory
            endpoint.set_handler(reject_uuids([bad]))  # one dead letter by an answer

            result = client.flush(timeout=60)

            # Everything captured before the call was answered from memory: the
            # flush says so, and did not wait for its timeout.
            assert result.complete and not result.timed_out
            assert (result.delivered, result.dead, result.pending) == (N - 1, 1, 0)
            assert client.spool._leases.read_only
            assert len(live(client.spool)) == N  # nothing could be written
            once = Counter(endpoint.delivered_uuids())
            assert set(once) == set(returned) - {bad} and set(once.values()) == {1}
            # A second flush finds nothing open and sends nothing.
            sent = len(endpoint.requests)
            again = client.flush(timeout=60)
            assert again.complete and not again.timed_out and again.delivered == 0
            assert len(endpoint.requests) == sent

            if cleared == "before_shutdown":
                set_immutable(disk.spool_path, on=False)
                immutable = False
            done = client.shutdown(timeout=30)
            assert done.complete and not done.timed_out  # it did not spend its flush time
        finally:
            if immutable:
                set_immutable(disk.spool_path, on=False)
            client.shutdown(timeout=1)

        # A new process on the cleared spool.
        written_down = cleared == "before_shutdown"
        with Spool(disk.spool_path, min_free_bytes=0) as spool:
            left = {e.uuid for e in live(spool)}
            counters = spool.counters()
            if written_down:  # shutdown wrote down what was remembered
                assert left == set()
                assert [d.uuid for d in dead_letters(spool)] == [bad]
                assert (counters["delivered"], counters["dead"]) == (N - 1, 1)
            else:  # the memory died with the client: everything is still stored
                assert left == set(returned) and dead_letters(spool) == []
        later = Client(API_KEY, endpoint.url, spool=disk.spool_path, **HOLD)  # type: ignore[arg-type]
        try:
            final = later.flush(timeout=60)
            assert final.complete and not final.timed_out
        finally:
            later.shutdown(timeout=5)
        with Spool(disk.spool_path, min_free_bytes=0) as spool:
            assert live(spool) == []

    delivered = Counter(endpoint.delivered_uuids())
    assert set(delivered) == set(returned) - {bad}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if written_down:
        # None is resent: each delivered once.
        assert set(delivered.values()) == {1}
        assert final.delivered == 0
        infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert any(f"wrote down {N - 1} delivered, 1 dead" in m for m in infos), infos
        # Accounting: returned N = delivered N-1 (each once) + dead 1 (rejected);
        # dropped 1 (captured during the fault, counted while it ran); lost 0.
    else:
        # The next process sent them again (same uuids: PostHog deduplicates), the
        # rejected one once more too; shutdown said so.
        assert set(delivered.values()) == {2}
        (lost_memory,) = [m for m in warnings if "could not be written down" in m]
        assert f"{N - 1} delivered, 1 dead" in lost_memory
        assert final.delivered == N - 1 and final.dead == 1
        # Accounting: returned N = delivered N-1 (twice: at-least-once) + dead 1
        # (rejected, by both processes); dropped 1 (counted while it ran); lost 0.
