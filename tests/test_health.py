"""The endpoint's health (gate, pause, epoch) driven with numbers: no threads, no server."""

from __future__ import annotations

import logging

import pytest
import tenacity

from spoolpost.delivery.health import EndpointHealth
from spoolpost.delivery.policy import PausePolicy, RetryPolicy

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
    assert notice is not None and notice.level == logging.WARNING
    assert h.blocked(101.0) == ("gate", 1.0)
    assert h.blocked(102.0) == ("", 0.0)
    assert h.probing  # one batch at a time once the gate opens
    again = h.on_transient(102.5, None, "503")  # the probe fails: a longer backoff
    assert again is not None and again.level == logging.DEBUG  # one WARNING per episode
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
    assert notice is not None and notice.level == logging.INFO  # recovered
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
    with caplog.at_level(logging.WARNING, logger="spoolpost"):
        notice.emit()
    assert f"delivery to {URL} failed (503, 1 in a row); next attempt in 2.0s" in caplog.text
