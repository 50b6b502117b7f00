"""A stored v1 request is never merged with other rows and never repeats its
identity for a different body: when a request is divided (a 413 split, poison
isolation), each part sent is a new request (new PostHog-Request-Id, attempt 1),
and each part's retries count 2, 3 (see docs/architecture.md, "An event row's
states")."""

from __future__ import annotations

import contextlib
import sqlite3
from collections import defaultdict

import pytest
from kit import MakeRig, Rig

from spoolpost.delivery.wire import PostHogV1
from spoolpost.testing import LocalEndpoint, RecordedRequest, Response


def identity(request: RecordedRequest) -> tuple[str, str, int]:
    """(PostHog-Request-Id, created_at, PostHog-Attempt) of a v1 request."""
    h = request.headers
    return h["PostHog-Request-Id"], request.json["created_at"], int(h["PostHog-Attempt"])


def accounted(rig: Rig, captured: list[str], endpoint: LocalEndpoint) -> dict[str, int]:
    """Where every captured event is: delivered (answered ok), dead, pending; lost."""
    delivered = set(endpoint.delivered_uuids()) & set(captured)
    dead = {e.uuid for e in rig.dead()}
    pending = {e.uuid for e in rig.pending()}
    lost = set(captured) - delivered - dead - pending
    return {"delivered": len(delivered), "dead": len(dead), "lost": len(lost)}


def test_a_413_on_a_stored_request_makes_each_half_a_new_request_counting_from_1(
    make_rig: MakeRig, endpoint: LocalEndpoint
) -> None:
    rig = make_rig(wire=PostHogV1())
    captured = rig.capture(4)
    endpoint.respond(Response(413, body=b'{"error":"payload too large"}'))
    for _ in range(2):  # each half is asked to retry twice, then ok
        endpoint.script_results({u: "retry" for u in captured})

    rig.run(120)

    whole, *parts = endpoint.requests
    assert whole.status == 413 and whole.uuids == captured
    sent: dict[str, list[tuple[str, int, list[str]]]] = defaultdict(list)
    for r in parts:
        request_id, created_at, attempt = identity(r)
        sent[request_id].append((created_at, attempt, r.uuids))
    assert identity(whole)[0] not in sent
    assert len(sent) == 2  # two halves, two distinct new ids
    halves = []
    for tries in sent.values():
        assert [attempt for _, attempt, _ in tries] == [1, 2, 3]
        assert len({created for created, _, _ in tries}) == 1  # created_at kept
        assert len({tuple(uuids) for _, _, uuids in tries}) == 1  # never merged
        halves.append(tries[0][2])
    assert sorted(halves) == sorted([captured[:2], captured[2:]])
    # Loss accounting: 4 captured, 4 delivered, 0 dead, 0 lost.
    assert accounted(rig, captured, endpoint) == {"delivered": 4, "dead": 0, "lost": 0}


def test_a_half_given_back_unsent_after_a_split_goes_out_later_as_a_new_request(
    make_rig: MakeRig, endpoint: LocalEndpoint
) -> None:
    rig = make_rig(wire=PostHogV1())
    captured = rig.capture(4)
    # The whole batch gets 413; its first half 503 (endpoint trouble), so the
    # second half goes back to the spool unsent.
    endpoint.respond(Response(413), Response(503))

    rig.run(120)

    whole, first, *rest = endpoint.requests
    assert (whole.status, first.status) == (413, 503)
    assert first.uuids == captured[:2]
    first_id = identity(first)[0]
    assert identity(first)[2] == 1 and first_id != identity(whole)[0]
    later = {identity(r)[0]: (identity(r)[2], r.uuids) for r in rest}
    assert later[first_id] == (2, captured[:2])  # the sent half's retry goes on counting
    [(other_id, (attempt, uuids))] = [(k, v) for k, v in later.items() if k != first_id]
    assert other_id != identity(whole)[0] and (attempt, uuids) == (1, captured[2:])
    # Loss accounting: 4 captured, 4 delivered, 0 dead, 0 lost.
    assert accounted(rig, captured, endpoint) == {"delivered": 4, "dead": 0, "lost": 0}


def damage(rig: Rig, uuid: str, body: bytes) -> None:
    """Overwrite one stored event's bytes in the SQLite file, behind the spool's back."""
    with contextlib.closing(sqlite3.connect(rig.path)) as conn, conn:
        assert conn.execute("UPDATE events SET body = ? WHERE uuid = ?", (body, uuid)).rowcount


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'\xff\xfe{"event":"x"}', "stored body is not UTF-8 (invalid start byte at byte 0)"),
        (b'{"event": "cut', "stored body is not JSON (Unterminated string starting at"),
        (b"[1, 2]", "stored body is not a PostHog event: AttributeError"),
        (b'{"uuid": "u", "distinct_id": "d"}', "stored body is not a PostHog event: no 'event'"),
    ],
    ids=["not-utf8", "not-json", "not-an-object", "no-event-field"],
)
def test_a_damaged_stored_body_is_dead_malformed_and_the_rest_of_its_batch_is_sent(
    make_rig: MakeRig,
    endpoint: LocalEndpoint,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    detail: str,
) -> None:
    rig = make_rig(wire=PostHogV1())
    captured = rig.capture(4)
    damage(rig, captured[1], body)

    rig.step()

    [request] = endpoint.requests  # one request, without the damaged event
    assert request.uuids == [captured[0], *captured[2:]]
    assert request.headers["PostHog-Attempt"] == "1"
    [dead] = rig.dead()
    assert (dead.uuid, dead.reason, dead.status) == (captured[1], "malformed", None)
    assert dead.detail is not None and dead.detail.startswith(detail)
    assert f"event {captured[1]} cannot be sent" in caplog.text
    # Loss accounting: 4 captured, 3 delivered, 1 dead (malformed), 0 lost.
    assert accounted(rig, captured, endpoint) == {"delivered": 3, "dead": 1, "lost": 0}


def test_a_batch_of_only_damaged_bodies_sends_nothing_and_dead_letters_each(
    make_rig: MakeRig, endpoint: LocalEndpoint
) -> None:
    rig = make_rig(wire=PostHogV1())
    captured = rig.capture(2)
    for uuid in captured:
        damage(rig, uuid, b"\x00garbage")

    rig.step()

    assert endpoint.requests == []
    assert sorted(e.uuid for e in rig.dead()) == sorted(captured)
    assert {e.reason for e in rig.dead()} == {"malformed"}
    # Loss accounting: 2 captured, 0 delivered, 2 dead (malformed), 0 lost.
    assert accounted(rig, captured, endpoint) == {"delivered": 0, "dead": 2, "lost": 0}
