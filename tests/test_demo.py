"""``spoolpost demo``: the main job end to end, with a SIGKILL in the middle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from spoolpost.cli import cli
from spoolpost.errors import SpoolpostError
from spoolpost.ops.demo import DemoReport, run_demo


def test_demo_loses_nothing_and_prints_one_json_object() -> None:
    result = CliRunner().invoke(cli, ["demo", "--events", "2000", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # exactly one JSON object
    assert report["ok"] is True
    assert report["killed"] is True
    assert report["lost"] == 0
    assert report["remaining"] == 0
    assert report["drain_exit_code"] == 0
    assert 0 < report["captured"] <= report["unique_delivered"] <= 2000
    assert report["spool"] is None  # a temporary spool: no path that no longer exists


def test_demo_text_report_keeps_a_given_spool(tmp_path: Path) -> None:
    spool = tmp_path / "kept.spool"
    result = CliRunner().invoke(
        cli, ["demo", "--events", "1000", "--threads", "2", "--spool", str(spool)]
    )
    assert result.exit_code == 0, result.output
    assert "OK: nothing lost" in result.stdout
    assert f"spool {spool})" in result.stdout
    assert spool.exists()


def test_demo_refuses_an_existing_spool(tmp_path: Path) -> None:
    spool = tmp_path / "old.spool"
    spool.write_bytes(b"")
    result = CliRunner().invoke(cli, ["demo", "--spool", str(spool)])
    assert result.exit_code == 1
    assert f"Error: {spool} already exists; the demo needs a new spool file" in result.stderr


def test_demo_reports_a_child_that_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SpoolpostError, match="the capturing child failed with exit code"):
        run_demo(events=200, spool=blocker / "demo.spool")


def test_demo_gives_up_on_a_child_that_does_not_get_there() -> None:
    with pytest.raises(SpoolpostError, match="did not capture 1000 events within 0s"):
        run_demo(events=2000, timeout=0.0)


@pytest.mark.parametrize(
    ("changes", "verdict"),
    [
        ({}, "OK: nothing lost"),
        ({"lost": 3}, "FAILED: 3 events lost"),
        ({"killed": False}, "FAILED: the capturing child ended before it could be killed"),
        ({"captured": 0}, "FAILED: nothing was captured"),
    ],
)
def test_demo_report_verdicts(changes: dict[str, object], verdict: str) -> None:
    fields: dict[str, object] = {
        "events_planned": 100,
        "threads": 1,
        "captured": 50,
        "killed": True,
        "delivered_before_kill": 40,
        "delivered_after_restart": 10,
        "unique_delivered": 50,
        "duplicates": 0,
        "lost": 0,
        "remaining": 0,
        "drain_exit_code": 0,
        "seconds": 1.0,
        "spool": None,
    }
    report = DemoReport(**(fields | changes))  # type: ignore[arg-type]
    assert verdict in report.text()
    assert report.as_dict()["ok"] is (verdict == "OK: nothing lost")
    assert "a temporary spool, now deleted" in report.text()
