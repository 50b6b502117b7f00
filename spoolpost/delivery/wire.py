"""The wire formats: PostHog's v0 ``/batch/`` and v1 ``/i/v1/analytics/events``.

A :class:`WireFormat` turns stored event bytes into one request (headers and
body) and says whether its answers carry per-event results. The spool's bytes
are format-neutral: v0 sends them as stored (never decoded), v1 reshapes each
event at send time, as posthog-python 7.x's v1 path does
(``posthog/capture_v1.py``, ``_to_v1_event``; every transform is listed in
docs/architecture.md, "The v1 wire format").

The v1 reshaping of each stored event lives in :mod:`spoolpost.delivery.reshape`
(re-exported here). Also here: the capture mode (:func:`resolve_capture_mode`),
the request-body compression (:func:`resolve_compression`, :func:`compress`) and
the reading of a v1 ``results`` map (:func:`parse_results`).
"""

from __future__ import annotations

import gzip as gzip_module
import json
import logging
import os
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple, Protocol, cast

from spoolpost._version import __version__
from spoolpost.delivery.reshape import (
    OPTION_PROPERTIES,
    UnsendableEvents,
    to_v1_event,
    v1_batch,
)
from spoolpost.errors import ConfigError
from spoolpost.events.encoding import format_timestamp
from spoolpost.spool import RequestStamp

__all__ = [
    "CAPTURE_MODES",
    "CAPTURE_MODE_ENV",
    "COMPRESSIONS",
    "COMPRESSION_ENV",
    "OPTION_PROPERTIES",
    "SDK_INFO",
    "CaptureMode",
    "Compression",
    "EventResult",
    "PostHogAI",
    "PostHogV0",
    "PostHogV1",
    "UnsendableEvents",
    "WireFormat",
    "compress",
    "parse_results",
    "resolve_capture_mode",
    "resolve_compression",
    "to_v1_event",
    "wire_format",
]

log = logging.getLogger("spoolpost")

SDK_INFO = f"spoolpost/{__version__}"
"""``PostHog-Sdk-Info`` (``name/version``): PostHog sets ``$lib``/``$lib_version`` from it."""

CaptureMode = Literal["v0", "v1"]
#: posthog-python's spellings (``posthog/capture_mode.py``): ``legacy`` is v0 and
#: ``analytics_v1`` is v1, as in posthog-go.
CAPTURE_MODES: dict[str, CaptureMode] = {
    "v0": "v0",
    "legacy": "v0",
    "v1": "v1",
    "analytics_v1": "v1",
}
#: Environment variables read, in this order, when no capture mode is given.
CAPTURE_MODE_ENV = ("SPOOLPOST_CAPTURE_MODE", "POSTHOG_CAPTURE_MODE")

Compression = Literal["none", "gzip", "deflate", "zstd"]
#: ``Content-Encoding`` tokens PostHog's v1 capture decodes (``identity`` means none).
COMPRESSIONS: dict[str, Compression] = {
    "none": "none",
    "identity": "none",
    "gzip": "gzip",
    "deflate": "deflate",
    "zstd": "zstd",
}


def resolve_capture_mode(
    value: str | None = None, environ: Mapping[str, str] | None = None
) -> CaptureMode:
    """The capture mode: ``value``, else ``SPOOLPOST_CAPTURE_MODE``, else
    ``POSTHOG_CAPTURE_MODE``, else ``"v0"``. Case and spaces are ignored.

    An unknown ``value`` raises :class:`ConfigError` (a programming error); an
    unknown environment value logs a WARNING and gives ``"v0"``, as posthog-python
    does, so a typo in the environment never flips the wire protocol.
    """
    if value is not None:
        mode = CAPTURE_MODES.get(value.strip().lower()) if isinstance(value, str) else None
        if mode is None:
            raise ConfigError(f"capture_mode must be one of {sorted(CAPTURE_MODES)}, not {value!r}")
        return mode
    env = os.environ if environ is None else environ
    for name in CAPTURE_MODE_ENV:
        raw = env.get(name, "").strip()
        if raw:
            mode = CAPTURE_MODES.get(raw.lower())
            if mode is None:
                log.warning(
                    "unknown %s=%r (expected one of %s); using v0", name, raw, sorted(CAPTURE_MODES)
                )
                return "v0"
            return mode
    return "v0"


