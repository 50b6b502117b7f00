#!/usr/bin/env python
"""spoolpost against its rivals, side by side, in one run on this machine (targets: docs/architecture.md).

Every contender runs in this one invocation on the same machine, and the table
prints ratios, so machine noise mostly cancels. Rivals: raw ``sqlite3`` (the
storage ceiling), posthog-python (``posthog``: an in-memory queue, no durability)
and persist-queue (``persistqueue.SQLiteAckQueue``). Everything that speaks HTTP
talks to the real :class:`spoolpost.testing.LocalEndpoint` on 127.0.0.1, run in a
separate process (``tools/bench_endpoint.py``) so its CPU and memory are not the
client's. Nothing leaves the machine.

Usage::

    /work/venv/bin/python tools/bench.py            # full run (a few minutes)
    /work/venv/bin/python tools/bench.py --quick    # smoke run, small sizes
    /work/venv/bin/python tools/bench.py --only capture_1t --only e2e
    /work/venv/bin/python tools/bench.py --list     # benchmark names
    /work/venv/bin/python tools/bench.py --json     # machine-readable figures

``--only`` also runs the rivals a comparison needs. Each benchmark is one
function below, in a fresh temporary folder that is removed afterwards. Figures
are one run each (no repetitions): read them as ratios, not as absolutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_space
from bench_endpoint import EndpointProcess

import spoolpost
from spoolpost import Client
from spoolpost.events.encoding import encode_event, uuid7_str
from spoolpost.events.build import capture_event
from spoolpost.client import key_fingerprint
from spoolpost.spool import Spool
from spoolpost.spool.chunks import Chunking

API_KEY = "phc_bench_0000000000000000000000000000"
EVENT = "page_view"


def props(i: int) -> dict[str, Any]:
    """The properties of benchmark event ``i``: a typical small web event."""
    return {
        "$current_url": "https://example.com/pricing",
        "plan": "pro",
        "seats": i % 50,
        "trial": False,
        "referrer": "newsletter",
        "ab_variant": "B",
    }


def distinct(i: int) -> str:
    return f"user-{i % 1000}"


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    raw_rows: int = 20_000
    raw_batched_rows: int = 200_000
    raw_full_rows: int = 3_000
    posthog_events: int = 20_000
    posthog_e2e_events: int = 20_000
    pq_put: int = 5_000
    pq_get_ack: int = 2_000
    capture_1t: int = 30_000
    capture_8t_per_thread: int = 4_000
    power_8t_per_thread: int = 1_000
    latency_events: int = 20_000
    latency_paced_rate: float = 1_000.0
    latency_paced_events: int = 5_000
    e2e_events: int = 20_000
    drain_events: int = 1_000_000
    drain_budget: float = 240.0
    stall_delay: float = 10.0
    stall_senders: int = 4
    stall_spool_events: int = 700_000
    import_lines: int = 1_000_000
    import_capture_rate: float = 200.0
    space_events: int = 1_000_000


FULL = Sizes()
QUICK = Sizes(
    raw_rows=3_000,
    raw_batched_rows=20_000,
    raw_full_rows=300,
    posthog_events=3_000,
    posthog_e2e_events=3_000,
    pq_put=500,
    pq_get_ack=200,
    capture_1t=3_000,
    capture_8t_per_thread=400,
    power_8t_per_thread=100,
    latency_events=3_000,
    latency_paced_events=500,
    e2e_events=3_000,
    drain_events=20_000,
    drain_budget=30.0,
    stall_delay=2.0,
    stall_spool_events=150_000,
    import_lines=20_000,
    space_events=20_000,
)


# ------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A fresh temporary folder, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="spoolpost-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sample_body(i: int = 0, uuid: str | None = None) -> bytes:
    """Benchmark event ``i`` as spoolpost encodes it (what raw sqlite3 stores too)."""
    now = time.time()
    event = capture_event(EVENT, distinct(i), props(i), None, uuid, None, now=now)
    return encode_event(event)


def run_threads(n: int, target: Callable[[int], None]) -> float:
    """Run ``target(k)`` in ``n`` threads released together; wall seconds until all end."""
    barrier = threading.Barrier(n + 1)
    errors: list[BaseException] = []

    def body(k: int) -> None:
        barrier.wait()
        try:
            target(k)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def fill_spool(path: Path, n: int) -> float:
    """Write ``n`` encoded benchmark events into a new spool at ``path`` through
    :meth:`Spool.import_events` (the import path), bound to :data:`API_KEY`.
    Returns the seconds it took. Each event has its own UUIDv7."""
    placeholder = "00000000-0000-7000-8000-000000000000"
    template = sample_body(0, placeholder)
    start = time.perf_counter()
    spool = Spool(path, max_spool_bytes=1 << 40)
    try:
        spool.bind_key(key_fingerprint(API_KEY))
        now = time.time()
        # Nobody writes beside the filler: big chunks, no pause between them.
        filling = Chunking(seconds=1.0, sleep=lambda s: None)
        chunk = 20_000
        for first in range(0, n, chunk):
            rows = []
            for _ in range(first, min(n, first + chunk)):
                uuid = uuid7_str(now)
                body = template.replace(placeholder.encode(), uuid.encode())
                rows.append((uuid, body))
            spool.import_events(rows, now=now, chunking=filling)
    finally:
        spool.close()
    return time.perf_counter() - start


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


# ---------------------------------------------------------------- rivals: sqlite3


def _raw_connection(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, uuid TEXT NOT NULL,"
        " body BLOB NOT NULL, captured_at REAL NOT NULL)"
    )
    return conn


def _raw_commit_per_row(sizes: Sizes, synchronous: str, n: int) -> dict[str, Any]:
    body = sample_body()
    with workdir() as d:
        conn = _raw_connection(d / "raw.db", synchronous)
        sql = "INSERT INTO events (uuid, body, captured_at) VALUES (?, ?, ?)"
        start = time.perf_counter()
        for i in range(n):
            conn.execute(sql, (str(i), body, time.time()))  # autocommit: one commit per row
        elapsed = time.perf_counter() - start
        conn.close()
    return {"rows_per_s": rate(n, elapsed), "rows": n, "seconds": elapsed}


def bench_sqlite_commit(sizes: Sizes) -> dict[str, Any]:
    """Raw sqlite3: one INSERT, one commit per row (WAL, synchronous=NORMAL)."""
    return _raw_commit_per_row(sizes, "NORMAL", sizes.raw_rows)


def bench_sqlite_commit_full(sizes: Sizes) -> dict[str, Any]:
    """Raw sqlite3: one commit per row, synchronous=FULL (an fsync per commit)."""
    return _raw_commit_per_row(sizes, "FULL", sizes.raw_full_rows)


def bench_sqlite_batched(sizes: Sizes) -> dict[str, Any]:
    """Raw sqlite3: every row in one transaction (executemany), WAL, NORMAL."""
    body = sample_body()
    n = sizes.raw_batched_rows
    with workdir() as d:
        conn = _raw_connection(d / "raw.db", "NORMAL")
        start = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO events (uuid, body, captured_at) VALUES (?, ?, ?)",
            ((str(i), body, 0.0) for i in range(n)),
        )
        conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        conn.close()
    return {"rows_per_s": rate(n, elapsed), "rows": n, "seconds": elapsed}


# -------------------------------------------------------- rivals: posthog-python


def _posthog_client(host: str, **options: Any) -> Any:
    from posthog import Posthog

    return Posthog(
        API_KEY,
        host=host,
        enable_local_evaluation=False,  # no feature-flag poller
        capture_mode="v0",  # POST /batch/, the same wire format as spoolpost
        **options,
    )


def bench_posthog_capture(sizes: Sizes) -> dict[str, Any]:
    """posthog-python ``capture()`` with ``send=False``: all of its capture work
    (validation, enrichment, uuid, timestamp) except the ``queue.put``; no thread
    competes with it. The figure is slightly generous to posthog."""
    client = _posthog_client("http://127.0.0.1:9", send=False)
    n = sizes.posthog_events
    try:
        start = time.perf_counter()
        for i in range(n):
            client.capture(EVENT, distinct_id=distinct(i), properties=props(i))
        elapsed = time.perf_counter() - start
    finally:
        client.shutdown()
    return {"events_per_s": rate(n, elapsed), "events": n, "seconds": elapsed}


def bench_posthog_capture_queue(sizes: Sizes) -> dict[str, Any]:
    """posthog-python ``capture()`` into its memory queue while its consumer thread
    sends to the loopback endpoint (defaults; ``max_queue_size`` large enough that
    nothing is dropped)."""
    n = sizes.posthog_events
    with EndpointProcess() as ep:
        client = _posthog_client(ep.url, max_queue_size=n + 100)
        try:
            start = time.perf_counter()
            for i in range(n):
                client.capture(EVENT, distinct_id=distinct(i), properties=props(i))
            elapsed = time.perf_counter() - start
            client.flush(None)
        finally:
            client.shutdown()
    return {"events_per_s": rate(n, elapsed), "events": n, "seconds": elapsed}


def bench_posthog_e2e(sizes: Sizes) -> dict[str, Any]:
    """posthog-python end to end: capture N, ``flush()``, until the loopback
    endpoint answered all N (its defaults: flush_at 100, one consumer thread)."""
    n = sizes.posthog_e2e_events
    with EndpointProcess() as ep:
        client = _posthog_client(ep.url, max_queue_size=n + 100)
        try:
            start = time.perf_counter()
            for i in range(n):
                client.capture(EVENT, distinct_id=distinct(i), properties=props(i))
            client.flush(None)
            stats = ep.wait_for_events(n, timeout=120)
            elapsed = time.perf_counter() - start
        finally:
            client.shutdown()
    return {
        "events_per_s": rate(stats["events"], elapsed),
        "events": stats["events"],
        "requests": stats["requests"],
        "seconds": elapsed,
        "complete": stats["events"] >= n,
    }


# ---------------------------------------------------------- rivals: persist-queue


def bench_persistqueue(sizes: Sizes) -> dict[str, Any]:
    """persist-queue ``SQLiteAckQueue`` (defaults: WAL, auto_commit): ``put`` of the
    benchmark event dict, then ``get`` + ``ack`` of items one by one."""
    from persistqueue import SQLiteAckQueue

    with workdir() as d:
        q = SQLiteAckQueue(str(d / "pq"))
        now = time.time()
        item = capture_event(EVENT, distinct(0), props(0), None, None, None, now=now)
        start = time.perf_counter()
        for _ in range(sizes.pq_put):
            q.put(item)
        put_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(sizes.pq_get_ack):
            item = q.get(block=False)
            q.ack(item)
        get_s = time.perf_counter() - start
    return {
        "put_per_s": rate(sizes.pq_put, put_s),
        "get_ack_per_s": rate(sizes.pq_get_ack, get_s),
        "puts": sizes.pq_put,
        "get_acks": sizes.pq_get_ack,
    }


# -------------------------------------------------------------------- spoolpost


def _capture_loop(client: Client, first: int, n: int) -> None:
    for i in range(first, first + n):
        client.capture(EVENT, distinct_id=distinct(i), properties=props(i))


def bench_capture_1t(sizes: Sizes) -> dict[str, Any]:
    """spoolpost durable capture, one thread, ``durability="process"``, no
    delivery (``send=False``): each call returns once its row is committed."""
    n = sizes.capture_1t
    with workdir() as d:
        client = Client(API_KEY, "http://127.0.0.1:9", spool=d / "s.spool", send=False)
        try:
            start = time.perf_counter()
            _capture_loop(client, 0, n)
            elapsed = time.perf_counter() - start
        finally:
            client.shutdown()
    return {"events_per_s": rate(n, elapsed), "events": n, "seconds": elapsed}


def _capture_threads(durability: str, threads: int, per_thread: int) -> dict[str, Any]:
    with workdir() as d:
        client = Client(
            API_KEY,
            "http://127.0.0.1:9",
            spool=d / "s.spool",
            send=False,
            durability=durability,  # type: ignore[arg-type]
        )
        try:
            elapsed = run_threads(
                threads, lambda k: _capture_loop(client, k * per_thread, per_thread)
            )
            stored = client.spool.stats(time.time()).counts["pending"]
        finally:
            client.shutdown()
    n = threads * per_thread
    return {"events_per_s": rate(n, elapsed), "events": n, "seconds": elapsed, "stored": stored}


def bench_capture_8t(sizes: Sizes) -> dict[str, Any]:
    """spoolpost capture from 8 threads at once (``process``; group commit)."""
    return _capture_threads("process", 8, sizes.capture_8t_per_thread)


def bench_power_8t(sizes: Sizes) -> dict[str, Any]:
    """spoolpost capture from 8 threads, ``durability="power"`` (synchronous=FULL)."""
    return _capture_threads("power", 8, sizes.power_8t_per_thread)


def bench_latency(sizes: Sizes) -> dict[str, Any]:
    """Per-call ``capture()`` latency while delivery threads send to the loopback
    endpoint: one thread capturing flat out, then one paced at a fixed rate."""
    out: dict[str, Any] = {}
    with workdir() as d, EndpointProcess() as ep:
        for mode in ("flat", "paced"):
            spool = d / f"{mode}.spool"
            client = Client(API_KEY, ep.url, spool=spool)
            samples: list[float] = []
            n = sizes.latency_events if mode == "flat" else sizes.latency_paced_events
            interval = 1.0 / sizes.latency_paced_rate
            try:
                start = time.perf_counter()
                for i in range(n):
                    if mode == "paced":
                        due = start + i * interval
                        pause = due - time.perf_counter()
                        if pause > 0:
                            time.sleep(pause)
                    t0 = time.perf_counter_ns()
                    client.capture(EVENT, distinct_id=distinct(i), properties=props(i))
                    samples.append((time.perf_counter_ns() - t0) / 1e6)
                elapsed = time.perf_counter() - start
                client.flush(60)
                delivered = client.spool.counters()["delivered"]
            finally:
                client.shutdown()
            samples.sort()
            out[mode] = {
                "p50_ms": percentile(samples, 50),
                "p99_ms": percentile(samples, 99),
                "p999_ms": percentile(samples, 99.9),
                "max_ms": samples[-1],
                "mean_ms": statistics.fmean(samples),
                "events": n,
                "events_per_s": rate(n, elapsed),
                "delivered": delivered,
            }
    return out


def bench_e2e(sizes: Sizes) -> dict[str, Any]:
    """spoolpost end to end: capture N (delivery threads on), ``flush()``, until the
    loopback endpoint answered all N (defaults: flush_at 100, senders min(cpu, 4))."""
    n = sizes.e2e_events
    with workdir() as d, EndpointProcess() as ep:
        client = Client(API_KEY, ep.url, spool=d / "s.spool")
        try:
            start = time.perf_counter()
            _capture_loop(client, 0, n)
            result = client.flush(120)
            stats = ep.wait_for_events(n, timeout=60)
            elapsed = time.perf_counter() - start
        finally:
            client.shutdown()
    return {
        "events_per_s": rate(stats["events"], elapsed),
        "events": stats["events"],
        "requests": stats["requests"],
        "seconds": elapsed,
        "complete": stats["events"] >= n and result.pending == 0,
    }


_DRAIN_CHILD = (
    "import sys, time\n"
    "import spoolpost.cli as cli\n"
    "sys.stderr.write(f'T_OPEN {time.time()!r}\\n'); sys.stderr.flush()\n"
    "sys.argv = ['spoolpost'] + sys.argv[1:]\n"
    "cli.main()\n"
)


def bench_drain(sizes: Sizes) -> dict[str, Any]:
    """``spoolpost drain`` (the real CLI, in a subprocess) of a spool of N events to
    the loopback endpoint (another subprocess). Throughput is events the endpoint
    answered / seconds from the CLI's start (imports done) to its exit; peak RSS is
    the drain process's own ``ru_maxrss`` (``os.wait4``); first request is timed from
    the CLI's start (≈ opening the spool) and from the process launch."""
    return _drain(sizes, "v0")


