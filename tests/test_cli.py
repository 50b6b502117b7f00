"""The ``spoolpost`` command line, through click's CliRunner and real subprocesses."""

from __future__ import annotations

import json
import logging
import os
import pty
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from kit import OTHER_API_KEY, add_events, kill, read_terminal, states

from spoolpost.cli import cli
from spoolpost.client import key_fingerprint
from spoolpost.spool import Spool
from spoolpost.testing import LocalEndpoint, Response, reject_uuids

ROOT = Path(__file__).resolve().parent.parent
SECRET = "phc_SECRET_never_print_3f9a"
ENV_VARS = ("SPOOLPOST_SPOOL", "SPOOLPOST_HOST", "SPOOLPOST_API_KEY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    # A key and no spool means the key's default spool: never the real one.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def run(
    *args: str | Path, input: str | bytes | None = None, env: dict[str, str] | None = None
) -> Result:
    """Invoke the CLI in-process; every run checks the API key was not printed."""
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input, env=env)
    assert SECRET not in result.stdout and SECRET not in result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture
def filled(spool: Spool) -> list[str]:
    a, b, c = add_events(spool, ["a", "b", "c"], at=time.time() - 100)
    kill(spool, [c], at=time.time() - 50)
    return [a, b, c]


# -- documentation and help ---------------------------------------------------------------


def test_every_command_is_documented_in_the_readme_and_has_help() -> None:
    readme = (ROOT / "README.md").read_text()
    assert set(cli.commands) == {
        "inspect",
        "tail",
        "replay",
        "drain",
        "purge",
        "export",
        "import",
        "capture",
        "demo",
        "check",
        "metrics",
        "path",
        "compact",
    }
    for name, command in cli.commands.items():
        assert f"spoolpost {name}" in readme, f"README does not show `spoolpost {name}`"
        assert command.help and len(command.help) > 20, f"{name} has no help text"
        example = re.search(r"\x08\n\s*Example:\n", command.help)
        assert example, f"{name}'s help has no Example section"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts} has no help text"
        result = run(name, "--help")
        assert result.exit_code == 0
        assert command.help.splitlines()[0] in result.stdout


def test_readme_test_command_is_the_one_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    one_liners = re.findall(r"^python3 -m venv .*$", readme, flags=re.M)
    assert len(one_liners) == 2, one_liners
    demo_line, test_line = one_liners
    assert demo_line.endswith("spoolpost demo")
    test_command = test_line.rsplit("&& ", 1)[1]
    assert test_command == "python -m pytest"
    assert re.search(rf"^\s*{re.escape(test_command)}\b", ci, flags=re.M)
    assert "pip install -e '.[dev]'" in test_line and "pip install -e '.[dev]'" in ci


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and "spoolpost, version" in result.stdout


# -- spool errors shared by every command ---------------------------------------------------

SPOOL_COMMANDS = [
    ["inspect"],
    ["tail"],
    ["replay"],
    ["purge", "--yes"],
    ["export"],
    ["check"],
    ["metrics"],
]


@pytest.mark.parametrize("command", SPOOL_COMMANDS, ids=lambda c: c[0])
def test_a_missing_spool_is_an_error(command: list[str], tmp_path: Path) -> None:
    result = run(*command, tmp_path / "nope.spool")
    if command == ["check"]:
        assert result.exit_code == 3
        assert result.stdout == f"SPOOLPOST UNKNOWN - no spool at {tmp_path / 'nope.spool'}\n"
    else:
        assert result.exit_code == 1
        assert f"Error: no spool at {tmp_path / 'nope.spool'}" in result.stderr
    assert not (tmp_path / "nope.spool").exists()


