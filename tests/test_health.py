"""The endpoint's health (gate, pause, epoch) driven with numbers: no threads, no server."""

from __future__ import annotations

import logging
import random
import threading

import pytest
import tenacity
from kit import MakeRig

from spoolpost.delivery.health import EndpointHealth, Notice
from spoolpost.delivery.policy import PausePolicy, RetryPolicy
from spoolpost.testing import LocalEndpoint, RecordedRequest, Response

URL = "https://ingest.example"
#: Backoff without jitter: 2, 4, 8, … seconds, at most 60.
RETRY = RetryPolicy(max_backoff=60.0, wait=tenacity.wait_exponential(multiplier=2, max=60))


def health(retry: RetryPolicy = RETRY, pause: PausePolicy | None = None) -> EndpointHealth:
    return EndpointHealth(retry, pause or PausePolicy(), URL)


def test_a_new_endpoint_is_open() -> None:
    h = health()
    assert h.blocked(0.0) == ("", 0.0)
    assert not h.probing
    assert h.outage(1) is None
    assert h.paused_at(0.0) is None
    assert not h.recently_up(0.0)


def test_a_transient_failure_closes_the_gate_for_the_backoff_then_probes() -> None:
    h = health()
    notice = h.on_transient(100.0, None, "503")
    assert notice is not None and notice.level == logging.DEBUG  # not an outage yet
    assert h.blocked(101.0) == ("gate", 1.0)
    assert h.blocked(102.0) == ("", 0.0)
    assert h.probing  # one batch at a time once the gate opens
    again = h.on_transient(102.5, None, "503")  # the probe fails: a longer backoff
    assert again is not None and again.level == logging.DEBUG  # still below warn_after
    assert h.gate_until == 106.5
    assert h.gate_failures == 2


def test_retry_after_is_a_lower_bound_capped_by_max_retry_after() -> None:
    h = health()
    h.on_transient(100.0, 30.0, "429")
    assert h.gate_until == 130.0
    capped = health(RetryPolicy(max_retry_after=5.0, wait=tenacity.wait_fixed(1)))
    capped.on_transient(100.0, 3600.0, "429")
    assert capped.gate_until == 105.0


def test_a_failure_sent_while_the_gate_was_closed_only_extends_it_to_its_retry_after() -> None:
    h = health()
    h.on_transient(100.0, None, "503")  # closed until 102
    assert h.on_transient(101.0, None, "503") is None
    assert (h.gate_until, h.gate_failures) == (102.0, 1)
    h.on_transient(101.0, 10.0, "429")
    assert (h.gate_until, h.gate_failures) == (111.0, 1)
    h.on_transient(101.5, 1.0, "429")  # a shorter Retry-After never shortens the gate
    assert h.gate_until == 111.0
    assert h.last_failure == "429"


def test_outage_after_so_many_failures_in_a_row() -> None:
    h = health()
    h.on_transient(100.0, None, "502")
    assert h.outage(2) is None
    h.on_transient(200.0, None, "503")
    assert h.outage(2) == "503"


def test_a_success_sent_before_the_latest_failure_proves_nothing() -> None:
    h = health()
    sent_in = h.epoch
    h.on_transient(100.0, None, "503")
    assert h.epoch == sent_in + 1
    assert h.on_success(100.5, sent_in) is None  # an older request, answered late
    assert (h.probing, h.gate_failures) == (True, 1)
    assert h.last_success_at == 100.5  # still: other requests get through
    notice = h.on_success(103.0, h.epoch)
    assert notice is not None and notice.level == logging.DEBUG  # a blip, fixed: no noise
    assert (h.probing, h.gate_failures) == (False, 0)


def test_a_configuration_fault_pauses_longer_each_time_until_a_success() -> None:
    h = health(pause=PausePolicy(initial=5.0, maximum=300.0))
    first = h.on_config_fault(100.0, "401")
    assert first is not None and first.level == logging.ERROR
    assert h.blocked(101.0) == ("paused", 4.0)
    assert h.paused_at(101.0) == f"401 from {URL}"
    assert h.paused_at(105.0) is None  # the pause is over: one probe goes out
    assert h.on_config_fault(104.0, "401") is None  # sent before the pause began
    probe = h.on_config_fault(105.0, "401")
    assert probe is not None and probe.level == logging.DEBUG
    assert h.pause_until == 115.0  # 5 s, then 10 s
    resumed = h.on_success(116.0, h.epoch)
    assert resumed is not None and resumed.level == logging.WARNING
    assert h.paused_reason is None
    h.on_config_fault(200.0, "403")  # a new episode starts from the first pause
    assert h.pause_until == 205.0


def test_a_pause_is_reported_before_the_gate() -> None:
    h = health()
    h.on_transient(100.0, 60.0, "503")
    h.on_config_fault(100.0, "404")
    assert h.blocked(101.0) == ("paused", 4.0)
    assert h.blocked(106.0) == ("gate", 54.0)


@pytest.mark.parametrize(("now", "recent"), [(100.0, True), (220.0, True), (220.5, False)])
def test_recently_up_within_twice_max_backoff(now: float, recent: bool) -> None:
    h = health()  # max_backoff 60
    h.on_success(100.0, h.epoch)
    assert h.recently_up(now) is recent


