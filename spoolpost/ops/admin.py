"""Operator tools over a spool: what the ``spoolpost`` commands call.

Each function takes an open :class:`~spoolpost.spool.Spool` and works through its
public :meth:`~spoolpost.spool.Spool.reader` (reads, inside one snapshot) and
:meth:`~spoolpost.spool.Spool.transaction` (one short ``BEGIN IMMEDIATE`` write),
so every tool is safe to run while apps capture into and deliver from the same
spool. Pending and leased events live in the ``events`` table, dead letters in
``dead_events`` (see ``migrations/0001_init.sql``).

- :func:`open_spool` — open an existing spool, refusing files that are not spools;
- :func:`select_events` / :func:`tail` — list events with a :class:`Filter`;
- :func:`replay` — dead letters back to pending, attempts reset;
- :func:`purge` — delete dead letters;
- :func:`import_events` — JSON Lines of PostHog events into a spool, all or nothing;
- :func:`capture_one` — one event through a capture-only client;
- :func:`drain_spool` — deliver until empty, a time budget, an outage or a pause.

Plain SQL rather than sqlite-utils: every statement here must run inside the
spool's own transaction on the spool's own connection, and ``sqlite_utils.Database``
changes connection settings (``recursive_triggers``, plugin hooks) while
sqlite-utils 3.x ``insert_all`` commits through ``with conn:``, which would end
the all-or-nothing import transaction early.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spoolpost.capture import events as ev
from spoolpost.capture.encoding import encode_event, format_timestamp
from spoolpost.client import DEFAULT_MAX_EVENT_BYTES, Client, key_fingerprint
from spoolpost.delivery.dispatcher import DeliveryConfig, Dispatcher, FlushResult
from spoolpost.delivery.policy import RetryPolicy
from spoolpost.delivery.transport import HttpTransport
from spoolpost.errors import ConfigError, ImportRejected, SpoolFull, SpoolpostError
from spoolpost.spool import SQLITE_HEADER, Spool

STATES: tuple[str, ...] = ("pending", "leased", "dead")
LIVE_STATES: tuple[str, ...] = ("pending", "leased")
#: The key ``export`` adds to each event line (state, attempts, reason, …);
#: ``import`` drops it.
META_KEY = "spoolpost"

#: ``spoolpost drain`` exit codes, for cron.
EXIT_EMPTY = 0
EXIT_ERROR = 1
EXIT_REMAIN = 3
EXIT_OUTAGE = 4
EXIT_PAUSED = 5
EXIT_DEAD = 6

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_IN_IDS = "id IN (SELECT value FROM json_each(?))"
_EVENT_NAME = "json_extract(CAST(body AS TEXT), '$.event') = ?"


# -- opening ---------------------------------------------------------------------


def open_spool(path: Path, *, create: bool = False) -> Spool:
    """Open the spool at ``path`` for an operator command.

    Without ``create`` the file must exist. A folder, a file that is not an SQLite
    database, or an SQLite database of another application, is refused untouched
    with a :class:`~spoolpost.errors.ConfigError` worded for a path mistyped on a
    command line (the :class:`Spool` constructor refuses them too). Raises
    :class:`~spoolpost.errors.ConfigError`, or what :class:`Spool` raises.
    """
    path = Path(path).expanduser()
    if not path.exists() and not create:
        raise ConfigError(f"no spool at {path}")
    check_spool_file(path)
    return Spool(path)


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


# -- selecting events ----------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """Which events an operator command applies to; an empty field matches all.

    ``states``: some of ``pending``, ``leased``, ``dead``. ``event``: the event
    name. ``reason``: the dead-letter reason (``rejected``, ``too_large``,
    ``max_attempts``, ``expired``); it matches dead letters only. ``uuids``:
    canonical lowercase uuids. ``older_than``: seconds; a dead letter older than
    that since it was dead-lettered, a live event since it was captured.
    """

    states: frozenset[str] = frozenset()
    event: str | None = None
    reason: str | None = None
    uuids: tuple[str, ...] = ()
    older_than: float | None = None

    def __post_init__(self) -> None:
        unknown = set(self.states) - set(STATES)
        if unknown:
            raise ConfigError(f"unknown state(s) {sorted(unknown)}; use {', '.join(STATES)}")
        if self.older_than is not None and self.older_than < 0:
            raise ConfigError("older_than must be >= 0 seconds")

    def _common(self, time_column: str, now: float) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.event is not None:
            clauses.append(_EVENT_NAME)
            params.append(self.event)
        if self.uuids:
            clauses.append("uuid IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(list(self.uuids)))
        if self.older_than is not None:
            clauses.append(f"{time_column} <= ?")
            params.append(now - self.older_than)
        return clauses, params

    def live_where(self, now: float) -> tuple[str, list[Any]] | None:
        """SQL for matching rows of ``events``, or None when none can match."""
        states = [s for s in LIVE_STATES if not self.states or s in self.states]
        if not states or self.reason is not None:
            return None
        clauses, params = self._common("captured_at", now)
        clauses.insert(0, f"state IN ({','.join('?' * len(states))})")
        return " AND ".join(clauses), [*states, *params]

    def dead_where(self, now: float) -> tuple[str, list[Any]] | None:
        """SQL for matching rows of ``dead_events``, or None when none can match."""
        if self.states and "dead" not in self.states:
            return None
        clauses, params = self._common("dead_at", now)
        if self.reason is not None:
            clauses.append("reason = ?")
            params.append(self.reason)
        return " AND ".join(clauses) or "1", params


@dataclass(frozen=True)
class SpooledEvent:
    """One event in a spool. ``state``: pending, leased or dead; ``id``: its id in
    ``events`` (capture order); ``body``: the stored event JSON; times are
    wall-clock UTC seconds. ``reason``/``status``/``detail``/``dead_at`` are set
    for dead letters, ``next_attempt_at``/``last_error`` for live events."""

    state: str
    id: int
    uuid: str
    body: bytes
    captured_at: float
    attempts: int
    next_attempt_at: float | None = None
    last_error: str | None = None
    reason: str | None = None
    status: int | None = None
    detail: str | None = None
    dead_at: float | None = None

    @functools.cached_property
    def event(self) -> dict[str, Any]:
        """The stored event, decoded. Raises :class:`SpoolpostError` if it is not
        a JSON object (a damaged row)."""
        try:
            event = json.loads(self.body)
        except ValueError as exc:
            raise SpoolpostError(f"event {self.uuid} holds a body that is not JSON: {exc}") from exc
        if not isinstance(event, dict):
            raise SpoolpostError(f"event {self.uuid} holds a body that is not a JSON object")
        return event

    @property
    def recent_at(self) -> float:
        """When it last changed state: dead-lettered, or else captured."""
        return self.dead_at if self.dead_at is not None else self.captured_at

    def meta(self) -> dict[str, Any]:
        """The spool's bookkeeping for this event (no ``None`` values)."""
        fields = {
            "state": self.state,
            "id": self.id,
            "attempts": self.attempts,
            "captured_at": self.captured_at,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
            "reason": self.reason,
            "status": self.status,
            "detail": self.detail,
            "dead_at": self.dead_at,
        }
        return {k: v for k, v in fields.items() if v is not None}

    def json_line(self) -> str:
        """The event as one JSON line: the stored PostHog event plus
        ``"spoolpost": meta``. The stored bytes are spliced, not re-encoded."""
        meta = _COMPACT.encode(self.meta())
        text = self.body.decode("utf-8", "replace")
        if text.startswith("{") and text.endswith("}") and text[1:-1].strip():
            return f'{text[:-1]},"{META_KEY}":{meta}}}'
        return json.dumps({**self.event, META_KEY: self.meta()}, ensure_ascii=False)


