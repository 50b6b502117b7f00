"""PostHog's v1 capture protocol: the wire format, per-event settlement on a real
spool, the stored request identity, compression and its 415 fallback, and the
loopback endpoint's v1 answers."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kit import API_KEY, START, MakeRig, Rig, counts, live

from spoolpost.cli import cli
from spoolpost.delivery.policy import RetryPolicy
from spoolpost.delivery.transport import HttpTransport
from spoolpost.delivery.wire import (
    PostHogV0,
    PostHogV1,
    resolve_capture_mode,
    resolve_compression,
    to_v1_event,
)
from spoolpost.errors import ConfigError
from spoolpost.testing import V1_PATH, LocalEndpoint, RecordedRequest, Response

V1 = PostHogV1()


def v1_rig(make_rig: MakeRig, **options: Any) -> Rig:
    return make_rig(wire=PostHogV1(), **options)


def accounted(rig: Rig, captured: list[str], endpoint: LocalEndpoint) -> dict[str, int]:
    """Where every captured event is: delivered (answered ok), dead, pending; lost."""
    delivered = set(endpoint.delivered_uuids())
    dead = {e.uuid for e in rig.dead()}
    pending = {e.uuid for e in rig.pending()}
    lost = set(captured) - delivered - dead - pending
    return {
        "delivered": len(delivered & set(captured)),
        "dead": len(dead),
        "pending": len(pending),
        "lost": len(lost),
    }


# -- the wire format ---------------------------------------------------------------------


def test_a_v1_request_has_bearer_auth_the_v1_headers_and_created_at_batch_only(
    make_rig: MakeRig, endpoint: LocalEndpoint
) -> None:
    rig = v1_rig(make_rig)
    [uuid] = rig.capture()

    rig.step()

    [request] = endpoint.requests
    assert request.path == V1_PATH
    h = request.headers
    assert h["Authorization"] == f"Bearer {API_KEY}"
    assert h["Content-Type"] == "application/json"
    assert h["PostHog-Sdk-Info"].startswith("spoolpost/")
    assert h["PostHog-Attempt"] == "1"
    assert len(h["PostHog-Request-Id"]) == 36
    assert h["PostHog-Request-Timestamp"] == "2023-11-14T22:13:20Z"
    assert "Content-Encoding" not in h
    assert set(request.json) == {"created_at", "batch"}
    assert request.json["created_at"] == "2023-11-14T22:13:20Z"
    [event] = request.json["batch"]
    assert event["uuid"] == uuid and event["options"] == {}
    assert "$lib" not in event["properties"]
    assert counts(rig.spool) == {"pending": 0, "leased": 0, "dead": 0}


def test_to_v1_event_reshapes_exactly_as_posthog_python() -> None:
    capture_v1 = pytest.importorskip("posthog.capture_v1")
    stored = {
        "event": "e",
        "uuid": "0190a000-0000-7000-8000-000000000001",
        "distinct_id": "d",
        "timestamp": "2023-11-14T22:13:20Z",
        "type": "capture",
        "$set": {"a": 1, "b": 1},
        "$set_once": "top",
        "properties": {
            "$lib": "spoolpost",
            "$lib_version": "0.1.0",
            "$set": {"b": 2},
            "$session_id": "s1",
            "$window_id": 7,
            "$cookieless_mode": "TRUE",
            "$ignore_sent_at": 0,
            "$product_tour_id": 3,
            "$process_person_profile": "maybe",
            "keep": [1, 2],
        },
    }
    mine = to_v1_event(stored)
    theirs = capture_v1._to_v1_event(stored)
    # The same instant: posthog-python writes +00:00, the stored RFC 3339 string has Z.
    assert theirs.pop("timestamp") == "2023-11-14T22:13:20+00:00"
    assert {**theirs, "timestamp": mine["timestamp"]} == mine
    assert mine == {
        "event": "e",
        "uuid": stored["uuid"],
        "distinct_id": "d",
        "timestamp": "2023-11-14T22:13:20Z",
        "options": {"cookieless_mode": True, "disable_skew_correction": False},
        "properties": {"$set": {"a": 1, "b": 2}, "$set_once": "top", "keep": [1, 2]},
        "session_id": "s1",
    }


def test_historical_migration_is_in_a_v1_body_only_when_set() -> None:
    _, plain = PostHogV1().request(
        API_KEY,
        [b'{"event":"e","uuid":"u","distinct_id":"d","timestamp":"t","properties":{}}'],
        START,
        None,
    )
    _, flagged = PostHogV1(True).request(API_KEY, [], START, None)
    assert "historical_migration" not in json.loads(plain)
    assert json.loads(flagged)["historical_migration"] is True


@pytest.mark.parametrize(
    ("given", "env", "mode"),
    [
        (None, {}, "v0"),
        ("legacy", {}, "v0"),
        ("analytics_v1", {}, "v1"),
        (" V1 ", {"POSTHOG_CAPTURE_MODE": "v0"}, "v1"),
        (None, {"POSTHOG_CAPTURE_MODE": "v1"}, "v1"),
        (None, {"SPOOLPOST_CAPTURE_MODE": "v0", "POSTHOG_CAPTURE_MODE": "v1"}, "v0"),
        (None, {"POSTHOG_CAPTURE_MODE": "v2"}, "v0"),  # a typo warns, never flips
    ],
)
def test_the_capture_mode_comes_from_the_argument_then_the_environment(
    given: str | None, env: dict[str, str], mode: str
) -> None:
    assert resolve_capture_mode(given, env) == mode


@pytest.mark.parametrize("bad", ["v2", "", "brotli"])
def test_a_bad_capture_mode_or_compression_name_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="capture_mode must be one of"):
        resolve_capture_mode(bad)
    with pytest.raises(ConfigError, match="capture_compression must be one of"):
        resolve_compression(bad)


def test_zstd_without_zstandard_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "zstandard", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'spoolpost\[zstd\]'"):
        resolve_compression("zstd")


# -- per-event settlement ----------------------------------------------------------------


def test_a_partial_answer_ok_retry_drop_settles_each_row(
    make_rig: MakeRig, endpoint: LocalEndpoint, tmp_path: Path
) -> None:
    rig = v1_rig(make_rig)
    ok, again, dropped = rig.capture(3)
    endpoint.script_results({again: "retry", dropped: ("drop", "event name is reserved")})

    rig.step()

    first = endpoint.requests[0]
    [row] = rig.pending()
    assert (row.uuid, row.state, row.attempts) == (again, "pending", 1)
    [dead] = rig.dead()
    assert (dead.uuid, dead.reason, dead.status) == (dropped, "dropped", 200)
    assert dead.detail == "event name is reserved"
    assert endpoint.delivered_uuids() == [ok]

    rig.capture(2)  # newer events never join the stored request
    rig.clock.advance(60)
    rig.step()

    second = endpoint.requests[1]
    assert second.uuids == [again]
    assert second.headers["PostHog-Request-Id"] == first.headers["PostHog-Request-Id"]
    assert second.headers["PostHog-Attempt"] == "2"
    assert second.json["created_at"] == first.json["created_at"]
    assert second.events[0]["timestamp"] == first.events[1]["timestamp"]
    rig.step()  # the two newer events: a new request of their own
    assert endpoint.requests[2].uuids != [again]
    assert endpoint.requests[2].headers["PostHog-Attempt"] == "1"
    assert endpoint.requests[2].headers["PostHog-Request-Id"] != first.headers["PostHog-Request-Id"]
    assert counts(rig.spool) == {"pending": 0, "leased": 0, "dead": 1}


def test_tail_dead_shows_the_servers_detail(
    make_rig: MakeRig, endpoint: LocalEndpoint, spool_path: Path
) -> None:
    from click.testing import CliRunner

    from spoolpost.cli import cli

    rig = v1_rig(make_rig)
    [dropped] = rig.capture()
    endpoint.script_results({dropped: ("drop", "invalid distinct_id")})
    rig.step()
    rig.close()

    out = CliRunner().invoke(cli, ["tail", str(spool_path), "--state", "dead"])

    assert out.exit_code == 0, out.output
    assert dropped in out.output and "dropped" in out.output
    assert "invalid distinct_id" in out.output


@pytest.mark.parametrize(
    ("verdict", "state", "reason", "detail"),
    [
        ("ok", "delivered", None, None),
        ("warning", "delivered", None, None),
        ("limited", "dead", "limited", "quota limited"),
        (("limited", "billing limit"), "dead", "limited", "billing limit"),
        ("drop", "dead", "dropped", "dropped by the server"),
        ("someday", "dead", "unknown_result", "result 'someday'"),
        (("someday", "why"), "dead", "unknown_result", "result 'someday': why"),
        ("retry", "pending", None, None),
        (None, "pending", None, None),  # no entry: retried, never taken as delivered
    ],
)
def test_each_verdict_has_one_outcome(
    make_rig: MakeRig,
    endpoint: LocalEndpoint,
    verdict: Any,
    state: str,
    reason: str | None,
    detail: str | None,
) -> None:
    rig = v1_rig(make_rig)
    captured = rig.capture()
    endpoint.script_results({captured[0]: verdict})

    rig.step()

    where = {"delivered": 0, "dead": 0, "pending": 0, "lost": 0}
    where[state] = 1
    assert accounted(rig, captured, endpoint) == where
    if state == "dead":
        [dead] = rig.dead()
        assert (dead.reason, dead.detail) == (reason, detail)
    if state == "pending":
        [row] = rig.pending()
        assert row.attempts == 1
        assert row.last_error is not None and row.last_error.startswith("HTTP 200: ")


def test_a_uuid_missing_from_every_answer_dies_missing_result_at_max_attempts(
    make_rig: MakeRig, endpoint: LocalEndpoint
) -> None:
    rig = v1_rig(make_rig, retry=RetryPolicy(max_attempts=3))
    captured = [gone] = rig.capture()
    endpoint.script_results({gone: None})
    endpoint.script_results({gone: None})
    endpoint.script_results({gone: None})

    rig.run(120)

    assert len(endpoint.requests) == 3
    assert [r.headers["PostHog-Attempt"] for r in endpoint.requests] == ["1", "2", "3"]
    [dead] = rig.dead()
    assert (dead.reason, dead.attempts) == ("missing_result", 3)
    assert accounted(rig, captured, endpoint) == {
        "delivered": 0,
        "dead": 1,
        "pending": 0,
        "lost": 0,
    }


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"status":1}',
        b'{"results":[]}',
        b'{"results":{"u":"ok"}}',
        b'{"results":{"u":{"details":"no result"}}}',
    ],
)
def test_a_malformed_results_map_retries_the_whole_batch(
    make_rig: MakeRig, endpoint: LocalEndpoint, body: bytes
) -> None:
    rig = v1_rig(make_rig)
    captured = rig.capture(2)
    endpoint.respond(Response(200, body=body))

    rig.step()

    assert [(e.uuid, e.attempts) for e in rig.pending()] == [(u, 1) for u in captured]
    assert all("malformed results map" in (e.last_error or "") for e in rig.pending())
    rig.clock.advance(60)
    rig.step()
    assert endpoint.requests[1].headers["PostHog-Attempt"] == "2"
    assert accounted(rig, captured, endpoint) == {
        "delivered": 2,
        "dead": 0,
        "pending": 0,
        "lost": 0,
    }


def test_results_for_uuids_not_in_the_batch_are_ignored(
    make_rig: MakeRig, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    rig = v1_rig(make_rig)
    captured = [mine] = rig.capture()

    def answer(request: RecordedRequest) -> Response:
        results = {mine: {"result": "ok"}, "stranger": {"result": "drop"}}
        return Response(200, body=json.dumps({"results": results}).encode(), delivered=(mine,))

    endpoint.set_handler(answer)
    rig.step()

    assert accounted(rig, captured, endpoint) == {
        "delivered": 1,
        "dead": 0,
        "pending": 0,
        "lost": 0,
    }
    assert "not in the request" in caplog.text


def test_batch_level_statuses_keep_the_v0_policy_under_v1(
    make_rig: MakeRig, endpoint: LocalEndpoint
) -> None:
    rig = v1_rig(make_rig)
    captured = rig.capture(4)
    endpoint.respond(Response(503, headers={"Retry-After": "5"}))
    endpoint.respond(Response(413))

    rig.step()  # 503: rescheduled, gate closed
    assert [e.attempts for e in rig.pending()] == [1] * 4
    rig.clock.advance(60)
    rig.run(60)  # 413: split in halves, each delivered

    assert [r.status for r in endpoint.requests][:2] == [503, 413]
    ids = [r.headers["PostHog-Request-Id"] for r in endpoint.requests]
    attempts = [r.headers["PostHog-Attempt"] for r in endpoint.requests]
    # One stored request retried whole (same id, attempt 2), then split: each
    # half is a new request (see test_v1_requests.py).
    assert ids[0] == ids[1] and attempts[:2] == ["1", "2"]
    assert len(set(ids[1:])) == 3 and attempts[2:] == ["1", "1"]
    assert accounted(rig, captured, endpoint) == {
        "delivered": 4,
        "dead": 0,
        "pending": 0,
        "lost": 0,
    }


def test_a_restart_between_attempts_goes_on_counting(
    make_rig: MakeRig, endpoint: LocalEndpoint
) -> None:
    rig = v1_rig(make_rig)
    captured = [again] = rig.capture()
    endpoint.script_results({again: "retry"})
    rig.step()

    fresh = rig.restart(wire=PostHogV1())
    fresh.clock.advance(60)
    fresh.step()

    first, second = endpoint.requests
    assert second.headers["PostHog-Request-Id"] == first.headers["PostHog-Request-Id"]
    assert second.headers["PostHog-Attempt"] == "2"
    assert second.json["created_at"] == first.json["created_at"]
    assert accounted(fresh, captured, endpoint)["delivered"] == 1


@pytest.mark.parametrize(("first", "then"), [(PostHogV0, PostHogV1), (PostHogV1, PostHogV0)])
def test_a_spool_captured_under_one_mode_is_delivered_under_the_other(
    make_rig: MakeRig, endpoint: LocalEndpoint, first: type, then: type
) -> None:
    rig = make_rig(wire=first())
    captured = rig.capture(3)
    stored = {e.uuid: e.event["timestamp"] for e in live(rig.spool)}

    fresh = rig.restart(wire=then())
    fresh.step()

    [request] = endpoint.requests
    assert request.path == then.path
    assert {e["uuid"]: e["timestamp"] for e in request.events} == stored
    assert accounted(fresh, captured, endpoint) == {
        "delivered": 3,
        "dead": 0,
        "pending": 0,
        "lost": 0,
    }


# -- compression -------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "deflate", "zstd"])
def test_each_compression_is_round_tripped_by_the_loopback_endpoint(
    make_rig: MakeRig, endpoint: LocalEndpoint, compression: str
) -> None:
    pytest.importorskip("zstandard")
    rig = v1_rig(make_rig, compression=compression)
    captured = rig.capture(3, pad=2000)

    rig.step()

    [request] = endpoint.requests
    assert request.headers.get("Content-Encoding") == (
        None if compression == "none" else compression
    )
    assert request.uuids == captured
    if compression != "none":
        assert len(request.raw_body) < len(request.body)
    assert accounted(rig, captured, endpoint)["delivered"] == 3


@pytest.mark.parametrize(
    "refusal",
    [Response(415), Response(400, body=b'{"error":"invalid encoding"}')],
)
def test_an_encoding_refusal_falls_back_to_uncompressed_once_and_is_logged(
    make_rig: MakeRig,
    endpoint: LocalEndpoint,
    caplog: pytest.LogCaptureFixture,
    refusal: Response,
) -> None:
    rig = v1_rig(make_rig, compression="gzip")
    captured = rig.capture(2)
    endpoint.respond(refusal)

    rig.step()
    rig.capture(1)
    rig.step()

    encodings = [r.headers.get("Content-Encoding") for r in endpoint.requests]
    assert encodings == ["gzip", None, None]
    same = endpoint.requests[1].headers["PostHog-Request-Id"]
    assert endpoint.requests[0].headers["PostHog-Request-Id"] == same
    assert "sending uncompressed from now on" in caplog.text
    assert rig.dead() == []
    assert accounted(rig, captured, endpoint)["delivered"] == 2


def test_an_encoding_refusal_of_an_uncompressed_body_pauses_and_dead_letters_nothing(
    make_rig: MakeRig, endpoint: LocalEndpoint
) -> None:
    rig = v1_rig(make_rig, compression="deflate")
    captured = rig.capture(2)
    endpoint.respond(Response(415), times=2)

    rig.step()

    assert [r.headers.get("Content-Encoding") for r in endpoint.requests] == ["deflate", None]
    assert rig.step().blocked_by == "paused"
    assert accounted(rig, captured, endpoint) == {
        "delivered": 0,
        "dead": 0,
        "pending": 2,
        "lost": 0,
    }


# -- a crash between the answer and its settlement ------------------------------------

CHILD = """
import sys, threading
from spoolpost.clock import ManualClock
from spoolpost.delivery import Dispatcher, DeliveryConfig
from spoolpost.delivery.transport import HttpTransport
from spoolpost.delivery.wire import PostHogV1
from spoolpost.spool import Spool

