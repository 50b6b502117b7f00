"""What is read of an endpoint's answer: at most MAX_ANSWER_BYTES of its body; a v1
results map longer than that is malformed (the batch is retried, nothing lost), and
answers of ordinary size still leave the connection open for the next request."""

from __future__ import annotations

import logging

import pytest
from kit import START, MakeRig, Rig

from spoolpost.delivery.transport import EXCERPT_BYTES, MAX_ANSWER_BYTES, HttpTransport
from spoolpost.delivery.wire import PostHogV1
from spoolpost.testing import LocalEndpoint, Response

HUGE = MAX_ANSWER_BYTES * 3


def accounted(rig: Rig, captured: list[str], endpoint: LocalEndpoint) -> dict[str, int]:
    """Where every captured event is: delivered (answered ok), dead, pending; lost."""
    delivered = set(endpoint.delivered_uuids()) & set(captured)
    dead = {e.uuid for e in rig.dead()}
    pending = {e.uuid for e in rig.pending()}
    lost = set(captured) - delivered - dead - pending
    return {"delivered": len(delivered), "dead": len(dead), "lost": len(lost)}


def test_an_oversize_v1_results_map_is_malformed_and_the_batch_is_retried(
    make_rig: MakeRig, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(wire=PostHogV1())
    captured = rig.capture(3)
    # Valid JSON, every event ok, but longer than what is read of an answer.
    results = ",".join(f'"{u}":{{"result":"ok"}}' for u in captured)
    body = f'{{"results":{{{results}}},"pad":"{"x" * HUGE}"}}'.encode()
    endpoint.respond(Response(200, body=body, delivered=()))

    with caplog.at_level(logging.WARNING, logger="spoolpost"):
        rig.step()

    assert f"with a body over {MAX_ANSWER_BYTES} bytes" in caplog.text
    assert "results map is malformed and the batch is retried" in caplog.text
    pending = rig.pending()
    assert [(e.uuid, e.attempts) for e in pending] == [(u, 1) for u in captured]
    assert all((e.last_error or "").startswith("malformed results map") for e in pending)
    rig.run(60)  # the next answer is an ordinary one
    # Loss accounting: 3 captured, 3 delivered, 0 dead, 0 lost.
    assert accounted(rig, captured, endpoint) == {"delivered": 3, "dead": 0, "lost": 0}


@pytest.mark.parametrize("status", [200, 503])
def test_at_most_max_answer_bytes_of_a_body_are_read(endpoint: LocalEndpoint, status: int) -> None:
    endpoint.respond(Response(status, body=b"y" * HUGE))
    transport = HttpTransport(endpoint.url, "phc_key")

    reply = transport.post([b'{"uuid":"u1"}'], START)

    assert reply.status == status
    assert reply.excerpt == "y" * EXCERPT_BYTES


def test_ordinary_answers_keep_the_connection_open(endpoint: LocalEndpoint) -> None:
    transport = HttpTransport(endpoint.url, "phc_key")
    for _ in range(3):
        assert transport.post([b'{"uuid":"u1"}'], START).status == 200
    manager = transport._session().get_adapter(transport.url).poolmanager  # type: ignore[attr-defined]
    # urllib3's pool container refuses plain iteration: keys() it is.
    made = [manager.pools[k].num_connections for k in manager.pools.keys()]  # noqa: SIM118
    assert made == [1]  # one connection made, reused by the next requests
