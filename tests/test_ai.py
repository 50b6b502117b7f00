"""capture_ai: PostHog's dedicated AI endpoint (``POST /i/v0/ai/batch/``) as a lane of
the same spool: stored with its lane, sent in batches of its own in a v0 body whatever
the capture mode, replayed to where it belongs. Also POSTHOG_CAPTURE_COMPRESSION."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kit import API_KEY, MakeRig, counts, dead_letters, live, make_event

from spoolpost import Client, Posthog
from spoolpost.delivery.transport import HttpTransport
from spoolpost.delivery.wire import PostHogAI, PostHogV1, resolve_compression
from spoolpost.events.api import AI_LANE as EVENTS_AI_LANE
from spoolpost.spool import AI_LANE, Filter
from spoolpost.testing import AI_PATH, V1_PATH, LocalEndpoint, Response

MakeClient = Callable[..., Client]


def by_path(endpoint: LocalEndpoint) -> dict[str, list[str]]:
    """The uuids each path received, in arrival order."""
    found: dict[str, list[str]] = {}
    for request in endpoint.requests:
        found.setdefault(request.path, []).extend(request.uuids)
    return found


def test_the_lane_name_is_one_across_events_and_spool() -> None:
    assert EVENTS_AI_LANE == AI_LANE == "ai"
    assert PostHogAI.path == AI_PATH == "/i/v0/ai/batch/"


@pytest.mark.parametrize("mode", ["v0", "v1"])
def test_capture_ai_goes_to_the_ai_endpoint_in_a_v0_body_whatever_the_mode(
    make_client: MakeClient, endpoint: LocalEndpoint, mode: str
) -> None:
    client = make_client(capture_mode=mode, flush_at=1000)
    uuid = client.capture_ai("$ai_generation", distinct_id="u1", properties={"$ai_model": "m"})
    assert client.flush(timeout=10).delivered == 1
    [request] = endpoint.requests
    assert request.path == AI_PATH
    assert set(request.json) == {"api_key", "historical_migration", "sent_at", "batch"}
    assert request.json["api_key"] == API_KEY and "Authorization" not in request.headers
    [event] = request.events
    assert (event["event"], event["uuid"], event["distinct_id"]) == ("$ai_generation", uuid, "u1")
    assert event["properties"]["$ai_model"] == "m" and event["properties"]["$lib"] == "spoolpost"


@pytest.mark.parametrize("mode", ["v0", "v1"])
def test_ai_and_analytics_events_never_share_a_batch(
    make_client: MakeClient, endpoint: LocalEndpoint, mode: str
) -> None:
    client = make_client(capture_mode=mode, flush_at=1000, send=False)
    analytics, ai = [], []
    for i in range(6):
        analytics.append(client.capture(f"e{i}", distinct_id="u"))
        ai.append(client.capture_ai("$ai_span", distinct_id="u"))
    client.shutdown(0)
    sender = make_client(capture_mode=mode, flush_at=1000)
    assert sender.flush(timeout=10).delivered == 12
    lanes = by_path(endpoint)
    assert sorted(lanes[AI_PATH]) == sorted(ai)  # senders run in parallel
    assert sorted(lanes[V1_PATH if mode == "v1" else "/batch/"]) == sorted(analytics)
    for request in endpoint.requests:  # each request holds one lane only
        assert set(request.uuids) <= set(ai) or set(request.uuids) <= set(analytics)
    assert counts(sender.spool) == {"pending": 0, "leased": 0, "dead": 0}


def test_a_rejected_ai_event_is_dead_and_a_replay_sends_it_to_the_ai_endpoint(
    make_client: MakeClient, endpoint: LocalEndpoint
) -> None:
    endpoint.respond(Response(status=400, body=b"bad ai event"))
    client = make_client(flush_at=1000)
    uuid = client.capture_ai("$ai_trace", distinct_id="u1")
    result = client.flush(timeout=10)
    assert (result.delivered, result.dead) == (0, 1)
    [dead] = dead_letters(client.spool)
    assert (dead.uuid, dead.reason, dead.status) == (uuid, "rejected", 400)
    assert client.spool.replay(Filter(uuids=(uuid,)), now=client.clock.now()) == 1
    assert client.flush(timeout=10).delivered == 1
    assert [r.path for r in endpoint.requests] == [AI_PATH, AI_PATH]
    assert endpoint.delivered_uuids() == [uuid]
    assert counts(client.spool) == {"pending": 0, "leased": 0, "dead": 0}


def test_a_claim_keeps_lanes_apart_and_takes_its_lanes_later_rows(make_rig: MakeRig) -> None:
    rig = make_rig()
    now = rig.clock.now()
    lanes = [None, None, AI_LANE, AI_LANE, None]
    uuids = []
    for i, lane in enumerate(lanes):
        uuid, body = make_event(now, i, 0, "e")
        assert rig.spool.append(uuid, body, now, lane)
        uuids.append(uuid)
    batches = []
    while (batch := rig.spool.claim(now, max_events=10, max_bytes=10**6, lease_ttl=60)) is not None:
        batches.append([(r.uuid, r.lane) for r in batch.rows])
    assert batches == [
        [(uuids[0], None), (uuids[1], None), (uuids[4], None)],
        [(uuids[2], AI_LANE), (uuids[3], AI_LANE)],
    ]


def test_capture_ai_under_gzip_sends_a_gzip_body(
    make_client: MakeClient, endpoint: LocalEndpoint
) -> None:
    client = make_client(capture_mode="v1", capture_compression="deflate")
    client.capture_ai("$ai_generation", distinct_id="u1")
    assert client.flush(timeout=10).delivered == 1
    [request] = endpoint.requests
    assert request.path == AI_PATH and request.headers["Content-Encoding"] == "gzip"


def test_the_ai_transport_shares_host_key_and_timeouts(endpoint: LocalEndpoint) -> None:
    transport = HttpTransport(endpoint.url, API_KEY, wire=PostHogV1(), timeout=(1.0, 2.0))
    assert transport.for_lane(None) is transport
    ai = transport.for_lane(AI_LANE)
    assert ai is transport.for_lane(AI_LANE)
    assert ai.url == endpoint.url + AI_PATH and ai.timeout == (1.0, 2.0)
    assert not ai.wire.per_event and ai.compression == "none"


# -- the drop-in ---------------------------------------------------------------------


@pytest.fixture
def posthog(spool_path: Path, endpoint: LocalEndpoint) -> Iterator[Posthog]:
    client = Posthog(API_KEY, host=endpoint.url, spool=str(spool_path), flush_at=1000)
    yield client
    client.shutdown()


def test_posthog_capture_ai_keeps_a_supplied_uuid_and_returns_it(
    posthog: Posthog, endpoint: LocalEndpoint
) -> None:
    supplied = "0198c0de-0000-7000-8000-000000000abc"
    assert posthog.capture_ai("$ai_generation", distinct_id="u", uuid=supplied) == supplied
    posthog.flush()
    [request] = endpoint.requests
    assert request.path == AI_PATH and request.uuids == [supplied]
    assert request.events[0]["properties"]["$python_runtime"]


def test_posthog_capture_ai_with_another_name_still_goes_to_the_ai_endpoint(
    posthog: Posthog, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="spoolpost"):
        uuid = posthog.capture_ai("signed_up")  # personless, as capture()
    assert "non-AI event name 'signed_up'" in caplog.text
    posthog.flush()
    [request] = endpoint.requests
    assert request.path == AI_PATH and request.uuids == [uuid]
    assert request.events[0]["properties"]["$process_person_profile"] is False


def test_posthog_capture_ai_bad_input_stores_nothing_and_counts_it_lost(
    posthog: Posthog,
) -> None:
    assert posthog.capture_ai("bad\nname", distinct_id="u1") is None
    assert posthog.lost == 1
    assert posthog.client is not None and live(posthog.client.spool) == []
    assert posthog.capture_ai("$ai_span", distinct_id="u1", timestamp="not a time") is not None
    assert posthog.lost == 1
    assert counts(posthog.client.spool) == {"pending": 1, "leased": 0, "dead": 0}


def test_client_capture_ai_raises_for_bad_input_and_writes_nothing(
    make_client: MakeClient,
) -> None:
    client = make_client(send=False)
    with pytest.raises(ValueError):
        client.capture_ai("", distinct_id="u1")
    with pytest.raises(TypeError):
        client.capture_ai("$ai_span", distinct_id="u1", flags=object())
    assert counts(client.spool) == {"pending": 0, "leased": 0, "dead": 0}


# -- POSTHOG_CAPTURE_COMPRESSION -------------------------------------------------------


def test_posthog_capture_compression_is_read_when_no_compression_is_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"POSTHOG_CAPTURE_COMPRESSION": " Deflate "}
    assert resolve_compression(None, environ=env) == "deflate"
    assert resolve_compression("gzip", environ=env) == "gzip"  # the argument wins
    assert resolve_compression(None, environ={}) == "none"
    assert resolve_compression(None, gzip=True, environ={}) == "gzip"
    with caplog.at_level(logging.WARNING, logger="spoolpost"):
        bad = {"POSTHOG_CAPTURE_COMPRESSION": "br"}
        assert resolve_compression(None, gzip=True, environ=bad) == "gzip"
    assert "POSTHOG_CAPTURE_COMPRESSION='br' is not usable" in caplog.text


def test_posthog_capture_compression_applies_to_v1_only(
    make_client: MakeClient, endpoint: LocalEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTHOG_CAPTURE_COMPRESSION", "deflate")
    v0 = HttpTransport(endpoint.url, API_KEY)
    assert v0.compression == "none"  # v0 keeps its gzip flag, as posthog-python
    client = make_client(capture_mode="v1")
    assert client.transport.compression == "deflate"
    client.capture("e", distinct_id="u1")
    assert client.flush(timeout=10).delivered == 1
    assert endpoint.requests[0].headers["Content-Encoding"] == "deflate"
