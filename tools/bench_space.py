"""Benchmarks of issue 8, run by ``tools/bench.py`` (``--only import_beside``,
``--only space_app``; not in the default run, they take minutes):

- ``import_beside``: capture latency in a separate process capturing at a steady
  rate while ``spoolpost import`` (the real CLI, another process) writes N lines
  into the same spool. Target: capture p99 <= 50 ms.
- ``space_app``: an app (a ``Client`` with its delivery threads, no manual step)
  delivers an N-event backlog; how long after the last event was answered the
  spool file (with its ``-wal``) is back under 10 % of its peak size. Target:
  within a minute.

The spool size after ``spoolpost drain`` is measured by the ``drain`` benchmark
itself (``spool_file_mb_after``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_endpoint import EndpointProcess

from spoolpost import Client

API_KEY = "phc_bench_0000000000000000000000000000"

#: The capturing app: one capture due every 1/RATE s. Each sample: the wall time it
#: started, the call's own latency, and the latency from when it was due (after a
#: stall the captures that fell due meanwhile run at once, and count from their due
#: time: a blocked capturer cannot hide a stall by capturing less; "coordinated
#: omission"). Written as JSON when the stop file appears.
_CAPTURER = r"""
import json, os, sys, time
from spoolpost import Client
spool, rate, stop, out, API_KEY = sys.argv[1], float(sys.argv[2]), *sys.argv[3:6]
client = Client(API_KEY, spool=spool, send=False, max_spool_bytes=1 << 40)
client.capture("warm up", distinct_id="u")
print("READY", flush=True)
samples = []
interval = 1.0 / rate
due = time.perf_counter()
i = 0
while not os.path.exists(stop):
    started = time.time()
    t0 = time.perf_counter()
    client.capture("page_view", distinct_id=f"user-{i % 1000}", properties={"i": i})
    t1 = time.perf_counter()
    samples.append((started, (t1 - t0) * 1e3, (t1 - min(due, t0)) * 1e3))
    i += 1
    due += interval
    if due > t1:
        time.sleep(due - t1)
client.shutdown()
with open(out, "w") as f:
    json.dump(samples, f)
"""

#: ``spoolpost import`` as the CLI runs it, with the start and end of its writes
#: (``Spool.import_events``) printed to stderr, so that the latencies counted are
#: those of captures made while it wrote (not while it parsed its input).
_IMPORTER = r"""
import sys, time
import spoolpost.cli as cli
from spoolpost.spool import Spool
write = Spool.import_events
def timed(self, *args, **kwargs):
    sys.stderr.write(f"T_WRITE_START {time.time()!r}\n")
    try:
        return write(self, *args, **kwargs)
    finally:
        sys.stderr.write(f"T_WRITE_END {time.time()!r}\n")
Spool.import_events = timed
sys.argv = ["spoolpost"] + sys.argv[1:]
cli.main()
"""


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def write_lines(path: Path, n: int) -> None:
    """N JSON Lines of PostHog events, each with its own uuid (as ``export`` writes)."""
    base = 0x0190_0000_0000_7000_8000_0000_0000_0000
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            h = f"{base + i:032x}"
            uuid = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
            f.write(
                json.dumps(
                    {
                        "event": "imported_view",
                        "distinct_id": f"user-{i % 1000}",
                        "uuid": uuid,
                        "timestamp": "2025-01-02T03:04:05Z",
                        "properties": {"$current_url": "https://example.com/", "i": i},
                    }
                )
                + "\n"
            )


def import_beside(workdir: Path, lines: int, rate: float) -> dict[str, Any]:
    """See the module docstring."""
    spool, source = workdir / "s.spool", workdir / "in.jsonl"
    stop, out = workdir / "stop", workdir / "latencies.json"
    write_lines(source, lines)
    env = _env()
    capturer = subprocess.Popen(
        [sys.executable, "-c", _CAPTURER, str(spool), str(rate), str(stop), str(out), API_KEY],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=workdir,
    )
    assert capturer.stdout is not None
    if capturer.stdout.readline().strip() != "READY":
        raise RuntimeError("the capturing process did not start")
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORTER, "import", str(spool), "-i", str(source), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
    )
    ended = time.time()
    time.sleep(0.5)
    stop.touch()
    capturer.wait(timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"import failed: {proc.stderr[-2000:]}")
    marks = dict(
        (line.split()[0], float(line.split()[1]))
        for line in proc.stderr.splitlines()
        if line.startswith("T_WRITE_")
    )
    samples = json.loads(out.read_text())
    first, last = marks["T_WRITE_START"], marks["T_WRITE_END"]
    during = [(ms, late) for at, ms, late in samples if first <= at <= last]
    calls, from_due = sorted(ms for ms, _ in during), sorted(late for _, late in during)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "lines": lines,
        "imported": summary.get("imported"),
        "import_seconds": ended - started,
        "write_seconds": last - first,
        "capture_rate": rate,
        "captures_during_writes": len(during),
        "p50_ms": _percentile(calls, 50),
        "p99_ms": _percentile(calls, 99),
        "p999_ms": _percentile(calls, 99.9),
        "max_ms": calls[-1] if calls else float("nan"),
        "from_due_p99_ms": _percentile(from_due, 99),
        "from_due_max_ms": from_due[-1] if from_due else float("nan"),
        "captures_total": len(samples),
    }


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def space_app(workdir: Path, events: int, fill: Any) -> dict[str, Any]:
    """See the module docstring. ``fill(path, n)`` makes the backlog."""
    path = workdir / "app.spool"
    fill(path, events)
    peak = _size(path)
    with EndpointProcess() as ep:
        client = Client(API_KEY, ep.url, spool=path, max_spool_bytes=1 << 40)
        try:
            ep.wait_for_events(events, timeout=600)
            drained = time.time()
            peak = max(peak, _size(path))
            after = _size(path)
            while after >= peak / 10 and time.time() - drained < 120:
                time.sleep(0.1)
                after = _size(path)
            shrunk = time.time() - drained
            stats = ep.stats()
        finally:
            client.shutdown(5)
    return {
        "events": events,
        "delivered": stats["events"],
        "peak_mb": peak / 1e6,
        "after_mb": after / 1e6,
        "ratio": after / peak,
        "seconds_to_under_10pct": shrunk if after < peak / 10 else None,
    }
