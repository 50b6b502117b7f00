"""Listing commands (tail, export): --nl/--csv/--table, damaged rows, tail -f, and
progress bars on a terminal only. Real spools under tmp_path, real subprocesses."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from kit import T0, add_events, kill, read_terminal

from spoolpost import ops
from spoolpost.cli import cli
from spoolpost.spool import Spool
from spoolpost.spool.maintenance import Filter

ENV = {k: v for k, v in os.environ.items() if not k.startswith("SPOOLPOST_")}


def run(*args: str | Path, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, env={"SPOOLPOST_SPOOL": ""})


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, list[str]]:
    """A spool with two pending events and one dead letter."""
    path = tmp_path / "events.spool"
    with Spool(path) as spool:
        uuids = add_events(spool, ["signup", "login", "bad"], at=T0)
        kill(spool, [uuids[2]], at=T0 + 10)
    return path, uuids


def damage(path: Path, uuid: str, body: bytes) -> None:
    """Overwrite a live event's stored body (what a bug or a disk might do)."""
    with sqlite3.connect(path) as conn:
        assert conn.execute("UPDATE events SET body = ? WHERE uuid = ?", (body, uuid)).rowcount == 1
    conn.close()


# -- formats --------------------------------------------------------------------------------


def test_tail_nl_and_json_print_the_same_json_lines(filled: tuple[Path, list[str]]) -> None:
    path, uuids = filled
    nl, as_json = run("tail", path, "--nl"), run("tail", path, "--json")
    assert nl.exit_code == as_json.exit_code == 0
    assert nl.stdout == as_json.stdout
    assert [json.loads(line)["uuid"] for line in nl.stdout.splitlines()] == uuids[::-1]


def test_tail_csv_has_a_header_and_one_row_an_event(filled: tuple[Path, list[str]]) -> None:
    path, uuids = filled
    result = run("tail", path, "--csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["uuid"] for r in rows] == uuids[::-1]
    assert [r["event"] for r in rows] == ["bad", "login", "signup"]
    assert rows[0]["state"] == "dead" and rows[0]["detail"].startswith("rejected 400: ")
    assert rows[1]["attempts"] == "0" and rows[1]["distinct_id"] == "u1"


def test_tail_table_is_aligned_under_its_header(filled: tuple[Path, list[str]]) -> None:
    path, uuids = filled
    result = run("tail", path, "-t", "--state", "pending")
    assert result.exit_code == 0, result.output
    header, rule, *lines = result.stdout.splitlines()
    assert header.split() == ["time", "state", "uuid", "event", "distinct_id", "attempts", "detail"]
    assert set(rule) == {"-", " "}
    assert [line.split()[2] for line in lines] == [uuids[1], uuids[0]]
    column = header.index("uuid")
    assert all(line[column:].startswith(u) for line, u in zip(lines, uuids[1::-1], strict=True))


@pytest.mark.parametrize(("flag", "check"), [("--csv", "time,state,uuid"), ("--table", "time  ")])
def test_export_takes_the_same_formats(
    filled: tuple[Path, list[str]], flag: str, check: str
) -> None:
    path, uuids = filled
    result = run("export", path, flag)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(check)
    assert all(u in result.stdout for u in uuids)


def test_table_with_follow_is_a_usage_error(filled: tuple[Path, list[str]]) -> None:
    result = run("tail", filled[0], "-f", "--table")
    assert result.exit_code == 2
    assert "Error: --table needs every row first; use --nl or --csv with --follow" in result.stderr


# -- damaged rows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "why"),
    [(b"not json{", "a body that is not JSON"), (b"[1, 2]", "a body that is not a JSON object")],
)
@pytest.mark.parametrize("fmt", [None, "--nl", "--csv", "--table"])
def test_tail_shows_a_damaged_row_as_damaged_and_goes_on(
    filled: tuple[Path, list[str]], body: bytes, why: str, fmt: str | None
) -> None:
    path, uuids = filled
    damage(path, uuids[0], body)
    result = run("tail", path, *([fmt] if fmt else []))
    assert result.exit_code == 0
    assert all(u in result.stdout for u in uuids)  # the other rows too
    assert "DAMAGED" in result.stdout or '"damaged"' in result.stdout
    [warning] = result.stderr.splitlines()
    assert warning.startswith(f"spoolpost: WARNING event {uuids[0]} is damaged and shown as such: ")
    assert why in warning


