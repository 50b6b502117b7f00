"""Carrying the rows of a spool file that is being left into the new spool at its path.

When the file a process has open is deleted, moved, replaced or found damaged,
the process still reads it through its open connection. :func:`carry_rows`
copies every row that connection can read into the new spool: events (with
their leases), dead letters, the counters and the meta table. A damaged page
is skipped by rowid ranges (:func:`readable`), never allowed to stop the rest.
See docs/architecture.md, "The file replaced, deleted or damaged".
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field

#: Rows copied per write transaction into the new spool (keeps each one short).
CARRY_CHUNK = 500

_EVENT_COLUMNS = (
    "uuid, body, size, captured_at, state, lease_token, lease_expires_at,"
    " attempts, next_attempt_at, last_error,"
    " first_failed_at, last_failed_at, request_id, request_created_at, request_attempts, lane"
)
_DEAD_COLUMNS = (
    "event_id, uuid, body, size, captured_at, attempts, reason, status, detail,"
    " first_failed_at, last_failed_at, dead_at, lane"
)
_CORRUPT = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


@dataclass
class Carried:
    """What :func:`carry_rows` did: ``events`` (pending or leased) and ``dead``
    letters copied, ``known`` rows skipped because the new spool
    already held their uuid (another process carried them first), and
    ``skipped``: the rowid ranges (first, last) of a table that could not be
    read (damaged pages), as ``table:first-last``."""

    events: int = 0
    dead: int = 0
    known: int = 0
    skipped: list[str] = field(default_factory=list)


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    return exc.sqlite_errorcode in _CORRUPT


def _first_at(conn: sqlite3.Connection, table: str, start: int) -> tuple[bool, int | None]:
    """(readable, the first rowid >= ``start`` of ``table`` or None when there is
    none); readable is False when that part of the table cannot be read."""
    try:
        row = conn.execute(
            f"SELECT rowid FROM {table} WHERE rowid >= ? ORDER BY rowid LIMIT 1", (start,)
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        if not _damaged(exc):
            raise
        return False, None
    return True, None if row is None else int(row[0])


def _skip_damage(conn: sqlite3.Connection, table: str, last: int) -> int | None:
    """After a damaged page past rowid ``last``: the first rowid that can be read
    again, or None. Probes ``last + 1 + 2**k`` until one reads, then bisects back
    to the smallest start that reads, so that few readable rows are skipped."""
    bad, step = last + 1, 1
    while True:
        good = last + 1 + step
        if good >= 2**63:
            return None
        ok, found = _first_at(conn, table, good)
        if ok:
            break
        bad, step = good, step * 2
    while good - bad > 1:
        mid = (bad + good) // 2
        ok, at_mid = _first_at(conn, table, mid)
        if ok:
            good, found = mid, at_mid
        else:
            bad = mid
    return found


def readable(
    conn: sqlite3.Connection, table: str, columns: str, skipped: list[str]
) -> Iterator[list[tuple[object, ...]]]:
    """The rows of ``table`` (``rowid`` first, then ``columns``) that ``conn`` can
    read, in rowid order, in chunks of at most :data:`CARRY_CHUNK`. A range that
    fails with SQLite corruption is skipped and named in ``skipped``.

    Each chunk is one query with a ``LIMIT``: a cursor reads one row ahead, so a
    row just before a damaged page would be lost with an open-ended scan. At a
    failure, the rows up to the damage are read one query each."""
    select = f"SELECT rowid, {columns} FROM {table} WHERE rowid >= ? ORDER BY rowid LIMIT ?"
    start = 0  # the next rowid wanted: every row below it is read or skipped
    while True:
        try:
            rows = conn.execute(select, (start, CARRY_CHUNK)).fetchall()
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):
                raise
            rows = []
        if rows:
            yield rows
            start = int(str(rows[-1][0])) + 1
            continue
        while True:  # the damage, or the end: row by row up to it
            try:
                row = conn.execute(select, (start, 1)).fetchone()
            except sqlite3.DatabaseError as exc:
                if not _damaged(exc):
                    raise
                break
            if row is None:
                return
            yield [row]
            start = int(row[0]) + 1
        resume = _skip_damage(conn, table, start - 1)
        skipped.append(f"{table}:{start}-{'end' if resume is None else resume - 1}")
        if resume is None:
            return
        start = resume


def _uuids(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(u) for (u,) in conn.execute(f"SELECT uuid FROM {table}")}


def carry_rows(source: sqlite3.Connection, target: sqlite3.Connection) -> Carried:
    """Copy what ``source`` (the file being left) can read into ``target`` (the
    new spool's write connection, no transaction open; the caller holds its
    write lock), one ``BEGIN IMMEDIATE`` transaction per chunk.

    An event keeps its id where the target has it free, its state and lease
    (so a sender's ack by token and ids still finds it; a lease whose record or
    ids did not come along expires and is taken back), attempts, schedule, last
    error and stored request identity. Rows whose uuid the target already holds
    are skipped (another process carried them). Counters take the larger of the
    two values (carrying twice never doubles them); meta keys the target lacks
    are added. Raises what SQLite
    raises for the target; damage in ``source`` is skipped and reported."""
    done = Carried()
    known = _uuids(target, "events") | _uuids(target, "dead_events")
    n = _EVENT_COLUMNS.count(",") + 1
    # ?1 is the old id, kept where the target has it free; the columns are ?2, ?3, …
    insert_event = (
        f"INSERT INTO events (id, {_EVENT_COLUMNS}) VALUES ("
        "(SELECT CASE WHEN EXISTS (SELECT 1 FROM events WHERE id = ?1) THEN NULL ELSE ?1 END),"
        f" {', '.join(f'?{i + 2}' for i in range(n))})"
    )
    dead_marks = ", ".join("?" * (_DEAD_COLUMNS.count(",") + 1))
    insert_dead = f"INSERT INTO dead_events ({_DEAD_COLUMNS}) VALUES ({dead_marks})"
    for table, columns, sql, uuid_at in (
        ("events", _EVENT_COLUMNS, insert_event, 1),
        ("dead_events", _DEAD_COLUMNS, insert_dead, 2),
    ):
        for chunk in readable(source, table, columns, done.skipped):
            fresh = [row for row in chunk if str(row[uuid_at]) not in known]
            done.known += len(chunk) - len(fresh)
            if not fresh:
                continue
            params = [row if table == "events" else row[1:] for row in fresh]
            target.execute("BEGIN IMMEDIATE")
            try:
                target.executemany(sql, params)
                target.execute("COMMIT")
            except BaseException:
                if target.in_transaction:
                    target.execute("ROLLBACK")
                raise
            known.update(str(row[uuid_at]) for row in fresh)
            if table == "events":
                done.events += len(fresh)
            else:
                done.dead += len(fresh)
    _carry_small_tables(source, target, done)
    return done


def _carry_small_tables(
    source: sqlite3.Connection, target: sqlite3.Connection, done: Carried
) -> None:
    """The counters (the larger value wins), the meta keys and the lease records
    the target lacks."""
    found: dict[str, list[tuple[object, ...]]] = {}
    for table in ("counters", "meta", "leases"):
        try:
            found[table] = source.execute(f"SELECT * FROM {table}").fetchall()
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):
                raise
            done.skipped.append(f"{table}:all")
            found[table] = []
    target.execute("BEGIN IMMEDIATE")
    try:
        target.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value = max(value, excluded.value)",
            found["counters"],
        )
        target.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", found["meta"])
        target.executemany(
            "INSERT OR IGNORE INTO leases (token, host, pid, pid_start, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [row[:6] for row in found["leases"]],
        )
        target.execute("COMMIT")
    except BaseException:
        if target.in_transaction:
            target.execute("ROLLBACK")
        raise


__all__ = ["CARRY_CHUNK", "Carried", "carry_rows", "readable"]