def bench_drain_v1(sizes: Sizes) -> dict[str, Any]:
    """:func:`bench_drain` with ``--capture-mode v1``: the same spool size, each event
    reshaped at send time and settled by the endpoint's per-event ``results`` map."""
    return _drain(sizes, "v1")


def _drain(sizes: Sizes, mode: str) -> dict[str, Any]:
    n = sizes.drain_events
    with workdir() as d, EndpointProcess() as ep:
        path = d / "drain.spool"
        log(f"  filling a spool with {n} events ...")
        fill_s = fill_spool(path, n)
        spool_mb = path.stat().st_size / 1e6
        endpoint_cpu = ep.stats()["cpu_s"]
        launched = time.time()
        out_path, err_path = d / "drain.out", d / "drain.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _DRAIN_CHILD,
                    "drain",
                    str(path),
                    "--host",
                    ep.url,
                    "--api-key",
                    API_KEY,
                    "--json",
                    "--budget",
                    str(sizes.drain_budget),
                    "--capture-mode",
                    mode,
                ],
                stdout=out,
                stderr=err,
                cwd=d,  # not the caller's folder: `-c` puts the cwd first on sys.path
            )
            log(f"  draining under {mode} (budget {sizes.drain_budget:.0f} s) ...")
            # wait4, not wait(): it gives this child's own peak RSS (KiB on Linux).
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        ended = time.time()
        stats = ep.stats()
        after_mb = sum(p.stat().st_size for p in d.glob("drain.spool*")) / 1e6
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
    opened = launched
    for line in stderr.splitlines():
        if line.startswith("T_OPEN "):
            opened = float(line.split()[1])
    try:
        summary = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        summary = {"error": stderr[-2000:]}
    first = stats["first_at"]
    return {
        "events_per_s": rate(stats["events"], ended - opened),
        "delivered": stats["events"],
        "events": n,
        "complete": stats["events"] >= n,
        "seconds": ended - opened,
        "first_request_after_open_s": None if first is None else first - opened,
        "first_request_after_launch_s": None if first is None else first - launched,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "drain_cpu_s": usage.ru_utime + usage.ru_stime,
        "endpoint_cpu_s": stats["cpu_s"] - endpoint_cpu,
        "spool_file_mb": spool_mb,
        "spool_file_mb_after": after_mb,
        "fill_seconds": fill_s,
        "exit_code": proc.returncode,
        "summary": summary,
    }


