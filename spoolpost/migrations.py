"""Versioned schema migrations for the spool.

The schema lives in numbered SQL files (``0001_init.sql``, ``0002_….sql``) in the
top-level ``migrations/`` folder of the source tree; the wheel ships them as
``spoolpost/migrations/``. :func:`migrate` applies the missing ones in order,
inside one ``BEGIN IMMEDIATE`` transaction, records each in ``schema_migrations``
and sets ``PRAGMA user_version`` to the newest applied version.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from spoolpost.errors import SchemaTooNew, SpoolCorrupt

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One schema step: ``version`` (1, 2, …), ``name`` and its SQL text."""

    version: int
    name: str
    sql: str


def _migrations_dir() -> Traversable:
    packaged = resources.files("spoolpost") / "migrations"
    if packaged.is_dir():
        return packaged
    # A source checkout (or an editable install): the top-level migrations/ folder.
    source = Path(__file__).resolve().parent.parent / "migrations"
    if source.is_dir():
        return source
    raise SpoolCorrupt(
        "spoolpost's schema migrations are missing from this installation "
        f"(looked in {packaged} and {source}); reinstall spoolpost"
    )


def load_migrations() -> list[Migration]:
    """Return every known migration, ordered by version.

    Raises :class:`SpoolCorrupt` if the migration files are missing or numbered
    with gaps (an installation fault, not a spool fault).
    """
    found: list[Migration] = []
    for entry in _migrations_dir().iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise SpoolCorrupt(f"schema migrations are not numbered 1..n: {[m.name for m in found]}")
    return found


LATEST_VERSION = len(load_migrations())


def _statements(sql: str) -> list[str]:
    """Split a SQL script into complete statements (sqlite3.complete_statement)."""
    statements: list[str] = []
    pending = ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip() and not pending.strip().startswith("--"):
        statements.append(pending.strip())
    return statements


def schema_version(conn: sqlite3.Connection) -> int:
    """The spool's schema version (``PRAGMA user_version``; 0 for a new file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema of ``conn`` (autocommit mode) up to :data:`LATEST_VERSION`.

    Safe when several processes open the same new spool at once: the version is
    read again after ``BEGIN IMMEDIATE``. Returns the schema version.
    Raises :class:`SchemaTooNew` if the spool was written by a newer spoolpost.
    """
    version = schema_version(conn)
    if version > LATEST_VERSION:
        raise SchemaTooNew(
            f"spool schema version {version} is newer than this spoolpost knows "
            f"({LATEST_VERSION}); upgrade spoolpost to open it"
        )
    if version == LATEST_VERSION:
        return version
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = schema_version(conn)
        if version > LATEST_VERSION:
            raise SchemaTooNew(f"spool schema version {version} is newer than {LATEST_VERSION}")
        if version == 0:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
        for migration in load_migrations()[version:]:
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, time.time()),
            )
            conn.execute(f"PRAGMA user_version = {migration.version:d}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return LATEST_VERSION
