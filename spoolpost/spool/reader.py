"""Reading a spool without changing anything: ``spoolpost inspect``, ``check``, ``metrics``.

:class:`SpoolReader` opens the file through a read-only SQLite connection
(``file:…?mode=ro``): no migration, no ``chmod``, no pragma that is stored in
the file, and a corrupt file is reported (:class:`~spoolpost.errors.SpoolCorrupt`),
never moved aside. One :meth:`SpoolReader.observe` reads everything in one
snapshot and returns an :class:`Observation`. SQLite may create the empty
``-wal``/``-shm`` files beside a WAL spool that no process has open: it needs
them to read one; the spool file itself is never written.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spoolpost.errors import ConfigError, SchemaTooNew, SpoolCorrupt
from spoolpost.spool import files, migrations
from spoolpost.spool.conditions import fs_state
from spoolpost.spool.files import FileKind
from spoolpost.spool.owner import Owner, owner_alive
from spoolpost.spool.queries import ENDPOINT_PREFIX, SpoolStats, stats_on


@dataclass(frozen=True)
class LeaseInfo:
    """One lease: ``events`` leased under ``token`` to ``owner`` from
    ``created_at`` until ``expires_at`` (UTC seconds); ``alive`` is False when the
    owner is a process of this host that is gone (the lease is then taken back
    by the next delivering process at once)."""

    token: str
    owner: Owner
    created_at: float
    expires_at: float
    events: int
    alive: bool


@dataclass(frozen=True)
class EndpointState:
    """What one delivering process (``owner``; ``alive`` as in :class:`LeaseInfo`)
    last recorded about its endpoint: see :meth:`EndpointHealth.record` for the
    keys of ``data``; ``updated_at`` in UTC seconds."""

    owner: Owner
    alive: bool
    updated_at: float
    data: dict[str, Any]


@dataclass(frozen=True)
class Observation:
    """Everything ``inspect`` shows, read in one snapshot at ``now`` (UTC seconds).

    ``meta`` is the meta table without endpoint records (``key_fingerprint``,
    ``host``: the machine that created the spool, ``ingestion_host``);
    ``endpoints`` the endpoint records, most recently updated first;
    ``retrying``: pending events that failed at least once; ``next_retry_at``:
    when the first of them is due; ``last_error``/``last_error_at``: the most
    recent failure stored with an event; ``used_bytes``: the file's used pages
    (what ``max_spool_bytes`` bounds); ``fs_free_bytes``: free bytes of the
    filesystem holding it (``statvfs``; what ``min_free_bytes`` bounds), None
    when unknown.
    """

    now: float
    stats: SpoolStats
    meta: dict[str, str]
    leases: list[LeaseInfo] = field(default_factory=list)
    endpoints: list[EndpointState] = field(default_factory=list)
    retrying: int = 0
    next_retry_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    used_bytes: int = 0
    fs_free_bytes: int | None = None


class SpoolReader:
    """A spool at ``path``, read-only. Nothing is opened until :meth:`observe`.

    Raises :class:`~spoolpost.errors.ConfigError` when there is no file at
    ``path``, or it is a folder, not an SQLite file or another application's
    database (each left untouched).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        kind = files.classify(self.path)
        if kind is FileKind.MISSING:
            raise ConfigError(f"no spool at {self.path}")
        files.check_spool_file(self.path)

    def observe(self, now: float) -> Observation:
        """Read the spool at ``now`` (UTC seconds) in one snapshot.

        Raises :class:`~spoolpost.errors.SpoolCorrupt` (the file is left as it
        is), :class:`~spoolpost.errors.SchemaTooNew`,
        :class:`~spoolpost.errors.ConfigError` when the file cannot be read.
        """
        uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5.0)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot read spool {self.path}: {exc}") from None
        try:
            conn.execute("BEGIN")
            raw = self._read(conn, now)
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                raise SpoolCorrupt(f"spool {self.path} is corrupt ({exc}); left as it is") from None
            raise ConfigError(f"cannot read spool {self.path}: {exc}") from None
        finally:
            conn.close()
        # Owner checks read /proc: after the snapshot is closed.
        leases = [
            LeaseInfo(
                token,
                owner := Owner(host, pid, start),
                created,
                expires,
                n,
                owner_alive(owner),
            )
            for token, host, pid, start, created, expires, n in raw.pop("leases")
        ]
        endpoints = []
        for value in raw.pop("endpoints"):
            try:
                data = json.loads(value)
                owner = Owner(str(data["owner_host"]), int(data["pid"]), str(data["start"]))
                updated = float(data["updated_at"])
            except (ValueError, KeyError, TypeError):
                continue  # a record this version cannot read: not worth failing inspect
            endpoints.append(EndpointState(owner, owner_alive(owner), updated, data))
        endpoints.sort(key=lambda e: e.updated_at, reverse=True)
        return Observation(now=now, leases=leases, endpoints=endpoints, **raw)

    def _read(self, conn: sqlite3.Connection, now: float) -> dict[str, Any]:
        version = migrations.schema_version(conn)
        if version > migrations.LATEST_VERSION:
            raise SchemaTooNew(
                f"spool {self.path} has schema version {version}, newer than this "
                f"spoolpost knows (up to {migrations.LATEST_VERSION}); upgrade spoolpost"
            )
        if version == 0:
            raise ConfigError(f"spool {self.path} is empty: no process has opened it yet")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        retrying, next_retry = conn.execute(
            "SELECT count(*), min(next_attempt_at) FROM events"
            " WHERE attempts > 0 AND state = 'pending'"
        ).fetchone()
        last = conn.execute(
            "SELECT last_error, last_failed_at FROM events WHERE last_failed_at IS NOT NULL"
            " ORDER BY last_failed_at DESC LIMIT 1"
        ).fetchone()
        leases = conn.execute(
            "SELECT l.token, l.host, l.pid, l.pid_start, l.created_at, l.expires_at,"
            " (SELECT count(*) FROM events e WHERE e.lease_token = l.token)"
            " FROM leases l ORDER BY l.created_at"
        ).fetchall()
        page_size, pages, free = (
            conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_size", "page_count", "freelist_count")
        )
        return {
            "stats": stats_on(conn, self.path, now),
            "meta": {k: v for k, v in meta.items() if not k.startswith(ENDPOINT_PREFIX)},
            "endpoints": [v for k, v in meta.items() if k.startswith(ENDPOINT_PREFIX)],
            "leases": leases,
            "retrying": int(retrying),
            "next_retry_at": None if next_retry is None else float(next_retry),
            "last_error": None if last is None else last[0],
            "last_error_at": None if last is None else float(last[1]),
            "used_bytes": int((pages - free) * page_size),
            "fs_free_bytes": None if (fs := fs_state(self.path)) is None else fs[0],
        }
