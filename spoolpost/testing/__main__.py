"""``python -m spoolpost.testing``: the loopback endpoint from a shell, with scripted
faults, to rehearse cron, systemd and alerting without sending data anywhere.

It prints ``listening on URL`` first, then one line a request (unless
``--quiet``), and stops cleanly (exit 0) on Ctrl-C or SIGTERM. Faults:
``--fail-rate 0.1 --status 503`` answers 10 % of requests with 503 (reproducibly
with ``--seed``), ``--retry-after`` adds that header to them, ``--hang`` makes
them hang instead of answering, ``--delay`` delays every answer. Standard library
only, like the rest of :mod:`spoolpost.testing` (argparse, not click).

Example::

    python -m spoolpost.testing --port 8500 --fail-rate 0.1 --status 503 --seed 1
    spoolpost drain --host http://127.0.0.1:8500 --api-key phc_test --budget 60
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import threading
from collections.abc import Sequence

from spoolpost.testing.endpoint import LocalEndpoint
from spoolpost.testing.responses import RecordedRequest, Response


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a rate from 0 to 1 (0.1 is 10 %)")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds >= 0")
    return value


def _status(text: str) -> int:
    value = int(text)
    if not 100 <= value <= 599:
        raise argparse.ArgumentTypeError(f"{text} is not an HTTP status (100..599)")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m spoolpost.testing``."""
    p = argparse.ArgumentParser(
        prog="python -m spoolpost.testing",
        description="Run spoolpost's loopback test endpoint (a stand-in for PostHog's "
        "/batch/ and /i/v1/analytics/events) with scripted faults.",
        epilog="Example: python -m spoolpost.testing --port 8500 --fail-rate 0.1 --status 503",
    )
    p.add_argument("--host", default="127.0.0.1", help="A loopback address (default 127.0.0.1).")
    p.add_argument("--port", type=int, default=0, help="TCP port (default: a free one).")
    p.add_argument(
        "--fail-rate", type=_rate, default=0.0, help="Share of requests that fail (0 to 1)."
    )
    p.add_argument("--status", type=_status, default=503, help="Status of a failed request.")
    p.add_argument(
        "--retry-after", type=_seconds, default=None, help="Retry-After (seconds) on failures."
    )
    p.add_argument("--delay", type=_seconds, default=0.0, help="Seconds before every answer.")
    p.add_argument("--hang", action="store_true", help="Failed requests hang instead.")
    p.add_argument("--seed", type=int, default=None, help="Seed the fault choice.")
    p.add_argument("--quiet", action="store_true", help="No line per request.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl-C or SIGTERM; returns the exit code (0, or 2 for a bad option)."""
    args = parser().parse_args(argv)
    rng = random.Random(args.seed)
    headers = {} if args.retry_after is None else {"Retry-After": f"{args.retry_after:g}"}
    fault = Response(args.status, headers=headers, delay=args.delay, hang=args.hang)
    lock = threading.Lock()

    def handler(request: RecordedRequest) -> Response | None:
        with lock:
            failed = rng.random() < args.fail_rate
        if not args.quiet:
            answer = ("hang" if args.hang else str(args.status)) if failed else "ok"
            n = len(request.events) or len(request.uuids)
            print(f"{request.method} {request.path} {n} events -> {answer}", flush=True)
        return fault if failed else None

    try:
        endpoint = LocalEndpoint(args.host, args.port)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    endpoint.default = Response(delay=args.delay)
    endpoint.set_handler(handler)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with endpoint:
        print(f"listening on {endpoint.url}", flush=True)
        while not stop.wait(3600):
            endpoint.clear()  # a long rehearsal keeps no requests in memory
    print("stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
