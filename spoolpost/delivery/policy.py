"""Delivery policy as data: what each response means, and how long to wait.

- :data:`CLASSIFIER` maps an HTTP status to an :class:`Action` (see
  docs/architecture.md, "Failure policy"). Adding a rule is one line.
- :class:`RetryPolicy` (backoff after a transient failure) and
  :class:`PausePolicy` (pause after a configuration fault) each hold a tenacity
  wait strategy; :class:`RetryPolicy` takes ``Retry-After`` as a lower bound.
  A policy's ``wait=`` may hold any strategy that reads nothing but the attempt
  number: ``wait_fixed``, ``wait_none``, ``wait_random``, ``wait_incrementing``,
  ``wait_exponential``, ``wait_random_exponential``, ``wait_exponential_jitter``,
  ``wait_chain``, and sums of them (``wait_fixed(2) + wait_random(0, 1)``).
  ``wait_exception`` (it reads the outcome) and functions reading other
  attributes of a ``RetryCallState`` are not supported: they are called with
  an object carrying only ``attempt_number``.
- :func:`parse_retry_after` reads ``Retry-After`` as delay-seconds or an
  HTTP-date (RFC 9110 §10.2.3), in UTC whatever the local timezone.
"""

from __future__ import annotations

import email.utils
import enum
import functools
import math
import re
from dataclasses import dataclass, field
from datetime import UTC
from typing import cast

import tenacity

from spoolpost.errors import ConfigError


class Action(enum.Enum):
    """What a response means for the batch that got it."""

    DELIVERED = "delivered"  # 2xx: delete the rows
    RETRY = "retry"  # transient: reschedule with backoff, close the endpoint gate
    SPLIT_TOO_LARGE = "too_large"  # 413: split in halves; a lone event is dead (too_large)
    SPLIT_REJECTED = "rejected"  # 400, 422, other 4xx: split to isolate; a lone event is dead
    PAUSE = "paused"  # 401, 403, 404, 3xx: configuration fault, keep everything, pause


#: Status → action: transient statuses are retried, 413 and rejections split, faults of
#: configuration (auth, wrong host) pause. Statuses not listed fall to :func:`classify`'s ranges.
CLASSIFIER: dict[int, Action] = {
    408: Action.RETRY,
    429: Action.RETRY,
    500: Action.RETRY,
    502: Action.RETRY,
    503: Action.RETRY,
    504: Action.RETRY,
    413: Action.SPLIT_TOO_LARGE,
    400: Action.SPLIT_REJECTED,
    422: Action.SPLIT_REJECTED,
    401: Action.PAUSE,
    403: Action.PAUSE,
    404: Action.PAUSE,
}


def classify(status: int) -> Action:
    """The :class:`Action` for an HTTP ``status`` (None-free: every status has one).

    Listed statuses first; then 2xx delivered, 3xx pause (redirects are never
    followed for POST), other 4xx rejected, other 5xx (and anything odd) retried.
    """
    action = CLASSIFIER.get(status)
    if action is not None:
        return action
    if 200 <= status < 300:
        return Action.DELIVERED
    if 300 <= status < 400:
        return Action.PAUSE
    if 400 <= status < 500:
        return Action.SPLIT_REJECTED
    return Action.RETRY


_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)
#: Longest delay :func:`parse_retry_after` returns (about 31,700 years): an
#: absurd header stays a finite number; :meth:`RetryPolicy.delay` caps it anyway.
RETRY_AFTER_CEILING = 1e12


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, or None if absent/unparsable.

    Accepts delay-seconds (``"120"``; a fraction such as ``"1.5"`` is tolerated) or
    an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``, also the obsolete RFC 850
    and asctime forms), per RFC 9110 §10.2.3. An HTTP-date is compared with
    ``now`` (UTC seconds), so the local timezone plays no part; a date in the past
    gives 0.0. Anything else (``"soon"``, ``"-1"``, ``"+3"``, ``"1e3"``, a date
    that does not exist) gives None, so the caller falls back to its backoff.
    The result is at most :data:`RETRY_AFTER_CEILING`; the caller applies its own
    cap (``max_retry_after``). Never raises.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELAY_SECONDS.fullmatch(text):
        return min(float(text), RETRY_AFTER_CEILING)  # float() of digits never raises
    try:
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:  # RFC 9110: HTTP-dates are always GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, seconds), RETRY_AFTER_CEILING)


class _Attempt:
    """The one attribute of a ``tenacity.RetryCallState`` that the supported wait
    strategies read."""

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number


