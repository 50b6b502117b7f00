"""A child process for the crash tests: it does its work, reports on stdout, then
waits on stdin for the SIGKILL that the parent test sends.

Usage:
  crash_child.py capture SPOOL HOST N SEND   capture N events with a Client
                                             (SEND: 1 starts delivery threads),
                                             print each returned uuid, then "ready"
  crash_child.py lease SPOOL N TTL           append N events with a Spool, claim
                                             them under a TTL-second lease, print
                                             {"token": …, "ids": […]}, then "ready"
"""

from __future__ import annotations

import json
import sys
import time

# Run as a script, so its own folder (tests/) is first on sys.path: the kit imports.
from kit import CRASH_API_KEY


def capture(spool: str, host: str, n: int, send: bool) -> None:
    from spoolpost import Client

    # lease_ttl is an hour: only the owner-is-dead check can free its batches soon.
    client = Client(
        CRASH_API_KEY,
        host,
        spool=spool,
        send=send,
        flush_at=1,
        flush_interval=0.0,
        lease_ttl=3600.0,
        senders=2,
        shutdown_timeout=0.0,
    )
    for i in range(n):
        uuid = client.capture("crash test", distinct_id=f"user-{i % 3}", properties={"n": i})
        print(uuid, flush=True)


def lease(spool: str, n: int, ttl: float) -> None:
    from spoolpost.spool import Spool

    s = Spool(spool)
    now = time.time()
    for i in range(n):
        s.append(f"lease-{i}", json.dumps({"n": i}).encode(), now)
    batch = s.claim(now, max_events=n, max_bytes=1 << 20, lease_ttl=ttl)
    assert batch is not None
    print(json.dumps({"token": batch.token, "ids": batch.ids}), flush=True)


def main(argv: list[str]) -> None:
    mode, spool, *rest = argv
    if mode == "capture":
        capture(spool, rest[0], int(rest[1]), rest[2] == "1")
    elif mode == "lease":
        lease(spool, int(rest[0]), float(rest[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("ready", flush=True)
    sys.stdin.read()  # until the parent kills us (or closes stdin)


if __name__ == "__main__":
    main(sys.argv[1:])