def test_export_writes_a_damaged_row_marked_with_its_stored_text(
    filled: tuple[Path, list[str]],
) -> None:
    path, uuids = filled
    damage(path, uuids[1], b"not json{")
    result = run("export", path)
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["uuid"] for line in lines] == uuids
    broken = lines[1]
    assert set(broken) == {"uuid", "spoolpost"}
    assert broken["spoolpost"]["body"] == "not json{"
    assert broken["spoolpost"]["damaged"].startswith(f"event {uuids[1]} holds a body that is not")
    assert lines[0]["event"] == "signup" and lines[2]["spoolpost"]["state"] == "dead"
    assert len(result.stderr.splitlines()) == 1 and uuids[1] in result.stderr


# -- tail -f ----------------------------------------------------------------------------------


def test_follow_prints_the_newest_then_what_arrives_at_each_poll(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "events.spool")
    old = add_events(spool, ["a", "b", "c"], at=T0)
    arriving = iter([["d"], [], ["e", "f"]])
    added: list[str] = []

    def sleep() -> bool:  # one poll's wait: new events arrive meanwhile
        batch = next(arriving, None)
        if batch is None:
            return True  # stop (as Ctrl-C or SIGTERM do)
        added.extend(add_events(spool, batch, at=T0 + 100 + len(added)))
        return False

    seen = [e.uuid for e in ops.follow(spool, Filter(), limit=2, sleep=sleep, now=lambda: T0)]

    assert seen == [old[1], old[2], *added]
    spool.close()


def test_follow_shows_an_event_again_once_dead_but_not_old_events_moving_up(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "events.spool")
    uuids = add_events(spool, ["a", "b"], at=T0)
    steps = iter([lambda: kill(spool, [uuids[1]], at=T0 + 50)])

    def sleep() -> bool:
        step = next(steps, None)
        if step is None:
            return True
        step()
        return False

    seen = [
        (e.uuid, e.state) for e in ops.follow(spool, Filter(), limit=5, sleep=sleep, now=lambda: T0)
    ]
    assert seen == [(uuids[0], "pending"), (uuids[1], "pending"), (uuids[1], "dead")]
    spool.close()


def test_tail_follow_stops_cleanly_on_sigterm(filled: tuple[Path, list[str]]) -> None:
    path, uuids = filled
    proc = subprocess.Popen(
        [sys.executable, "-m", "spoolpost", "tail", str(path), "-f", "--nl", "--interval", "0.05"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = [json.loads(proc.stdout.readline())["uuid"] for _ in uuids]  # it is running
    assert first == uuids  # oldest first, the dead letter by its time of death
    with Spool(path) as spool:
        [new] = add_events(spool, ["arrived"], at=time.time())
    assert json.loads(proc.stdout.readline())["uuid"] == new  # printed as it arrives
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out == b"" and b"Traceback" not in err


# -- progress bars: on a terminal only ------------------------------------------------------


def test_listing_and_repair_stay_quiet_off_a_terminal(
    filled: tuple[Path, list[str]], tmp_path: Path
) -> None:
    path, _ = filled
    exported = run("export", path)
    assert exported.exit_code == 0 and exported.stderr == ""
    imported = run("import", tmp_path / "copy.spool", input=exported.stdout)
    assert imported.exit_code == 0 and imported.stderr == ""
    replayed = run("replay", path)
    assert (replayed.exit_code, replayed.stdout, replayed.stderr) == (
        0,
        "replayed 1 dead letter\n",
        "",
    )


def on_a_terminal(*args: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    """Run ``spoolpost ARGS`` with stderr on a pseudo-terminal: (code, stdout, terminal)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "spoolpost", *args],
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    assert proc.stdin is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    seen = read_terminal(leader)
    assert proc.stdout is not None
    out = proc.stdout.read()
    return proc.wait(timeout=60), out, seen


def test_export_import_and_replay_show_a_progress_bar_on_a_terminal(
    filled: tuple[Path, list[str]], tmp_path: Path
) -> None:
    path, _ = filled
    code, out, terminal = on_a_terminal("export", str(path))
    assert code == 0 and b"exporting" in terminal
    assert len(out.splitlines()) == 3
    code, _, terminal = on_a_terminal("import", str(tmp_path / "copy.spool"), stdin=out)
    assert code == 0 and b"importing" in terminal
    code, out, terminal = on_a_terminal("replay", str(path))
    assert code == 0 and b"replaying 1 dead letter" in terminal
    assert out == b"replayed 1 dead letter\n"
