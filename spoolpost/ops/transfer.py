"""Events into and out of a spool from outside an app: ``import`` and ``capture``.

- :func:`parse_import` / :func:`import_events` — JSON Lines of PostHog events
  into a spool, all validated first, then written in short chunks;
- :func:`capture_one` — one event through a capture-only client.

(``export`` is :meth:`~spoolpost.spool.Spool.events` plus
:meth:`~spoolpost.spool.SpooledEvent.json_line`.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spoolpost.client import DEFAULT_MAX_EVENT_BYTES, Client
from spoolpost.errors import ImportRejected, SpoolFull
from spoolpost.events import build as ev
from spoolpost.events.encoding import encode_event
from spoolpost.spool import Spool, check_spool_file
from spoolpost.spool.maintenance import META_KEY


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
    pending events, due now.

    The whole input is validated (and held in memory) before anything is written:
    one bad line and nothing is. Then it is written in chunks of a few
    milliseconds each (:meth:`Spool.import_events`), so that apps capturing into
    the same spool wait only that long; an interrupted import leaves whole
    chunks, and a rerun with the same input adds the rest.
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
