"""The endpoint's health as one process sees it: the gate, the pause, the epoch.

Pure state driven by numbers (times are UTC seconds): no threads, no I/O, so it
is tested without a server. Not thread-safe: the dispatcher guards it with its
lock. A change worth a log line (one per episode) comes back as a
:class:`Notice`, which the caller writes once it has released that lock.

- **The gate.** A transient failure closes it for ``max(backoff, Retry-After)``
  (:meth:`RetryPolicy.delay`, growing with the failures in a row); once it
  opens, one probe batch at a time goes out until a request gets through.
- **The pause.** A configuration fault (401/403/404/3xx) pauses delivery for a
  growing :meth:`PausePolicy.pause`, then one probe at a time.
- **The epoch.** Bumped whenever the gate closes or a pause begins: a success
  of a request sent before that proves nothing about the endpoint now.
- **Episodes, for the logs.** A failure that the next attempt fixes is DEBUG
  (one each way). An *outage episode* begins when ``warn_after`` (default 3)
  transient failures come in a row with no request getting through: one
  WARNING then, with the count and the last error; its end (the first success
  of a request sent after the latest failure) is one INFO line with how long it
  lasted and how many failures it saw. A pause is its own episode: one ERROR
  when it begins, one WARNING when delivery resumes.

See docs/architecture.md, "Delivery policy" and "Failure policy".
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from spoolpost.delivery.policy import PausePolicy, RetryPolicy

log = logging.getLogger("spoolpost")

#: Transient failures in a row (no request getting through) that make an outage
#: episode: one WARNING when it begins, one INFO when it ends.
WARN_AFTER = 3


@dataclass(frozen=True)
class Notice:
    """A log record decided under the dispatcher's lock, written after it."""

    level: int
    message: str
    args: tuple[object, ...] = ()

    def emit(self) -> None:
        log.log(self.level, self.message, *self.args)


