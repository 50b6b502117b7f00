"""The failure policy as data: status classifier, Retry-After, backoff and pause."""

from __future__ import annotations

import email.utils
from pathlib import Path

import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st

from spoolpost import Client
from spoolpost.delivery.policy import (
    RETRY_AFTER_CEILING,
    Action,
    PausePolicy,
    RetryPolicy,
    classify,
    parse_retry_after,
)
from spoolpost.errors import ConfigError

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z, a whole second
TIMEZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]


# -- classification (the status → action table) -----------------------------------


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (200, Action.DELIVERED),
        (201, Action.DELIVERED),
        (202, Action.DELIVERED),
        (204, Action.DELIVERED),
        (299, Action.DELIVERED),
        (408, Action.RETRY),
        (429, Action.RETRY),
        (500, Action.RETRY),
        (502, Action.RETRY),
        (503, Action.RETRY),
        (504, Action.RETRY),
        (501, Action.RETRY),  # unlisted 5xx: kept and retried, never dropped
        (599, Action.RETRY),
        (413, Action.SPLIT_TOO_LARGE),
        (400, Action.SPLIT_REJECTED),
        (422, Action.SPLIT_REJECTED),
        (405, Action.SPLIT_REJECTED),
        (409, Action.SPLIT_REJECTED),
        (410, Action.SPLIT_REJECTED),
        (418, Action.SPLIT_REJECTED),
        (451, Action.SPLIT_REJECTED),
        (499, Action.SPLIT_REJECTED),
        (401, Action.PAUSE),
        (403, Action.PAUSE),
        (404, Action.PAUSE),
        (300, Action.PAUSE),
        (301, Action.PAUSE),
        (302, Action.PAUSE),
        (303, Action.PAUSE),
        (304, Action.PAUSE),
        (307, Action.PAUSE),
        (308, Action.PAUSE),
        (100, Action.RETRY),  # not a final answer: keep the events, try again
        (199, Action.RETRY),
    ],
)
def test_classify(status: int, action: Action) -> None:
    assert classify(status) is action


def test_every_status_has_exactly_the_design_action() -> None:
    listed_retry = {408, 429, 500, 502, 503, 504}
    for status in range(100, 600):
        action = classify(status)
        if 200 <= status < 300:
            assert action is Action.DELIVERED, status
        elif status in listed_retry or status >= 500 or status < 200:
            assert action is Action.RETRY, status
        elif status == 413:
            assert action is Action.SPLIT_TOO_LARGE
        elif status in (401, 403, 404) or 300 <= status < 400:
            assert action is Action.PAUSE, status
        else:
            assert action is Action.SPLIT_REJECTED, status


def test_dead_letter_reasons_come_from_the_split_actions() -> None:
    assert Action.SPLIT_TOO_LARGE.value == "too_large"
    assert Action.SPLIT_REJECTED.value == "rejected"


# -- Retry-After ---------------------------------------------------------------------


def http_date(at: float) -> str:
    return email.utils.formatdate(at, usegmt=True)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        ("0", 0.0),
        (" 120 ", 120.0),
        ("007", 7.0),
        ("1.5", 1.5),  # not RFC 9110 (1*DIGIT), tolerated
        ("9" * 400, RETRY_AFTER_CEILING),  # too big for a float
        ("9" * 5000, RETRY_AFTER_CEILING),  # past Python's int-parsing digit limit
        (http_date(NOW + 3), 3.0),
        (http_date(NOW + 600), 600.0),
        (http_date(NOW - 3600), 0.0),  # a past date means now
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
        ("Sunday, 06-Nov-94 08:49:37 GMT", 0.0),  # obsolete RFC 850 form
        ("Sun Nov  6 08:49:37 1994", 0.0),  # asctime form
        ("Tue, 14 Nov 2023 22:13:23 GMT", 3.0),
        ("Tue, 14 Nov 2023 22:13:23 -0000", 3.0),
        ("Wed, 15 Nov 2023 03:43:23 +0530", 3.0),  # an offset is honoured
        ("Fri, 31 Dec 9999 23:59:59 GMT", 253402300799.0 - NOW),
    ],
)
@pytest.mark.parametrize("local_tz", TIMEZONES, indirect=True)  # the process's local zone
def test_parse_retry_after(header: str, seconds: float, local_tz: str) -> None:
    assert parse_retry_after(header, NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "soon",
        "-1",
        "+3",
        "1e3",
        "1e309",
        "inf",
        "nan",
        "0x10",
        "1_000",
        "３",  # a non-ASCII digit
        "3 seconds",
        "Mon, 31 Feb 2020 00:00:00 GMT",
        "Mon, 01 Jan 99999 00:00:00 GMT",
        "Tue, 14 Nov 2023 25:61:00 GMT",
        "\x00\xff",
    ],
)
def test_unparsable_retry_after_is_ignored(header: str | None) -> None:
    assert parse_retry_after(header, NOW) is None


