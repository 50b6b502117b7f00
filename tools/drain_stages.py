#!/usr/bin/env python
"""Where one drained event's CPU goes, stage by stage, under v0 or v1.

Fills a spool with tools/bench.py's benchmark events (``fill_spool``), then drains
it in this one thread (``Dispatcher.run_until_idle``: no sender threads, so no GIL
hand-offs) to tools/bench_endpoint.py's endpoint in its own process, and prints
the process CPU (``time.process_time``) per event, in all and for each stage:
the claim, building the request, the POST with reading the answer (and, inside
it, reading a v1 results map), and settling. Each stage is timed by wrapping its
function for this run only; the wrappers cost a little themselves.

Usage::

    python tools/drain_stages.py v1 --events 50000
    python tools/drain_stages.py v0
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import API_KEY, fill_spool
from bench_endpoint import EndpointProcess

from spoolpost.delivery import DeliveryConfig, Dispatcher
from spoolpost.delivery import settle as settle_module
from spoolpost.delivery import transport as transport_module
from spoolpost.delivery.transport import HttpTransport
from spoolpost.delivery.wire import PostHogV0, PostHogV1
from spoolpost.spool import Spool

spent: dict[str, float] = {}


def timed(owner: Any, name: str, label: str) -> None:
    """Replace ``owner.name`` by a wrapper adding its CPU seconds to ``spent[label]``."""
    inner: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.process_time() - start

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["v0", "v1"])
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    timed(Spool, "claim", "claim")
    timed(PostHogV0, "request", "building the request")
    timed(PostHogV1, "request", "building the request")
    timed(HttpTransport, "_post", "POST and reading the answer")
    timed(transport_module, "parse_results", "  of which the results map")
    timed(Spool, "ack", "settling")
    timed(Spool, "settle", "settling")
    timed(settle_module, "settlement_for", "settling")
    for label in ("claim", "building the request", "POST and reading the answer"):
        spent[label] = 0.0  # printed in this order, then the rest
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.spool"
        fill_spool(path, args.events)
        with EndpointProcess() as endpoint:
            spool = Spool(path, max_spool_bytes=1 << 40)
            wire = PostHogV1() if args.mode == "v1" else PostHogV0()
            dispatcher = Dispatcher(
                spool,
                HttpTransport(endpoint.url, API_KEY, wire=wire),
                config=DeliveryConfig(flush_at=1, flush_interval=0.0, max_batch_size=500),
            )
            start = time.process_time()
            while spool.stats(time.time()).counts["pending"]:
                dispatcher.run_until_idle(time.time())
            total = time.process_time() - start
            spool.close()
    per = 1e6 / args.events
    print(f"{args.mode}, {args.events} events, CPU µs per event")
    print(f"  whole drain: {total * per:.1f}")
    for label, seconds in spent.items():
        print(f"  {label}: {seconds * per:.1f}")


if __name__ == "__main__":
    main()