def bench_import_beside(sizes: Sizes) -> dict[str, Any]:
    """Capture latency (a separate process at a steady rate) while `spoolpost import`
    of N lines writes into the same spool (tools/bench_space.py)."""
    with workdir() as d:
        log(f"  importing {sizes.import_lines} lines beside a capturing process ...")
        return bench_space.import_beside(d, sizes.import_lines, sizes.import_capture_rate)


def bench_space_app(sizes: Sizes) -> dict[str, Any]:
    """Seconds after an app delivered an N-event backlog until the spool file is back
    under 10 % of its peak, with no manual step (tools/bench_space.py)."""
    with workdir() as d:
        log(f"  an app delivering a backlog of {sizes.space_events} events ...")
        return bench_space.space_app(d, sizes.space_events, fill_spool)


def bench_stall(sizes: Sizes) -> dict[str, Any]:
    """One request stalled: a big spool delivered by a client with ``senders``
    threads at the dispatcher's own pace (no ``flush()``). Events answered per
    second in a window with every sender free, then during the ``stall_delay``
    seconds in which the endpoint holds one request (``Response(delay=...)``)."""
    delay = sizes.stall_delay
    senders = sizes.stall_senders
    with workdir() as d, EndpointProcess() as ep:
        path = d / "stall.spool"
        log(f"  filling a spool with {sizes.stall_spool_events} events ...")
        fill_spool(path, sizes.stall_spool_events)
        client = Client(API_KEY, ep.url, spool=path, senders=senders, max_spool_bytes=1 << 40)
        try:
            ep.wait_for_events(1, timeout=10)
            time.sleep(min(1.0, delay / 4))  # warm up: every sender has its connection
            windows: dict[str, float] = {}
            pending: dict[str, int] = {}
            for phase, seconds in (("normal", max(1.0, delay / 2)), ("stalled", delay)):
                before = ep.stats()
                if phase == "stalled":
                    ep.stall(delay, 1)
                start = time.perf_counter()
                time.sleep(seconds)
                after = ep.stats()
                elapsed = time.perf_counter() - start
                windows[phase] = rate(after["events"] - before["events"], elapsed)
                # (the endpoint's count, not a spool scan that would disturb the client)
                pending[phase] = max(0, sizes.stall_spool_events - after["events"])
        finally:
            client.shutdown(1.0)
    return {
        "normal_events_per_s": windows["normal"],
        "stalled_events_per_s": windows["stalled"],
        "ratio": windows["stalled"] / windows["normal"] if windows["normal"] else 0.0,
        "senders": senders,
        "delay_s": delay,
        "pending_after_normal": pending["normal"],
        "pending_after_stall": pending["stalled"],
        "ran_dry": pending["stalled"] == 0,
    }


