"""The failure policy as data: status classifier, Retry-After, backoff and pause."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


# -- classification (DESIGN §5) ---------------------------------------------------


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


@pytest.mark.parametrize(
    "options", [{"initial": 0.0}, {"initial": -1.0}, {"initial": 10.0, "maximum": 5.0}]
)
def test_pause_policy_refuses_values_that_cannot_work(options: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        PausePolicy(**options)
