"""LocalEndpoint: real requests over loopback, no mocks, no sleeps."""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import requests

from spoolpost.testing import (
    Handler,
    LocalEndpoint,
    RecordedRequest,
    Response,
    reject_uuids,
    status_over_size,
)

TIMEOUT = (2.0, 5.0)  # connect, read seconds: a safety net, never reached when things work


def batch(*uuids: str) -> dict[str, Any]:
    return {
        "api_key": "phc_test",
        "historical_migration": False,
        "batch": [{"uuid": u, "event": "e", "distinct_id": "d"} for u in uuids],
    }


def post(
    endpoint: LocalEndpoint, *uuids: str, session: requests.Session | None = None
) -> requests.Response:
    sender = session if session is not None else requests
    return sender.post(f"{endpoint.url}/batch/", json=batch(*uuids), timeout=TIMEOUT)


@pytest.fixture
def endpoint() -> Iterator[LocalEndpoint]:
    with LocalEndpoint() as ep:
        yield ep


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def test_default_answer_and_recording(endpoint: LocalEndpoint) -> None:
    before_wall, before_mono = time.time(), time.monotonic()
    reply = requests.post(
        f"{endpoint.url}/batch/",
        json=batch("u1", "u2"),
        headers={"User-Agent": "spoolpost/test", "X-Trace": "abc"},
        timeout=TIMEOUT,
    )

    assert reply.status_code == 200
    assert reply.content == b'{"status":1}'
    assert reply.headers["Content-Type"] == "application/json"
    [recorded] = endpoint.requests
    assert recorded.method == "POST"
    assert recorded.path == "/batch/"
    assert recorded.headers["user-agent"] == "spoolpost/test"
    assert recorded.headers["X-TRACE"] == "abc"
    assert "content-type" in recorded.headers
    assert recorded.json == batch("u1", "u2")
    assert recorded.body == recorded.raw_body == json.dumps(batch("u1", "u2")).encode()
    assert recorded.uuids == ["u1", "u2"]
    assert [e["event"] for e in recorded.events] == ["e", "e"]
    assert recorded.status == 200
    assert before_wall <= recorded.time <= time.time()
    assert before_mono <= recorded.monotonic <= time.monotonic()
    assert endpoint.delivered_uuids() == ["u1", "u2"]


def test_get_and_any_path_are_recorded(endpoint: LocalEndpoint) -> None:
    reply = requests.get(f"{endpoint.url}/decide/?v=3", timeout=TIMEOUT)

    assert reply.status_code == 200
    [recorded] = endpoint.requests
    assert (recorded.method, recorded.path, recorded.body, recorded.json) == (
        "GET",
        "/decide/?v=3",
        b"",
        None,
    )


def test_gzip_body_is_decoded(endpoint: LocalEndpoint) -> None:
    plain = json.dumps(batch("g1")).encode()
    compressed = gzip.compress(plain)

    reply = requests.post(
        f"{endpoint.url}/batch/",
        data=compressed,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        timeout=TIMEOUT,
    )

    assert reply.status_code == 200
    [recorded] = endpoint.requests
    assert recorded.raw_body == compressed
    assert recorded.body == plain
    assert recorded.uuids == ["g1"]


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"batch": "nope"}', b"[1, 2]", b'{"batch": [1, {"event": "no uuid"}]}'],
)
def test_bodies_without_batch_shape_have_no_uuids(endpoint: LocalEndpoint, body: bytes) -> None:
    requests.post(f"{endpoint.url}/batch/", data=body, timeout=TIMEOUT)

    [recorded] = endpoint.requests
    assert recorded.uuids == []
    assert endpoint.delivered_uuids() == []


def test_scripted_responses_fifo_with_times(endpoint: LocalEndpoint) -> None:
    endpoint.respond(Response(503), Response(500), times=2)
    endpoint.respond(Response(429, headers={"Retry-After": "7"}, body=b"slow down"))

    with requests.Session() as session:
        replies = [post(endpoint, f"u{i}", session=session) for i in range(6)]

    assert [r.status_code for r in replies] == [503, 503, 500, 500, 429, 200]
    assert replies[4].headers["Retry-After"] == "7"
    assert replies[4].content == b"slow down"
    assert [r.status for r in endpoint.requests] == [503, 503, 500, 500, 429, 200]
    assert endpoint.delivered_uuids() == ["u5"]


