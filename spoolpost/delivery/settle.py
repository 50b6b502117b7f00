"""The settlement of one leased batch: POST it, then apply what the reply means.

:class:`Settler` is what a sender thread (or an inline :meth:`Dispatcher.step`)
runs for each batch it is handed. Outcomes follow the classifier table of
:mod:`spoolpost.delivery.policy` (see docs/architecture.md, "Failure policy"):

- 2xx → delete the rows; for a per-event format (v1), settle each row by its
  verdict in the ``results`` map, in one transaction (see
  :mod:`spoolpost.delivery.results`); a malformed map retries the batch.
- An encoding refusal (415, "invalid encoding") that survives the transport's
  fallback to an uncompressed body → give the rows back and pause (never dead).
- Transient (408/429/5xx, no response) → reschedule in the spool
  (``attempts += 1``, due after ``max(backoff, Retry-After)``; ``max_attempts``
  ends in the dead state) and close the endpoint gate.
- 413/other 4xx → split in halves, recursively; a lone event is dead-lettered
  (``too_large``/``rejected``) with the status and a body excerpt.
- 401/403/404/3xx → give the rows back and pause.
- Poison: a batch holding events that failed twice, failing again while other
  requests get through, is halved until the event that makes the server fail
  is alone (two requests per halving; when both halves fail, it is an outage
  after all: three requests, then the gate).

No network I/O happens inside a spool transaction: each spool call is one short
transaction before or after a POST.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from spoolpost.clock import Clock
from spoolpost.delivery.config import POISON_AFTER
from spoolpost.delivery.health import EndpointHealth, Notice
from spoolpost.delivery.parts import halves, ids_of, leave_request, probe_rows, unsendable
from spoolpost.delivery.policy import Action, RetryPolicy, classify, parse_retry_after
from spoolpost.delivery.results import dead_groups, settlement_for
from spoolpost.delivery.transport import HttpTransport, Reply
from spoolpost.delivery.wire import UnsendableEvents
from spoolpost.errors import SpoolClosed, SpoolCorrupt, SpoolUnwritable
from spoolpost.events.encoding import format_timestamp
from spoolpost.spool import Batch, RequestStamp, Row, Spool

log = logging.getLogger("spoolpost")

#: ``on_dead(rows, reason, detail)``: told of rows a reply dead-lettered.
DeadHook: TypeAlias = Callable[[Sequence[Row], str, str], None]
#: ``on_episode(kind, failure)``: an outage (``"outage"``) or pause (``"paused"``) began.
EpisodeHook: TypeAlias = Callable[[str, str], None]


@dataclass(frozen=True)
class _Try:
    """One POST: the ``reply``, what it means (``action``), when it came (``at``,
    UTC seconds) and the gate ``epoch`` the request was sent in."""

    reply: Reply
    action: Action
    at: float
    epoch: int
    per_event: bool = False  # the request's wire format answers per event (v1)
    #: The rows the request carried: those given, less any the wire format could
    #: not send (dead-lettered ``malformed`` before it; empty: nothing was sent).
    sent: Sequence[Row] = ()


class Settler:
    """Sends leased batches of ``spool`` through ``transport`` and settles them.

    ``health`` is the dispatcher's :class:`EndpointHealth`, read and changed only
    while holding ``lock`` (the dispatcher's); ``stopping`` set means send nothing
    more. ``lease_ttl`` (seconds) is how long each lease is extended before a
    further request for the same batch. :attr:`requests` (thread id → name, while
    inside a POST) and :attr:`settled` (events delivered or dead-lettered) are
    guarded by ``lock`` too.
    """

    def __init__(
        self,
        spool: Spool,
        transport: HttpTransport,
        retry: RetryPolicy,
        health: EndpointHealth,
        *,
        lock: threading.Condition,
        stopping: threading.Event,
        clock: Clock,
        lease_ttl: float,
    ) -> None:
        self.spool = spool
        self.transport = transport
        self.retry = retry
        self.health = health
        self.lock = lock
        self.stopping = stopping
        self.clock = clock
        self.lease_ttl = lease_ttl
        self.requests: dict[int, str] = {}
        self.settled = 0
        #: Called as ``on_dead(rows, reason, detail)`` after rows are dead-lettered
        #: by a reply (not by age); must not raise (the drop-in's ``on_error``).
        self.on_dead: DeadHook | None = None
        #: Called once when an outage or a pause begins (not at each backoff step).
        self.on_episode: EpisodeHook | None = None

    def deliver(self, batch: Batch) -> None:
        """Send one leased batch and settle every row of it, in this thread.

        Never raises: an unexpected error is logged and the rows still held by the
        lease are rescheduled with backoff (an attempt is counted, so a batch that
        always breaks something here ends at ``max_attempts``/``max_event_age``
        instead of spinning). A batch handed out before a halt, a pause or the
        closing of the endpoint gate goes back to the spool unsent.
        """
        try:
            now = self.clock.now()
            with self.lock:
                hold = bool(self.health.blocked(now)[0])
                probing = self.health.probing
            stamped = batch.stamp is not None
            if self.stopping.is_set() or hold:
                self.spool.release(batch.token, unstamp=stamped)
                return
            rows = probe_rows(batch.rows) if probing else batch.rows
            stamp = batch.stamp
            if len(rows) < len(batch.rows):
                sent = {r.id for r in rows}
                if stamped:  # the probe is another request: stamped on its own
                    self.spool.unstamp(batch.token, list(sent))
                    stamp = None
                rest = [i for i in batch.ids if i not in sent]
                self.spool.release(batch.token, rest, unstamp=stamped)
            self._send(batch.token, rows, stamp)
        except SpoolClosed:
            log.info(
                "spool closed with %d event(s) in flight; they stay leased in the spool "
                "and are sent again once the lease ends",
                len(batch.rows),
            )
        except SpoolCorrupt as exc:
            # Damage met by a settle write was quarantined and the write tried again
            # on the new spool (docs/architecture.md, "Damage on a read path"); this
            # is the file still damaged after that. The rows keep their lease.
            log.error("batch of %d event(s) left leased: %s", len(batch.rows), exc)
        except SpoolUnwritable:
            # Logged once per episode by the spool. The rows keep their lease and
            # are sent again once it ends (at-least-once).
            log.debug("batch of %d event(s) left leased: the disk refused a write", len(batch.rows))
        except Exception as exc:
            log.exception(
                "delivering a batch of %d event(s) failed unexpectedly; they are "
                "rescheduled and delivery goes on",
                len(batch.rows),
            )
            self._reschedule_after_crash(batch, exc)

    def _reschedule_after_crash(self, batch: Batch, exc: Exception) -> None:
        now = self.clock.now()
        attempt = max(r.attempts for r in batch.rows) + 1
        try:
            self.spool.reschedule(
                batch.token,
                batch.ids,
                now,
                now + self.retry.backoff(attempt),
                f"internal error: {type(exc).__name__}: {exc}",
                self.retry.max_attempts,
            )
        except Exception:
            log.exception(
                "could not reschedule lease %s; its events are sent again once it expires",
                batch.token[:8],
            )

    def request_identity(self, lane: str | None) -> tuple[str, str] | None:
        """A new v1 request identity (request id, ``created_at`` now) for a batch of
        ``lane``, or None when the lane's wire format carries none: what a claim
        stores for the batch's first request (see :meth:`Spool.claim`)."""
        if not self.transport.for_lane(lane).wire.per_event:
            return None
        return str(uuid.uuid4()), format_timestamp(None, self.clock.now())

    def _post(self, token: str, rows: Sequence[Row], stamp: RequestStamp | None = None) -> _Try:
        """POST ``rows`` (held by ``token``). A v1 request carries its stored identity:
        ``stamp`` (stored by the claim) or one stored now (:meth:`Spool.stamp_request`),
        so a retry keeps its id and ``created_at``. An encoding refusal is a pause."""
        transport = self.transport.for_lane(rows[0].lane)  # a batch holds one lane
        if transport.wire.per_event and stamp is None:
            now = self.clock.now()
            stamp = self.spool.stamp_request(
                token, ids_of(rows), str(uuid.uuid4()), format_timestamp(None, now)
            )
        me = threading.current_thread()
        with self.lock:
            epoch = self.health.epoch
            self.requests[me.ident or 0] = me.name
        try:
            reply, rows = self._request(transport, token, rows, stamp)
        finally:
            with self.lock:
                self.requests.pop(me.ident or 0, None)
        if reply is None:  # every row was malformed: nothing to send or settle
            return _Try(Reply(None), Action.DELIVERED, self.clock.now(), epoch)
        if reply.status is None:
            action = Action.RETRY
        elif reply.encoding_fault:
            action = Action.PAUSE
        else:
            action = classify(reply.status)
        return _Try(reply, action, self.clock.now(), epoch, transport.wire.per_event, rows)

    def _request(
        self, transport: HttpTransport, token: str, rows: Sequence[Row], stamp: RequestStamp | None
    ) -> tuple[Reply | None, Sequence[Row]]:
        """POST ``rows`` and return the reply and the rows it carried. Stored events
        the wire format cannot send (a damaged body under v1) are dead-lettered
        first, reason ``malformed`` (they would fail the same way on every
        attempt), and the rest of the batch is sent; None when none is left."""
        try:
            return transport.post([r.body for r in rows], self.clock.now(), stamp), rows
        except UnsendableEvents as exc:
            bad = exc.bad
        groups, rows = unsendable(rows, bad)
        now = self.clock.now()
        for why, doomed in groups.items():
            dead = self.spool.dead_letter(token, ids_of(doomed), now, "malformed", None, why)
            self._count_settled(dead)
            if dead and self.on_dead is not None:
                self.on_dead(doomed, "malformed", why)
        if not rows:
            return None, rows
        return transport.post([r.body for r in rows], self.clock.now(), stamp), rows

    def _send(self, token: str, rows: Sequence[Row], stamp: RequestStamp | None = None) -> Action:
        """POST ``rows`` (held by ``token``; ``stamp``: see :meth:`_post`) and settle
        them; return what the reply meant."""
        attempt = self._post(token, rows, stamp)
        self._settle(token, attempt.sent, attempt)
        return attempt.action

    def _settle(self, token: str, rows: Sequence[Row], t: _Try) -> None:
        """Apply the failure policy (see the module docstring) to ``rows`` for the reply ``t``."""
        if not rows:
            return
        ids = ids_of(rows)
        if t.action is Action.DELIVERED and t.per_event:
            self._settle_results(token, rows, t)
        elif t.action is Action.DELIVERED:
            self._count_settled(self.spool.ack(token, ids))
            self._on_success(t)
        elif t.action is Action.PAUSE:
            self.spool.release(token, ids)
            self._on_config_fault(t)
        elif t.action is Action.RETRY:
            poisoned = self._looks_poisoned(rows, t.at)
            if poisoned and len(rows) > 1:
                self._isolate(token, rows, t)
                return
            self._retry_later(token, rows, t)
            if not poisoned:  # a lone event failing while others get through: not an outage
                self._on_transient(t)
        elif len(rows) > 1:
            self._split(token, rows, t.at)
        else:
            detail = t.reply.excerpt or t.reply.describe()
            dead = self.spool.dead_letter(token, ids, t.at, t.action.value, t.reply.status, detail)
            self._count_settled(dead)
            if dead and self.on_dead is not None:
                self.on_dead(rows, t.action.value, detail)
            self._on_success(t)  # the endpoint answered: it is up

    def _settle_results(self, token: str, rows: Sequence[Row], t: _Try) -> None:
        """A v1 2xx: settle each row by its verdict (:mod:`~spoolpost.delivery.results`)
        in one transaction. A malformed map retries the whole batch."""
        if t.reply.results is None:
            log.warning(
                "%s answered %s without a readable results map; the batch is retried",
                self.transport.display_url,
                t.reply.status,
            )
            self._retry_later(token, rows, t, "malformed results map: ")
            self._on_success(t)  # it answered: the endpoint is up
            return
        settlement, strangers = settlement_for(rows, t.reply.results)
        if strangers:
            log.warning(
                "%s answered results for %d event(s) not in the request (ignored), e.g. %s",
                self.transport.display_url,
                len(strangers),
                strangers[0],
            )
        again = set(settlement.retried)
        attempt = max((r.attempts for r in rows if r.id in again), default=0) + 1
        retry_after = parse_retry_after(t.reply.retry_after, t.at)
        settled = self.spool.settle(
            token,
            settlement,
            now=t.at,
            next_attempt_at=t.at + self.retry.delay(attempt, retry_after),
            error=f"HTTP {t.reply.status}",
            max_attempts=self.retry.max_attempts,
            status=t.reply.status,
        )
        self._count_settled(settled.delivered + settled.dead)
        if settled.dead and self.on_dead is not None:
            limit = self.retry.max_attempts
            for died, reason, detail in dead_groups(rows, settlement, limit, t.reply.status):
                self.on_dead(died, reason, detail)
        self._on_success(t)

    def _retry_later(self, token: str, rows: Sequence[Row], t: _Try, why: str = "") -> None:
        """Reschedule ``rows`` after ``max(backoff, Retry-After)``; those reaching
        ``max_attempts`` die (reason ``max_attempts``, with the status)."""
        retry_after = parse_retry_after(t.reply.retry_after, t.at)
        attempt = max(r.attempts for r in rows) + 1
        _, dead = self.spool.reschedule(
            token,
            ids_of(rows),
            t.at,
            t.at + self.retry.delay(attempt, retry_after),
            why + t.reply.describe(),
            self.retry.max_attempts,
            status=t.reply.status,
        )
        self._count_settled(dead)
        limit = self.retry.max_attempts
        if dead and limit is not None and self.on_dead is not None:
            died = [r for r in rows if r.attempts + 1 >= limit]
            self.on_dead(died, "max_attempts", t.reply.describe())

    def _count_settled(self, n: int) -> None:
        """Tally events this dispatcher delivered or dead-lettered (for progress)."""
        with self.lock:
            self.settled += n

    def _split(self, token: str, rows: Sequence[Row], now: float) -> None:
        """413/4xx for several events: send each half (recursively, so a bad event
        is isolated in about 2·log2(n) requests). Once a half meets endpoint
        trouble (a retry or a pause), or a halt, the rest goes back to the spool
        unsent."""
        self.spool.extend(token, now + self.lease_ttl)
        leave_request(self.spool, self.transport, token, rows)
        first, second = halves(rows)
        if self.stopping.is_set():
            self.spool.release(token, ids_of(rows))
            return
        outcome = self._send(token, first)
        if outcome in (Action.RETRY, Action.PAUSE) or self.stopping.is_set():
            self.spool.release(token, ids_of(second))
            return
        self._send(token, second)

    def _isolate(self, token: str, rows: Sequence[Row], t: _Try) -> None:
        """``rows`` failed transiently again (``t``) while other batches get through:
        find the event(s) that make the endpoint fail, so they cannot hold the
        rest back.

        Each round sends both halves (2 requests) and settles the half that
        passes; a half that fails is halved again. When both halves fail, the
        endpoint itself is in trouble: both are rescheduled and the gate closes
        (3 requests in all). A single event left failing is rescheduled on its
        own backoff, and logged.
        """
        while len(rows) > 1 and not self.stopping.is_set():
            self.spool.extend(token, t.at + self.lease_ttl)
            leave_request(self.spool, self.transport, token, rows)
            first, second = halves(rows)
            a = self._post(token, first)
            first = a.sent
            if a.action is not Action.RETRY:
                self._settle(token, first, a)
                if a.action is Action.PAUSE or self.stopping.is_set():
                    self.spool.release(token, ids_of(second))
                    return
                b = self._post(token, second)
                second = b.sent
                if b.action is not Action.RETRY:
                    self._settle(token, second, b)  # the failure went away
                    return
                rows, t = second, b
                continue
            if self.stopping.is_set():
                self._retry_later(token, first, a)
                self.spool.release(token, ids_of(second))
                return
            b = self._post(token, second)
            second = b.sent
            if b.action is Action.RETRY:
                self._retry_later(token, first, a)
                self._retry_later(token, second, b)
                self._on_transient(b)
                return
            self._settle(token, second, b)
            if b.action is Action.PAUSE:
                self._retry_later(token, first, a)
                return
            rows, t = first, a
        self._retry_later(token, rows, t)
        if len(rows) == 1:
            log.warning(
                "event %s makes %s fail (%s) while other events get through; it is "
                "retried on its own schedule",
                rows[0].uuid,
                self.transport.display_url,
                t.reply.describe(),
            )

    def _looks_poisoned(self, rows: Sequence[Row], now: float) -> bool:
        """Rows of which one failed transiently at least :data:`POISON_AFTER` times
        before, while other requests got through lately (within ``2 * max_backoff``)."""
        with self.lock:
            recent = self.health.recently_up(now)
        return recent and max(r.attempts for r in rows) >= POISON_AFTER

    # -- the endpoint's health, changed under the lock, logged after it -------------

    def _on_success(self, t: _Try) -> None:
        with self.lock:
            notice = self.health.on_success(t.at, t.epoch)
        _emit(notice)

    def _on_transient(self, t: _Try) -> None:
        retry_after = parse_retry_after(t.reply.retry_after, t.at)
        with self.lock:
            warned = self.health.episode_warned
            notice = self.health.on_transient(t.at, retry_after, t.reply.describe())
            # An outage episode begins when the health says so (warn_after failures in
            # a row), not at a blip the next attempt fixes: on_error hears it once.
            began = self.health.episode_warned and not warned
        _emit(notice)
        if began and self.on_episode is not None:
            self.on_episode("outage", t.reply.describe())

    def _on_config_fault(self, t: _Try) -> None:
        with self.lock:
            notice = self.health.on_config_fault(t.at, t.reply.describe())
            began = notice is not None and self.health.pause_faults == 1
        _emit(notice)
        if began and self.on_episode is not None:
            self.on_episode("paused", t.reply.describe())


def _emit(notice: Notice | None) -> None:
    if notice is not None:
        notice.emit()