_LIVE_COLUMNS = (
    "state, id, uuid, body, captured_at, attempts, next_attempt_at, last_error,"
    " NULL, NULL, NULL, NULL"
)
_DEAD_COLUMNS = (
    "'dead', event_id, uuid, body, captured_at, attempts, NULL, NULL,"
    " reason, status, detail, dead_at"
)


def _event_from_row(row: tuple[Any, ...]) -> SpooledEvent:
    state, row_id, uuid, body, captured_at, attempts, *rest = row
    next_at, last_error, reason, status, detail, dead_at = rest
    return SpooledEvent(
        state=str(state),
        id=int(row_id),
        uuid=str(uuid),
        body=bytes(body),
        captured_at=float(captured_at),
        attempts=int(attempts),
        next_attempt_at=None if next_at is None else float(next_at),
        last_error=last_error,
        reason=reason,
        status=None if status is None else int(status),
        detail=detail,
        dead_at=None if dead_at is None else float(dead_at),
    )


@contextlib.contextmanager
def _snapshot(spool: Spool) -> Iterator[sqlite3.Connection]:
    """The read connection inside one read transaction: one consistent view."""
    with spool.reader() as conn:
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")


def select_events(
    spool: Spool, where: Filter | None = None, *, now: float | None = None
) -> Iterator[SpooledEvent]:
    """Every event matching ``where``: live events in capture order, then dead
    letters in the order they died. Streams from one read snapshot (the spool's
    read connection is held until the iterator is exhausted or closed)."""
    now = time.time() if now is None else now
    where = where or Filter()
    with _snapshot(spool) as conn:
        live = where.live_where(now)
        if live is not None:
            sql = f"SELECT {_LIVE_COLUMNS} FROM events WHERE {live[0]} ORDER BY id"
            for row in conn.execute(sql, live[1]):
                yield _event_from_row(row)
        dead = where.dead_where(now)
        if dead is not None:
            sql = f"SELECT {_DEAD_COLUMNS} FROM dead_events WHERE {dead[0]} ORDER BY id"
            for row in conn.execute(sql, dead[1]):
                yield _event_from_row(row)


