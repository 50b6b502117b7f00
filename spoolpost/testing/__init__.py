"""A real HTTP endpoint on the loopback interface that can be told to fail.

:class:`LocalEndpoint` serves HTTP/1.1 (keep-alive) on 127.0.0.1 from a background
thread. Every request is recorded (headers, raw and decoded body: gzip, deflate, zstd;
decoded JSON) and
answered from a script of :class:`Response` objects, then a dynamic handler, then a
default. A response can carry any status and headers (``Retry-After``), a delay, a
dropped connection or a hang, so tests, benchmarks, ``spoolpost demo`` and users
testing their integration exercise the real network path without mocking ``requests``.
PostHog's v1 capture path (``/i/v1/analytics/events``) is answered with a per-event
``results`` map whose verdicts can be scripted per uuid
(:meth:`LocalEndpoint.script_results`: ok, warning, drop, retry, limited).

Example::

    import requests
    from spoolpost.testing import LocalEndpoint, Response

    with LocalEndpoint() as endpoint:
        endpoint.respond(Response(503, headers={"Retry-After": "1"}), times=2)
        body = {"api_key": "phc_test", "batch": [{"uuid": "u1", "event": "e"}]}
        for _ in range(3):
            requests.post(f"{endpoint.url}/batch/", json=body, timeout=5)
        assert [r.status for r in endpoint.requests] == [503, 503, 200]
        assert endpoint.wait_for_uuids(["u1"], timeout=10)

The port is reserved when the endpoint is constructed, so :attr:`LocalEndpoint.url`
refuses connections until :meth:`LocalEndpoint.start` and again after
:meth:`LocalEndpoint.stop`; a later ``start()`` listens on the same port.

Only the standard library is used. Every request (raw and decoded body, JSON) is kept
in memory until :meth:`LocalEndpoint.clear`: a long benchmark should clear it now and
then, or run the endpoint in another process, so its memory is not counted as the
client's. Logs go to the ``spoolpost.testing`` logger.
"""

from __future__ import annotations

from spoolpost.testing.endpoint import LocalEndpoint
from spoolpost.testing.responses import (
    AI_PATH,
    V1_PATH,
    V1_RESULTS,
    Handler,
    RecordedRequest,
    Response,
    Verdict,
    reject_uuids,
    status_over_size,
    v1_answer,
)

__all__ = [
    "AI_PATH",
    "V1_PATH",
    "V1_RESULTS",
    "Handler",
    "LocalEndpoint",
    "RecordedRequest",
    "Response",
    "Verdict",
    "reject_uuids",
    "status_over_size",
    "v1_answer",
]
