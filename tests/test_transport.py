"""HttpTransport against real loopback endpoints: environment settings are read
once per session and still honoured; the host URL is checked, built from its parts,
and any credentials in it are used but never shown."""

from __future__ import annotations

import base64
import logging
import math
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3

from spoolpost import Client, ConfigError
from spoolpost.delivery.neterrors import summarize
from spoolpost.delivery.transport import HttpTransport
from spoolpost.testing import LocalEndpoint, Response


def test_a_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    with LocalEndpoint() as target, LocalEndpoint() as proxy:
        for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        transport = HttpTransport(target.url, "phc_key")
        reply = transport.post([b'{"uuid":"u1"}', b'{"uuid":"u2"}'], 1_700_000_000.0)
        assert reply.status == 200
        (seen,) = proxy.requests
        assert seen.path == target.url + "/batch/"  # an absolute URI: a proxied request
        assert target.requests == []


def test_no_proxy_from_the_environment_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    with LocalEndpoint() as target, LocalEndpoint() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        transport = HttpTransport(target.url, "phc_key")
        assert transport.post([b'{"uuid":"u1"}'], 1_700_000_000.0).status == 200
        assert len(target.requests) == 1 and proxy.requests == []


# -- the host URL is checked -------------------------------------------------------------

POSTHOG = "https://us.i.posthog.com"

BAD_HOSTS: list[tuple[str, str, str]] = [
    ("ipv6-unclosed", "http://[::1", "host 'http://[::1' is not a valid URL: Invalid IPv6 URL"),
    (
        "ftp",
        "ftp://example.com",
        f"host must be an http(s) URL like {POSTHOG}, not 'ftp://example.com'",
    ),
    ("no-scheme", "example.com", f"host must be an http(s) URL like {POSTHOG}, not 'example.com'"),
    ("no-host-name", "http://:8080", "host 'http://:8080' has no host name"),
    (
        "space-in-host-name",
        "http://exa mple.com",
        "host 'http://exa mple.com' has a host name with spaces or control characters",
    ),
    *[
        (
            f"port-{name}",
            f"http://127.0.0.1:{port}",
            f"host 'http://127.0.0.1:{port}' has an invalid port: it must be a number "
            "from 1 to 65535",
        )
        for name, port in [("text", "notaport"), ("too-big", "99999"), ("zero", "0"), ("empty", "")]
    ],
    *[
        (
            name,
            url,
            f"host {url!r} must not have a query (?…) or fragment (#…): give the base URL, "
            f"like {POSTHOG}",
        )
        for name, url in [
            ("query", "http://h/ingest?x=1"),
            ("empty-query", "http://h/ingest?"),
            ("fragment", "http://h/ingest#top"),
        ]
    ],
    (
        "password-redacted",
        "http://user:s3cret@h:bad",
        "host 'http://user:***@h:bad' has an invalid port: it must be a number from 1 to 65535",
    ),
]


@pytest.mark.parametrize(
    ("host", "message"), [c[1:] for c in BAD_HOSTS], ids=[c[0] for c in BAD_HOSTS]
)
def test_a_bad_host_raises_config_error_naming_the_problem(host: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        HttpTransport(host, "phc_key")

    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/batch/"),
        ("HTTPS://EU.i.posthog.com", "https://eu.i.posthog.com/batch/"),
        ("http://[::1]:8080/ingest//", "http://[::1]:8080/ingest/batch/"),
        ("  http://h  ", "http://h/batch/"),
    ],
)
def test_the_url_is_built_from_the_checked_parts(host: str, url: str) -> None:
    transport = HttpTransport(host, "phc_key")

    assert (transport.url, transport.display_url, transport.auth) == (url, url, None)


def test_a_path_prefix_is_kept(endpoint: LocalEndpoint) -> None:
    transport = HttpTransport(endpoint.url + "/ingest/", "phc_key")

    assert transport.post([b'{"uuid":"u1"}'], 1_700_000_000.0).status == 200
    assert [r.path for r in endpoint.requests] == ["/ingest/batch/"]


def test_credentials_in_the_host_are_sent_as_basic_auth_and_never_logged(
    make_client: Callable[..., Client],
    endpoint: LocalEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="spoolpost")
    address = endpoint.url.removeprefix("http://")
    endpoint.default = Response(401, body=b'{"detail":"no"}')
    client = make_client(host=f"http://ops:s%40cret@{address}", flush_at=1000)

    assert client.transport.url == f"http://{address}/batch/"
    assert client.transport.display_url == f"http://ops:***@{address}/batch/"
    client.capture("e", distinct_id="u")
    result = client.flush(timeout=10)

    [request] = endpoint.requests
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"ops:s@cret").decode()
    assert result.paused == f'HTTP 401: {{"detail":"no"}} from http://ops:***@{address}/batch/'
    assert any(f"http://ops:***@{address}/batch/" in r.getMessage() for r in caplog.records)
    assert not any("cret" in r.getMessage() for r in caplog.records)


# -- the timeout is checked ----------------------------------------------------------------

TIMEOUT_NEEDS = "timeout must be a positive number of seconds or a (connect, read) pair of them"