class EndpointHealth:
    """The gate, the pause and the recent outcomes of one endpoint (``url``, for
    messages), with ``retry`` and ``pause`` saying how long the gate and the pause
    stay closed. Every attribute reads as its name says; times are UTC seconds
    (0.0, or in the past, when the gate or pause is open)."""

    def __init__(
        self, retry: RetryPolicy, pause: PausePolicy, url: str, *, warn_after: int = WARN_AFTER
    ) -> None:
        self.retry = retry
        self.warn_after = max(1, warn_after)
        # The run of failures since the last success (for the episode's log lines).
        self.episode_started_at: float | None = None
        self.episode_failures = 0
        self.episode_warned = False
        self.pause_policy = pause
        self.url = url
        self.gate_until = 0.0
        self.gate_failures = 0  # transient failures in a row (the gate's episode)
        self.probing = False  # one batch at a time until a request gets through
        self.epoch = 0
        self.pause_until = 0.0
        self.pause_faults = 0  # configuration faults in a row (the pause's episode)
        self.paused_reason: str | None = None
        self.last_success_at: float | None = None
        self.last_failure: str | None = None
        # For display by other processes (see :meth:`record`), not for decisions.
        self.paused_since: float | None = None
        self.last_failure_at: float | None = None
        self.last_retry_after: float | None = None
        self.stopped_at: float | None = None  # a stop that left requests in flight
        self.left_in_flight = 0

    # -- questions -----------------------------------------------------------------

    def blocked(self, now: float) -> tuple[str, float]:
        """What holds sending back at ``now``, and for how many seconds more:
        ``("paused", s)``, ``("gate", s)``, or ``("", 0.0)`` when nothing does."""
        if now < self.pause_until:
            return "paused", self.pause_until - now
        if now < self.gate_until:
            return "gate", self.gate_until - now
        return "", 0.0

    def paused_at(self, now: float) -> str | None:
        """Why delivery is paused at ``now`` (a configuration fault), or None."""
        return self.paused_reason if now < self.pause_until else None

    def gate_failure(self) -> str | None:
        """The last failure, with the ``Retry-After`` it carried (``HTTP 429: …
        (Retry-After 60s)``), or None before any failure."""
        failure, after = self.last_failure, self.last_retry_after
        if failure is None or after is None:
            return failure
        return f"{failure} (Retry-After {after:g}s)"

    def outage(self, after: int) -> str | None:
        """The last failure once ``after`` transient failures came in a row (an
        outage, for the cron drain), else None."""
        return self.last_failure if self.gate_failures >= after else None

    def recently_up(self, now: float) -> bool:
        """True when a request got through within ``2 * max_backoff`` seconds of
        ``now``: a batch that keeps failing meanwhile may hold a poison event."""
        last = self.last_success_at
        return last is not None and now - last <= 2 * self.retry.max_backoff

    # -- outcomes ------------------------------------------------------------------

    def on_success(self, at: float, epoch: int) -> Notice | None:
        """The endpoint answered at ``at`` a request sent in ``epoch``: if no
        failure came since it was sent, the gate and the pause end."""
        self.last_success_at = at
        if epoch != self.epoch:
            return None  # sent before the latest failure: says nothing about now
        recovered = self.gate_failures > 0
        resumed = self.paused_reason is not None
        warned, failures = self.episode_warned, self.episode_failures
        lasted = at - (self.episode_started_at or at)
        self.episode_started_at, self.episode_failures, self.episode_warned = None, 0, False
        self.probing = False
        self.gate_failures = 0
        self.paused_reason = None
        self.paused_since = None
        self.pause_faults = 0
        if resumed:
            return Notice(
                logging.WARNING,
                "delivery to %s resumed after a configuration fault",
                (self.url,),
            )
        if recovered and warned:
            return Notice(
                logging.INFO,
                "delivery to %s recovered after %.1fs and %d failed requests",
                (self.url, lasted, failures),
            )
        if recovered:
            return Notice(logging.DEBUG, "delivery to %s recovered", (self.url,))
        return None

    def on_transient(self, at: float, retry_after: float | None, failure: str) -> Notice | None:
        """A transient ``failure`` at ``at``, carrying ``retry_after`` seconds
        (None without the header): close the gate for ``max(backoff,
        Retry-After)``. A failure of a request sent while the gate was already
        closed only extends it to the ``Retry-After`` it carries (capped at
        ``max_retry_after``)."""
        self.last_failure = failure
        self.last_failure_at = at
        self.last_retry_after = retry_after
        if self.episode_started_at is None:
            self.episode_started_at = at
        self.episode_failures += 1
        if at < self.gate_until:
            if retry_after is not None:
                capped = min(retry_after, self.retry.max_retry_after)
                self.gate_until = max(self.gate_until, at + capped)
            return None
        self.gate_failures += 1
        self.epoch += 1
        wait = self.retry.delay(self.gate_failures, retry_after)
        self.gate_until = at + wait
        self.probing = True
        if self.gate_failures >= self.warn_after and not self.episode_warned:
            self.episode_warned = True
            return Notice(
                logging.WARNING,
                "delivery to %s is failing: %d failed requests in a row since %.0fs ago, "
                "last: %s; events are kept in the spool, next attempt in %.1fs",
                (self.url, self.episode_failures, at - self.episode_started_at, failure, wait),
            )
        return Notice(
            logging.DEBUG,
            "delivery to %s failed (%s, %d in a row); next attempt in %.1fs",
            (self.url, failure, self.gate_failures, wait),
        )

    def on_config_fault(self, at: float, failure: str) -> Notice | None:
        """A configuration fault ``failure`` (401/403/404/3xx) at ``at``: pause for
        the episode's next, longer :meth:`PausePolicy.pause`. A fault of a request
        sent before the current pause began changes nothing."""
        self.last_failure = failure
        self.last_failure_at = at
        if at < self.pause_until:
            return None  # a request sent before the pause began
        self.pause_faults += 1
        self.epoch += 1
        pause = self.pause_policy.pause(self.pause_faults)
        self.pause_until = at + pause
        self.probing = True
        first = self.paused_reason is None
        self.paused_reason = f"{failure} from {self.url}"
        if first:
            self.paused_since = at
        if first:
            return Notice(
                logging.ERROR,
                "delivery to %s paused: %s — a configuration fault (check host and "
                "api_key); events are kept in the spool and retried every %.0fs or more",
                (self.url, failure, pause),
            )
        return Notice(
            logging.DEBUG, "delivery still paused (%s); next probe in %.0fs", (failure, pause)
        )

    def on_stop(self, at: float, in_flight: int) -> None:
        """Delivery stopped at ``at`` with ``in_flight`` requests still under way:
        their leases stay behind, for the next delivering process to take back
        (recorded so that ``inspect`` does not call them stuck)."""
        if in_flight:
            self.stopped_at, self.left_in_flight = at, in_flight

    # -- for display by other processes ----------------------------------------------

    def episode(self) -> tuple[object, ...]:
        """What changes only when an episode does (the gate closing or growing, a
        pause beginning or growing, a recovery): the dispatcher persists
        :meth:`record` when this changes, not on every request."""
        return (
            self.gate_until,
            self.gate_failures,
            self.pause_until,
            self.paused_reason,
            self.stopped_at,
        )

    def record(self) -> dict[str, object]:
        """The endpoint's state as plain JSON-able data, for ``spoolpost inspect`` in
        another process (times in UTC seconds or None; ``paused_status`` is the HTTP
        status of the fault that began the pause, None when not paused or when
        there was no status; ``stopped_at``/``left_in_flight``: a stop that left
        requests in flight, whose leases are then not stuck)."""
        match = _STATUS.match(self.paused_reason or "")
        return {
            "url": self.url,
            "paused_reason": self.paused_reason,
            "paused_status": int(match[1]) if match else None,
            "paused_since": self.paused_since,
            "paused_until": self.pause_until if self.paused_reason else None,
            "gate_until": self.gate_until or None,
            "gate_failures": self.gate_failures,
            "retry_after": self.last_retry_after,
            "last_error": self.last_failure,
            "last_error_at": self.last_failure_at,
            "last_success_at": self.last_success_at,
            "stopped_at": self.stopped_at,
            "left_in_flight": self.left_in_flight,
        }


_STATUS = re.compile(r"^HTTP (\d{3})\b")
