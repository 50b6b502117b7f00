"""PostHog v1's event shape, made at send time from the format-neutral stored bytes.

The spool stores each event as v0-shaped JSON; PostHog's v1 capture takes a
reshaped event. :func:`to_v1_event` does what posthog-python 7.x's
``_to_v1_event`` does (``posthog/capture_v1.py``; every transform is listed in
docs/architecture.md, "The v1 wire format"); :func:`v1_batch` parses and
reshapes a batch of stored bodies, naming any that cannot be
(:class:`UnsendableEvents`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from spoolpost._version import __version__


def _coerce_bool(value: Any) -> bool | None:
    """posthog-python's ``_coerce_bool``: a bool as is; ``"true"``/``"1"``,
    ``"false"``/``"0"`` (any case, trimmed); a number is true unless zero;
    anything else None (the option is then left out)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        return True if text in ("true", "1") else False if text in ("false", "0") else None
    if isinstance(value, (int, float)):
        return value != 0
    return None


def _coerce_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


#: Properties lifted into the typed ``options`` object: (property, option, coercion).
OPTION_PROPERTIES: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("$cookieless_mode", "cookieless_mode", _coerce_bool),
    ("$ignore_sent_at", "disable_skew_correction", _coerce_bool),
    ("$product_tour_id", "product_tour_id", _coerce_str),
    ("$process_person_profile", "process_person_profile", _coerce_bool),
)
#: Properties lifted to top-level string fields: (property, field).
TOP_LEVEL_PROPERTIES = (("$session_id", "session_id"), ("$window_id", "window_id"))
#: Top-level keys moved into ``properties`` (v1 has no top-level form).
RELOCATED = ("$set", "$set_once")
#: Properties PostHog takes from the ``PostHog-Sdk-Info`` header instead.
FROM_HEADERS = ("$lib", "$lib_version")


def to_v1_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """A stored (v0-shaped) event as a v1 wire event, exactly as posthog-python's
    ``_to_v1_event``: ``$set``/``$set_once`` at the top level move into
    ``properties`` (a dict merges under the properties' own, which win);
    ``$lib``/``$lib_version`` leave ``properties``; the :data:`OPTION_PROPERTIES`
    leave ``properties`` for ``options`` (left out when they do not coerce);
    ``$session_id``/``$window_id`` leave ``properties`` for top-level
    ``session_id``/``window_id`` (strings only); the event keeps ``event``,
    ``uuid``, ``distinct_id``, ``timestamp`` and nothing else. ``event`` is not
    changed. Raises ``KeyError``/``TypeError`` for an event without those fields."""
    return _reshape(event, dict(event.get("properties") or {}))


#: Parses one stored body (UTF-8 JSON); skips ``json.loads``'s encoding detection.
_decode = json.JSONDecoder().decode
#: The decoder's scanner: (value, end) of the JSON value at an index.
_ScanOnce = Callable[[str, int], tuple[Any, int]]
_scan: _ScanOnce = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


#: The properties v1 moves out of ``properties`` besides :data:`FROM_HEADERS`.
_MOVED = frozenset(
    [key for key, _, _ in OPTION_PROPERTIES] + [key for key, _ in TOP_LEVEL_PROPERTIES]
)