def _zstd_compressor() -> Callable[[bytes], bytes] | None:
    try:
        import zstandard
    except ImportError:
        return None
    return cast(Callable[[bytes], bytes], zstandard.ZstdCompressor().compress)


#: The environment variable read when no compression is given (posthog-python's).
COMPRESSION_ENV = "POSTHOG_CAPTURE_COMPRESSION"


def resolve_compression(
    value: str | None, *, gzip: bool = False, environ: Mapping[str, str] | None = None
) -> Compression:
    """The request-body compression: ``value`` (``none``, ``identity``, ``gzip``,
    ``deflate`` or ``zstd``), else ``POSTHOG_CAPTURE_COMPRESSION``, else ``gzip``
    when the ``gzip`` flag is set, else ``none`` (posthog-python 7.x's order).

    Raises :class:`ConfigError` for another ``value``, or for ``zstd`` when the
    ``zstandard`` package is not installed (``pip install spoolpost[zstd]``). An
    unknown environment value, or ``zstd`` there without the package, logs a
    WARNING and falls back to the ``gzip`` flag, as posthog-python does: the
    environment never breaks capture.
    """
    if value is None:
        fallback: Compression = "gzip" if gzip else "none"
        raw = (os.environ if environ is None else environ).get(COMPRESSION_ENV, "").strip()
        if not raw:
            return fallback
        found = COMPRESSIONS.get(raw.lower())
        if found is None or (found == "zstd" and _zstd_compressor() is None):
            log.warning(
                "%s=%r is not usable (one of %s; zstd needs the zstandard package); using %s",
                COMPRESSION_ENV,
                raw,
                sorted(COMPRESSIONS),
                fallback,
            )
            return fallback
        return found
    found = COMPRESSIONS.get(value.strip().lower()) if isinstance(value, str) else None
    if found is None:
        raise ConfigError(
            f"capture_compression must be one of {sorted(COMPRESSIONS)}, not {value!r}"
        )
    if found == "zstd" and _zstd_compressor() is None:
        raise ConfigError(
            "capture_compression 'zstd' needs the zstandard package: "
            "pip install 'spoolpost[zstd]' (or choose gzip or deflate)"
        )
    return found


def compress(body: bytes, compression: Compression) -> tuple[bytes, str | None]:
    """``body`` compressed, and its ``Content-Encoding`` token (None for ``none``).

    ``deflate`` is the zlib stream (RFC 1950), as PostHog's server and
    posthog-python expect, not raw deflate. ``zstd`` is one zstd frame."""
    if compression == "gzip":
        return gzip_module.compress(body, compresslevel=5), "gzip"
    if compression == "deflate":
        return zlib.compress(body), "deflate"
    if compression == "zstd":
        compressor = _zstd_compressor()
        if compressor is None:
            raise ConfigError("capture_compression 'zstd' needs the zstandard package")
        return compressor(body), "zstd"
    return body, None


class WireFormat(Protocol):
    """One ingestion API: where to POST and how to build each request.

    ``per_event`` formats (v1) answer a 2xx with a per-event ``results`` map and
    carry a stored request identity (:class:`~spoolpost.spool.RequestStamp`)."""

    path: str
    per_event: bool

    def request(
        self, api_key: str, events: Sequence[bytes], now: float, stamp: RequestStamp | None
    ) -> tuple[dict[str, str], bytes]:
        """The headers and body of one request for ``events`` (stored JSON bytes),
        sent at ``now`` (UTC seconds, as an RFC 3339 string in ``sent_at``).
        Raises :class:`UnsendableEvents` for stored events it cannot send."""
        ...


class PostHogV0:
    """PostHog's batch endpoint: ``POST {host}/batch/`` with
    ``{"api_key", "historical_migration", "sent_at", "batch": [event, …]}``
    (PostHog API docs, "Capture: batch events"). The stored bytes go out as they are."""

    path = "/batch/"
    per_event = False

    def __init__(self, historical_migration: bool = False) -> None:
        self.historical_migration = historical_migration

    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json"}

    def body(self, api_key: str, events: Sequence[bytes], sent_at: str) -> bytes:
        flag = "true" if self.historical_migration else "false"
        head = (
            f'{{"api_key":{json.dumps(api_key)},"historical_migration":{flag},'
            f'"sent_at":"{sent_at}","batch":['
        ).encode()
        return head + b",".join(events) + b"]}"

    def request(
        self, api_key: str, events: Sequence[bytes], now: float, stamp: RequestStamp | None
    ) -> tuple[dict[str, str], bytes]:
        return self.headers(), self.body(api_key, events, format_timestamp(None, now))