@pytest.mark.parametrize(
    "command",
    [*SPOOL_COMMANDS, ["import"]],
    ids=lambda c: c[0],
)
def test_no_spool_given_is_an_error(command: list[str]) -> None:
    result = run(*command, input="")
    assert result.exit_code == (3 if command == ["check"] else 1)
    assert "no spool given: pass SPOOL, set SPOOLPOST_SPOOL, or give the API key" in (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize(
    "command",
    [*SPOOL_COMMANDS, ["import"], ["capture", "e", "--distinct-id", "u", "--api-key", SECRET]],
    ids=lambda c: c[0],
)
def test_a_file_that_is_not_a_spool_is_refused_untouched(
    command: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "x"}\n')
    result = run(*command, path)
    assert result.exit_code == (3 if command == ["check"] else 1)
    assert "is not a spoolpost spool (not an SQLite database)" in result.stdout + result.stderr
    assert path.read_text() == '{"event": "x"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["events.jsonl"]  # nothing moved aside
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "command",
    [*SPOOL_COMMANDS, ["import"], ["capture", "e", "--distinct-id", "u", "--api-key", SECRET]],
    ids=lambda c: c[0],
)
def test_a_fifo_given_as_the_spool_is_refused_untouched(command: list[str], tmp_path: Path) -> None:
    path = tmp_path / "pipe"
    os.mkfifo(path, 0o644)  # opening it to read would block; a device would be made 0600
    result = run(*command, path, input="")
    message = f"{path} is not a regular file (a device, FIFO or socket)"
    if command == ["check"]:  # Nagios: 3 is "unknown", on stdout
        assert result.exit_code == 3
        assert f"SPOOLPOST UNKNOWN - {message}" in result.stdout
    else:
        assert result.exit_code == 1
        assert f"Error: {message}" in result.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]


def test_the_spool_comes_from_the_environment(spool_path: Path, filled: list[str]) -> None:
    result = run("inspect", "--json", env={"SPOOLPOST_SPOOL": str(spool_path)})
    assert result.exit_code == 0
    assert json.loads(result.stdout)["counts"] == {"pending": 2, "leased": 0, "dead": 1}


# -- inspect, tail, export --------------------------------------------------------------------


def test_inspect(spool_path: Path, filled: list[str]) -> None:
    human = run("inspect", spool_path)
    assert human.exit_code == 0
    assert re.search(r"^pending\s+2 events", human.stdout, flags=re.M)
    assert re.search(r"^dead\s+1 events", human.stdout, flags=re.M)
    assert "dead reasons    rejected=1" in human.stdout
    data = json.loads(run("inspect", spool_path, "--json").stdout)
    assert data["dead_reasons"] == {"rejected": 1}
    assert data["schema_version"] == 3


def test_tail_human_and_json_lines(spool_path: Path, filled: list[str]) -> None:
    a, b, c = filled
    human = run("tail", spool_path).stdout.splitlines()
    assert [line.split()[2] for line in human] == [c, b, a]
    assert human[0].split()[1] == "dead" and 'rejected 400: {"error":"bad event"}' in human[0]
    lines = [
        json.loads(x) for x in run("tail", spool_path, "--json", "-n", "2").stdout.splitlines()
    ]
    assert [(x["uuid"], x["spoolpost"]["state"]) for x in lines] == [(c, "dead"), (b, "pending")]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--state", "pending"], [1, 0]),
        (["--state", "dead", "--state", "pending"], [2, 1, 0]),
        (["--event", "b"], [1]),
        (["--reason", "rejected"], [2]),
        (["--reason", "expired"], []),
    ],
)
def test_tail_filters(
    spool_path: Path, filled: list[str], flags: list[str], expected: list[int]
) -> None:
    result = run("tail", spool_path, "--json", *flags)
    assert result.exit_code == 0
    assert [json.loads(x)["uuid"] for x in result.stdout.splitlines()] == [
        filled[i] for i in expected
    ]


def test_tail_refuses_an_unknown_state(spool_path: Path, filled: list[str]) -> None:
    result = run("tail", spool_path, "--state", "gone")
    assert result.exit_code == 2 and "Invalid value for '--state'" in result.stderr


