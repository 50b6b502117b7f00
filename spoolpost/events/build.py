"""Building PostHog v0 event dicts (not yet encoded) for the capture API.

Every builder returns a new dict with the keys, in this order, that PostHog's
``/batch/`` endpoint reads for each event::

    {"uuid": "0194…", "event": "...", "distinct_id": "...",
     "properties": {..., "$lib": "spoolpost", "$lib_version": "0.1.0"},
     "timestamp": "2025-01-02T03:04:05.123456Z"}

Event names and property shapes follow posthog-python's client (``capture``, ``set``,
``set_once``, ``alias``, ``group_identify``; ``identify`` from its earlier releases)
and PostHog's docs on identifying users, aliases and group analytics, with one
difference: posthog-python puts ``$set``/``$set_once`` beside ``properties``, where
PostHog's ingestion merges them into ``properties``; here they are inside
``properties`` already, so every event has the same five keys.

Every builder takes ``disable_geoip``: True adds ``"$geoip_disable": true`` to the
properties, as posthog-python does, so PostHog does not locate the person from the IP
address of the server that sent the event.

The caller's mappings are copied, never mutated. Bad arguments raise ``ValueError``
whose message names the argument; ``now`` (wall-clock seconds, ``time.time()``) is
passed by the client so that the default timestamp and the UUIDv7 agree with its clock.
"""

from __future__ import annotations

import numbers
import operator
import re
import sys
from collections.abc import Mapping
from typing import Any, TypeAlias
from uuid import UUID

from spoolpost._version import __version__
from spoolpost.events.ids import uuid7_str
from spoolpost.events.timestamps import Timestamp, format_timestamp

__all__ = [
    "DistinctId",
    "alias_event",
    "capture_event",
    "check_event",
    "group_identify_event",
    "identify_event",
    "normalize_uuid",
    "set_event",
    "set_once_event",
]

DistinctId: TypeAlias = str | int | UUID
"""What a distinct id (or group key) may be; ints (any ``numbers.Integral``, such as a
NumPy integer, but not ``bool``) and UUIDs are sent as strings. Floats are refused:
``1e16 + 1`` would silently become another person."""

EventUuid: TypeAlias = UUID | str | None

LIB = "spoolpost"  # the "$lib" property of every event


def _type_name(value: object) -> str:
    return type(value).__name__


def _int_text(name: str, value: int) -> str:
    try:
        return int.__repr__(value)
    except ValueError:  # over sys.get_int_max_str_digits()
        raise ValueError(
            f"{name} is an int of more than {sys.get_int_max_str_digits()} digits; send it as a str"
        ) from None


def _id(name: str, value: object) -> str:
    """``value`` as a distinct-id string, or ValueError naming ``name``: it must be
    a str that is not empty nor only whitespace, an int or a UUID."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, UUID):
        text = str(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        text = _int_text(name, value)  # IntEnum members too: their number, not their name
    elif not isinstance(value, bool) and isinstance(value, numbers.Integral):
        text = _int_text(name, operator.index(value))  # NumPy integers and the like
    else:
        raise ValueError(f"{name} must be a non-empty str, int or UUID, got {_type_name(value)}")
    if not text:
        raise ValueError(f"{name} must be a non-empty str, int or UUID, got ''")
    if text.isspace():
        raise ValueError(f"{name} must not be only whitespace, got {text!r}")
    return text


#: C0 and C1 control characters and DEL (NUL, newline, tab, ESC, …).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _name(name: str, value: object) -> str:
    """``value`` as a non-empty str without control characters (an event name or
    group type), or ValueError naming ``name``."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a non-empty str, got {_type_name(value)}")
    if not value:
        raise ValueError(f"{name} must be a non-empty str, got ''")
    if _CONTROL.search(value):
        raise ValueError(
            f"{name} must not contain control characters (NUL, newline, tab, …), got {value!r}"
        )
    return value


def _mapping(name: str, value: object, *, optional: bool = True) -> dict[str, Any]:
    """A shallow copy of the mapping ``value`` (``{}`` for an allowed None)."""
    if type(value) is dict or isinstance(value, Mapping):  # the ABC check only if needed
        return dict(value)
    if value is None and optional:
        return {}
    expected = "a mapping or None" if optional else "a mapping"
    raise ValueError(f"{name} must be {expected}, got {_type_name(value)}")


