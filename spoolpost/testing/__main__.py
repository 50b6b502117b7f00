"""``python -m spoolpost.testing``: the loopback endpoint from a shell, with scripted
faults, to rehearse cron, systemd and alerting without sending data anywhere.

It prints ``listening on URL`` first, then one line a request (unless
``--quiet``), and stops cleanly (exit 0) on Ctrl-C or SIGTERM. Faults:
``--fail-rate 0.1 --status 503`` answers 10 % of requests with 503 (reproducibly
with ``--seed``), ``--retry-after`` adds that header to them, ``--hang`` makes
them hang instead of answering, ``--delay`` delays every answer. PostHog v1
per-event verdicts: ``--v1-verdict retry:2 --v1-verdict "drop=bad name"`` answers
each event of a v1 request ``retry`` the first two times it is sent, then
``drop`` with those details, then ``ok``; ``--v1-rate 0.1`` scripts only 10 % of
the events (chosen by uuid and ``--seed``). Standard library only, like the rest of
:mod:`spoolpost.testing` (argparse, not click).

Example::

    python -m spoolpost.testing --port 8500 --fail-rate 0.1 --status 503 --seed 1
    spoolpost drain --host http://127.0.0.1:8500 --api-key phc_test --budget 60
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import re
import signal
import sys
import threading
from collections import Counter
from collections.abc import Sequence

from spoolpost.testing.endpoint import LocalEndpoint
from spoolpost.testing.responses import (
    V1_PATH,
    V1_RESULTS,
    RecordedRequest,
    Response,
    Verdict,
    v1_answer,
)


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


_WORD = re.compile(r"[a-z_]+")


def _verdicts(text: str) -> list[Verdict]:
    """``RESULT[=DETAILS][:TIMES]`` as that many verdicts (``missing``: None, the
    uuid left out of the results map)."""
    spec, times = text, 1
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit():
        spec, times = head, int(tail)
    result, sep, details = spec.partition("=")
    if not _WORD.fullmatch(result) or times < 1 or (sep and not details):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not RESULT[=DETAILS][:TIMES] (RESULT: {', '.join(V1_RESULTS)}, "
            "missing or another word; TIMES >= 1), e.g. retry:2 or 'drop=bad name'"
        )
    verdict: Verdict = None if result == "missing" else (result, details) if sep else result
    return [verdict] * times


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m spoolpost.testing``."""
    p = argparse.ArgumentParser(
        prog="python -m spoolpost.testing",
        description="Run spoolpost's loopback test endpoint (a stand-in for PostHog's "
        "/batch/ and /i/v1/analytics/events) with scripted faults.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  python -m spoolpost.testing --port 8500 --fail-rate 0.1 --status 503
  python -m spoolpost.testing --v1-verdict retry:2 --v1-verdict 'drop=invalid event'
      each v1 event: retry, retry, then dropped with those details
  python -m spoolpost.testing --v1-verdict limited --v1-rate 0.05 --seed 1
      5 % of v1 events are quota-limited, the rest ok
  python -m spoolpost.testing --v1-verdict missing:3
      each v1 event is left out of the results map 3 times, then ok""",
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
    p.add_argument(
        "--v1-verdict",
        type=_verdicts,
        action="extend",
        default=[],
        metavar="RESULT[=DETAILS][:TIMES]",
        help="The verdict in a v1 results map for an event's next TIMES sends (default "
        f"1); repeat it for a sequence, then ok. RESULT: {', '.join(V1_RESULTS)}, missing "
        "(left out of the map) or another word (an unknown result).",
    )
    p.add_argument(
        "--v1-rate",
        type=_rate,
        default=1.0,
        help="Share of v1 events the --v1-verdict sequence applies to (0 to 1, default 1); "
        "chosen by uuid and --seed.",
    )
    return p


class V1Script:
    """Per-event v1 verdicts from the command line: each chosen event gets
    ``verdicts`` in turn on its successive sends, then ``ok``. Whether an event is
    chosen (with probability ``rate``) depends on its uuid and ``seed`` only, so
    every send of it agrees. Only events part-way through the sequence are
    remembered."""

    def __init__(
        self, verdicts: list[Verdict], rate: float, seed: int | None, lock: threading.Lock
    ) -> None:
        self.verdicts = verdicts
        self.rate = rate
        self.seed = f"{seed}:".encode()
        self.lock = lock
        self.sends: dict[str, int] = {}  # uuid → sends answered from the sequence so far

    def __bool__(self) -> bool:
        return bool(self.verdicts)

    def _chosen(self, uuid: str) -> bool:
        if self.rate >= 1.0:
            return True
        digest = hashlib.blake2b(self.seed + uuid.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.rate

    def answer(self, request: RecordedRequest) -> Response:
        chosen: dict[str, Verdict] = {}
        with self.lock:
            for uuid in request.uuids:
                sent = self.sends.get(uuid)
                if sent is None:
                    if not self._chosen(uuid):
                        continue
                    sent = 0
                if sent < len(self.verdicts):
                    chosen[uuid] = self.verdicts[sent]
                    self.sends[uuid] = sent + 1
                else:
                    del self.sends[uuid]
        return v1_answer(request, chosen)


def _tally(answer: Response) -> str:
    """``ok 2, retry 1`` for a v1 answer's results map."""
    results = json.loads(answer.body)["results"]
    counts = Counter(entry["result"] for entry in results.values())
    return ", ".join(f"{result} {n}" for result, n in sorted(counts.items())) or "no results"


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl-C or SIGTERM; returns the exit code (0, or 2 for a bad option)."""
    args = parser().parse_args(argv)
    rng = random.Random(args.seed)
    headers = {} if args.retry_after is None else {"Retry-After": f"{args.retry_after:g}"}
    fault = Response(args.status, headers=headers, delay=args.delay, hang=args.hang)
    lock = threading.Lock()

    script = V1Script(args.v1_verdict, args.v1_rate, args.seed, lock)

    def handler(request: RecordedRequest) -> Response | None:
        with lock:
            failed = rng.random() < args.fail_rate
        answer = None
        if not failed and script and request.path.split("?", 1)[0] == V1_PATH:
            answer = dataclasses.replace(script.answer(request), delay=args.delay)
        if not args.quiet:
            said = ("hang" if args.hang else str(args.status)) if failed else "ok"
            if answer is not None:
                said = "200 (" + _tally(answer) + ")"
            n = len(request.events) or len(request.uuids)
            print(f"{request.method} {request.path} {n} events -> {said}", flush=True)
        return fault if failed else answer

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
