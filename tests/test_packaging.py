"""The wheel: built from this repository, it carries the schema migrations and
py.typed, and installed into a fresh venv it runs ``spoolpost demo`` from
another directory (the migrations are found inside the installed package)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str | Path], cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_an_installed_wheel_finds_its_migrations_and_runs_the_demo(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env |= {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("SPOOLPOST_SPOOL", None)
    wheels = tmp_path / "wheels"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, REPO],
        tmp_path,
        env,
        timeout=300,
    )
    (wheel,) = wheels.glob("spoolpost-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"spoolpost/migrations/{p.name}" for p in (REPO / "migrations").glob("*.sql")}
    assert "spoolpost/migrations/0001_init.sql" in expected
    assert "spoolpost/migrations/0002_request_identity.sql" in expected
    assert expected <= names
    assert "spoolpost/py.typed" in names

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path, env, timeout=120)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", wheel], tmp_path, env, timeout=300)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(
        [
            python,
            "-c",
            "import spoolpost, spoolpost.spool.migrations as m;"
            "print(spoolpost.__file__); print(m._migrations_dir()); print(m.LATEST_VERSION)",
        ],
        elsewhere,
        env,
        timeout=60,
    ).split()
    site = str(venv.resolve())
    assert where[0].startswith(site) and where[1].startswith(site), where
    assert where[2] == str(len(expected))

    report = json.loads(
        run(
            [venv / "bin" / "spoolpost", "demo", "--events", "400", "--threads", "2", "--json"],
            elsewhere,
            env,
            timeout=300,
        )
    )
    assert report["lost"] == 0
    assert report["captured"] > 0
    assert report["unique_delivered"] >= report["captured"]