def _event_uuid(value: object, now: float) -> str:
    """The event's uuid in canonical lowercase form; a new UUIDv7 when ``value`` is None."""
    if value is None:
        return uuid7_str(now)
    return normalize_uuid(value)


def normalize_uuid(value: object) -> str:
    """``value`` (a UUID, or a str holding one in any form ``uuid.UUID`` reads) as a
    canonical lowercase UUID string. Raises ``ValueError`` for anything else."""
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(UUID(value))
        except ValueError:
            raise ValueError(f"uuid must be a UUID or a str holding one, got {value!r}") from None
    raise ValueError(f"uuid must be a UUID or a str holding one, got {_type_name(value)}")


def check_event(event: Mapping[str, Any], original: Mapping[str, Any]) -> dict[str, Any]:
    """Check an event a ``before_send`` hook returned by the rules of
    :func:`capture_event`; return a copy with ``distinct_id`` as a str, ``uuid`` in
    canonical form and ``timestamp`` in RFC 3339 UTC (other keys as returned).

    ``event``, ``distinct_id`` and ``properties`` (a mapping) are required; a
    missing or None ``uuid`` or ``timestamp`` is taken from ``original`` (the
    event the hook was given), as :func:`capture_event` fills them in by default.
    Raises ``ValueError`` naming the first problem.
    """
    for key in ("event", "distinct_id", "properties"):
        if key not in event:
            raise ValueError(f"{key} is missing")
    checked = dict(event)
    checked["event"] = _name("event", event["event"])
    checked["distinct_id"] = _id("distinct_id", event["distinct_id"])
    properties = event["properties"]
    if not isinstance(properties, Mapping):
        raise ValueError(f"properties must be a mapping, got {_type_name(properties)}")
    uuid = event.get("uuid")
    checked["uuid"] = original["uuid"] if uuid is None else normalize_uuid(uuid)
    timestamp = event.get("timestamp")
    if timestamp is None:
        checked["timestamp"] = original["timestamp"]
    else:
        checked["timestamp"] = format_timestamp(timestamp, 0.0)
    return checked


def _build(
    event: str,
    distinct_id: str,
    properties: dict[str, Any],
    timestamp: Timestamp,
    uuid: EventUuid,
    now: float,
    disable_geoip: bool,
) -> dict[str, Any]:
    """The one place an event dict is assembled; ``properties`` is owned (a copy)."""
    properties["$lib"] = LIB
    properties["$lib_version"] = __version__
    if disable_geoip:
        properties["$geoip_disable"] = True
    return {
        "uuid": _event_uuid(uuid, now),
        "event": event,
        "distinct_id": distinct_id,
        "properties": properties,
        "timestamp": format_timestamp(timestamp, now),
    }


def capture_event(
    event: str,
    distinct_id: DistinctId,
    properties: Mapping[str, Any] | None = None,
    timestamp: Timestamp = None,
    uuid: EventUuid = None,
    groups: Mapping[str, Any] | None = None,
    *,
    now: float,
    disable_geoip: bool = False,
) -> dict[str, Any]:
    """Return the PostHog event ``event`` by ``distinct_id``.

    ``properties`` is copied and gets ``$lib``/``$lib_version`` (overriding any the
    caller set, as posthog-python does); non-empty ``groups`` (group type → group key)
    goes to ``properties["$groups"]`` (PostHog group analytics). ``timestamp`` follows
    :func:`~spoolpost.events.timestamps.format_timestamp` (default: ``now``); ``uuid`` (a UUID
    or a str holding one) is normalized to canonical lowercase, default a new UUIDv7.

    Raises ``ValueError`` when ``event`` is not a non-empty str or contains control
    characters (NUL, newline, tab, …), ``distinct_id`` is not a non-empty str, an int
    or a UUID (bool and None are refused; so is a str of whitespace only), ``properties`` or
    ``groups`` is neither a mapping nor None, ``uuid`` is not a UUID, or ``timestamp``
    cannot be read.
    """
    name = _name("event", event)
    person = _id("distinct_id", distinct_id)
    props = _mapping("properties", properties)
    if groups is not None:
        group_map = _mapping("groups", groups)
        if group_map:
            props["$groups"] = group_map
    return _build(name, person, props, timestamp, uuid, now, disable_geoip)