def wait_seconds(strategy: tenacity.wait.wait_base, attempt: int, cap: float) -> float:
    """Seconds ``strategy`` waits before retry number ``attempt`` (1 for the first;
    anything lower is read as 1), within ``[0, cap]``; a value that is not a
    number (NaN) gives ``cap``."""
    state = cast(tenacity.RetryCallState, _Attempt(max(1, attempt)))
    seconds = float(strategy(state))
    return cap if math.isnan(seconds) else min(max(0.0, seconds), cap)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff and limits for failed deliveries.

    ``initial_backoff`` and ``max_backoff`` in seconds (defaults 0.5 s and 30 s):
    by default the n-th retry waits ``initial * 2**(n-1)`` plus up to ``initial``
    of random jitter, capped at ``max_backoff``, i.e.
    ``wait_exponential(multiplier=initial_backoff, max=max_backoff) +
    wait_random(0, initial_backoff)``. ``wait`` replaces that with your own
    tenacity strategy (see the module docstring), e.g.
    ``wait_random_exponential(multiplier=1, max=60)``; what it gives is still
    capped at ``max_backoff``, which also sets how recent a success must be for
    a failing batch to be suspected of poison (``2 * max_backoff``).
    ``max_retry_after`` (default 600 s) caps a server's ``Retry-After``.

    ``max_attempts`` (default None: unlimited) and ``max_event_age`` (seconds,
    default 7 days) end in the dead state. They are data that the spool's SQL
    enforces on each stored event, across restarts and processes; they are not
    tenacity stop strategies, because ``stop_after_delay`` counts monotonic time
    since one in-memory retry loop began (not an event's age since capture) and
    ``stop_after_attempt`` counts that loop's attempts (not the attempts stored
    with the event).

    Raises :class:`ConfigError` for values that cannot work. Two policies are
    equal when their numbers are and they hold the same ``wait`` object (tenacity
    strategies compare by identity).
    """

    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 600.0
    max_attempts: int | None = None
    max_event_age: float | None = 7 * 24 * 3600.0
    wait: tenacity.wait.wait_base | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ConfigError("need 0 < initial_backoff <= max_backoff (seconds)")
        if self.max_retry_after < 0:
            raise ConfigError("max_retry_after must be >= 0 seconds")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError("max_attempts must be None or >= 1")
        if self.max_event_age is not None and self.max_event_age <= 0:
            raise ConfigError("max_event_age must be None or > 0 seconds")
        _check_wait(self.wait)

    @functools.cached_property
    def strategy(self) -> tenacity.wait.wait_base:
        """The tenacity wait strategy in use: ``wait``, or the default above. Built
        once per policy (cached_property writes the instance ``__dict__``, which a
        frozen dataclass allows), not on every failed request."""
        if self.wait is not None:
            return self.wait
        return tenacity.wait_exponential(
            multiplier=self.initial_backoff, max=self.max_backoff
        ) + tenacity.wait_random(0, self.initial_backoff)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry),
        at most ``max_backoff``."""
        return wait_seconds(self.strategy, attempt, self.max_backoff)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """``max(backoff(attempt), Retry-After)``, Retry-After capped by ``max_retry_after``."""
        wait = self.backoff(attempt)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait


@dataclass(frozen=True)
class PausePolicy:
    """How long delivery pauses on a configuration fault (401/403/404/3xx).

    By default the n-th pause of one episode lasts ``initial * 2**(n-1)``
    seconds, capped at ``maximum`` (defaults 5 s and 300 s), i.e.
    ``wait_exponential(multiplier=initial, max=maximum)``. ``wait`` replaces
    that with your own tenacity strategy (see the module docstring); what it
    gives is still capped at ``maximum``. Raises :class:`ConfigError` unless
    ``0 < initial <= maximum``. Compared as :class:`RetryPolicy` is.
    """

    initial: float = 5.0
    maximum: float = 300.0
    wait: tenacity.wait.wait_base | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ConfigError("need 0 < initial <= maximum (seconds) for a pause")
        _check_wait(self.wait)

    @functools.cached_property
    def strategy(self) -> tenacity.wait.wait_base:
        """The tenacity wait strategy in use: ``wait``, or the default above."""
        if self.wait is not None:
            return self.wait
        return tenacity.wait_exponential(multiplier=self.initial, max=self.maximum)

    def pause(self, episode_faults: int) -> float:
        """Seconds to pause after the ``episode_faults``-th fault in a row (1 for the
        first), at most ``maximum``."""
        return wait_seconds(self.strategy, episode_faults, self.maximum)


def _check_wait(wait: object) -> None:
    """Refuse, at construction, a ``wait`` that delivery could not use: not a
    tenacity strategy, one that reads more of the retry state than the attempt
    number (``wait_exception``), or one that gives no usable number of seconds
    (NaN, infinity, negative) for the first attempts."""
    if wait is None:
        return
    if not isinstance(wait, tenacity.wait.wait_base):
        raise ConfigError(
            f"wait must be a tenacity wait strategy (tenacity.wait_*), not {type(wait).__name__}"
        )
    for attempt in (1, 2, 3):
        try:
            seconds = float(wait(cast(tenacity.RetryCallState, _Attempt(attempt))))
        except Exception as exc:
            raise ConfigError(
                f"wait strategy {wait!r} cannot be used: it needs more than the attempt "
                f"number ({type(exc).__name__}: {exc}); see spoolpost.delivery.policy"
            ) from exc
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ConfigError(
                f"wait strategy {wait!r} gives {seconds} seconds for attempt {attempt}; "
                "it must give a finite number >= 0"
            )