def tail(
    spool: Spool, where: Filter | None = None, limit: int = 20, *, now: float | None = None
) -> list[SpooledEvent]:
    """The ``limit`` most recent events matching ``where``, newest first: live
    events by capture time, dead letters by the time they were dead-lettered."""
    if limit < 1:
        return []
    now = time.time() if now is None else now
    where = where or Filter()
    found: list[SpooledEvent] = []
    with _snapshot(spool) as conn:
        for table, columns, clause in (
            ("events", _LIVE_COLUMNS, where.live_where(now)),
            ("dead_events", _DEAD_COLUMNS, where.dead_where(now)),
        ):
            if clause is None:
                continue
            sql = f"SELECT {columns} FROM {table} WHERE {clause[0]} ORDER BY id DESC LIMIT ?"
            found += [_event_from_row(r) for r in conn.execute(sql, [*clause[1], limit])]
    found.sort(key=lambda e: (e.recent_at, e.id), reverse=True)
    return found[:limit]


def count_dead(spool: Spool, where: Filter | None = None, *, now: float | None = None) -> int:
    """How many dead letters match ``where`` (None: all)."""
    clause = (where or Filter()).dead_where(time.time() if now is None else now)
    if clause is None:
        return 0
    with spool.reader() as conn:
        row = conn.execute(f"SELECT count(*) FROM dead_events WHERE {clause[0]}", clause[1])
        return int(row.fetchone()[0])


def _add_counter(conn: sqlite3.Connection, name: str, n: int) -> None:
    if n:
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )


def _dead_ids(conn: sqlite3.Connection, where: Filter, now: float) -> list[int]:
    clause = where.dead_where(now)
    if clause is None:
        return []
    sql = f"SELECT id FROM dead_events WHERE {clause[0]} ORDER BY id"
    return [int(r[0]) for r in conn.execute(sql, clause[1])]


# -- changing events -------------------------------------------------------------------


