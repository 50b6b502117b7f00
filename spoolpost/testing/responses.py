"""What the endpoint answers and what it records: :class:`Response`,
:class:`RecordedRequest`, and ready-made :data:`Handler` rules."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Response:
    """How the endpoint answers one request.

    ``status`` is the HTTP status code; ``headers`` are sent as given (``Content-Length``
    is always computed from ``body``, and ``Content-Type: application/json`` is added
    unless given). ``delay`` is in seconds, waited before answering; ``stop()`` cuts it
    short and the connection is then closed unanswered. ``drop`` closes the connection
    without answering (the client sees a connection error). ``hang`` reads the request
    and never answers until :meth:`LocalEndpoint.release_hung` or ``stop()``, which
    close the connection unanswered. ``delivered``: the uuids a 2xx answer counts as
    delivered in :meth:`LocalEndpoint.delivered_uuids` (None: every uuid of the
    request), for answers that accept only some events (PostHog v1's results map).
    Raises ``ValueError`` for an impossible response.
    """

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b'{"status":1}'
    delay: float = 0.0
    drop: bool = False
    hang: bool = False
    delivered: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 599:
            raise ValueError(f"status must be within 100..599, not {self.status}")
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, not {self.delay}")
        if self.drop and self.hang:
            raise ValueError("a response cannot both drop and hang")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the endpoint received it.

    ``time`` is ``time.time()`` (UTC epoch seconds) and ``monotonic`` is
    ``time.monotonic()`` (seconds), both taken when the request was fully read.
    ``headers`` look up case-insensitively. ``raw_body`` is as received on the wire,
    ``body`` decoded per ``Content-Encoding`` (gzip, deflate as zlib, zstd when the
    ``zstandard`` package is importable; the raw bytes if that fails or the encoding
    is unknown),
    ``json`` the decoded body or None when it is not JSON. ``status`` is the status
    answered, 0 while unanswered and for dropped or hung requests.
    """

    time: float
    monotonic: float
    method: str
    path: str
    headers: Mapping[str, str]
    raw_body: bytes
    body: bytes
    json: Any
    status: int

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events of a ``{"batch": [event, ...]}`` body; [] when the shape differs."""
        if not isinstance(self.json, dict):
            return []
        batch = self.json.get("batch")
        if not isinstance(batch, list):
            return []
        return [event for event in batch if isinstance(event, dict)]

    @property
    def uuids(self) -> list[str]:
        """The ``uuid`` of each event in :attr:`events` that has a string one, in order."""
        return [e["uuid"] for e in self.events if isinstance(e.get("uuid"), str)]


V1_PATH = "/i/v1/analytics/events"
"""PostHog's v1 capture path: its requests get a per-event ``results`` map."""
AI_PATH = "/i/v0/ai/batch/"
"""PostHog's AI endpoint (``capture_ai``): recorded and answered like ``/batch/``."""

#: Per-event verdicts of PostHog's v1 capture.
V1_RESULTS = ("ok", "warning", "drop", "retry", "limited")

Verdict = str | tuple[str, str] | None
"""A scripted v1 verdict: a result (``"retry"``), a (result, details) pair
(``("drop", "invalid event name")``), or None to leave the uuid out of the map."""


def v1_answer(request: RecordedRequest, verdicts: Mapping[str, Verdict]) -> Response:
    """A 200 with the v1 ``{"results": {uuid: {"result", "details"?}}}`` map for
    ``request``'s events: each uuid's verdict from ``verdicts``, else ``ok``;
    ``delivered`` lists the ``ok``/``warning`` uuids."""
    results: dict[str, dict[str, str]] = {}
    delivered: list[str] = []
    for uuid in request.uuids:
        verdict = verdicts.get(uuid, "ok")
        if verdict is None:
            continue
        result, details = verdict if isinstance(verdict, tuple) else (verdict, None)
        results[uuid] = {"result": result} | ({"details": details} if details else {})
        if result in ("ok", "warning"):
            delivered.append(uuid)
    body = json.dumps({"results": results}).encode()
    return Response(200, body=body, delivered=tuple(delivered))


Handler = Callable[[RecordedRequest], Response | None]
"""A dynamic rule: given the request (``status`` 0), a :class:`Response`, or None (default)."""


def status_over_size(limit: int, status: int = 413) -> Handler:
    """Return a handler answering ``status`` to requests whose body exceeds ``limit`` bytes.

    The size is that of the decoded body (after gunzip). Smaller requests get None (the
    endpoint's default).
    """
    too_large = Response(status=status, body=b'{"error":"payload too large"}')

    def handler(request: RecordedRequest) -> Response | None:
        return too_large if len(request.body) > limit else None

    return handler


def reject_uuids(
    uuids: Iterable[str], status: int = 400, body: bytes = b'{"error":"bad event"}'
) -> Handler:
    """Return a handler answering ``status`` with ``body`` to any batch holding one of ``uuids``.

    Other requests get None (the endpoint's default).
    """
    rejected = frozenset(uuids)
    response = Response(status=status, body=body)

    def handler(request: RecordedRequest) -> Response | None:
        return response if any(uuid in rejected for uuid in request.uuids) else None

    return handler
