"""What posthog-python adds to events that spoolpost's builders do not, and its
``before_send`` and ``send=False`` semantics, for :class:`~spoolpost.Posthog`."""

from __future__ import annotations

import logging
import platform
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from spoolpost.events.api import CaptureApi
from spoolpost.events.build import normalize_uuid
from spoolpost.events.encoding import encode_event
from spoolpost.events.timestamps import format_timestamp

__all__ = ["SYSTEM_PROPERTIES", "Enricher", "Unsent", "repair_arguments"]

log = logging.getLogger("spoolpost")

#: ``posthog.utils.system_context()`` (7.x) without ``$os``/``$os_version``/``$os_distro``:
#: added to ``capture()`` events, over the caller's properties, as posthog-python does.
SYSTEM_PROPERTIES = {
    "$python_runtime": platform.python_implementation(),
    "$python_version": ".".join(map(str, sys.version_info[:3])),
}


def repair_arguments(kwargs: dict[str, Any]) -> None:
    """posthog-python's leniency with a capture call's ``uuid`` and ``timestamp``
    keyword arguments, in place: a ``uuid`` that is not a UUID becomes None (a new one;
    an ERROR, as in ``Client._normalize_event_uuid``), a ``timestamp`` that cannot be
    read becomes None (now; a WARNING, as in ``Client._normalize_event_timestamp``)."""
    uuid = kwargs.get("uuid")
    if uuid is not None:
        try:
            normalize_uuid(uuid)
        except ValueError as exc:
            log.error("%s Falling back to a generated UUID.", exc)
            kwargs["uuid"] = None
    timestamp = kwargs.get("timestamp")
    if timestamp is not None:
        try:
            format_timestamp(timestamp, 0.0)
        except ValueError:
            log.warning("Invalid timestamp %r. Falling back to the current time.", timestamp)
            kwargs["timestamp"] = None


class Enricher:
    """The ``before_send`` a :class:`~spoolpost.Posthog` gives its client:
    posthog-python's ``_enrich_event_properties`` (``super_properties`` merged over
    the event's properties, then ``$is_server: true`` when ``is_server``), then the
    user's ``before_send``, whose exception or non-dict result drops the event (an
    ERROR), as posthog-python's ``_run_before_send`` does."""

    def __init__(
        self,
        super_properties: Mapping[str, Any],
        is_server: bool,
        before_send: Callable[[dict[str, Any]], Any] | None,
    ) -> None:
        self.super_properties = dict(super_properties)
        self.is_server = is_server
        self.before_send = before_send

    def __call__(self, event: dict[str, Any]) -> dict[str, Any] | None:
        properties = event["properties"]
        properties.update(self.super_properties)
        if self.is_server:
            properties["$is_server"] = True
        if self.before_send is None:
            return event
        try:
            kept = self.before_send(event)
        except Exception:
            log.exception("before_send raised; the event %s is dropped", event["uuid"])
            return None
        if kept is None:
            return None
        if not isinstance(kept, dict):
            log.error("before_send must return a dict or None; the event %s is dropped", event)
            return None
        return kept


class Unsent(CaptureApi):
    """posthog-python's ``send=False``: events are built, passed through ``hook`` (an
    :class:`Enricher`) and encoded, their uuid returned; nothing is stored or sent."""

    disabled = False

    def __init__(
        self, hook: Callable[[dict[str, Any]], dict[str, Any] | None], disable_geoip: bool
    ) -> None:
        self.hook = hook
        self.disable_geoip = disable_geoip

    def _emit(
        self,
        build: Callable[..., dict[str, Any]],
        disable_geoip: bool | None,
        *args: Any,
        lane: str | None = None,
    ) -> str | None:
        geoip = self.disable_geoip if disable_geoip is None else disable_geoip
        event = build(*args, now=time.time(), disable_geoip=geoip)
        kept = self.hook(dict(event, properties=dict(event["properties"])))
        if kept is None:
            return None
        encode_event(kept, nulls=[])
        return str(event["uuid"])