def test_export_to_stdout_and_to_a_file(
    spool_path: Path, filled: list[str], tmp_path: Path
) -> None:
    out = run("export", spool_path)
    assert [json.loads(x)["uuid"] for x in out.stdout.splitlines()] == filled
    target = tmp_path / "out.jsonl"
    assert run("export", spool_path, "--state", "dead", "-o", target).stdout == ""
    (only,) = [json.loads(x) for x in target.read_text().splitlines()]
    assert only["uuid"] == filled[2] and only["spoolpost"]["reason"] == "rejected"


# -- import ------------------------------------------------------------------------------------


def test_import_round_trip_from_stdin_and_file(
    spool_path: Path, filled: list[str], tmp_path: Path
) -> None:
    exported = run("export", spool_path).stdout
    other = tmp_path / "other.spool"
    result = run("import", other, input=exported)
    assert result.exit_code == 0 and result.stdout == "imported 3 events\n"
    dump = tmp_path / "dump.jsonl"
    dump.write_text(exported)
    again = run("import", other, "--input", dump, "--json")
    assert json.loads(again.stdout) == {"imported": 0, "skipped": 3}
    s = Spool(other)
    try:
        assert states(s)["pending"] == filled
    finally:
        s.close()


def test_export_imported_into_the_same_spool_skips_every_event(
    spool_path: Path, filled: list[str]
) -> None:
    exported = run("export", spool_path).stdout
    result = run("import", spool_path, input=exported)
    assert result.exit_code == 0
    assert result.stdout == "imported 0 events, skipped 3 already in the spool\n"
    a, b, c = filled
    s = Spool(spool_path)
    try:
        assert states(s) == {"pending": [a, b], "leased": [], "dead": [c]}
    finally:
        s.close()


def test_import_of_a_bad_line_names_it_and_writes_nothing(tmp_path: Path) -> None:
    good = '{"event": "e", "distinct_id": "u"}'
    target = tmp_path / "new.spool"
    result = run("import", target, input=f"{good}\n{good}\n{{oops\n")
    assert result.exit_code == 1
    assert "Error: 1 bad input line(s); nothing was imported:" in result.stderr
    assert "line 3: not valid JSON" in result.stderr
    s = Spool(target)
    try:
        assert states(s) == {"pending": [], "leased": [], "dead": []}
    finally:
        s.close()


def test_import_refuses_a_missing_input_file(spool_path: Path, tmp_path: Path) -> None:
    result = run("import", spool_path, "-i", tmp_path / "missing.jsonl")
    assert result.exit_code == 2 and "Invalid value for '-i' / '--input'" in result.stderr


# -- replay and purge --------------------------------------------------------------------------


def test_replay(spool_path: Path, spool: Spool, filled: list[str]) -> None:
    dry = run("replay", spool_path, "--dry-run")
    assert dry.exit_code == 0 and dry.stdout == "would replay 1 dead letter\n"
    assert states(spool)["dead"] == [filled[2]]
    result = run("replay", spool_path, "--reason", "rejected", "--json")
    assert json.loads(result.stdout) == {"replayed": 1, "dry_run": False}
    assert states(spool) == {"pending": filled, "leased": [], "dead": []}


def test_replay_by_uuid_and_event(spool_path: Path, spool: Spool) -> None:
    a, b, c = add_events(spool, ["a", "b", "b"], at=time.time() - 100)
    kill(spool, [a, b, c])
    assert run("replay", spool_path, "--uuid", a.upper()).stdout == "replayed 1 dead letter\n"
    assert run("replay", spool_path, "--event", "b").stdout == "replayed 2 dead letters\n"
    assert states(spool)["dead"] == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--uuid", "nope"], "Invalid value for '--uuid': not a UUID"),
        (
            ["--older-than", "7 days"],
            "Invalid value for '--older-than': '7 days' is not a duration",
        ),
    ],
)
def test_replay_refuses_bad_filters(
    spool_path: Path, filled: list[str], flags: list[str], message: str
) -> None:
    result = run("replay", spool_path, *flags)
    assert result.exit_code == 2 and message in result.stderr


