"""A :class:`spoolpost.testing.LocalEndpoint` in its own process, for tools/bench.py.

The benchmarks send to a real HTTP server on 127.0.0.1. Running it in a separate
process keeps its CPU time off the client's GIL and its memory out of the client's
RSS, as a real ingestion server would be. The child counts events with a handler
(one count per request it answers 2xx) and calls ``clear()`` every few hundred
requests so its own memory stays bounded on a million-event drain.

Parent side: :class:`EndpointProcess` (``with EndpointProcess() as ep: ep.url``).
Child side: ``python tools/bench_endpoint.py`` reads one command per line on stdin
and answers one JSON line on stdout:

- ``stats``: ``{"requests", "events", "first_at", "last_at", "cpu_s"}``
  (``time.time()`` seconds of the first and latest counted request, null before
  any; the endpoint process's CPU seconds so far);
- ``reset``: zero the counters;
- ``stall DELAY TIMES``: the next TIMES requests are answered after DELAY seconds
  (``Response(delay=DELAY)``; these are not counted);
- ``quit``: stop the endpoint and exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from typing import Any

CLEAR_EVERY = 200  # requests between LocalEndpoint.clear() calls in the child


class EndpointProcess:
    """Start the endpoint child; ``url`` is its base URL. Use as a context manager."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
            bufsize=1,
        )
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        self.url: str = hello["url"]
        self._lock = threading.Lock()

    def _ask(self, line: str) -> dict[str, Any]:
        with self._lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
            return answer

    def stats(self) -> dict[str, Any]:
        return self._ask("stats")

    def reset(self) -> None:
        self._ask("reset")

    def stall(self, delay: float, times: int = 1) -> None:
        self._ask(f"stall {delay} {times}")

    def wait_for_events(self, n: int, timeout: float, poll: float = 0.005) -> dict[str, Any]:
        """Poll until ``n`` events were answered 2xx or ``timeout`` seconds pass; the
        last stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats["events"] >= n or time.monotonic() >= deadline:
                return stats
            time.sleep(poll)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self._ask("quit")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> EndpointProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _child() -> None:
    from spoolpost.testing import LocalEndpoint, RecordedRequest, Response

    lock = threading.Lock()
    counts: dict[str, Any] = {"requests": 0, "events": 0, "first_at": None, "last_at": None}
    endpoint = LocalEndpoint()

    def handler(request: RecordedRequest) -> Response | None:
        n = len(request.events)
        with lock:
            counts["requests"] += 1
            counts["events"] += n
            if counts["first_at"] is None:
                counts["first_at"] = request.time
            counts["last_at"] = request.time
            clear = counts["requests"] % CLEAR_EVERY == 0
        if clear:
            endpoint.clear()
        return None  # the default answer: 200

    endpoint.set_handler(handler)
    endpoint.start()
    print(json.dumps({"url": endpoint.url}), flush=True)
    try:
        for line in sys.stdin:
            cmd = line.split()
            if not cmd:
                continue
            if cmd[0] == "stats":
                with lock:
                    answer = dict(counts)
                usage = resource.getrusage(resource.RUSAGE_SELF)
                answer["cpu_s"] = usage.ru_utime + usage.ru_stime
            elif cmd[0] == "reset":
                with lock:
                    counts.update(requests=0, events=0, first_at=None, last_at=None)
                endpoint.clear()
                answer = {"ok": True}
            elif cmd[0] == "stall":
                endpoint.respond(Response(delay=float(cmd[1])), times=int(cmd[2]))
                answer = {"ok": True}
            elif cmd[0] == "quit":
                print(json.dumps({"ok": True}), flush=True)
                break
            else:
                answer = {"error": f"unknown command {cmd[0]!r}"}
            print(json.dumps(answer), flush=True)
    finally:
        endpoint.stop()


if __name__ == "__main__":
    _child()