def test_script_comes_before_handler_before_default(endpoint: LocalEndpoint) -> None:
    seen: list[int] = []

    def handler(request: RecordedRequest) -> Response | None:
        seen.append(request.status)
        return Response(502) if "bad" in request.uuids else None

    endpoint.set_handler(handler)
    endpoint.respond(Response(504))
    endpoint.default = Response(202)

    statuses = [post(endpoint, u).status_code for u in ("bad", "bad", "ok")]
    endpoint.set_handler(None)
    statuses.append(post(endpoint, "bad").status_code)

    assert statuses == [504, 502, 202, 202]
    assert seen == [0, 0]  # a handler sees the request before it is answered
    assert endpoint.delivered_uuids() == ["ok", "bad"]


def test_handler_that_raises_answers_500(endpoint: LocalEndpoint) -> None:
    def handler(request: RecordedRequest) -> Response | None:
        raise RuntimeError("boom")

    endpoint.set_handler(handler)

    assert post(endpoint, "u1").status_code == 500
    assert post(endpoint, "u2").status_code == 500  # the endpoint keeps serving


def test_no_content_answer_keeps_connection_usable(endpoint: LocalEndpoint) -> None:
    endpoint.respond(Response(204))

    with requests.Session() as session:
        first = post(endpoint, "u1", session=session)
        second = post(endpoint, "u2", session=session)

    assert (first.status_code, first.content) == (204, b"")
    assert second.status_code == 200
    assert endpoint.delivered_uuids() == ["u1", "u2"]


def test_delay_is_honoured(endpoint: LocalEndpoint) -> None:
    endpoint.respond(Response(delay=0.2))

    started = time.monotonic()
    reply = post(endpoint, "u1")

    assert time.monotonic() - started >= 0.2
    assert reply.status_code == 200


def test_drop_gives_connection_error_and_session_recovers(endpoint: LocalEndpoint) -> None:
    endpoint.respond(Response(drop=True))

    with requests.Session() as session:
        with pytest.raises(requests.ConnectionError):
            post(endpoint, "u1", session=session)
        assert post(endpoint, "u2", session=session).status_code == 200

    assert [r.status for r in endpoint.requests] == [0, 200]
    assert endpoint.delivered_uuids() == ["u2"]


def _in_flight(pool: ThreadPoolExecutor, endpoint: LocalEndpoint) -> Future[requests.Response]:
    """POST from another thread and return once the endpoint has read the request."""
    future = pool.submit(post, endpoint, "stuck")
    assert endpoint.wait_for_requests(1, timeout=5)
    return future


@pytest.mark.parametrize("stuck", [Response(hang=True), Response(delay=60)], ids=["hang", "delay"])
def test_stop_releases_a_stuck_client(
    endpoint: LocalEndpoint, pool: ThreadPoolExecutor, stuck: Response
) -> None:
    endpoint.respond(stuck)
    future = _in_flight(pool, endpoint)
    assert not future.done()

    started = time.monotonic()
    endpoint.stop()

    error = future.exception(timeout=5)
    assert isinstance(error, requests.ConnectionError)  # not a read timeout
    assert time.monotonic() - started < 2
    assert endpoint.requests[0].status == 0
    assert endpoint.delivered_uuids() == []


def test_release_hung_frees_the_client_and_keeps_serving(
    endpoint: LocalEndpoint, pool: ThreadPoolExecutor
) -> None:
    endpoint.respond(Response(hang=True))
    future = _in_flight(pool, endpoint)

    endpoint.release_hung()

    assert isinstance(future.exception(timeout=5), requests.ConnectionError)
    assert post(endpoint, "after").status_code == 200


def test_hang_outlasts_a_client_read_timeout(endpoint: LocalEndpoint) -> None:
    endpoint.respond(Response(hang=True))

    with pytest.raises(requests.ReadTimeout):
        requests.post(f"{endpoint.url}/batch/", json=batch("u1"), timeout=(2.0, 0.1))


def _refused(endpoint: LocalEndpoint) -> bool:
    try:
        post(endpoint, "probe")
    except requests.ConnectionError:
        return True
    return False


