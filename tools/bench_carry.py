"""How long carrying a deleted spool's rows into a new spool takes, and how long a
capture in the same process waits meanwhile (docs/architecture.md, "The file
replaced, deleted or damaged"). Not part of tools/bench.py: one run, one figure.

    python tools/bench_carry.py [EVENTS]     # default 200000

Fills a spool in a temporary folder with EVENTS events (one bulk transaction),
starts a thread that captures without pause, deletes the file, and makes the spool
notice at once (``reclaim`` checks the file); prints the carry's duration and the
longest capture wait.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from spoolpost.events.build import capture_event
from spoolpost.events.encoding import encode_event
from spoolpost.spool import Spool

T0 = 1_700_000_000.0


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.spool"
        spool = Spool(path, min_free_bytes=0)
        body = encode_event(capture_event("bench", "u1", {"i": 0}, now=T0))
        with spool._db.write() as conn:  # a fast fill: one transaction, not n captures
            conn.executemany(
                "INSERT INTO events (uuid, body, size, captured_at, next_attempt_at, lane)"
                " VALUES (?, ?, ?, ?, ?, NULL)",
                [(f"00000000-0000-7000-8000-{i:012d}", body, len(body), T0, T0) for i in range(n)],
            )
        spool.checkpoint()
        waits: list[float] = []
        started, stop = threading.Event(), threading.Event()

        def capture() -> None:
            i = 0
            while not stop.is_set():
                event = capture_event("during", "u1", {"i": i}, now=T0 + 1)
                begun = time.perf_counter()
                spool.append(str(event["uuid"]), encode_event(event), T0 + 1)
                waits.append(time.perf_counter() - begun)
                i += 1
                started.set()

        thread = threading.Thread(target=capture)
        thread.start()
        started.wait()
        os.unlink(path)
        begun = time.perf_counter()
        spool.reclaim(T0 + 2)  # checks the file at once: the switch and the carry
        took = time.perf_counter() - begun
        stop.set()
        thread.join()
        print(
            f"carried {n} events in {took:.2f} s; {len(waits)} captures meanwhile and after,"
            f" longest wait {max(waits) * 1000:.0f} ms"
        )
        spool.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