def replay(
    spool: Spool, where: Filter | None = None, *, dry_run: bool = False, now: float | None = None
) -> int:
    """Move the dead letters matching ``where`` back into ``events`` as pending,
    due now, with ``attempts``, errors and the ``max_event_age`` clock reset (their
    ``captured_at`` becomes ``now``; the event's own timestamp is unchanged).

    Returns how many were replayed (with ``dry_run``: would be; nothing changes).
    Counted in the persisted ``replayed`` counter. Raises
    :class:`~spoolpost.errors.SpoolLocked`.
    """
    now = time.time() if now is None else now
    if dry_run:
        return count_dead(spool, where, now=now)
    with spool.transaction() as conn:
        ids = _dead_ids(conn, where or Filter(), now)
        if ids:
            ids_json = json.dumps(ids)
            conn.execute(
                "INSERT INTO events (uuid, body, size, captured_at, next_attempt_at)"
                f" SELECT uuid, body, size, ?, ? FROM dead_events WHERE {_IN_IDS} ORDER BY id",
                (now, now, ids_json),
            )
            conn.execute(f"DELETE FROM dead_events WHERE {_IN_IDS}", (ids_json,))
            _add_counter(conn, "replayed", len(ids))
    return len(ids)


def purge(spool: Spool, where: Filter | None = None, *, now: float | None = None) -> int:
    """Delete the dead letters matching ``where``; return how many. Counted in the
    persisted ``purged`` counter. Raises :class:`~spoolpost.errors.SpoolLocked`."""
    now = time.time() if now is None else now
    with spool.transaction() as conn:
        ids = _dead_ids(conn, where or Filter(), now)
        if ids:
            conn.execute(f"DELETE FROM dead_events WHERE {_IN_IDS}", (json.dumps(ids),))
            _add_counter(conn, "purged", len(ids))
    return len(ids)


@dataclass(frozen=True)
class ImportResult:
    """``imported`` events, and ``skipped`` ones whose uuid was already in the
    spool (pending, leased or dead) or came earlier in the input."""

    imported: int
    skipped: int


