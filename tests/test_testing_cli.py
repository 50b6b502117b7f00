"""``python -m spoolpost.testing`` as an operator runs it: a real subprocess, real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

BODY = {"api_key": "phc_test", "batch": [{"uuid": "u1", "event": "e", "distinct_id": "d"}]}
ENV = {k: v for k, v in os.environ.items() if not k.startswith("SPOOLPOST_")}


@contextmanager
def serving(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start it, read the URL it prints; SIGTERM it afterwards if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "spoolpost.testing", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("listening on http://127.0.0.1:"), first + proc.stderr.read()
    try:
        yield proc, first.split()[-1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def test_it_answers_fails_at_the_seeded_rate_and_stops_on_sigterm() -> None:
    n = 200
    with serving("--fail-rate", "0.1", "--status", "503", "--seed", "7", "--retry-after", "2") as (
        proc,
        url,
    ):
        with requests.Session() as session:
            replies = [session.post(f"{url}/batch/", json=BODY, timeout=10) for _ in range(n)]
        code, out, err = stop(proc)
    statuses = [r.status_code for r in replies]
    failed = statuses.count(503)
    assert set(statuses) == {200, 503}
    assert 0.05 * n <= failed <= 0.15 * n
    assert all(r.headers["Retry-After"] == "2" for r in replies if r.status_code == 503)
    assert replies[statuses.index(200)].json() == {"status": 1}
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == n
    assert lines.count("POST /batch/ 1 events -> 503") == failed
    assert lines.count("POST /batch/ 1 events -> ok") == n - failed
    assert err == "stopped\n"


def test_the_same_seed_fails_the_same_requests() -> None:
    runs = []
    for _ in range(2):
        with serving("--fail-rate", "0.3", "--seed", "42", "--quiet") as (proc, url):
            runs.append(
                [
                    requests.post(f"{url}/batch/", json=BODY, timeout=10).status_code
                    for _ in range(30)
                ]
            )
            code, out, _ = stop(proc)
        assert (code, out) == (0, "")  # --quiet: only the URL line, read already
    assert runs[0] == runs[1] and 503 in runs[0]


def test_ctrl_c_stops_it_cleanly_too() -> None:
    with serving() as (proc, url):
        assert requests.post(f"{url}/i/v1/analytics/events", json=BODY, timeout=10).ok
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "10.0.0.1"], "error: LocalEndpoint serves loopback only; '10.0.0.1' is not\n"),
        (["--fail-rate", "2"], "argument --fail-rate: 2 is not a rate from 0 to 1 (0.1 is 10 %)"),
        (["--status", "700"], "argument --status: 700 is not an HTTP status (100..599)"),
        (["--delay", "-1"], "argument --delay: -1 is not a number of seconds >= 0"),
        (["--port", "x"], "argument --port: invalid int value: 'x'"),
    ],
)
def test_bad_options_exit_2_with_a_message(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spoolpost.testing", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert message in result.stderr


def v1_body(*uuids: str) -> dict[str, object]:
    return {
        "created_at": "2026-01-01T00:00:00Z",
        "batch": [{"uuid": u, "event": "e", "distinct_id": "d"} for u in uuids],
    }


def test_v1_verdicts_are_scripted_per_event_from_the_command_line() -> None:
    url_path = "/i/v1/analytics/events"
    with serving("--v1-verdict", "retry:2", "--v1-verdict", "drop=bad name") as (proc, url):
        with requests.Session() as session:
            answers = [
                session.post(f"{url}{url_path}", json=v1_body("u1", "u2"), timeout=10).json()
                for _ in range(4)
            ]
            # A new event starts the sequence from its beginning.
            late = session.post(f"{url}{url_path}", json=v1_body("u3"), timeout=10).json()
            v0 = session.post(f"{url}/batch/", json=BODY, timeout=10).json()
        code, out, _ = stop(proc)
    each = [{"result": "retry"}] * 2 + [{"result": "drop", "details": "bad name"}, {"result": "ok"}]
    assert answers == [{"results": {"u1": v, "u2": v}} for v in each]
    assert late == {"results": {"u3": {"result": "retry"}}}
    assert v0 == {"status": 1}  # v0 requests are not scripted
    assert code == 0
    assert out.splitlines() == [
        f"POST {url_path} 2 events -> 200 (retry 2)",
        f"POST {url_path} 2 events -> 200 (retry 2)",
        f"POST {url_path} 2 events -> 200 (drop 2)",
        f"POST {url_path} 2 events -> 200 (ok 2)",
        f"POST {url_path} 1 events -> 200 (retry 1)",
        "POST /batch/ 1 events -> ok",
    ]


def test_v1_verdicts_apply_to_the_seeded_share_of_events_and_missing_leaves_them_out() -> None:
    uuids = [f"u{i}" for i in range(200)]
    with serving("--v1-verdict", "missing", "--v1-rate", "0.25", "--seed", "3", "--quiet") as (
        proc,
        url,
    ):
        body = v1_body(*uuids)
        first = requests.post(f"{url}/i/v1/analytics/events", json=body, timeout=10).json()
        second = requests.post(f"{url}/i/v1/analytics/events", json=body, timeout=10).json()
        stop(proc)
    left_out = set(uuids) - set(first["results"])
    assert 0.15 * 200 <= len(left_out) <= 0.35 * 200
    assert all(v == {"result": "ok"} for v in first["results"].values())
    assert set(second["results"]) == set(uuids)  # the script ran out: ok for all


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--v1-verdict", "retry:0"], "argument --v1-verdict: 'retry:0' is not RESULT"),
        (["--v1-verdict", "Drop!"], "argument --v1-verdict: 'Drop!' is not RESULT"),
        (["--v1-verdict", "drop="], "argument --v1-verdict: 'drop=' is not RESULT"),
        (["--v1-rate", "1.5"], "argument --v1-rate: 1.5 is not a rate from 0 to 1"),
    ],
)
def test_bad_v1_options_exit_2_with_a_message(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spoolpost.testing", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert message in result.stderr