@pytest.mark.parametrize(
    "timeout",
    [
        -1,
        0,
        0.0,
        (0, 0),
        (5, -1),
        (-1, 5),
        (5,),
        (1, 2, 3),
        "5",
        True,
        None,
        (5, None),
        math.nan,
        math.inf,
        (5, math.inf),
        [5, 30],
    ],
)
def test_a_timeout_that_cannot_work_raises_config_error(timeout: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        HttpTransport("http://127.0.0.1:9", "phc_key", timeout=timeout)

    assert str(caught.value) == f"{TIMEOUT_NEEDS}, not {timeout!r}"


@pytest.mark.parametrize("timeout", [-1, (0, 0)])
def test_a_client_with_an_impossible_timeout_is_refused_before_anything_starts(
    spool_path: Path, timeout: Any
) -> None:
    with pytest.raises(ConfigError) as caught:
        Client("phc_key", "http://127.0.0.1:9", spool=spool_path, timeout=timeout)

    assert str(caught.value) == f"{TIMEOUT_NEEDS}, not {timeout!r}"
    assert not spool_path.exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("spoolpost-")]


@pytest.mark.parametrize(
    ("timeout", "pair"), [(2.5, (2.5, 2.5)), (3, (3.0, 3.0)), ((1, 20), (1.0, 20.0))]
)
def test_a_good_timeout_becomes_a_connect_read_pair(
    timeout: Any, pair: tuple[float, float]
) -> None:
    assert HttpTransport("http://127.0.0.1:9", "phc_key", timeout=timeout).timeout == pair


def test_the_read_timeout_ends_a_request_to_a_hung_server(endpoint: LocalEndpoint) -> None:
    endpoint.default = Response(hang=True)
    transport = HttpTransport(endpoint.url, "phc_key", timeout=(5.0, 0.2))

    reply = transport.post([b'{"uuid":"u1"}'], 1_700_000_000.0)

    assert reply.status is None
    assert reply.error == f"timed out after 0.2 s waiting for an answer from {endpoint.url}/"


@pytest.mark.parametrize("path", ["/batch/", "/batch", "/proxy/capture/"])
def test_a_host_that_names_an_ingestion_path_is_refused(path: str) -> None:
    with pytest.raises(ConfigError, match="give the base URL"):
        HttpTransport(f"http://127.0.0.1:9{path}", "phc_key")


def test_a_host_with_a_prefix_path_is_kept() -> None:
    transport = HttpTransport("http://127.0.0.1:9/ingest/", "phc_key")
    assert transport.url == "http://127.0.0.1:9/ingest/batch/"


# -- transport errors in one line -----------------------------------------------------------


def test_a_refused_connection_is_one_line_naming_the_url(endpoint: LocalEndpoint) -> None:
    endpoint.stop()  # the port stays reserved and refuses connections
    reply = HttpTransport(endpoint.url, "phc_key").post([b'{"uuid":"u1"}'], 1_700_000_000.0)
    assert reply.describe() == f"transport error: connection refused to {endpoint.url}/"


def test_a_dropped_connection_is_one_line(endpoint: LocalEndpoint) -> None:
    endpoint.default = Response(drop=True)
    reply = HttpTransport(endpoint.url, "phc_key").post([b'{"uuid":"u1"}'], 1_700_000_000.0)
    assert reply.error == f"connection closed by {endpoint.url}/ before an answer"


def _wrapped(reason: BaseException) -> requests.ConnectionError:
    """A ConnectionError as requests raises it: urllib3's MaxRetryError around ``reason``."""
    inner = urllib3.exceptions.MaxRetryError(None, "/batch/", reason)  # type: ignore[arg-type]
    return requests.ConnectionError(inner)


@pytest.mark.parametrize(
    ("exc", "summary"),
    [
        (requests.ConnectTimeout("x"), "timed out after 5 s connecting to http://h:1/"),
        (requests.ReadTimeout("x"), "timed out after 30 s waiting for an answer from http://h:1/"),
        (
            _wrapped(socket.gaierror(-2, "Name or service not known")),
            "name resolution failed for h",
        ),
        (
            _wrapped(ConnectionRefusedError(111, "Connection refused")),
            "connection refused to http://h:1/",
        ),
        (
            _wrapped(ConnectionResetError(104, "reset")),
            "connection closed by http://h:1/ before an answer",
        ),
        (requests.exceptions.SSLError("bad cert"), "TLS error with http://h:1/"),
        (
            requests.exceptions.ProxyError("x"),
            "the proxy refused or failed the connection to http://h:1/",
        ),
        (requests.exceptions.InvalidHeader("a\nb"), "InvalidHeader: a"),
        (requests.RequestException(), "RequestException"),
    ],
)
def test_transport_errors_are_summarised_without_urllib3s_repr(
    exc: BaseException, summary: str
) -> None:
    assert summarize(exc, "http://h:1/", "h", (5.0, 30.0)) == summary


def test_a_long_unknown_error_is_cut_to_one_short_line() -> None:
    text = summarize(requests.RequestException("x" * 1000 + "\nmore"), "u", "h", (1.0, 1.0))
    assert "\n" not in text and len(text) == 200 and text.endswith("…")