class Stalled(Spool):
    def settle(self, *args, **kwargs):
        print("answered", flush=True)  # the answer is in; settle it never
        threading.Event().wait()

spool = Stalled(sys.argv[1])
transport = HttpTransport(sys.argv[2], "phc_test_key", wire=PostHogV1())
config = DeliveryConfig(flush_at=1, flush_interval=0.0, lease_ttl=3600.0)
Dispatcher(spool, transport, config=config, clock=ManualClock(start=1_700_000_000.0)).step(
    1_700_000_000.0
)
"""


@pytest.mark.slow
def test_sigkill_between_a_partial_answer_and_its_settlement_loses_nothing(
    make_rig: MakeRig, endpoint: LocalEndpoint, spool_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    rig = v1_rig(make_rig)
    captured = ok, again, dropped = rig.capture(3)
    rig.close()
    endpoint.script_results({again: "retry", dropped: ("drop", "bad")})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(spool_path), endpoint.url],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "answered"
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL
    first = endpoint.requests[0]

    fresh = v1_rig(make_rig)  # the next process: the dead owner's lease is reclaimed
    fresh.step()

    second = endpoint.requests[1]
    assert second.uuids == captured  # nothing was settled: all of it again, same uuids
    assert second.headers["PostHog-Request-Id"] == first.headers["PostHog-Request-Id"]
    assert second.headers["PostHog-Attempt"] == "2"
    assert [e["timestamp"] for e in second.events] == [e["timestamp"] for e in first.events]
    assert endpoint.delivered_uuids() == [ok, ok, again, dropped]  # duplicates: same uuid
    assert accounted(fresh, captured, endpoint) == {
        "delivered": 3,
        "dead": 0,
        "pending": 0,
        "lost": 0,
    }


@pytest.mark.parametrize(
    ("captured_under", "flags", "path"),
    [
        (PostHogV0, ["--capture-mode", "v1", "--capture-compression", "deflate"], V1_PATH),
        (PostHogV1, ["--capture-mode", "legacy"], "/batch/"),
    ],
)
def test_spoolpost_drain_delivers_a_spool_under_the_other_capture_mode(
    make_rig: MakeRig,
    endpoint: LocalEndpoint,
    spool_path: Path,
    captured_under: type,
    flags: list[str],
    path: str,
) -> None:
    import time

    from click.testing import CliRunner

    from spoolpost.cli import cli
    from spoolpost.clock import ManualClock

    rig = make_rig(wire=captured_under(), clock=ManualClock(start=time.time()))
    captured = rig.capture(5)  # now: not expired when the drain runs on the wall clock
    rig.close()

    args = ["drain", str(spool_path), "--host", endpoint.url, "--api-key", API_KEY, "--json"]
    out = CliRunner().invoke(cli, [*args, *flags])

    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["delivered"] == 5
    assert {r.path for r in endpoint.requests} == {path}
    assert sorted(endpoint.delivered_uuids()) == sorted(captured)


def test_spoolpost_drain_refuses_an_unknown_capture_mode(spool_path: Path) -> None:
    from click.testing import CliRunner

    from spoolpost.cli import cli

    out = CliRunner().invoke(cli, ["drain", str(spool_path), "--capture-mode", "v2"])
    assert out.exit_code == 2 and "Invalid value for '--capture-mode'" in out.output
    assert not spool_path.exists()


def test_client_capture_mode_v1_delivers_through_the_v1_path(
    make_client: Any, endpoint: LocalEndpoint
) -> None:
    client = make_client(capture_mode="analytics_v1", capture_compression="gzip")
    uuid = client.capture("signed up", distinct_id="u1", properties={"$session_id": "s"})
    assert client.flush(timeout=10).delivered == 1
    [request] = endpoint.requests
    assert request.path == V1_PATH and request.headers["Content-Encoding"] == "gzip"
    [event] = request.events
    assert (event["uuid"], event["session_id"]) == (uuid, "s")


def test_a_client_with_a_bad_compression_name_raises_config_error(make_client: Any) -> None:
    with pytest.raises(ConfigError, match="capture_compression must be one of"):
        make_client(capture_mode="v1", capture_compression="brotli")


@pytest.mark.parametrize(
    ("gzip", "compression", "sent", "logged"),
    [
        (False, None, None, False),
        (True, None, "gzip", False),
        (False, "deflate", None, True),
        (False, "gzip", None, True),
        (True, "deflate", "gzip", True),
        (True, "none", "gzip", True),
        (True, "gzip", "gzip", False),
        (False, "none", None, False),
    ],
)
def test_v0_ignores_capture_compression_and_sends_gzip_only_with_the_gzip_flag(
    endpoint: LocalEndpoint,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    gzip: bool,
    compression: str | None,
    sent: str | None,
    logged: bool,
) -> None:
    # posthog-python: capture_compression is "ignored in V0, which uses gzip".
    monkeypatch.setenv("POSTHOG_CAPTURE_COMPRESSION", "deflate")  # v1's only, too
    with caplog.at_level(logging.INFO, logger="spoolpost"):
        transport = HttpTransport(endpoint.url, API_KEY, gzip=gzip, compression=compression)
    assert transport.post([b'{"uuid":"u1"}'], START).status == 200
    assert endpoint.requests[0].headers.get("Content-Encoding") == sent
    assert ("applies to the v1 capture mode only" in caplog.text) is logged


def test_v0_still_refuses_a_bad_capture_compression_name() -> None:
    with pytest.raises(ConfigError, match="capture_compression must be one of"):
        HttpTransport("http://127.0.0.1:9", API_KEY, compression="brotli")


def test_drain_help_names_the_compression_environment_variable() -> None:
    result = CliRunner().invoke(cli, ["drain", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "$POSTHOG_CAPTURE_COMPRESSION" in " ".join(result.output.split())
