"""Faults of the spool file itself, for tests (no tests here): deleting it, replacing
it, and damaging one page of a table under a running client.

Every helper acts on the real file the way an operator, a cleanup job or a bad disk
would, never through spoolpost. A page is found with SQLite's ``dbstat`` virtual table
(https://sqlite.org/dbstat.html) on a read-only connection; damage is written into the
database file itself, so checkpoint the WAL first (``Spool.checkpoint()``) or the page's
newest version may still be in the WAL, where the damage would never be read.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from pathlib import Path


def side_files(path: Path) -> list[Path]:
    """The spool's ``-wal`` and ``-shm`` that exist now."""
    return [p for p in (Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def unlink_spool(path: Path) -> list[Path]:
    """Delete the spool file only, as ``rm events.spool`` does: its ``-wal`` and
    ``-shm`` stay behind at the path. Returns those left behind."""
    os.unlink(path)
    return side_files(path)


def replace_spool(path: Path, replacement: Path) -> None:
    """Put ``replacement`` at ``path`` with one rename, as ``mv new events.spool``
    does (the file a process has open is unlinked from the path)."""
    os.replace(replacement, path)


def _read_only(path: Path) -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    return sqlite3.connect(uri, uri=True)


def leaf_pages(path: Path, table: str = "events") -> list[int]:
    """The leaf pages of ``table``'s b-tree, in key order (``dbstat``'s ``path``
    column sorts them so)."""
    with _read_only(path) as conn:
        found = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY path",
            (table,),
        ).fetchall()
    return [int(p) for (p,) in found]


def page_size(path: Path) -> int:
    with _read_only(path) as conn:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """An SQLite varint at ``at``: (value, offset after it)."""
    value = 0
    for i in range(9):
        byte = data[at + i]
        if i == 8:
            return (value << 8) | byte, at + 9
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, at + i + 1
    raise AssertionError("unreachable")


def rowids_on_page(path: Path, pageno: int) -> list[int]:
    """The rowids stored on the table-leaf page ``pageno`` (the b-tree page format of
    https://sqlite.org/fileformat.html: type 0x0D, cell count at offset 3, cell
    pointers after the 8-byte header, each cell a payload-size varint then the rowid)."""
    size = page_size(path)
    with open(path, "rb") as f:
        f.seek((pageno - 1) * size)
        page = f.read(size)
    base = 100 if pageno == 1 else 0
    assert page[base] == 0x0D, f"page {pageno} is not a table leaf"
    cells = int.from_bytes(page[base + 3 : base + 5], "big")
    rowids = []
    for i in range(cells):
        pointer = int.from_bytes(page[base + 8 + 2 * i : base + 10 + 2 * i], "big")
        _, after = _varint(page, pointer)
        rowid, _ = _varint(page, after)
        rowids.append(rowid)
    return rowids


def damage_page(path: Path, pageno: int) -> None:
    """Overwrite page ``pageno`` of the database file with 0xFF bytes (an invalid
    b-tree page type: SQLite reports SQLITE_CORRUPT when it reads it), synced."""
    size = page_size(path)
    with open(path, "r+b") as f:
        f.seek((pageno - 1) * size)
        f.write(b"\xff" * size)
        f.flush()
        os.fsync(f.fileno())