@given(st.text(max_size=60))
def test_parse_retry_after_never_raises(header: str) -> None:
    seconds = parse_retry_after(header, NOW)
    assert seconds is None or 0.0 <= seconds <= RETRY_AFTER_CEILING


# -- backoff -------------------------------------------------------------------------


def test_retry_policy_defaults() -> None:
    policy = RetryPolicy()
    assert policy.initial_backoff == 0.5
    assert policy.max_backoff == 30.0
    assert policy.max_retry_after == 600.0
    assert policy.max_attempts is None
    assert policy.max_event_age == 7 * 24 * 3600.0


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [
        (0, 0.5, 1.0),  # read as the first retry
        (1, 0.5, 1.0),
        (2, 1.0, 1.5),
        (3, 2.0, 2.5),
        (6, 16.0, 16.5),
        (7, 30.0, 30.0),
        (10_000, 30.0, 30.0),  # no overflow
    ],
)
def test_backoff_is_exponential_with_jitter_and_capped(
    attempt: int, low: float, high: float
) -> None:
    policy = RetryPolicy()
    waits = {policy.backoff(attempt) for _ in range(200)}
    assert all(low <= w <= high for w in waits), waits
    if low < high:
        assert len(waits) > 1  # jitter


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        (None, 0.5, 1.0),  # no header: backoff
        (0.0, 0.5, 1.0),  # a past date: backoff still applies
        (0.2, 0.5, 1.0),  # backoff is the larger
        (3.0, 3.0, 3.0),  # Retry-After is the larger
        (1e9, 600.0, 600.0),  # capped by max_retry_after
    ],
)
def test_delay_is_the_larger_of_backoff_and_retry_after(
    retry_after: float | None, low: float, high: float
) -> None:
    assert low <= RetryPolicy().delay(1, retry_after) <= high


def test_max_retry_after_caps_but_never_below_backoff() -> None:
    policy = RetryPolicy(initial_backoff=4.0, max_backoff=8.0, max_retry_after=2.0)
    assert 4.0 <= policy.delay(1, 60.0) <= 8.0


@pytest.mark.parametrize(
    "options",
    [
        {"initial_backoff": 0.0},
        {"initial_backoff": -1.0},
        {"initial_backoff": 5.0, "max_backoff": 1.0},
        {"max_retry_after": -1.0},
        {"max_attempts": 0},
        {"max_event_age": 0.0},
        {"max_event_age": -5.0},
    ],
)
def test_retry_policy_refuses_values_that_cannot_work(options: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**options)  # type: ignore[arg-type]


@given(
    initial=st.floats(0.01, 10.0),
    ratio=st.floats(1.0, 1000.0),
    attempt=st.integers(1, 80),
)
def test_default_backoff_is_the_documented_formula(
    initial: float, ratio: float, attempt: int
) -> None:
    policy = RetryPolicy(initial_backoff=initial, max_backoff=initial * ratio)
    base = min(initial * 2.0 ** min(attempt - 1, 64), policy.max_backoff)
    assert base <= policy.backoff(attempt) <= min(base + initial, policy.max_backoff)


@pytest.mark.parametrize(
    ("wait", "expected"),
    [
        (tenacity.wait_fixed(2), [2.0, 2.0, 2.0, 2.0]),
        (tenacity.wait_incrementing(start=10, increment=10), [10.0, 20.0, 30.0, 30.0]),
        (tenacity.wait_chain(tenacity.wait_fixed(1), tenacity.wait_fixed(7)), [1.0, 7.0, 7.0, 7.0]),
        (tenacity.wait_exponential(multiplier=3, max=1000), [3.0, 6.0, 12.0, 24.0]),
    ],
)
def test_retry_policy_takes_a_tenacity_wait_capped_at_max_backoff(
    wait: tenacity.wait.wait_base, expected: list[float]
) -> None:
    policy = RetryPolicy(max_backoff=30.0, wait=wait)
    assert [policy.backoff(n) for n in range(1, 5)] == expected
    assert policy.delay(1, 45.0) == 45.0  # Retry-After is still the lower bound


