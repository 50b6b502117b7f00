"""What is at a spool's path: the checks made before SQLite is handed a file.

(This module grows into the home of all file handling: creation, modes,
quarantine of corrupt files.)
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path

from spoolpost.errors import ConfigError

#: The first 16 bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"


def check_spool_file(path: Path) -> None:
    """Raise :class:`~spoolpost.errors.ConfigError` if ``path`` exists and is not a
    spool (a folder, a file that is not SQLite, another application's database)."""
    if not path.exists():
        return
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a spool file")
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_HEADER))
    if head and head != SQLITE_HEADER:
        raise ConfigError(f"{path} is not a spoolpost spool (not an SQLite database)")
    if head and _foreign_database(path):
        raise ConfigError(f"{path} is an SQLite database, but not a spoolpost spool")


def _foreign_database(path: Path) -> bool:
    """True for an SQLite database with tables but no spoolpost schema version."""
    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error:
        return False  # let Spool's own checks decide (corrupt files are moved aside)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return bool(version == 0 and tables > 0)