def test_a_notice_is_logged_when_emitted(caplog: pytest.LogCaptureFixture) -> None:
    notice = health().on_transient(100.0, None, "503")
    assert notice is not None
    with caplog.at_level(logging.DEBUG, logger="spoolpost"):
        notice.emit()
    assert f"delivery to {URL} failed (503, 1 in a row); next attempt in 2.0s" in caplog.text


# -- episodes: what an operator's logs show ----------------------------------------------


def levels(*notices: Notice | None) -> list[int]:
    return [n.level for n in notices if n is not None]


def test_a_failure_the_next_attempt_fixes_is_debug_both_ways() -> None:
    h = health()
    failed = h.on_transient(100.0, None, "HTTP 503")
    fixed = h.on_success(102.5, h.epoch)
    assert levels(failed, fixed) == [logging.DEBUG, logging.DEBUG]
    assert (h.episode_failures, h.episode_started_at, h.episode_warned) == (0, None, False)


def test_an_outage_warns_once_with_the_count_and_last_error_and_its_end_once() -> None:
    h = health()  # warn_after 3; backoff 2, 4, 8, 16 s
    notices = [
        h.on_transient(100.0, None, "HTTP 503"),  # gate until 102
        h.on_transient(101.0, None, "HTTP 503"),  # sent before: counted, gate unchanged
        h.on_transient(102.0, None, "HTTP 503"),  # probe 1 fails: until 106
        h.on_transient(106.0, None, "HTTP 502"),  # probe 2 fails: the episode begins
        h.on_transient(114.0, None, "HTTP 502"),  # probe 3 fails: already warned
    ]
    assert levels(*notices) == [logging.DEBUG] * 2 + [logging.WARNING, logging.DEBUG]
    warning = notices[3]
    assert warning is not None
    assert warning.message % warning.args == (
        f"delivery to {URL} is failing: 4 failed requests in a row since 6s ago, "
        "last: HTTP 502; events are kept in the spool, next attempt in 8.0s"
    )
    end = h.on_success(130.0, h.epoch)
    assert end is not None and end.level == logging.INFO
    assert end.message % end.args == (
        f"delivery to {URL} recovered after 30.0s and 5 failed requests"
    )
    assert h.on_success(131.0, h.epoch) is None  # logged once
    again = h.on_transient(200.0, None, "HTTP 503")  # a new run starts from zero
    assert levels(again) == [logging.DEBUG]
    assert h.episode_started_at == 200.0 and h.episode_failures == 1


@pytest.mark.parametrize(("warn_after", "warned_at"), [(1, 1), (2, 2), (5, 5)])
def test_warn_after_sets_the_failures_in_a_row_that_make_an_outage(
    warn_after: int, warned_at: int
) -> None:
    h = EndpointHealth(RETRY, PausePolicy(), URL, warn_after=warn_after)
    at, seen = 100.0, []
    for _ in range(6):
        seen.append(levels(h.on_transient(at, None, "HTTP 503"))[0])
        at = h.gate_until
    assert seen.index(logging.WARNING) + 1 == warned_at
    assert seen.count(logging.WARNING) == 1


def test_a_late_success_from_before_the_failure_does_not_end_the_episode() -> None:
    h = health()
    old = h.epoch
    for at in (100.0, 102.0, 106.0):
        h.on_transient(at, None, "HTTP 503")
    assert h.episode_warned
    assert h.on_success(107.0, old) is None
    assert h.episode_warned and h.episode_failures == 3


# -- Must show: a soak with 10 % random 503s and one real outage ------------------------


def test_random_503s_log_no_warning_per_request_and_one_per_real_outage(
    make_rig: MakeRig, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="spoolpost")
    rng = random.Random(10)
    outage = threading.Event()
    failed = {"random": 0, "outage": 0}

    def flaky(request: RecordedRequest) -> Response | None:
        if outage.is_set():
            failed["outage"] += 1
            return Response(503)
        if rng.random() < 0.1:
            failed["random"] += 1
            return Response(503)
        return None  # the default: 200

    endpoint.set_handler(flaky)
    rig = make_rig(retry=RETRY)
    for second in range(400):
        if second == 200:
            outage.set()  # a real outage: every request fails for two minutes
        if second == 320:
            outage.clear()
        rig.capture(1)
        rig.dispatcher.run_until_idle(rig.clock.now())
        rig.clock.advance(1.0)
    rig.run(120, tick=1.0)

    assert rig.states()["pending"] == 0
    assert failed["random"] >= 25 and failed["outage"] >= 5
    records = [r for r in caplog.records if r.name == "spoolpost"]
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    infos = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert len(warnings) == 1, warnings
    assert "is failing:" in warnings[0] and "last: HTTP 503" in warnings[0]
    assert len(infos) == 1 and "recovered after" in infos[0], infos
    debug_failures = [r for r in records if "failed (HTTP 503" in r.getMessage()]
    assert all(r.levelno == logging.DEBUG for r in debug_failures)
    assert len(debug_failures) >= 20