# ----------------------------------------------------------------- registry/table


@dataclass(frozen=True)
class Bench:
    name: str
    func: Callable[[Sizes], dict[str, Any]]
    needs: tuple[str, ...] = ()
    optional: bool = False  # run only when named with --only


BENCHES: dict[str, Bench] = {
    b.name: b
    for b in [
        Bench("sqlite_commit", bench_sqlite_commit),
        Bench("sqlite_batched", bench_sqlite_batched),
        Bench("sqlite_commit_full", bench_sqlite_commit_full),
        Bench("posthog_capture", bench_posthog_capture),
        Bench("posthog_capture_queue", bench_posthog_capture_queue),
        Bench("posthog_e2e", bench_posthog_e2e),
        Bench("persistqueue", bench_persistqueue),
        Bench("capture_1t", bench_capture_1t, ("posthog_capture", "sqlite_commit")),
        Bench("capture_8t", bench_capture_8t, ("capture_1t",)),
        Bench("power_8t", bench_power_8t, ("sqlite_commit_full",)),
        Bench("latency", bench_latency),
        Bench("e2e", bench_e2e, ("posthog_e2e",)),
        Bench("drain", bench_drain),
        Bench("drain_v1", bench_drain_v1),
        Bench("stall", bench_stall),
        Bench("import_beside", bench_import_beside, optional=True),
        Bench("space_app", bench_space_app, optional=True),
    ]
}