def test_purge_with_yes(spool_path: Path, spool: Spool, filled: list[str]) -> None:
    result = run("purge", spool_path, "--yes")
    assert result.exit_code == 0 and result.stdout == "purged 1 dead letter\n"
    assert states(spool)["dead"] == []


@pytest.mark.parametrize(
    ("answer", "code", "left", "message"),
    [
        ("y\n", 0, [], ""),
        ("n\n", 1, [2], "Error: not confirmed; nothing was deleted"),
        ("", 1, [2], "Error: no confirmation could be read (stdin is closed or empty)"),
    ],
)
def test_purge_asks_first(
    spool_path: Path,
    spool: Spool,
    filled: list[str],
    answer: str,
    code: int,
    left: list[int],
    message: str,
) -> None:
    result = run("purge", spool_path, input=answer)
    assert result.exit_code == code
    assert f"Delete 1 dead letter from {spool_path} for good? [y/N]" in result.stderr
    assert message in result.stderr
    assert states(spool)["dead"] == [filled[i] for i in left]


def test_purge_older_than(spool_path: Path, spool: Spool) -> None:
    old, new = add_events(spool, ["old", "new"], at=time.time() - 10 * 86400)
    kill(spool, [old], at=time.time() - 8 * 86400)
    kill(spool, [new], at=time.time() - 3600)
    assert run("purge", spool_path, "--older-than", "7d", "-y").stdout == "purged 1 dead letter\n"
    assert states(spool)["dead"] == [new]


def test_purge_with_nothing_to_delete_does_not_ask(spool_path: Path, filled: list[str]) -> None:
    result = run("purge", spool_path, "--event", "a")
    assert result.exit_code == 0 and result.stdout == "purged 0 dead letters\n"
    assert "[y/N]" not in result.stderr


def test_purge_without_stdin_refuses_instead_of_hanging(
    spool_path: Path, filled: list[str]
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "spoolpost", "purge", str(spool_path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Error: no confirmation could be read" in proc.stderr


# -- capture -----------------------------------------------------------------------------------


def test_capture_prints_the_uuid_and_spools_the_event(spool_path: Path) -> None:
    result = run(
        "capture",
        "signed_up",
        spool_path,
        "--distinct-id",
        "u1",
        "-p",
        "plan=pro",
        "--property",
        "note=a=b",
        "--properties-json",
        '{"plan": "free", "seats": 3}',
        "--api-key",
        SECRET,
    )
    assert result.exit_code == 0
    uuid = result.stdout.strip()
    s = Spool(spool_path)
    try:
        (e,) = s.events(now=time.time())
        assert s.meta()["key_fingerprint"] == key_fingerprint(SECRET)
    finally:
        s.close()
    assert e.uuid == uuid and e.event["event"] == "signed_up"
    assert {k: e.event["properties"][k] for k in ("plan", "note", "seats")} == {
        "plan": "pro",
        "note": "a=b",
        "seats": 3,
    }


def test_capture_takes_spool_and_key_from_the_environment(spool_path: Path) -> None:
    env = {"SPOOLPOST_SPOOL": str(spool_path), "SPOOLPOST_API_KEY": SECRET}
    result = run(
        "capture",
        "e",
        "--distinct-id",
        "u",
        "--uuid",
        "0194E0F7-0000-7000-8000-000000000001",
        env=env,
    )
    assert result.exit_code == 0 and result.stdout == "0194e0f7-0000-7000-8000-000000000001\n"


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["-p", "novalue"], 2, "'novalue' is not KEY=VALUE"),
        (["-p", "=v"], 2, "'=v' is not KEY=VALUE"),
        (["--properties-json", "{bad"], 2, "not valid JSON"),
        (["--properties-json", "[1]"], 2, "must be a JSON object"),
        (["--timestamp", "yesterday"], 1, "Error: invalid timestamp 'yesterday'"),
        (["--uuid", "nope"], 1, "Error: uuid must be a UUID"),
    ],
)
def test_capture_refuses_bad_input(
    spool_path: Path, flags: list[str], code: int, message: str
) -> None:
    result = run("capture", "e", spool_path, "--distinct-id", "u", "--api-key", SECRET, *flags)
    assert result.exit_code == code
    assert message in result.stderr
    assert not spool_path.exists() or states(spool_path)["pending"] == []