def identify_event(
    distinct_id: DistinctId,
    properties: Mapping[str, Any] | None = None,
    timestamp: Timestamp = None,
    uuid: EventUuid = None,
    *,
    now: float,
    disable_geoip: bool = False,
) -> dict[str, Any]:
    """Return an ``$identify`` event setting person ``properties`` on ``distinct_id``:
    ``properties`` becomes ``{"$set": properties}``. Raises ``ValueError`` as
    :func:`capture_event` does."""
    person = _id("distinct_id", distinct_id)
    person_props = _mapping("properties", properties)
    return _build("$identify", person, {"$set": person_props}, timestamp, uuid, now, disable_geoip)


def _person_update(
    operation: str,
    distinct_id: DistinctId,
    properties: Mapping[str, Any],
    timestamp: Timestamp,
    uuid: EventUuid,
    now: float,
    disable_geoip: bool,
) -> dict[str, Any]:
    person = _id("distinct_id", distinct_id)
    person_props = _mapping("properties", properties, optional=False)
    props = {operation: person_props}
    return _build(operation, person, props, timestamp, uuid, now, disable_geoip)


def set_event(
    distinct_id: DistinctId,
    properties: Mapping[str, Any],
    timestamp: Timestamp = None,
    uuid: EventUuid = None,
    *,
    now: float,
    disable_geoip: bool = False,
) -> dict[str, Any]:
    """Return a ``$set`` event that sets person ``properties`` on ``distinct_id``,
    overwriting earlier values: event ``$set``, properties ``{"$set": properties}``.
    Raises ``ValueError`` as :func:`capture_event` does (``properties`` is required)."""
    return _person_update("$set", distinct_id, properties, timestamp, uuid, now, disable_geoip)


def set_once_event(
    distinct_id: DistinctId,
    properties: Mapping[str, Any],
    timestamp: Timestamp = None,
    uuid: EventUuid = None,
    *,
    now: float,
    disable_geoip: bool = False,
) -> dict[str, Any]:
    """Return a ``$set_once`` event that sets person ``properties`` on ``distinct_id``
    only where they are not set yet: event ``$set_once`` (posthog-python's name),
    properties ``{"$set_once": properties}``. Raises ``ValueError`` as
    :func:`set_event` does."""
    return _person_update("$set_once", distinct_id, properties, timestamp, uuid, now, disable_geoip)


def alias_event(
    previous_id: DistinctId,
    distinct_id: DistinctId,
    timestamp: Timestamp = None,
    uuid: EventUuid = None,
    *,
    now: float,
    disable_geoip: bool = False,
) -> dict[str, Any]:
    """Return a ``$create_alias`` event making ``distinct_id`` an alias of
    ``previous_id``, as posthog-python sends it: sent by ``previous_id``, with
    properties ``{"distinct_id": previous_id, "alias": distinct_id}``.
    Raises ``ValueError`` when either id is not a non-empty str, int or UUID, or as
    :func:`capture_event` does."""
    previous = _id("previous_id", previous_id)
    alias = _id("distinct_id", distinct_id)
    props = {"distinct_id": previous, "alias": alias}
    return _build("$create_alias", previous, props, timestamp, uuid, now, disable_geoip)


def group_identify_event(
    group_type: str,
    group_key: DistinctId,
    properties: Mapping[str, Any] | None = None,
    timestamp: Timestamp = None,
    uuid: EventUuid = None,
    distinct_id: DistinctId | None = None,
    *,
    now: float,
    disable_geoip: bool = False,
) -> dict[str, Any]:
    """Return a ``$groupidentify`` event setting ``properties`` on the group
    ``group_type``/``group_key``: properties ``{"$group_type", "$group_key",
    "$group_set"}``, sent by ``distinct_id``, default ``"$<group_type>_<group_key>"``
    (earlier posthog-python releases; current ones send a random id). ``group_key``
    may be a str, an int or a UUID and is sent as a str. Raises ``ValueError`` when
    ``group_type`` is not a non-empty str, ``group_key`` or a given ``distinct_id`` is
    not a non-empty str, int or UUID, or as :func:`capture_event` does."""
    kind = _name("group_type", group_type)
    key = _id("group_key", group_key)
    person = f"${kind}_{key}" if distinct_id is None else _id("distinct_id", distinct_id)
    group_props = _mapping("properties", properties)
    props = {"$group_type": kind, "$group_key": key, "$group_set": group_props}
    return _build("$groupidentify", person, props, timestamp, uuid, now, disable_geoip)