@dataclass
class Row:
    benchmark: str
    spoolpost: str
    rival: str
    ratio: str
    target: str
    verdict: str
    values: dict[str, Any] = field(default_factory=dict)


def _fmt(value: float | None, unit: str) -> str:
    if value is None or value != value:  # None or NaN
        return "n/a"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:.2f}{unit}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def build_rows(r: dict[str, dict[str, Any]]) -> list[Row]:
    """The comparison table from the raw figures ``r`` (benchmark name → figures)."""
    rows: list[Row] = []

    def get(name: str, *keys: str) -> Any:
        value: Any = r.get(name)
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    def ratio_row(
        label: str, sp: float | None, rival_label: str, rv: float | None, minimum: float, unit: str
    ) -> None:
        if sp is None:
            return
        ratio = sp / rv if rv else None
        rows.append(
            Row(
                label,
                _fmt(sp, unit),
                f"{rival_label} {_fmt(rv, unit)}" if rv is not None else "n/a",
                "n/a" if ratio is None else f"{ratio:.2f}x",
                f">= {minimum:g}x",
                _verdict(None if ratio is None else ratio >= minimum),
                {"spoolpost": sp, "rival": rv, "ratio": ratio},
            )
        )

    cap1 = get("capture_1t", "events_per_s")
    ratio_row(
        "durable capture, 1 thread, process",
        cap1,
        "posthog capture()",
        get("posthog_capture", "events_per_s"),
        4,
        "/s",
    )
    ratio_row(
        "durable capture, 1 thread, process",
        cap1,
        "raw commit-per-row",
        get("sqlite_commit", "rows_per_s"),
        0.7,
        "/s",
    )
    ratio_row(
        "capture, 8 threads, process",
        get("capture_8t", "events_per_s"),
        "spoolpost 1 thread",
        cap1,
        1,
        "/s",
    )
    ratio_row(
        "power capture, 8 threads",
        get("power_8t", "events_per_s"),
        "raw commit-per-row FULL",
        get("sqlite_commit_full", "rows_per_s"),
        10,
        "/s",
    )
    for mode, label in (("flat", "flat out"), ("paced", "paced")):
        p99 = get("latency", mode, "p99_ms")
        if p99 is not None:
            rate_s = get("latency", mode, "events_per_s")
            rows.append(
                Row(
                    f"capture latency while delivering, {label}",
                    f"p99 {_fmt(p99, 'ms')} (p50 {_fmt(get('latency', mode, 'p50_ms'), 'ms')})",
                    f"at {rate_s:,.0f} captures/s",
                    "-",
                    "p99 <= 2 ms",
                    _verdict(p99 <= 2.0),
                    {"p99_ms": p99},
                )
            )
    ratio_row(
        "end to end, capture -> acked by loopback",
        get("e2e", "events_per_s"),
        "posthog end to end",
        get("posthog_e2e", "events_per_s"),
        5,
        "/s",
    )
    if "drain" in r:
        dr = r["drain"]
        done = f"{dr['delivered']:,} of {dr['events']:,} events"
        rows.append(
            Row(
                f"drain, {done}",
                _fmt(dr["events_per_s"], "/s"),
                "-",
                "-",
                ">= 50,000/s",
                _verdict(dr["events_per_s"] >= 50_000),
            )
        )
        rows.append(
            Row(
                "drain, peak RSS of the drain process",
                _fmt(dr["peak_rss_mb"], "MB"),
                "-",
                "-",
                "<= 100 MB",
                _verdict(
                    None if dr["peak_rss_mb"] != dr["peak_rss_mb"] else dr["peak_rss_mb"] <= 100
                ),
            )
        )
        first = dr["first_request_after_open_s"]
        rows.append(
            Row(
                "drain, first request after open",
                _fmt(first, "s"),
                f"after launch {_fmt(dr['first_request_after_launch_s'], 's')}",
                "-",
                "<= 1 s",
                _verdict(None if first is None else first <= 1.0),
            )
        )
    if "drain_v1" in r:
        dv = r["drain_v1"]
        rows.append(
            Row(
                f"drain --capture-mode v1, {dv['delivered']:,} of {dv['events']:,} events",
                _fmt(dv["events_per_s"], "/s"),
                f"v0 {_fmt(r['drain']['events_per_s'], '/s')}" if "drain" in r else "-",
                "-",
                ">= 50,000/s",
                _verdict(dv["events_per_s"] >= 50_000),
            )
        )
    if "drain" in r and "spool_file_mb_after" in r["drain"]:
        dr = r["drain"]
        ratio = dr["spool_file_mb_after"] / dr["spool_file_mb"] if dr["spool_file_mb"] else None
        rows.append(
            Row(
                "spool file after the drain, vs its peak",
                _fmt(dr["spool_file_mb_after"], "MB"),
                f"peak {_fmt(dr['spool_file_mb'], 'MB')}",
                "n/a" if ratio is None else f"{ratio:.3f}x",
                "< 0.1x",
                _verdict(None if ratio is None else ratio < 0.1),
            )
        )
    if "space_app" in r:
        sa = r["space_app"]
        secs = sa["seconds_to_under_10pct"]
        rows.append(
            Row(
                f"app delivering {sa['events']:,} events: back under 10 % of peak",
                "never (120 s)" if secs is None else _fmt(secs, "s"),
                f"{sa['after_mb']:.1f} of peak {sa['peak_mb']:.0f} MB",
                f"{sa['ratio']:.3f}x",
                "<= 60 s",
                _verdict(secs is not None and secs <= 60),
            )
        )
    if "import_beside" in r:
        ib = r["import_beside"]
        rows.append(
            Row(
                f"capture latency beside an import of {ib['lines']:,} lines",
                f"p99 {_fmt(ib['p99_ms'], 'ms')} (p50 {_fmt(ib['p50_ms'], 'ms')},"
                f" max {_fmt(ib['max_ms'], 'ms')}; from due: p99"
                f" {_fmt(ib['from_due_p99_ms'], 'ms')})",
                f"{ib['captures_during_writes']:,} captures;"
                f" import {_fmt(ib['import_seconds'], 's')}",
                "-",
                "p99 <= 50 ms",
                _verdict(max(ib["p99_ms"], ib["from_due_p99_ms"]) <= 50.0),
            )
        )
    if "stall" in r:
        st = r["stall"]
        n = st["senders"]
        need = (n - 1) / n
        rows.append(
            Row(
                f"one request stalled {st['delay_s']:g} s ({n} senders)",
                _fmt(st["stalled_events_per_s"], "/s"),
                f"normal {_fmt(st['normal_events_per_s'], '/s')}",
                f"{st['ratio']:.2f}x",
                f">= {need:.2f}x",
                _verdict(st["ratio"] >= need and not st["ran_dry"]),
            )
        )
    return rows