def test_capture_needs_an_api_key_and_a_distinct_id(spool_path: Path) -> None:
    no_key = run("capture", "e", spool_path, "--distinct-id", "u")
    assert no_key.exit_code == 1
    assert "Error: no API key: pass --api-key or set SPOOLPOST_API_KEY" in no_key.stderr
    no_id = run("capture", "e", spool_path, "--api-key", SECRET)
    assert no_id.exit_code == 2 and "Missing option '--distinct-id'" in no_id.stderr


def test_capture_refuses_a_spool_of_another_key(spool_path: Path) -> None:
    assert (
        run("capture", "e", spool_path, "--distinct-id", "u", "--api-key", "phc_a").exit_code == 0
    )
    result = run("capture", "e", spool_path, "--distinct-id", "u", "--api-key", SECRET)
    assert result.exit_code == 1 and "holds events for another project API key" in result.stderr


# -- drain -------------------------------------------------------------------------------------


def drain(spool_path: Path, endpoint: LocalEndpoint, *flags: str) -> Result:
    return run("drain", spool_path, "--host", endpoint.url, "--api-key", SECRET, *flags)


def test_drain_of_an_empty_spool_exits_0(
    spool_path: Path, spool: Spool, endpoint: LocalEndpoint
) -> None:
    result = drain(spool_path, endpoint)
    assert result.exit_code == 0
    assert result.stdout == "delivered 0, dead-lettered 0, remaining 0\n"
    assert endpoint.requests == []


def test_drain_delivers_everything_and_exits_0(
    spool_path: Path, spool: Spool, endpoint: LocalEndpoint
) -> None:
    uuids = add_events(spool, ["e"] * 5, at=time.time() - 100)
    result = drain(spool_path, endpoint, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "delivered": 5,
        "dead": 0,
        "remaining": 0,
        "paused": None,
        "outage": None,
        "interrupted": False,
        "exit_code": 0,
        "waiting_until": None,
        "waiting_for": None,
        "damaged": [],
    }
    assert sorted(endpoint.delivered_uuids()) == sorted(uuids)
    assert endpoint.requests[0].json["api_key"] == SECRET  # the key goes on the wire only
    assert "draining" not in result.stderr  # no progress bar off a terminal


@pytest.mark.parametrize("status", [503, 429])
def test_drain_stops_on_an_outage_with_exit_4(
    spool_path: Path, spool: Spool, endpoint: LocalEndpoint, status: int
) -> None:
    add_events(spool, ["e"] * 3, at=time.time() - 100)
    endpoint.default = Response(status)
    result = drain(spool_path, endpoint, "--outage-after", "1")
    assert result.exit_code == 4
    assert f"remaining 3; endpoint down: HTTP {status}" in result.stdout
    assert states(spool)["pending"]


def test_drain_with_the_endpoint_refusing_connections_exits_4(
    spool_path: Path, spool: Spool
) -> None:
    add_events(spool, ["e"] * 2, at=time.time() - 100)
    closed = LocalEndpoint()  # the port is reserved but nothing listens
    try:
        result = run(
            "drain",
            spool_path,
            "--host",
            closed.url,
            "--api-key",
            SECRET,
            "--outage-after",
            "2",
            "--json",
        )
    finally:
        closed.stop()
    assert result.exit_code == 4
    summary = json.loads(result.stdout)
    assert summary["remaining"] == 2 and "transport error" in summary["outage"]


