"""HttpTransport against real loopback endpoints: environment settings are read
once per session and still honoured."""

from __future__ import annotations

import pytest

from spoolpost.testing import LocalEndpoint
from spoolpost.transport import HttpTransport


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