#: Reference figures for the rivals (a 2-core CI box), to compare machines.
REFERENCE = [
    ("raw sqlite3 commit-per-row (WAL, NORMAL)", "sqlite_commit", "rows_per_s", 39_000),
    ("raw sqlite3 batched", "sqlite_batched", "rows_per_s", 300_000),
    ("raw sqlite3 commit-per-row (WAL, FULL)", "sqlite_commit_full", "rows_per_s", None),
    ("posthog-python capture()", "posthog_capture", "events_per_s", 6_700),
    (
        "posthog-python capture() into queue, consumer on",
        "posthog_capture_queue",
        "events_per_s",
        6_700,
    ),
    ("posthog-python end to end (loopback)", "posthog_e2e", "events_per_s", 2_500),
    ("persist-queue put", "persistqueue", "put_per_s", 3_200),
    ("persist-queue get+ack", "persistqueue", "get_ack_per_s", 400),
]


def render(rows: list[Row], r: dict[str, dict[str, Any]]) -> str:
    head = ["benchmark", "spoolpost", "rival", "ratio", "target", "result"]
    table = [head] + [
        [x.benchmark, x.spoolpost, x.rival, x.ratio, x.target, x.verdict] for x in rows
    ]
    out = [_markdown(table), ""]
    ref = [["rival on this machine", "figure", "reference"]]
    for label, name, key, reference in REFERENCE:
        value = r.get(name, {}).get(key)
        if value is not None:
            ref.append(
                [label, _fmt(value, "/s"), "-" if reference is None else f"~{reference:,}/s"]
            )
    if len(ref) > 1:
        out += [_markdown(ref), ""]
    return "\n".join(out)