def _import_line(text: str | bytes, now: float, max_event_bytes: int) -> tuple[str, bytes]:
    """One input line as (uuid, encoded event); ValueError says what is wrong."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not UTF-8 text") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object (a PostHog event), got {type(data).__name__}")
    data.pop(META_KEY, None)
    for key in ("event", "distinct_id"):
        if key not in data:
            raise ValueError(f'missing "{key}"')
    properties = data.get("properties")
    if properties is not None and not isinstance(properties, dict):
        raise ValueError(f'"properties" must be an object, got {type(properties).__name__}')
    timestamp = data.get("timestamp")
    if timestamp is not None and not isinstance(timestamp, str):
        raise ValueError(f'"timestamp" must be an ISO 8601 string, got {type(timestamp).__name__}')
    # The capture builder validates the name, distinct_id, uuid and timestamp; the
    # event keeps its own properties (and its own $lib) untouched.
    built = ev.capture_event(
        data["event"], data["distinct_id"], None, timestamp, data.get("uuid"), now=now
    )
    built["properties"] = properties or {}
    extra = {k: v for k, v in data.items() if k not in built}
    body = encode_event({**built, **extra})
    if len(body) > max_event_bytes:
        raise ValueError(f"event is {len(body)} bytes, over max_event_bytes={max_event_bytes}")
    return str(built["uuid"]), body


def parse_import(
    lines: Iterable[str | bytes],
    *,
    now: float | None = None,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    max_errors: int = 20,
) -> list[tuple[str, bytes]]:
    """Validate JSON Lines of PostHog events; return (uuid, encoded event) pairs.

    Each non-blank line must be a JSON object with ``event`` (non-empty string)
    and ``distinct_id`` (string or integer); ``properties`` (object), ``timestamp``
    (ISO 8601, sent as RFC 3339 UTC; default ``now``) and ``uuid`` (default a new
    UUIDv7) are optional; other keys are kept; the ``spoolpost`` key written by
    ``export`` is dropped. Raises :class:`ImportRejected` listing up to
    ``max_errors`` bad lines by number (counting from 1).
    """
    now = time.time() if now is None else now
    parsed: list[tuple[str, bytes]] = []
    errors: list[tuple[int, str]] = []
    bad = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            parsed.append(_import_line(line, now, max_event_bytes))
        except ValueError as exc:  # EncodingError too
            bad += 1
            if len(errors) < max_errors:
                errors.append((number, str(exc)))
    if bad:
        raise ImportRejected(errors, bad)
    return parsed


def import_events(
    spool: Spool,
    lines: Iterable[str | bytes],
    *,
    now: float | None = None,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> ImportResult:
    """Add JSON Lines of PostHog events (see :func:`parse_import`) to ``spool`` as
    pending events, due now: all of them in one transaction, or none.

    The whole input is validated (and held in memory) before anything is written.
    Events whose uuid is already in the spool in any state (pending, leased or
    dead: a dead letter is replayed with ``replay``, not imported again), or
    repeated in the input, are skipped. ``max_spool_bytes``/``on_full`` do not
    apply to an import. Counted in the persisted ``imported`` counter. Raises
    :class:`ImportRejected` (nothing is written) and
    :class:`~spoolpost.errors.SpoolLocked`.
    """
    now = time.time() if now is None else now
    parsed = parse_import(lines, now=now, max_event_bytes=max_event_bytes)
    with spool.transaction() as conn:
        uuids = json.dumps([uuid for uuid, _ in parsed])
        seen = {
            str(r[0])
            for r in conn.execute(
                "SELECT uuid FROM events WHERE uuid IN (SELECT value FROM json_each(?1)) UNION"
                " SELECT uuid FROM dead_events WHERE uuid IN (SELECT value FROM json_each(?1))",
                (uuids,),
            )
        }
        rows = []
        for uuid, body in parsed:
            if uuid not in seen:
                seen.add(uuid)
                rows.append((uuid, body, len(body), now, now))
        conn.executemany(
            "INSERT INTO events (uuid, body, size, captured_at, next_attempt_at)"
            " VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        _add_counter(conn, "imported", len(rows))
    return ImportResult(imported=len(rows), skipped=len(parsed) - len(rows))


def capture_one(
    spool: Path,
    api_key: str,
    event: str,
    distinct_id: str,
    properties: Mapping[str, Any] | None = None,
    *,
    timestamp: str | None = None,
    uuid: str | None = None,
    **options: Any,
) -> str:
    """Capture one event into ``spool`` through a capture-only
    :class:`~spoolpost.client.Client` (``send=False``: no threads, nothing sent;
    deliver with :func:`drain_spool`). Returns the event's uuid once committed.
    ``options`` go to the client (``max_spool_bytes``, ``on_full``, …).

    Raises ``ValueError`` for a bad event, distinct_id, timestamp or uuid,
    :class:`~spoolpost.errors.KeyMismatch` if the spool belongs to another API key,
    :class:`~spoolpost.errors.SpoolFull` if the spool is full and the event dropped.
    """
    check_spool_file(Path(spool).expanduser())
    client = Client(api_key, spool=spool, send=False, **options)
    try:
        captured = client.capture(
            event, distinct_id=distinct_id, properties=properties, timestamp=timestamp, uuid=uuid
        )
    finally:
        client.shutdown()
    if captured is None:
        raise SpoolFull(f"spool {spool} is full: the event was dropped (counted as dropped)")
    return captured


# -- delivering ---------------------------------------------------------------------------


class DrainInterrupted(KeyboardInterrupt):
    """Raised by :func:`drain_spool` when a ``KeyboardInterrupt`` (raised by its
    ``progress`` callback, its safe point) stopped it; ``result`` is the drain's
    :class:`FlushResult` once delivery stopped."""

    def __init__(self, result: FlushResult) -> None:
        super().__init__()
        self.result = result


#: Delivery settings of a backlog drain: send at once, and bigger batches than an
#: app's (fewer requests and transactions per event; ``max_batch_bytes`` still
#: bounds a request at 5 MiB). Measured in BENCHMARKS.md (proposal H).
DRAIN_CONFIG = DeliveryConfig(flush_interval=0.0, max_batch_size=2000)


def drain_spool(
    spool: Spool,
    transport: HttpTransport,
    *,
    budget: float | None = None,
    outage_after: int = 3,
    force_key: bool = False,
    grace: float = 5.0,
    config: DeliveryConfig | None = None,
    retry: RetryPolicy | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FlushResult:
    """Deliver every event in ``spool`` captured before the call.

    Stops when none is pending, at ``budget`` seconds (None: no limit), after
    ``outage_after`` transient failures in a row (an outage), or when a
    configuration fault (401/403/404/3xx) pauses delivery. Then waits up to
    ``grace`` seconds for requests in flight; any still in flight are abandoned
    (their events stay leased to this process and are reclaimed as soon as it is
    gone). Backoff and ``Retry-After`` are honoured. ``progress(total, pending)``
    is called as delivery goes; a ``KeyboardInterrupt`` it raises stops the drain
    (within ``grace``) and becomes :class:`DrainInterrupted` carrying the result.
    Returns a :class:`FlushResult`.

    Raises :class:`~spoolpost.errors.KeyMismatch` if the spool belongs to another
    API key (unless ``force_key``), :class:`~spoolpost.errors.SpoolLocked`.
    """
    spool.bind_key(key_fingerprint(transport.api_key), force=force_key)
    watermark = spool.watermark(time.time())
    if not spool.any_open_through(watermark):
        return FlushResult()
    dispatcher = Dispatcher(spool, transport, config=config or DRAIN_CONFIG, retry=retry)
    # The exact count of what is to be sent is a scan of the spool (~0.7 s per
    # million events): it reads a snapshot pinned before the senders start, so
    # the first request goes out at once and the count is still exact.
    interrupted = False
    try:
        with spool.snapshot() as before_start:
            dispatcher.start()
            before = spool.states_through(watermark, before_start)
        total = before["pending"] + before["leased"]
        report: Callable[[int], None] | None = None
        if progress is not None:
            tell = progress

            def report(pending: int) -> None:
                tell(total, pending)

        timeout = float("inf") if budget is None else budget
        try:
            dispatcher.flush(watermark, timeout, before, outage_after=outage_after, progress=report)
        except KeyboardInterrupt:
            interrupted = True
    finally:
        dispatcher.stop(grace)
    # Requests that finished during the grace period settled their events: a flush
    # with no time left sends nothing and tallies the spool as it is now.
    result = dispatcher.flush(watermark, 0.0, before, outage_after=outage_after)
    if interrupted:
        raise DrainInterrupted(result)
    return result


def drain_exit_code(result: FlushResult) -> int:
    """The documented ``spoolpost drain`` exit code for a drain's result:
    events remain → 5 paused, 4 outage, 3 budget; none remain → 6 if this run
    dead-lettered any, else 0."""
    if result.pending:
        if result.paused:
            return EXIT_PAUSED
        return EXIT_OUTAGE if result.outage else EXIT_REMAIN
    return EXIT_DEAD if result.dead else EXIT_EMPTY


# -- small parsers -------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``"30s"``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"`` (also ``"1.5h"``) in
    seconds. Raises ``ValueError`` naming the accepted forms."""
    match = _DURATION.match(text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30m, 12h, 7d or 2w (units: s m h d w)")
    return float(match[1]) * _UNIT_SECONDS[match[2]]


def format_time(seconds: float | None) -> str:
    """Wall-clock UTC ``seconds`` as RFC 3339 (``-`` for None)."""
    return "-" if seconds is None else format_timestamp(None, round(seconds))