def test_retry_policy_composes_tenacity_waits() -> None:
    policy = RetryPolicy(wait=tenacity.wait_fixed(2) + tenacity.wait_random(0, 1))
    waits = {policy.backoff(3) for _ in range(200)}
    assert all(2.0 <= w <= 3.0 for w in waits)
    assert len(waits) > 1
    jittered = RetryPolicy(wait=tenacity.wait_random_exponential(multiplier=1, max=8))
    assert all(0.0 <= jittered.backoff(n) <= 8.0 for n in range(1, 10))


def test_policies_compare_by_numbers_and_wait_object() -> None:
    fixed = tenacity.wait_fixed(2)
    assert RetryPolicy() == RetryPolicy()
    assert RetryPolicy(wait=fixed) == RetryPolicy(wait=fixed)
    assert RetryPolicy(wait=fixed) != RetryPolicy(wait=tenacity.wait_fixed(2))
    assert PausePolicy(wait=fixed) != PausePolicy()
    assert len({RetryPolicy(), RetryPolicy(), RetryPolicy(wait=fixed), PausePolicy()}) == 3


@pytest.mark.parametrize("policy", [RetryPolicy, PausePolicy])
def test_a_wait_that_is_not_a_tenacity_strategy_is_refused(
    policy: type[RetryPolicy] | type[PausePolicy],
) -> None:
    with pytest.raises(ConfigError, match="tenacity wait strategy"):
        policy(wait=2.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", [RetryPolicy, PausePolicy])
@pytest.mark.parametrize(
    ("wait", "message"),
    [
        (tenacity.wait_exception(lambda exc: 1.0), "needs more than the attempt number"),
        (tenacity.wait_fixed(float("nan")), "gives nan seconds for attempt 1"),
        (tenacity.wait_fixed(float("inf")), "gives inf seconds for attempt 1"),
        (tenacity.wait_fixed(-100), "gives -100.0 seconds for attempt 1"),
    ],
    ids=["wait_exception", "nan", "inf", "negative"],
)
def test_a_wait_strategy_delivery_could_not_use_is_refused_at_construction(
    policy: type[RetryPolicy] | type[PausePolicy], wait: tenacity.wait.wait_base, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        policy(wait=wait)


@pytest.mark.parametrize(("option", "value"), [("retry", tenacity.wait_fixed(0.1)), ("pause", {})])
def test_a_client_refuses_a_retry_or_pause_that_is_not_a_policy(
    option: str, value: object, spool_path: Path
) -> None:
    with pytest.raises(ConfigError, match=f"{option} must be a"):
        Client("phc_key", spool=spool_path, send=False, **{option: value})


# -- pause on configuration faults ---------------------------------------------------


def test_pause_grows_while_the_fault_lasts() -> None:
    policy = PausePolicy()
    assert [policy.pause(n) for n in range(1, 10)] == [
        5.0,
        10.0,
        20.0,
        40.0,
        80.0,
        160.0,
        300.0,
        300.0,
        300.0,
    ]
    assert policy.pause(10**6) == 300.0  # a fault lasting for weeks: no overflow
    assert policy.pause(0) == 5.0


@given(
    initial=st.floats(0.01, 100.0),
    ratio=st.floats(1.0, 10_000.0),
    faults=st.integers(0, 2000),
)
def test_default_pause_is_the_documented_formula(initial: float, ratio: float, faults: int) -> None:
    policy = PausePolicy(initial=initial, maximum=initial * ratio)
    doublings = min(max(0, faults - 1), 64)
    assert policy.pause(faults) == min(policy.maximum, initial * 2.0**doublings)


def test_pause_policy_takes_a_tenacity_wait_capped_at_maximum() -> None:
    policy = PausePolicy(maximum=60.0, wait=tenacity.wait_incrementing(start=15, increment=15))
    assert [policy.pause(n) for n in range(1, 7)] == [15.0, 30.0, 45.0, 60.0, 60.0, 60.0]
    steady = PausePolicy(wait=tenacity.wait_fixed(30) + tenacity.wait_random(0, 5))
    assert all(30.0 <= steady.pause(n) <= 35.0 for n in range(1, 20))


@pytest.mark.parametrize(
    "options", [{"initial": 0.0}, {"initial": -1.0}, {"initial": 10.0, "maximum": 5.0}]
)
def test_pause_policy_refuses_values_that_cannot_work(options: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        PausePolicy(**options)  # type: ignore[arg-type]
