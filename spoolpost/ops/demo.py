"""``spoolpost demo``: the main job end to end, with a crash in the middle.

1. A :class:`~spoolpost.testing.LocalEndpoint` listens on 127.0.0.1.
2. A child process captures events from several threads into a spool while its
   own senders deliver them; after each ``capture()`` returns, the child appends
   the uuid to an acknowledgement file.
3. Halfway through, the child is killed with SIGKILL: no shutdown, no atexit,
   batches in flight under leases of a dead process.
4. ``spoolpost drain`` runs in a new process on the same spool.
5. The report compares the uuids whose ``capture()`` returned with what the
   endpoint acknowledged: unique delivered, duplicates (at-least-once), lost.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spoolpost.errors import ConfigError, SpoolpostError
from spoolpost.testing import LocalEndpoint

DEMO_API_KEY = "phc_spoolpost_demo"


@dataclass(frozen=True)
class DemoReport:
    """The demo's findings. ``captured``: events whose ``capture()`` returned
    before the kill; ``lost``: those the endpoint never acknowledged;
    ``remaining``: events the drain left in the spool (-1 if it reported none);
    ``spool``: the spool file kept, or None for a temporary one (deleted)."""

    events_planned: int
    threads: int
    captured: int
    killed: bool
    delivered_before_kill: int
    delivered_after_restart: int
    unique_delivered: int
    duplicates: int
    lost: int
    remaining: int
    drain_exit_code: int
    seconds: float
    spool: str | None

    @property
    def ok(self) -> bool:
        """The demo showed what it should: a kill mid-stream, nothing lost."""
        return self.killed and self.captured > 0 and self.lost == 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}

    def text(self) -> str:
        if self.ok:
            verdict = "OK: nothing lost"
        elif not self.killed:
            verdict = "FAILED: the capturing child ended before it could be killed"
        elif self.lost:
            verdict = f"FAILED: {self.lost} events lost"
        else:
            verdict = "FAILED: nothing was captured"
        where = "a temporary spool, now deleted" if self.spool is None else f"spool {self.spool}"
        return "\n".join(
            [
                f"spoolpost demo: {self.threads} threads capturing up to {self.events_planned} "
                "events, SIGKILLed mid-stream, then a new process drained the spool",
                f"  capture() returned          {self.captured:>8}",
                f"  delivered before the kill   {self.delivered_before_kill:>8}",
                f"  delivered after the restart {self.delivered_after_restart:>8}",
                f"  unique events delivered     {self.unique_delivered:>8}",
                f"  duplicates (at-least-once)  {self.duplicates:>8}",
                f"  left in the spool           {self.remaining:>8}",
                f"  lost                        {self.lost:>8}",
                f"  {verdict} ({self.seconds:.1f}s, {where})",
            ]
        )


def _read_acks(path: Path) -> list[str]:
    data = path.read_bytes() if path.exists() else b""
    # A line without its newline was being written when the kill came.
    return [line for line in data.decode().split("\n")[:-1] if line]


def _count_acks(path: Path) -> int:
    try:
        return path.stat().st_size // 37  # a uuid and a newline
    except FileNotFoundError:
        return 0


def run_demo(
    *,
    events: int = 20_000,
    threads: int = 4,
    spool: Path | None = None,
    kill_after: float = 0.5,
    timeout: float = 120.0,
) -> DemoReport:
    """Run the demo; ``kill_after`` is the fraction of ``events`` captured before
    the SIGKILL. ``spool``: a new spool file to use and keep (default: a temporary
    one). Returns a :class:`DemoReport`.

    Raises :class:`~spoolpost.errors.ConfigError` if ``spool`` already exists, and
    :class:`~spoolpost.errors.SpoolpostError` if the capturing child fails or does
    not get to the kill within ``timeout`` seconds.
    """
    if spool is not None and spool.exists():
        raise ConfigError(f"{spool} already exists; the demo needs a new spool file")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spoolpost-demo-") as tmp:
        spool_path = spool or Path(tmp) / "demo.spool"
        acks = Path(tmp) / "acks.txt"
        env = dict(os.environ, SPOOLPOST_API_KEY=DEMO_API_KEY)
        with LocalEndpoint() as endpoint:
            child = subprocess.Popen(
                [
                    *(sys.executable, "-m", "spoolpost.ops.demo", "--child", str(spool_path)),
                    *(endpoint.url, str(events), str(threads), str(acks)),
                ],
                env=env,
            )
            target = int(events * kill_after)
            deadline = started + timeout
            # The demo watches a child process; polling its progress is the point.
            while child.poll() is None and _count_acks(acks) < target:
                if time.monotonic() > deadline:
                    child.kill()
                    child.wait()
                    raise SpoolpostError(
                        f"demo: the capturing child did not capture {target} events "
                        f"within {timeout:.0f}s"
                    )
                time.sleep(0.005)
            killed = child.poll() is None
            if killed:
                os.kill(child.pid, signal.SIGKILL)
            child.wait()
            if not killed and child.returncode != 0:
                raise SpoolpostError(
                    f"demo: the capturing child failed with exit code {child.returncode}"
                )
            captured = _read_acks(acks)
            before = len(endpoint.delivered_uuids())
            drain = subprocess.run(
                [
                    *(sys.executable, "-m", "spoolpost", "drain", str(spool_path)),
                    *("--host", endpoint.url, "--json"),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
            )
            if drain.returncode not in (0, 6):
                sys.stderr.write(drain.stdout + drain.stderr)
            delivered = endpoint.delivered_uuids()
        unique = set(delivered)
        return DemoReport(
            events_planned=events,
            threads=threads,
            captured=len(captured),
            killed=killed,
            delivered_before_kill=before,
            delivered_after_restart=len(delivered) - before,
            unique_delivered=len(unique),
            duplicates=len(delivered) - len(unique),
            lost=len(set(captured) - unique),
            remaining=_remaining(drain.stdout),
            drain_exit_code=drain.returncode,
            seconds=time.monotonic() - started,
            spool=None if spool is None else str(spool),
        )


def _remaining(drain_json: str) -> int:
    try:
        return int(json.loads(drain_json)["remaining"])
    except (ValueError, KeyError, TypeError):
        return -1


def _child(spool: str, host: str, events: int, threads: int, acks: str) -> None:
    from spoolpost.client import Client

    client = Client(
        os.environ["SPOOLPOST_API_KEY"], host, spool=spool, flush_at=200, flush_interval=0.05
    )
    fd = os.open(acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    share = events // threads

    def work(thread: int) -> None:
        for n in range(share):
            uuid = client.capture(
                "demo event",
                distinct_id=f"user-{thread}",
                properties={"thread": thread, "n": n, "demo": True},
            )
            if uuid is not None:
                os.write(fd, (uuid + "\n").encode())

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    client.shutdown(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="spoolpost demo child (internal)")
    parser.add_argument("--child", nargs=5, metavar=("SPOOL", "HOST", "EVENTS", "THREADS", "ACKS"))
    args = parser.parse_args()
    if args.child:
        spool_arg, host_arg, events_arg, threads_arg, acks_arg = args.child
        _child(spool_arg, host_arg, int(events_arg), int(threads_arg), acks_arg)
    else:
        print(json.dumps(run_demo().as_dict()))
