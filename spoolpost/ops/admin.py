"""Operator tools over a spool: what the ``spoolpost`` commands call.

Reads and repairs (listing, tail, replay, purge) are :class:`~spoolpost.spool.Spool`
methods; this module holds what lies above the storage seam:

- :func:`open_spool` — open an existing spool, refusing files that are not spools;
- :func:`parse_import` / :func:`import_events` — JSON Lines of PostHog events
  into a spool, validated first, then all or nothing;
- :func:`capture_one` — one event through a capture-only client;
- :func:`drain_spool` — deliver until empty, a time budget, an outage or a pause.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spoolpost.capture import events as ev
from spoolpost.capture.encoding import encode_event, format_timestamp
from spoolpost.client import DEFAULT_MAX_EVENT_BYTES, Client, key_fingerprint
from spoolpost.delivery.dispatcher import DeliveryConfig, Dispatcher, FlushResult
from spoolpost.delivery.policy import RetryPolicy
from spoolpost.delivery.transport import HttpTransport
from spoolpost.errors import ConfigError, ImportRejected, SpoolFull
from spoolpost.spool import Spool, check_spool_file
from spoolpost.spool.maintenance import META_KEY

#: ``spoolpost drain`` exit codes, for cron.
EXIT_EMPTY = 0
EXIT_ERROR = 1
EXIT_REMAIN = 3
EXIT_OUTAGE = 4
EXIT_PAUSED = 5
EXIT_DEAD = 6


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
    imported = spool.import_events(parsed, now=now)
    return ImportResult(imported=imported, skipped=len(parsed) - imported)


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
            before = before_start.states_through(watermark)
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