def _reshape(event: Mapping[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    """:func:`to_v1_event` with the event's ``properties`` dict to change in place
    (the send path passes the dict of a body it has just parsed: no copy)."""
    if RELOCATED[0] in event or RELOCATED[1] in event:
        for key in RELOCATED:
            top = event.get(key)
            if top is None:
                continue
            existing = properties.get(key)
            if isinstance(top, dict) and isinstance(existing, dict):
                properties[key] = {**top, **existing}
            elif key not in properties:
                properties[key] = top
    for key in FROM_HEADERS:
        properties.pop(key, None)
    options: dict[str, Any] = {}
    moves = not _MOVED.isdisjoint(properties)  # one check for the usual event
    if moves:
        for key, option, coerce in OPTION_PROPERTIES:
            if key in properties:
                value = coerce(properties.pop(key))
                if value is not None:
                    options[option] = value
    shaped: dict[str, Any] = {
        "event": event["event"],
        "uuid": event["uuid"],
        "distinct_id": event["distinct_id"],
        "timestamp": event["timestamp"],
        "options": options,
        "properties": properties,
    }
    if moves:
        for key, name in TOP_LEVEL_PROPERTIES:
            if key in properties:
                text = _coerce_str(properties.pop(key))
                if text is not None:
                    shaped[name] = text
    return shaped


def _parse(body: bytes) -> dict[str, Any]:
    event: dict[str, Any] = _decode(body.decode())
    return event


class UnsendableEvents(Exception):
    """Stored events a wire format cannot build a request from (v1: a body that
    is not UTF-8 JSON of a PostHog event object, e.g. damaged on disk). ``bad``
    maps each one's position in the batch to the reason, in words."""

    def __init__(self, bad: dict[int, str]) -> None:
        first = next(iter(bad.values()), "")
        super().__init__(f"{len(bad)} stored event(s) cannot be sent, e.g. {first}")
        self.bad = bad


def _why(exc: Exception) -> str:
    """Why a stored body cannot be reshaped, for a dead letter's detail."""
    if isinstance(exc, UnicodeDecodeError):
        return f"stored body is not UTF-8 ({exc.reason} at byte {exc.start})"
    if isinstance(exc, json.JSONDecodeError):
        return f"stored body is not JSON ({exc.msg} at character {exc.pos})"
    if isinstance(exc, KeyError):
        return f"stored body is not a PostHog event: no {exc.args[0]!r} field"
    return f"stored body is not a PostHog event: {type(exc).__name__}: {exc}"[:300]


def v1_batch(events: Sequence[bytes]) -> bytes:
    """The stored bodies as the JSON of their v1 wire events, comma-separated in
    order (the inside of the request's ``batch`` array). A batch of what this
    version's capture writes is spliced whole (:func:`splice_batch`); otherwise
    each body is spliced (:func:`splice_v1`) or, when it cannot be, parsed (as
    :func:`_parse` would), reshaped by :func:`to_v1_event` and encoded (compact,
    ASCII), one after the other, so each parsed body is freed once encoded. The
    scanner is called directly (no ``decode`` wrapper and its whitespace matching)
    on a body that is one JSON value from its first to its last character; any
    other body goes through :func:`_parse`'s decoder (the same result or error as
    ever).

    Raises :class:`UnsendableEvents` naming every body that cannot be reshaped
    (the others are checked too, so one request finds them all)."""
    whole = splice_batch(events)
    if whole is not None:
        return whole
    batch: list[bytes] = []
    add = batch.append
    bad: dict[int, str] = {}
    for n, body in enumerate(events):
        spliced = splice_v1(body)
        if spliced is not None:
            add(spliced)
            continue
        try:
            text = body.decode()
            try:
                event, end = _scan(text, 0)
            except StopIteration:
                end = -1
            if end != len(text):
                event = _decode(text)
            add(_encode(_reshape(event, event.get("properties") or {})).encode())
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            bad[n] = _why(exc)
    if bad:
        raise UnsendableEvents(bad)
    return b",".join(batch)


#: Compact JSON, ASCII only (``json.dumps`` with ``separators=(",", ":")``).
_encode = json.JSONEncoder(separators=(",", ":")).encode


# -- the byte path ---------------------------------------------------------------------
#
# Most stored events are exactly what this version's capture wrote: top-level keys
# uuid, event, distinct_id, properties, timestamp in that order, strings without
# escapes there, flat properties ending in this version's ``$lib`` and
# ``$lib_version``, nothing else for v1 to move. For those the v1 event is spliced
# from the stored bytes (docs/architecture.md, "The v1 wire format"): the same JSON
# values, not decoded and re-encoded; only plain byte searches, no regular
# expression over the body. Any other body takes the decoding path above.

#: The ``$lib`` property of every event this package captures (``events/build.py``).
LIB = "spoolpost"
_HEAD = b'{"uuid":"'
_PROPERTIES = b',"properties":{'
_LIB_TAIL = f',"$lib":"{LIB}","$lib_version":"{__version__}"}}'.encode()
_ONLY_LIB = b"{" + _LIB_TAIL[1:]
_TIMESTAMP = b',"timestamp":"'
_OPTIONS = b',"options":{}}'
#: Keys v1 moves, as they appear in a body (as values too: the decoding path then).
_MOVED_TOKENS = tuple(f'"{key}"'.encode() for key in sorted(_MOVED))


def _vouched(joined: bytes, n: int) -> bool:
    """What the ``n`` bodies ``joined`` (by a newline) must hold between them for
    :func:`_layout`: no escape, one ``"$lib"`` and ``"$lib_version"`` a body, no
    key v1 moves, UTF-8 throughout. A body :func:`_layout` takes has at least one
    of each, so once every body is taken, these totals hold for each body alone."""
    if b"\\" in joined or joined.count(b'"$lib"') != n:
        return False
    if joined.count(b'"$lib_version"') != n:
        return False
    for token in _MOVED_TOKENS:
        if token in joined:
            return False
    try:
        joined.decode()
    except UnicodeDecodeError:
        return False  # the decoding path names the body
    return True


def _layout(body: bytes) -> int:
    """Where ``body``'s ``$lib`` pair begins (the comma before it, or the brace
    of a properties object holding only it), or -1 unless ``body`` has the layout
    :func:`splice_v1` takes, given :func:`_vouched`: ``{"uuid":"``, then event
    and distinct_id (12 quotes before properties, the last right before it:
    strings without escapes), a
    flat properties object (no brace between its own) ending in this version's
    ``$lib``/``$lib_version``, then the timestamp alone (4 quotes) and ``"}``."""
    if not body.startswith(_HEAD) or not body.endswith(b'"}'):
        return -1
    props = body.find(_PROPERTIES)
    if props < 0 or body[props - 1] != 0x22 or body.count(b'"', 0, props) != 12:
        return -1
    event_at = body.find(b'","event":"', 0, props)
    if event_at < 0 or body.find(b'","distinct_id":"', event_at, props) < 0:
        return -1
    members_at = props + len(_PROPERTIES)
    lib = body.find(_LIB_TAIL, props)
    if lib < 0:
        lib = members_at - 1  # properties may hold the pair alone
        if not body.startswith(_ONLY_LIB, lib):
            return -1
    elif body.find(b"{", members_at, lib) >= 0 or body.find(b"}", members_at, lib) >= 0:
        return -1
    end = lib + len(_LIB_TAIL)
    if not body.startswith(_TIMESTAMP, end) or body.count(b'"', end) != 4:
        return -1
    return lib


def _cut(body: bytes, lib: int) -> tuple[bytes, bytes, bytes]:
    """The pieces of ``body``'s v1 event before :data:`_OPTIONS`: up to its
    ``$lib`` pair, the brace closing properties, the timestamp."""
    end = lib + len(_LIB_TAIL)
    if body[lib] == 0x7B:  # "{": the pair alone
        return body[: lib + 1], b"}", body[end:-1]
    return body[:lib], b"}", body[end:-1]


def splice_v1(body: bytes) -> bytes | None:
    """The v1 wire event of a stored ``body``, spliced from its bytes, or None when
    ``body`` is not of the shape this version's capture writes (see above) and
    must be decoded and reshaped by :func:`to_v1_event`. When not None it decodes
    to what :func:`to_v1_event` gives for the decoded body (keys in another order:
    ``options`` last)."""
    lib = _layout(body)
    if lib < 0 or not _vouched(body, 1):
        return None
    return b"".join((*_cut(body, lib), _OPTIONS))


def splice_batch(events: Sequence[bytes]) -> bytes | None:
    """What :func:`v1_batch` gives for ``events`` when every body is one
    :func:`splice_v1` takes, made at once: the checks that are sums over the batch
    (:func:`_vouched`) are made once, :func:`_layout` body by body, and the pieces
    are joined once. None when any body is not such a one."""
    if not _vouched(b"\n".join(events), len(events)):
        return None
    pieces: list[bytes] = []
    add = pieces.extend
    for body in events:
        lib = _layout(body)
        if lib < 0:
            return None
        add(_cut(body, lib))
        pieces.append(_OPTIONS_NEXT)
    return b"".join(pieces)[:-1]


_OPTIONS_NEXT = _OPTIONS + b","
