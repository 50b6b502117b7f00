"""How a cron drain ends (issue 10): a Retry-After met while draining that lies past
the budget ends the run at once, saying until when and why; and what a drain leaves
behind when it stops with a request in flight is not called "stuck" by inspect.

Real spools under tmp_path, the real loopback endpoint, real subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from click.testing import CliRunner, Result
from kit import API_KEY, T0, add_events

from spoolpost import ops
from spoolpost.cli import cli
from spoolpost.clock import Clock
from spoolpost.delivery.transport import HttpTransport
from spoolpost.spool import Spool
from spoolpost.testing import LocalEndpoint, Response

#: A clock past which nothing can idle: after this many waits that nothing ended
#: (the dispatcher thread's idle waits), it jumps 1000 s, so a drain that would idle
#: until its budget ends ends there instead of hanging the test (and the test fails).
IDLE_WAITS_ALLOWED = 10


class WaitlessClock(Clock):
    """A wall clock that stays at ``at`` and a monotonic clock that stays at 0: a drain
    on it can only end by deciding to, never by a deadline passing. Waits for an
    event are real (a sender's reply or a stop sets it); ``sleep`` and the jump of
    the guard above are recorded in ``advanced`` (seconds)."""

    def __init__(self, at: float) -> None:
        self.at = at
        self.advanced = 0.0
        self._idle = 0

    def now(self) -> float:
        return self.at + self.advanced

    def monotonic(self) -> float:
        return self.advanced

    def sleep(self, seconds: float) -> None:
        self.advanced += max(0.0, seconds)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        if event.wait(timeout):
            return True
        self._idle += 1
        if self._idle > IDLE_WAITS_ALLOWED:
            self.advanced += 1000.0
        return False


def run(*args: str | Path) -> Result:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


# -- a Retry-After met while draining, past the budget -----------------------------------


def test_a_retry_after_met_while_draining_past_the_budget_ends_the_drain_at_once(
    spool: Spool, endpoint: LocalEndpoint
) -> None:
    # Loss accounting: 2 events stored; 0 delivered, 0 dropped, 2 still in the spool.
    add_events(spool, ["a", "b"], at=T0 - 10)
    endpoint.respond(Response(429, headers={"Retry-After": "60"}))
    clock = WaitlessClock(T0)
    transport = HttpTransport(endpoint.url, API_KEY)

    result = ops.drain_spool(spool, transport, budget=5, clock=clock)

    assert clock.advanced == 0.0  # no wait was requested: the drain decided to stop
    assert len(endpoint.requests) == 1
    assert ops.drain_exit_code(result) == ops.EXIT_REMAIN
    assert (result.pending, result.delivered, result.dead) == (2, 0, 0)
    assert result.outage is None and result.paused is None
    assert result.waiting_until == T0 + 60
    assert result.waiting_for == 'HTTP 429: {"status":1} (Retry-After 60s)'
    assert spool.stats(T0).counts == {"pending": 2, "leased": 0, "dead": 0}


def test_drain_cli_ends_at_once_on_a_long_retry_after_and_says_why(
    spool_path: Path, spool: Spool, endpoint: LocalEndpoint
) -> None:
    # Loss accounting: 3 events stored; 0 delivered, 0 dropped, 3 still in the spool.
    add_events(spool, ["a", "b", "c"], at=time.time() - 10)
    endpoint.respond(Response(503, headers={"Retry-After": "120"}))
    base = ("drain", spool_path, "--api-key", API_KEY, "--host", endpoint.url)

    human = run(*base, "--budget", "30")
    endpoint.respond(Response(503, headers={"Retry-After": "120"}))
    as_json = run(*base, "--budget", "30", "--now", "--json")

    assert human.exit_code == 3
    line = human.stdout.strip()
    assert line.startswith("delivered 0, dead-lettered 0, remaining 3; nothing is due before ")
    assert line.endswith(
        ', past the budget (waiting for: HTTP 503: {"status":1} (Retry-After 120s));'
        " --now tries at once"
    )
    summary = json.loads(as_json.stdout)
    assert as_json.exit_code == summary["exit_code"] == 3
    assert summary["remaining"] == 3 and summary["outage"] is None
    assert summary["waiting_for"] == 'HTTP 503: {"status":1} (Retry-After 120s)'
    assert len(endpoint.requests) == 2
    assert spool.stats(time.time()).counts["pending"] == 3


# -- what a drain that stopped with a request in flight leaves behind --------------------


def test_a_drain_stopped_with_a_request_in_flight_leaves_a_lease_inspect_does_not_call_stuck(
    spool_path: Path, spool: Spool, endpoint: LocalEndpoint
) -> None:
    # Loss accounting: 3 events stored; the hung request is never answered; the 3
    # stay leased to the gone drain, and the next drain takes them back and
    # delivers 3. Lost: 0.
    add_events(spool, ["a", "b", "c"], at=time.time() - 10)
    endpoint.respond(Response(hang=True))
    drain = subprocess.Popen(
        [sys.executable, "-m", "spoolpost", "drain", str(spool_path), "--api-key", API_KEY,
         "--host", endpoint.url, "--grace", "0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert endpoint.wait_for_requests(1, timeout=60)  # the request is in flight
        drain.send_signal(signal.SIGTERM)  # systemd's stop
        out, err = drain.communicate(timeout=60)
    finally:
        if drain.poll() is None:
            drain.kill()
            drain.communicate()
        endpoint.release_hung()
    assert drain.returncode == 130, err
    assert json.loads(out)["remaining"] == 3

    data = json.loads(run("inspect", spool_path, "--json").stdout)
    human = run("inspect", spool_path).stdout
    check = run("check", spool_path)

    (lease,) = data["leases"]
    assert (lease["pid"], lease["alive"], lease["events"]) == (drain.pid, False, 3)
    assert lease["left_at_stop"] is True and lease["taken_back"] == "at once"
    assert data["state"] == "healthy"
    assert data["summary"] == (
        f"healthy; 3 event(s) were in flight when process(es) {drain.pid} stopped; "
        "the next delivering process takes them back at once"
    )
    assert "(GONE, stopped with this request in flight)" in human
    assert check.exit_code == 0 and check.stdout.startswith("SPOOLPOST OK - healthy; 3 event")
    assert data["counts"] == {"pending": 0, "leased": 3, "dead": 0}  # inspect took nothing

    with LocalEndpoint() as later:
        again = run("drain", spool_path, "--api-key", API_KEY, "--host", later.url, "--force-host")
        assert again.exit_code == 0, again.output
        assert len(later.delivered_uuids()) == 3
