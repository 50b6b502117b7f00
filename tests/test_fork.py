"""Fork safety: a forked child reopens the spool lazily and starts its own
delivery threads; the parent keeps working; no lock or connection of the parent is
used in the child.

Each test forks with ``os.fork()`` from a process whose client threads are running.
The child reports through a pipe as JSON and always ends with ``os._exit``; the
parent kills it if it does not report in time, so a deadlock fails the test instead
of hanging it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from spoolpost import Client
from spoolpost.testing import LocalEndpoint, RecordedRequest, Response

MakeClient = Callable[..., Client]
CHILD_DEADLINE = 60.0  # seconds; a child that has not reported by then is killed

pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


def spoolpost_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("spoolpost-"))


def fork(child: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """Run ``child`` in a forked process; return a function that waits for its report."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            report = child()
            code = 0
        except BaseException:
            report = {"error": traceback.format_exc()}
        finally:
            try:
                os.write(write_end, json.dumps(report).encode())
            finally:
                os._exit(code)
    os.close(write_end)

    def wait() -> dict[str, Any]:
        deadline = time.monotonic() + CHILD_DEADLINE
        chunks: list[bytes] = []
        try:
            while True:
                remaining = deadline - time.monotonic()
                ready, _, _ = select.select([read_end], [], [], max(0.0, remaining))
                if not ready:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    pytest.fail(f"the forked child did not report within {CHILD_DEADLINE}s")
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(read_end)
        _, status = os.waitpid(pid, 0)
        report: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
        assert os.waitstatus_to_exitcode(status) == 0, report.get("error", report)
        return report

    return wait


def test_parent_and_child_both_deliver_through_their_own_threads(
    make_client: MakeClient, endpoint: LocalEndpoint
) -> None:
    client = make_client(flush_at=10, flush_interval=0.2)
    before_fork = [
        client.capture("parent-before", distinct_id="p", properties={"i": i}) for i in range(30)
    ]
    assert client.flush(timeout=10).pending == 0

    # A parent thread keeps capturing through the fork, so the spool's locks and
    # connections are busy at the moment the child is made.
    stop = threading.Event()
    running = threading.Event()
    during: list[str | None] = []

    def keep_capturing() -> None:
        i = 0
        while not stop.is_set():
            during.append(client.capture("parent-during", distinct_id="p", properties={"i": i}))
            i += 1
            if i == 50:
                running.set()

    busy = threading.Thread(target=keep_capturing)
    busy.start()
    assert running.wait(timeout=30)

    def child() -> dict[str, Any]:
        threads_at_fork = spoolpost_threads()
        mine = [client.capture("child", distinct_id="c", properties={"i": i}) for i in range(40)]
        threads_running = spoolpost_threads()
        result = client.flush(timeout=30)
        client.shutdown(timeout=5)
        return {
            "uuids": mine,
            "threads_at_fork": threads_at_fork,
            "threads_running": threads_running,
            "pending": result.pending,
            "timed_out": result.timed_out,
        }

    wait = fork(child)
    report = wait()
    stop.set()
    busy.join()
    after_child = [
        client.capture("parent-after", distinct_id="p", properties={"i": i}) for i in range(10)
    ]
    result = client.flush(timeout=30)

    assert report["threads_at_fork"] == []  # no thread survives a fork
    assert "spoolpost-dispatcher" in report["threads_running"]
    assert any(name.startswith("spoolpost-sender") for name in report["threads_running"])
    assert (report["pending"], report["timed_out"]) == (0, False)
    assert result.pending == 0 and not result.timed_out
    parent = [*before_fork, *during, *after_child]
    delivered = endpoint.delivered_uuids()
    assert len(delivered) == len(set(delivered))  # each once
    assert set(delivered) == set(parent) | set(report["uuids"])
    assert not set(parent) & set(report["uuids"])  # the child's UUIDv7s are its own
    assert client.dispatcher.running  # the parent's threads are untouched


def test_a_child_forked_during_a_parent_shutdown_is_not_stuck_on_the_parents_lock(
    make_client: MakeClient, endpoint: LocalEndpoint
) -> None:
    first = threading.Event()  # the parent's first request hangs, once

    def hang_once(request: RecordedRequest) -> Response | None:
        if request.events and request.events[0]["event"] == "parent" and not first.is_set():
            first.set()
            return Response(hang=True)
        return None

    endpoint.set_handler(hang_once)
    client = make_client(flush_interval=3600)
    parent_uuid = client.capture("parent", distinct_id="p")
    shutting: list[Any] = []
    shutdown = threading.Thread(target=lambda: shutting.append(client.shutdown(timeout=30)))
    shutdown.start()  # holds the client's shutdown lock while its flush waits
    assert endpoint.wait_for_requests(1, timeout=10)

    def child() -> dict[str, Any]:
        mine = client.capture("child", distinct_id="c")
        result = client.shutdown(timeout=1.0)  # the parent's leased event is not its own
        return {"uuid": mine, "pending": result.pending}

    report = fork(child)()
    endpoint.release_hung()  # the parent's request fails, is retried, gets through
    shutdown.join(timeout=30)

    assert report["pending"] == 1  # only the parent's event, still leased by the parent
    assert endpoint.wait_for_uuids([report["uuid"], str(parent_uuid)], timeout=10)
    assert len(shutting) == 1 and shutting[0].pending == 0
