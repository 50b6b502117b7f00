"""Schema migrations: numbered SQL files, applied once, in one transaction, recorded;
a newer schema is refused; concurrent first opens apply each migration once."""

from __future__ import annotations

import importlib.resources
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from spoolpost.errors import SchemaTooNew, SpoolCorrupt
from spoolpost.spool import Spool, migrations

SOURCE_MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


def applied(path: Path) -> tuple[int, list[tuple[int, str]]]:
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        done = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version")
        return int(version), [(int(v), str(n)) for v, n in done]
    finally:
        conn.close()


def test_a_new_spool_gets_every_migration_once(spool_path: Path) -> None:
    Spool(spool_path).close()
    Spool(spool_path).close()  # reopening applies nothing again
    assert applied(spool_path) == (
        migrations.LATEST_VERSION,
        [(m.version, m.name) for m in migrations.load_migrations()],
    )
    assert migrations.LATEST_VERSION == 3


def test_the_source_tree_and_the_loader_agree() -> None:
    names = sorted(p.name for p in SOURCE_MIGRATIONS.glob("*.sql"))
    assert names[0] == "0001_init.sql"
    assert [f"{m.version:04d}_{m.name}.sql" for m in migrations.load_migrations()] == names


def test_a_spool_from_a_newer_spoolpost_is_refused_untouched(spool_path: Path) -> None:
    Spool(spool_path).close()
    conn = sqlite3.connect(spool_path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()

    with pytest.raises(SchemaTooNew) as caught:
        Spool(spool_path)

    message = str(caught.value)
    assert str(spool_path) in message
    assert "schema version 99, newer than this spoolpost" in message
    assert f"knows (up to {migrations.LATEST_VERSION}); upgrade spoolpost" in message
    assert applied(spool_path)[0] == 99
    assert list(spool_path.parent.glob("*.corrupt-*")) == []


def test_concurrent_first_opens_from_threads_apply_each_migration_once(spool_path: Path) -> None:
    n = 6
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def open_it() -> None:
        start.wait()
        try:
            Spool(spool_path).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert applied(spool_path) == (3, [(1, "init"), (2, "request_identity"), (3, "lanes")])


OPENER = """
import sys
from spoolpost.spool import Spool
sys.stdin.readline()  # wait for the go
s = Spool(sys.argv[1])
s.append(sys.argv[2], b"{}", 0.0)
s.close()
"""


@pytest.mark.slow
def test_concurrent_first_opens_from_processes_apply_each_migration_once(
    spool_path: Path,
) -> None:
    spool_path.parent.mkdir(parents=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, str(spool_path), f"p{i}"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for p in procs:  # every interpreter is up before any opens the spool
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [p.communicate(timeout=60) for p in procs]

    assert [p.returncode for p in procs] == [0] * 4, results
    assert applied(spool_path) == (3, [(1, "init"), (2, "request_identity"), (3, "lanes")])
    with Spool(spool_path) as s:
        uuids = {e.uuid for e in s.events(now=time.time())}
    assert uuids == {"p0", "p1", "p2", "p3"}


@pytest.mark.parametrize(
    ("sql", "statements"),
    [
        (
            "CREATE TABLE a (x);\nCREATE TABLE b (y);\n",
            ["CREATE TABLE a (x);", "CREATE TABLE b (y);"],
        ),
        ("CREATE TABLE a (x); CREATE TABLE b (y);", ["CREATE TABLE a (x);", "CREATE TABLE b (y);"]),
        (
            "CREATE TABLE a (x TEXT DEFAULT ';');",
            ["CREATE TABLE a (x TEXT DEFAULT ';');"],
        ),
        ("-- a; comment\nCREATE TABLE a (x);", ["-- a; comment\nCREATE TABLE a (x);"]),
        ("CREATE TABLE a (x);\n-- trailing; comment\n", ["CREATE TABLE a (x);"]),
        (
            "CREATE TRIGGER t AFTER INSERT ON a BEGIN DELETE FROM b; DELETE FROM c; END;",
            ["CREATE TRIGGER t AFTER INSERT ON a BEGIN DELETE FROM b; DELETE FROM c; END;"],
        ),
    ],
)
def test_statements_split_where_each_statement_ends(sql: str, statements: list[str]) -> None:
    assert migrations._statements(sql) == statements


@pytest.fixture
def two_migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A migrations folder with 0001_init.sql and a 0002 step to write."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    shutil.copy(SOURCE_MIGRATIONS / "0001_init.sql", folder)
    monkeypatch.setattr(migrations, "_migrations_dir", lambda: folder)
    monkeypatch.setattr(migrations, "LATEST_VERSION", 2)
    return folder


def test_a_later_migration_upgrades_an_older_spool(spool_path: Path, two_migrations: Path) -> None:
    spool_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(spool_path, isolation_level=None)
    migrations.LATEST_VERSION = 1  # the spool is written by the older release…
    assert migrations.migrate(conn) == 1
    (two_migrations / "0002_add_note.sql").write_text("ALTER TABLE events ADD COLUMN note TEXT;\n")
    migrations.LATEST_VERSION = 2  # …and opened by the newer one

    assert migrations.migrate(conn) == 2

    assert migrations.schema_version(conn) == 2
    columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
    assert columns[-1] == "note"
    conn.close()
    assert applied(spool_path) == (2, [(1, "init"), (2, "add_note")])


def test_a_failing_migration_changes_nothing(spool_path: Path, two_migrations: Path) -> None:
    (two_migrations / "0002_broken.sql").write_text("CREATE TABLE notes (x);\nTHIS IS NOT SQL;\n")
    spool_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(spool_path, isolation_level=None)

    with pytest.raises(sqlite3.OperationalError, match="syntax error"):
        migrations.migrate(conn)

    assert not conn.in_transaction
    assert migrations.schema_version(conn) == 0
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
    conn.close()


def test_migrations_numbered_with_a_gap_are_an_installation_fault(
    two_migrations: Path,
) -> None:
    (two_migrations / "0003_skipped_two.sql").write_text("SELECT 1;")
    with pytest.raises(SpoolCorrupt, match=r"not numbered 1\.\.n"):
        migrations.load_migrations()


def test_a_missing_migrations_folder_is_an_installation_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrations, "__file__", str(tmp_path / "spoolpost" / "migrations.py"))
    monkeypatch.setattr(importlib.resources, "files", lambda _: tmp_path / "nowhere")
    with pytest.raises(SpoolCorrupt, match="migrations are missing from this installation"):
        migrations.load_migrations()


def test_a_version_2_spool_gains_lanes_and_keeps_its_rows_on_the_analytics_lane(
    spool_path: Path,
) -> None:
    Spool(spool_path).close()
    conn = sqlite3.connect(spool_path, isolation_level=None)  # back to version 2
    conn.execute("ALTER TABLE events DROP COLUMN lane")
    conn.execute("ALTER TABLE dead_events DROP COLUMN lane")
    conn.execute("DELETE FROM schema_migrations WHERE version = 3")
    conn.execute("PRAGMA user_version = 2")
    conn.execute(
        "INSERT INTO events (uuid, body, size, captured_at, next_attempt_at)"
        " VALUES ('u1', X'7B7D', 2, 1.0, 1.0)"
    )
    conn.close()
    with Spool(spool_path) as s:
        batch = s.claim(2.0, max_events=10, max_bytes=10**6, lease_ttl=60)
        assert batch is not None and [(r.uuid, r.lane) for r in batch.rows] == [("u1", None)]
    conn = sqlite3.connect(spool_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    conn.close()