@pytest.mark.parametrize("status", [401, 403, 404])
def test_drain_paused_by_a_configuration_fault_exits_5(
    spool_path: Path, spool: Spool, endpoint: LocalEndpoint, status: int
) -> None:
    add_events(spool, ["e"] * 3, at=time.time() - 100)
    endpoint.default = Response(status, body=b'{"error":"invalid key"}')
    result = drain(spool_path, endpoint, "--json")
    assert result.exit_code == 5
    summary = json.loads(result.stdout)
    assert summary["remaining"] == 3 and f"HTTP {status}" in summary["paused"]
    assert len(states(spool)["pending"]) == 3


def test_drain_never_prints_the_key_a_server_echoes(
    spool_path: Path, spool: Spool, endpoint: LocalEndpoint
) -> None:
    add_events(spool, ["e"], at=time.time() - 100)
    endpoint.default = Response(401, body=f'{{"error":"invalid key {SECRET}"}}'.encode())
    result = drain(spool_path, endpoint, "--json")  # run() checks SECRET is not printed
    assert result.exit_code == 5
    paused = json.loads(result.stdout)["paused"]
    assert paused == f'HTTP 401: {{"error":"invalid key phc_***"}} from {endpoint.url}/batch/'
    assert 'HTTP 401: {"error":"invalid key phc_***"}' in result.stderr  # the ERROR log line


def test_drain_that_dead_letters_an_event_exits_6(
    spool_path: Path, spool: Spool, endpoint: LocalEndpoint
) -> None:
    uuids = add_events(spool, ["e"] * 4, at=time.time() - 100)
    endpoint.set_handler(reject_uuids([uuids[1]]))
    result = drain(spool_path, endpoint)
    assert result.exit_code == 6
    assert result.stdout == "delivered 3, dead-lettered 1, remaining 0\n"
    assert states(spool)["dead"] == [uuids[1]]


def test_drain_budget_runs_out_exits_3_from_a_real_process(
    spool_path: Path, spool: Spool, endpoint: LocalEndpoint
) -> None:
    add_events(spool, ["e"] * 3, at=time.time() - 100)
    spool.close()
    endpoint.default = Response(hang=True)
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env |= {"SPOOLPOST_API_KEY": SECRET, "SPOOLPOST_HOST": endpoint.url}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "spoolpost",
            "drain",
            str(spool_path),
            "--budget",
            "0.3",
            "--grace",
            "0",
            "--json",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert SECRET not in proc.stdout + proc.stderr
    assert proc.returncode == 3, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["remaining"], summary["outage"], summary["paused"]) == (3, None, None)
    assert endpoint.wait_for_requests(1)