def _markdown(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for k, row in enumerate(table):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if k == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "spoolpost": spoolpost.__version__ if hasattr(spoolpost, "__version__") else "?",
        "platform": platform.platform(),
    }


def selected(only: list[str]) -> list[str]:
    """Benchmark names to run for ``--only`` (with what their comparisons need), in order."""
    if not only:
        return [name for name, bench in BENCHES.items() if not bench.optional]
    wanted: set[str] = set()

    def add(name: str) -> None:
        if name not in BENCHES:
            raise SystemExit(f"unknown benchmark {name!r}; see --list")
        if name not in wanted:
            wanted.add(name)
            for dep in BENCHES[name].needs:
                add(dep)

    for item in only:
        for name in item.split(","):
            add(name.strip())
    return [name for name in BENCHES if name in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    parser.add_argument("--list", action="store_true", help="list benchmark names")
    parser.add_argument("--json", action="store_true", help="print JSON, not tables")
    parser.add_argument("--drain-events", type=int, help="events in the drain spool")
    parser.add_argument("--drain-budget", type=float, help="seconds the drain may take")
    parser.add_argument("--stall-delay", type=float, help="seconds one request is held")
    parser.add_argument("--no-stall", action="store_true", help="skip the stalled-request run")
    parser.add_argument("--import-lines", type=int, help="lines of the import_beside run")
    parser.add_argument("--save", metavar="PATH", help="also write the JSON report to PATH")
    parser.add_argument("--render", metavar="PATH", help="print the tables of a saved report")
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads(Path(args.render).read_text())
        ok = {k: v for k, v in report["results"].items() if "error" not in v}
        print(_headline(report["machine"], report["mode"], report["seconds"]))
        print(render(build_rows(ok), ok))
        return 0
    if args.list:
        for bench in BENCHES.values():
            doc = (bench.func.__doc__ or "").strip().split("\n")[0]
            print(f"{bench.name:22s} {doc}")
        return 0
    sizes = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    if args.drain_events is not None:
        overrides["drain_events"] = args.drain_events
    if args.drain_budget is not None:
        overrides["drain_budget"] = args.drain_budget
    if args.stall_delay is not None:
        overrides["stall_delay"] = args.stall_delay
    if args.import_lines is not None:
        overrides["import_lines"] = args.import_lines
    if overrides:
        sizes = Sizes(**{**sizes.__dict__, **overrides})
    names = selected(args.only)
    if args.no_stall and "stall" in names:
        names.remove("stall")
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for name in names:
        log(f"{name} ...")
        t0 = time.perf_counter()
        try:
            results[name] = BENCHES[name].func(sizes)
        except Exception as exc:  # one broken benchmark must not hide the others
            log(f"  {name} FAILED: {type(exc).__name__}: {exc}")
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"  {time.perf_counter() - t0:.1f} s: {_short(results[name])}")
    total = time.perf_counter() - started
    ok = {k: v for k, v in results.items() if "error" not in v}
    rows = build_rows(ok)
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mode = "quick" if args.quick else "full"
    report = {
        "machine": machine(),
        "mode": mode,
        "argv": sys.argv[1:] if argv is None else argv,
        "sizes": sizes.__dict__,
        "seconds": total,
        "results": results,
        "rows": [x.__dict__ for x in rows],
        "bench_process_peak_rss_mb": self_rss,
    }
    text = json.dumps(report, indent=2, default=str)
    if args.save:
        Path(args.save).write_text(text + "\n")
    if args.json:
        print(text)
    else:
        print(_headline(report["machine"], mode, total))
        print(render(rows, ok))
        failed = [k for k, v in results.items() if "error" in v]
        if failed:
            print(
                "benchmarks that failed: "
                + ", ".join(f"{k} ({results[k]['error']})" for k in failed)
            )
    return 0


def _headline(m: dict[str, Any], mode: str, seconds: float) -> str:
    return (
        f"machine: {m['nproc']} cpu ({m['cpu']}), Python {m['python']}, "
        f"SQLite {m['sqlite']}; {mode} run, {seconds:.0f} s\n"
    )


def _short(figures: dict[str, Any]) -> str:
    return json.dumps(figures, default=str)[:300]


if __name__ == "__main__":
    sys.exit(main())
