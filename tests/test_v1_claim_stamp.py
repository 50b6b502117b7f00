"""The v1 request identity a claim stores for a batch's first request, and its
inverse for rows given back unsent (see docs/architecture.md, "An event row's
states")."""

from __future__ import annotations

from spoolpost.spool import AI_LANE, Batch, RequestStamp, Spool, Stamper

T0 = 1_700_000_000.0


def _stamper(request_id: str, lanes: tuple[str | None, ...] = (None,)) -> Stamper:
    def stamp(lane: str | None) -> tuple[str, str] | None:
        return (request_id, f"created-{request_id}") if lane in lanes else None

    return stamp


def _claim(spool: Spool, request_id: str) -> Batch:
    batch = spool.claim(
        T0, max_events=10, max_bytes=1 << 20, lease_ttl=60, stamp=_stamper(request_id)
    )
    assert batch is not None
    return batch


def test_a_claim_stores_the_first_requests_identity_and_returns_it(spool: Spool) -> None:
    for i in range(3):
        assert spool.append(f"u{i}", b"{}", T0)
    batch = _claim(spool, "r1")
    assert batch.stamp == RequestStamp("r1", "created-r1", 1)
    assert {r.uuid for r in batch.rows} == {"u0", "u1", "u2"}
    # The next request of the same rows (a split half, a retry) goes on counting.
    assert spool.stamp_request(batch.token, batch.ids, "r2", "x") == RequestStamp(
        "r1", "created-r1", 2
    )


def test_a_retried_batch_keeps_its_identity_and_counts_the_claims_request(spool: Spool) -> None:
    assert spool.append("u0", b"{}", T0)
    first = _claim(spool, "r1")
    spool.reschedule(first.token, first.ids, T0, T0, "HTTP 503")
    again = _claim(spool, "r2")
    assert again.rows[0].request_id == "r1"
    assert again.stamp == RequestStamp("r1", "created-r1", 2)


def test_release_unstamp_takes_back_what_the_claim_stored(spool: Spool) -> None:
    assert spool.append("u0", b"{}", T0)
    assert spool.append("u1", b"{}", T0)
    batch = _claim(spool, "r1")
    assert spool.release(batch.token, unstamp=True) == 2
    fresh = _claim(spool, "r2")  # never sent: a first request again, with a new identity
    assert fresh.stamp == RequestStamp("r2", "created-r2", 1)
    assert [r.request_id for r in fresh.rows] == [None, None]
    spool.reschedule(fresh.token, fresh.ids, T0, T0, "HTTP 503")
    retry = _claim(spool, "r3")
    assert retry.stamp == RequestStamp("r2", "created-r2", 2)
    spool.unstamp(retry.token, [retry.ids[0]])
    spool.release(retry.token, [retry.ids[1]], unstamp=True)
    last = _claim(spool, "r4")  # the request sent once keeps its identity and count
    assert last.stamp == RequestStamp("r2", "created-r2", 2)


def test_a_lane_without_an_identity_is_not_stamped(spool: Spool) -> None:
    assert spool.append("u0", b"{}", T0, lane=AI_LANE)
    batch = _claim(spool, "r1")
    assert batch.stamp is None
    assert spool.stamp_request(batch.token, batch.ids, "r2", "c2") == RequestStamp("r2", "c2", 1)


def test_a_stale_token_is_not_unstamped(spool: Spool) -> None:
    assert spool.append("u0", b"{}", T0)
    batch = _claim(spool, "r1")
    spool.unstamp("stale", batch.ids)
    assert spool.release("stale", unstamp=True) == 0
    assert spool.stamp_request(batch.token, batch.ids, "r2", "x") == RequestStamp(
        "r1", "created-r1", 2
    )
