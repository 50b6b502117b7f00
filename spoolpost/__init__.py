"""spoolpost: crash-safe analytics capture.

Every captured event is committed to a local SQLite spool (WAL) before
``capture()`` returns, then delivered in the background to PostHog's ``/batch/``
endpoint, at least once, with backoff that honours ``Retry-After``.

Use a :class:`Client`, or the module-level default client the way
posthog-python's module API works::

    import spoolpost
    spoolpost.api_key = "phc_..."
    spoolpost.host = "https://eu.i.posthog.com"
    spoolpost.capture("signed_up", distinct_id="user-1", properties={"plan": "pro"})

The default client is created on first use from the module attributes below
(``api_key``, ``host``, ``spool``, ``disabled``, ``send``, ``client_options``),
or explicitly with :func:`configure`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from spoolpost._version import __version__
from spoolpost.client import Client, Timestamp
from spoolpost.dispatcher import FlushResult
from spoolpost.errors import (
    ConfigError,
    EncodingError,
    EventTooLarge,
    KeyMismatch,
    SchemaTooNew,
    SpoolClosed,
    SpoolCorrupt,
    SpoolFull,
    SpoolLocked,
    SpoolpostError,
    UnsupportedFilesystem,
)
from spoolpost.policy import PausePolicy, RetryPolicy
from spoolpost.spool import Spool
from spoolpost.transport import DEFAULT_HOST

__all__ = [
    "Client",
    "ConfigError",
    "EncodingError",
    "EventTooLarge",
    "FlushResult",
    "KeyMismatch",
    "PausePolicy",
    "RetryPolicy",
    "SchemaTooNew",
    "Spool",
    "SpoolClosed",
    "SpoolCorrupt",
    "SpoolFull",
    "SpoolLocked",
    "SpoolpostError",
    "UnsupportedFilesystem",
    "__version__",
    "alias",
    "capture",
    "configure",
    "flush",
    "group_identify",
    "identify",
    "set",
    "set_once",
    "shutdown",
]

#: Settings of the module-level default client (read when it is first created).
api_key: str | None = os.environ.get("SPOOLPOST_API_KEY")
host: str = os.environ.get("SPOOLPOST_HOST", DEFAULT_HOST)
spool: str | None = None
disabled: bool = False
send: bool = True
client_options: dict[str, Any] = {}

default_client: Client | None = None
_default_lock = threading.Lock()


def configure(api_key: str | None = None, host: str | None = None, **options: Any) -> Client:
    """Create (or replace) the module-level default client and return it.

    Arguments are those of :class:`Client`; ``api_key`` and ``host`` default to
    the module attributes. A previous default client is shut down first.
    """
    global default_client
    with _default_lock:
        if default_client is not None:
            default_client.shutdown()
        default_client = _make_client(api_key, host, options)
        return default_client


def _make_client(key: str | None, base: str | None, options: Mapping[str, Any]) -> Client:
    key = key or api_key
    settings: dict[str, Any] = {"disabled": disabled, "send": send, **client_options, **options}
    if spool is not None:
        settings.setdefault("spool", spool)
    if not key:
        if settings.get("disabled"):
            return Client("disabled", base or host, **settings)
        raise ConfigError(
            "spoolpost.api_key is not set: set it (or SPOOLPOST_API_KEY) before "
            "spoolpost.capture(), or call spoolpost.configure(api_key=...)"
        )
    return Client(key, base or host, **settings)


def _client() -> Client:
    global default_client
    client = default_client
    if client is None:
        with _default_lock:
            if default_client is None:
                default_client = _make_client(None, None, {})
            client = default_client
    return client


def capture(
    event: str,
    distinct_id: Any,
    properties: Mapping[str, Any] | None = None,
    timestamp: Timestamp = None,
    uuid: UUID | str | None = None,
    groups: Mapping[str, Any] | None = None,
) -> str | None:
    """:meth:`Client.capture` on the default client."""
    return _client().capture(event, distinct_id, properties, timestamp, uuid, groups)


def identify(
    distinct_id: Any,
    properties: Mapping[str, Any] | None = None,
    timestamp: Timestamp = None,
    uuid: UUID | str | None = None,
) -> str | None:
    """:meth:`Client.identify` on the default client."""
    return _client().identify(distinct_id, properties, timestamp, uuid)


def set(
    distinct_id: Any,
    properties: Mapping[str, Any],
    timestamp: Timestamp = None,
    uuid: UUID | str | None = None,
) -> str | None:
    """:meth:`Client.set` on the default client."""
    return _client().set(distinct_id, properties, timestamp, uuid)


def set_once(
    distinct_id: Any,
    properties: Mapping[str, Any],
    timestamp: Timestamp = None,
    uuid: UUID | str | None = None,
) -> str | None:
    """:meth:`Client.set_once` on the default client."""
    return _client().set_once(distinct_id, properties, timestamp, uuid)


def alias(
    previous_id: Any,
    distinct_id: Any,
    timestamp: Timestamp = None,
    uuid: UUID | str | None = None,
) -> str | None:
    """:meth:`Client.alias` on the default client."""
    return _client().alias(previous_id, distinct_id, timestamp, uuid)


def group_identify(
    group_type: str,
    group_key: Any,
    properties: Mapping[str, Any] | None = None,
    timestamp: Timestamp = None,
    uuid: UUID | str | None = None,
    distinct_id: Any = None,
) -> str | None:
    """:meth:`Client.group_identify` on the default client."""
    return _client().group_identify(group_type, group_key, properties, timestamp, uuid, distinct_id)


def flush(timeout: float = 30.0) -> FlushResult:
    """:meth:`Client.flush` on the default client (nothing to do if there is none)."""
    return default_client.flush(timeout) if default_client is not None else FlushResult()


def shutdown(timeout: float = 5.0) -> FlushResult:
    """Shut the default client down and forget it (a later capture makes a new one)."""
    global default_client
    with _default_lock:
        client, default_client = default_client, None
    return client.shutdown(timeout) if client is not None else FlushResult()