class PostHogAI(PostHogV0):
    """PostHog's dedicated AI endpoint, ``POST {host}/i/v0/ai/batch/``, for the
    events of ``capture_ai`` (posthog-python 7.x pins its AI lane to this v0 body
    whatever the capture mode): the v0 body, stored bytes as they are."""

    path = "/i/v0/ai/batch/"


class PostHogV1:
    """PostHog's v1 capture endpoint, ``POST {host}/i/v1/analytics/events``
    (posthog-python 7.x ``capture_mode="v1"``): ``Authorization: Bearer <key>``,
    body ``{"created_at", "batch": [v1 event, …]}`` (and ``"historical_migration":
    true`` only when set), no ``api_key`` and no ``sent_at``. Headers
    ``PostHog-Sdk-Info`` (:data:`SDK_INFO`), ``PostHog-Attempt``,
    ``PostHog-Request-Id`` and ``created_at`` come from the stored ``stamp``;
    ``PostHog-Request-Timestamp`` is ``now``. Each stored body is spliced into
    its v1 shape, or parsed once and reshaped by :func:`to_v1_event`
    (:func:`~spoolpost.delivery.reshape.v1_batch`)."""

    path = "/i/v1/analytics/events"
    per_event = True

    def __init__(self, historical_migration: bool = False) -> None:
        self.historical_migration = historical_migration

    def request(
        self, api_key: str, events: Sequence[bytes], now: float, stamp: RequestStamp | None
    ) -> tuple[dict[str, str], bytes]:
        sent = format_timestamp(None, now)
        if stamp is None:  # a request with no stored identity (direct use): attempt 1
            stamp = RequestStamp(str(uuid.uuid4()), sent, 1)
        head = b'{"created_at":' + json.dumps(stamp.created_at).encode() + b',"batch":['
        tail = b'],"historical_migration":true}' if self.historical_migration else b"]}"
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {api_key}",
            "PostHog-Sdk-Info": SDK_INFO,
            "PostHog-Attempt": str(stamp.attempt),
            "PostHog-Request-Id": stamp.request_id,
            "PostHog-Request-Timestamp": sent,
        }
        return headers, head + v1_batch(events) + tail


def wire_format(mode: CaptureMode, historical_migration: bool = False) -> WireFormat:
    """The :class:`WireFormat` of a capture ``mode``."""
    if mode == "v1":
        return PostHogV1(historical_migration)
    return PostHogV0(historical_migration)


# -- v1 answers -----------------------------------------------------------------------


class EventResult(NamedTuple):
    """One event's verdict in a v1 ``results`` map: ``result`` (``ok``, ``warning``,
    ``drop``, ``retry``, ``limited``, or a value unknown to this version) and the
    server's ``details`` (None when absent)."""

    result: str
    details: str | None


#: The verdict of an entry ``{"result": "ok"}``, shared.
OK = EventResult("ok", None)
_OK_ENTRY = {"result": "ok"}


def parse_results(content: bytes) -> dict[str, EventResult] | None:
    """The ``results`` map of a v1 2xx body (``{"results": {uuid: {"result": …,
    "details": …}}}``), or None when it is malformed: not JSON, not an object, no
    ``results`` object, or an entry that is not an object with a string
    ``result`` (a non-string ``details`` is kept as its JSON text)."""
    try:
        payload = json.loads(content)
    except ValueError:
        return None
    results = payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, dict):
        return None
    parsed: dict[str, EventResult] = {}
    plain = {"ok": OK}  # one shared verdict per result without details
    for event_uuid, entry in results.items():
        if entry == _OK_ENTRY:  # the usual entry, in one comparison
            parsed[event_uuid] = OK
            continue
        if not isinstance(entry, dict):
            return None
        result = entry.get("result")
        if not isinstance(result, str):
            return None
        details = entry.get("details")
        if details is None:
            verdict = plain.get(result)
            if verdict is None:
                verdict = plain[result] = EventResult(result, None)
        else:
            if not isinstance(details, str):
                details = json.dumps(details)
            verdict = EventResult(result, details)
        parsed[event_uuid] = verdict
    return parsed