def test_url_refuses_until_started_then_same_port_across_restarts() -> None:
    endpoint = LocalEndpoint()
    port, url = endpoint.port, endpoint.url
    try:
        assert url == f"http://127.0.0.1:{port}"
        assert _refused(endpoint)

        endpoint.start()
        assert endpoint.start() is endpoint  # already running: no-op
        assert post(endpoint, "u1").status_code == 200

        endpoint.stop()
        endpoint.stop()  # idempotent
        assert _refused(endpoint)

        with endpoint:
            assert (endpoint.port, endpoint.url) == (port, url)
            assert post(endpoint, "u2").status_code == 200
        assert _refused(endpoint)
    finally:
        endpoint.stop()

    assert endpoint.delivered_uuids() == ["u1", "u2"]


def test_stop_with_idle_keepalive_connection_is_prompt(endpoint: LocalEndpoint) -> None:
    with requests.Session() as session:
        assert post(endpoint, "u1", session=session).status_code == 200
        started = time.monotonic()
        endpoint.stop()
        assert time.monotonic() - started < 2


def test_stop_without_start_releases_the_port() -> None:
    endpoint = LocalEndpoint()
    endpoint.stop()

    with LocalEndpoint(port=endpoint.port) as again:
        assert post(again, "u1").status_code == 200


def _payload_of(size: int) -> list[str]:
    return [f"{i:032x}" for i in range(size)]


@pytest.mark.parametrize(
    ("handler", "uuids", "status"),
    [
        (status_over_size(2000), _payload_of(3), 200),
        (status_over_size(2000), _payload_of(60), 413),
        (status_over_size(2000, status=400), _payload_of(60), 400),
        (reject_uuids(["poison"]), ["a", "b"], 200),
        (reject_uuids(["poison"]), ["a", "poison", "b"], 400),
        (reject_uuids({"poison"}, status=422), ["poison"], 422),
    ],
)
def test_handler_helpers(
    endpoint: LocalEndpoint, handler: Handler, uuids: list[str], status: int
) -> None:
    endpoint.set_handler(handler)

    assert post(endpoint, *uuids).status_code == status


def test_reject_uuids_body() -> None:
    handler = reject_uuids(["x"], body=b'{"error":"custom"}')
    request = RecordedRequest(0.0, 0.0, "POST", "/batch/", {}, b"", b"", batch("x"), 0)

    answer = handler(request)

    assert answer is not None
    assert (answer.status, answer.body) == (400, b'{"error":"custom"}')


def test_wait_for_requests_and_uuids(endpoint: LocalEndpoint, pool: ThreadPoolExecutor) -> None:
    assert endpoint.wait_for_requests(1, timeout=0.05) is False
    assert endpoint.wait_for_uuids(["a"], timeout=0.05) is False

    futures = [pool.submit(post, endpoint, u) for u in ("a", "b", "c")]

    assert endpoint.wait_for_requests(3, timeout=5) is True
    assert endpoint.wait_for_uuids(["a", "b", "c"], timeout=5) is True
    assert [f.result(timeout=5).status_code for f in futures] == [200, 200, 200]
    assert sorted(endpoint.delivered_uuids()) == ["a", "b", "c"]


def test_clear_forgets_requests(endpoint: LocalEndpoint) -> None:
    post(endpoint, "u1")

    endpoint.clear()

    assert endpoint.requests == []
    assert endpoint.delivered_uuids() == []
    assert endpoint.wait_for_requests(1, timeout=0.01) is False


def test_keepalive_session_many_requests(endpoint: LocalEndpoint) -> None:
    with requests.Session() as session:
        statuses = {post(endpoint, f"u{i}", session=session).status_code for i in range(50)}

    assert statuses == {200}
    assert len(endpoint.delivered_uuids()) == 50


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com", ""])
def test_non_loopback_host_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        LocalEndpoint(host=host)


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("host", "url_host"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.2", "127.0.0.2"),
        ("localhost", "127.0.0.1"),
        pytest.param(
            "::1",
            "[::1]",
            marks=pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 loopback"),
        ),
    ],
)
def test_loopback_hosts_serve(host: str, url_host: str) -> None:
    with LocalEndpoint(host=host) as endpoint:
        assert endpoint.url == f"http://{url_host}:{endpoint.port}"
        assert post(endpoint, "u1").status_code == 200


@pytest.mark.parametrize(
    "kwargs",
    [{"status": 99}, {"status": 600}, {"delay": -1.0}, {"drop": True, "hang": True}],
)
def test_impossible_response_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Response(**kwargs)


def test_respond_times_must_be_positive(endpoint: LocalEndpoint) -> None:
    with pytest.raises(ValueError):
        endpoint.respond(Response(), times=0)