@pytest.mark.parametrize(
    ("as_json", "sig"),
    [(True, signal.SIGINT), (False, signal.SIGINT), (False, signal.SIGTERM)],
    ids=["json", "human", "sigterm"],
)
def test_drain_interrupted_by_ctrl_c_stops_within_the_grace_and_prints_its_summary(
    spool_path: Path, spool: Spool, endpoint: LocalEndpoint, as_json: bool, sig: int
) -> None:
    """SIGTERM (systemd's stop) is handled like Ctrl-C."""
    add_events(spool, ["e"] * 3, at=time.time() - 100)
    spool.close()
    endpoint.default = Response(hang=True)  # the drain's request never gets an answer
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS} | {"SPOOLPOST_API_KEY": SECRET}
    command = [sys.executable, "-m", "spoolpost", "drain", str(spool_path), "--host", endpoint.url]
    proc = subprocess.Popen(
        [*command, "--grace", "0.5", *(["--json"] if as_json else [])],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert endpoint.wait_for_requests(1, timeout=60)
        interrupted_at = time.monotonic()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    stopped_in = time.monotonic() - interrupted_at

    assert proc.returncode == 130, stderr
    assert stopped_in <= 1.0 + 0.5 + 5.0  # the next check, the grace, a process exit
    assert "Aborted!" not in stderr and "Traceback" not in stderr
    assert (
        "interrupted: stopping delivery, waiting up to 0.5s for requests in flight "
        "(Ctrl-C again quits at once)\n"
    ) in stderr
    assert "stop deadline reached with 1 request(s) still in flight" in stderr
    assert SECRET not in stdout + stderr
    if as_json:
        assert json.loads(stdout) == {
            "delivered": 0,
            "dead": 0,
            "remaining": 3,
            "paused": None,
            "outage": None,
            "interrupted": True,
            "exit_code": 130,
            "waiting_until": None,
            "waiting_for": None,
            "damaged": [],
        }
    else:
        assert stdout == "delivered 0, dead-lettered 0, remaining 3; interrupted\n"
    left = states(spool_path)
    assert len(left["pending"] + left["leased"]) == 3 and left["dead"] == []  # kept


DRAIN = [sys.executable, "-m", "spoolpost", "drain"]


def test_drain_interrupted_twice_quits_without_waiting_out_the_grace(
    spool_path: Path, spool: Spool, endpoint: LocalEndpoint
) -> None:
    add_events(spool, ["e"] * 3, at=time.time() - 100)
    spool.close()
    endpoint.default = Response(hang=True)
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS} | {"SPOOLPOST_API_KEY": SECRET}
    proc = subprocess.Popen(
        [*DRAIN, str(spool_path), "--host", endpoint.url, "--grace", "600", "--json"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read_stderr() -> None:
        for line in proc.stderr or []:
            lines.put(line)

    reader = threading.Thread(target=read_stderr)
    reader.start()
    try:
        assert endpoint.wait_for_requests(1, timeout=60)
        proc.send_signal(signal.SIGINT)
        while "Ctrl-C again quits at once" not in lines.get(timeout=60):
            pass  # the first Ctrl-C was taken: delivery is stopping, the grace began
        again_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        stdout = proc.stdout.read() if proc.stdout else ""
    finally:
        proc.kill()
        reader.join(60)
    rest = "".join(iter_queue(lines))

    assert proc.returncode == 130
    assert time.monotonic() - again_at < 60  # far from the 600 s grace
    assert stdout == ""  # no summary
    assert "interrupted again: quitting without a summary; undelivered events stay in" in rest
    assert "Traceback" not in rest and "Aborted!" not in rest
    left = states(spool_path)
    assert len(left["pending"] + left["leased"]) == 3


def iter_queue(items: queue.Queue[str]) -> Iterator[str]:
    while True:
        try:
            yield items.get_nowait()
        except queue.Empty:
            return


def test_drain_shows_a_progress_bar_on_a_terminal(
    spool_path: Path, spool: Spool, endpoint: LocalEndpoint
) -> None:
    add_events(spool, ["e"] * 3, at=time.time() - 100)
    spool.close()
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS} | {"SPOOLPOST_API_KEY": SECRET}
    proc = subprocess.Popen(
        [sys.executable, "-m", "spoolpost", "drain", str(spool_path), "--host", endpoint.url],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    seen = read_terminal(leader)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert b"draining" in seen
    assert SECRET.encode() not in seen + stdout
    assert stdout == b"delivered 3, dead-lettered 0, remaining 0\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--host", "http://127.0.0.1:9"],
            "Error: no API key: pass --api-key or set SPOOLPOST_API_KEY",
        ),
        (["--host", "http://127.0.0.1:9", "--api-key", " "], "Error: no API key"),
        (
            ["--host", "ftp://example.invalid", "--api-key", SECRET],
            "Error: host must be an http(s) URL",
        ),
        (["--host", "not a url", "--api-key", SECRET], "Error: host must be an http(s) URL"),
        (
            ["--host", "http://[::1", "--api-key", SECRET],
            "Error: host 'http://[::1' is not a valid URL: Invalid IPv6 URL\n",
        ),
        (
            ["--host", "http://127.0.0.1:99999", "--api-key", SECRET],
            "Error: host 'http://127.0.0.1:99999' has an invalid port: it must be a number "
            "from 1 to 65535\n",
        ),
        (
            ["--host", "http://h/ingest?x=1", "--api-key", SECRET],
            "Error: host 'http://h/ingest?x=1' must not have a query (?…) or fragment (#…)",
        ),
        (
            ["--host", f"http://ops:{SECRET}@h:x", "--api-key", "phc_k"],
            "Error: host 'http://ops:***@h:x' has an invalid port",
        ),
    ],
)
def test_drain_settings_errors_exit_1(
    spool_path: Path, spool: Spool, args: list[str], message: str
) -> None:
    add_events(spool, ["e"], at=time.time() - 100)
    result = run("drain", spool_path, *args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert len(states(spool)["pending"]) == 1


def test_drain_refuses_a_spool_of_another_key_unless_forced(
    spool_path: Path, spool: Spool, endpoint: LocalEndpoint
) -> None:
    (uuid,) = add_events(spool, ["e"], at=time.time() - 100)
    spool.bind_key(key_fingerprint(OTHER_API_KEY))
    refused = drain(spool_path, endpoint)
    assert refused.exit_code == 1
    assert "holds events for another project API key" in refused.stderr
    assert "--force-key" in refused.stderr
    assert endpoint.requests == []
    forced = drain(spool_path, endpoint, "--force-key")
    assert forced.exit_code == 0
    assert endpoint.delivered_uuids() == [uuid]


def test_drain_env_settings(spool_path: Path, spool: Spool, endpoint: LocalEndpoint) -> None:
    (uuid,) = add_events(spool, ["e"], at=time.time() - 100)
    env = {
        "SPOOLPOST_SPOOL": str(spool_path),
        "SPOOLPOST_HOST": endpoint.url,
        "SPOOLPOST_API_KEY": SECRET,
    }
    result = run("drain", env=env)
    assert result.exit_code == 0 and endpoint.delivered_uuids() == [uuid]


def test_verbose_logs_never_show_the_key(
    spool_path: Path, spool: Spool, endpoint: LocalEndpoint
) -> None:
    add_events(spool, ["e"] * 2, at=time.time() - 100)
    endpoint.respond(Response(503))
    result = run("-vv", "drain", spool_path, "--host", endpoint.url, "--api-key", SECRET)
    assert result.exit_code == 0
    assert "HTTP 503" in result.stderr  # the logs were there, and run() found no key in them


def test_a_run_leaves_the_loggers_as_it_found_them(spool_path: Path, filled: list[str]) -> None:
    loggers = [logging.getLogger("spoolpost"), logging.getLogger("urllib3")]
    before = [(lg.level, list(lg.handlers)) for lg in loggers]
    assert run("-vv", "inspect", spool_path).exit_code == 0
    assert [(lg.level, list(lg.handlers)) for lg in loggers] == before


def test_replay_beside_a_running_app_gets_the_events_delivered(
    make_client: Any, spool_path: Path, endpoint: LocalEndpoint
) -> None:
    client = make_client(flush_interval=0.0)
    endpoint.respond(Response(400, body=b'{"error":"schema"}'))
    uuid = client.capture("e", distinct_id="u1")
    assert client.flush(10).dead == 1
    assert run("tail", spool_path, "--state", "dead", "--json").stdout.count(uuid) == 1
    result = run("replay", spool_path, "--reason", "rejected")
    assert result.stdout == "replayed 1 dead letter\n"
    flushed = client.flush(10)  # the app's next flush takes the replayed event along
    assert (flushed.delivered, flushed.pending) == (1, 0)
    assert endpoint.delivered_uuids() == [uuid]


@pytest.mark.parametrize("flag", ["--budget", "--grace"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_drain_refuses_a_budget_or_grace_that_is_not_a_number_of_seconds(
    spool: Spool, spool_path: Path, flag: str, value: str
) -> None:
    result = run(
        "drain", spool_path, "--host", "http://127.0.0.1:9", "--api-key", SECRET, flag, value
    )
    assert result.exit_code == 2
    assert f"Invalid value for {flag}: {value} is not a number of seconds" in result.stderr
