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

from spoolpost._version import __version__
from spoolpost.errors import SchemaTooNew, SpoolCorrupt
from spoolpost.spool.files import foreign_error, foreign_tables

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
    source = Path(__file__).resolve().parents[2] / "migrations"
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
    """Split a SQL script into complete statements, at the ``;`` that ends each
    (``sqlite3.complete_statement`` decides, so a ``;`` inside a string literal,
    a comment or a trigger body does not split). Comments after the last
    statement are dropped."""
    statements: list[str] = []
    start = 0
    for end, char in enumerate(sql):
        if char == ";" and sqlite3.complete_statement(sql[start : end + 1]):
            statements.append(sql[start : end + 1].strip())
            start = end + 1
    rest = "\n".join(
        line for line in sql[start:].splitlines() if not line.strip().startswith("--")
    ).strip()
    if rest:
        statements.append(rest)
    return statements


def prepare_new_file(conn: sqlite3.Connection) -> bool:
    """On a new, empty spool file, before anything writes its first page (even
    ``PRAGMA journal_mode=WAL`` writes the header): ``PRAGMA
    auto_vacuum=INCREMENTAL``, so that the file can give space back as it drains
    (:mod:`spoolpost.spool.vacuum`). SQLite takes the mode only before the first
    table is created (sqlite.org/pragma.html#pragma_auto_vacuum); an existing
    file is left alone. Returns True if the file was new."""
    if int(conn.execute("PRAGMA page_count").fetchone()[0]) != 0:
        return False
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    return True


def schema_version(conn: sqlite3.Connection) -> int:
    """The spool's schema version (``PRAGMA user_version``; 0 for a new file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _too_new(version: int, where: str) -> SchemaTooNew:
    return SchemaTooNew(
        f"{where or 'the spool'} has schema version {version}, newer than this spoolpost "
        f"{__version__} knows (up to {LATEST_VERSION}); upgrade spoolpost to open it, "
        "or point it at another spool file"
    )


def migrate(conn: sqlite3.Connection, where: str = "") -> int:
    """Bring the schema of ``conn`` (autocommit mode) up to :data:`LATEST_VERSION`.

    Every missing migration is applied in one ``BEGIN IMMEDIATE`` transaction
    and recorded in ``schema_migrations``. Safe when several processes open the
    same new spool at once: the version is read again after ``BEGIN IMMEDIATE``,
    so each migration is applied once. ``where`` names the spool in errors.
    Returns the schema version.

    Raises :class:`SchemaTooNew` if the spool was written by a newer spoolpost,
    :class:`SpoolCorrupt` if the file is a SQLite database that is not a spool
    (it is left untouched), ``sqlite3.Error`` from SQLite itself.
    """
    version = schema_version(conn)
    if version > LATEST_VERSION:
        raise _too_new(version, where)
    if version == LATEST_VERSION:
        return version
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = schema_version(conn)
        if version > LATEST_VERSION:
            raise _too_new(version, where)
        if version == 0:
            foreign = foreign_tables(conn)
            if foreign:
                raise foreign_error(where or "the file", foreign)
            conn.execute(
                "CREATE TABLE schema_migrations ("
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
