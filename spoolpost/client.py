"""The client applications use: capture into the spool, deliver in the background.

``capture()`` validates, encodes and writes the event to the spool in the
caller's thread and returns its uuid only once the row is committed. A
:class:`~spoolpost.delivery.dispatcher.Dispatcher` (a dispatcher thread plus sender
threads) delivers it. ``flush()`` is a barrier over everything captured before
the call; ``shutdown()`` flushes within a deadline and stops, leaving whatever is
not delivered in the spool for the next start or a cron ``spoolpost drain``.

The capture methods take current posthog-python's (7.x) call forms:
``capture(event, *, distinct_id, properties=…, timestamp=…, uuid=…, groups=…,
disable_geoip=…)`` and ``set``/``set_once(*, distinct_id, properties, …)`` take
everything by keyword, so the old ``capture(distinct_id, event)`` order raises
``TypeError`` instead of silently swapping the two; ``alias`` and
``group_identify`` keep posthog-python's positional order. Two posthog-python options
have no meaning here and are refused with ``TypeError`` when they ask for
something (a false value is accepted): ``send_feature_flags`` and ``flags``,
because spoolpost does not evaluate feature flags, and a flag value looked up
at send time, maybe days later from the spool, would be wrong.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from uuid import UUID

from spoolpost.capture import events as ev
from spoolpost.capture.encoding import Timestamp, encode_event
from spoolpost.clock import SYSTEM_CLOCK, Clock
from spoolpost.delivery.barrier import FlushBarrier
from spoolpost.delivery.dispatcher import DeliveryConfig, Dispatcher, FlushResult
from spoolpost.delivery.policy import PausePolicy, RetryPolicy
from spoolpost.delivery.transport import DEFAULT_HOST, HttpTransport, PostHogV0, Timeout
from spoolpost.errors import ConfigError, EventTooLarge, SpoolClosed
from spoolpost.spool import DEFAULT_MAX_SPOOL_BYTES, Durability, OnFull, Spool

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "BeforeSend",
    "Client",
    "default_spool_path",
    "key_fingerprint",
]

log = logging.getLogger("spoolpost")

DEFAULT_MAX_EVENT_BYTES = 900 * 1024
BeforeSend = Callable[[dict[str, Any]], "Mapping[str, Any] | None"]
EventUuid = UUID | str | None

#: Seconds between writes of the ``filtered`` counter while ``before_send`` drops events.
FILTERED_COUNT_EVERY = 1.0
#: Most of a shutdown's deadline kept for stopping the threads (see :func:`stop_reserve`).
STOP_RESERVE = 1.0


def stop_reserve(timeout: float) -> float:
    """Seconds of a ``shutdown(timeout)`` kept for stopping the threads after the
    flush: ``min(STOP_RESERVE, timeout / 4)``, never negative. The flush gets the
    rest."""
    return max(0.0, min(STOP_RESERVE, timeout / 4))


def key_fingerprint(api_key: str) -> str:
    """A short, non-reversible fingerprint of a project API key (SHA-256, 16 hex)."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]


def default_spool_path(api_key: str) -> Path:
    """``$SPOOLPOST_SPOOL``, else ``$XDG_STATE_HOME/spoolpost/<key fingerprint>.spool``
    (``~/.local/state`` when ``XDG_STATE_HOME`` is unset)."""
    configured = os.environ.get("SPOOLPOST_SPOOL")
    if configured:
        return Path(configured).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or os.path.join("~", ".local", "state")
    return Path(state).expanduser() / "spoolpost" / f"{key_fingerprint(api_key)}.spool"


def _no_feature_flags(send_feature_flags: object, flags: object) -> None:
    if send_feature_flags:
        raise TypeError(
            "capture(send_feature_flags=...) is not supported: spoolpost does not evaluate "
            "feature flags. Put the flag values you branched on in properties, e.g. "
            '{"$feature/my-flag": "variant"}.'
        )
    if flags is not None:
        raise TypeError(
            "capture(flags=...) is not supported: spoolpost does not evaluate feature "
            'flags. Put the flag values in properties, e.g. {"$feature/my-flag": "variant"}.'
        )


def _check_timeout(timeout: float) -> None:
    if not timeout >= 0:  # also refuses NaN
        raise ValueError(f"timeout must be >= 0 seconds (inf: no limit), not {timeout!r}")


class Client:
    """A spoolpost client: PostHog-shaped capture into a crash-safe spool.

    ``api_key``: the project API key (applied at send time, never stored per
    event). ``host``: the ingestion base URL (default ``https://us.i.posthog.com``),
    checked by :func:`~spoolpost.delivery.transport.check_host`; credentials in it
    (``user:password@``) are sent as HTTP basic auth and logged as ``user:***@``.
    ``spool``: the spool file (default :func:`default_spool_path`).
    ``send``: False makes a capture-only client that starts no threads at all (for
    short-lived scripts and serverless handlers; deliver with ``spoolpost drain``
    from cron).
    ``durability``: ``"process"`` or ``"power"``; ``max_spool_bytes`` (default
    512 MiB) and ``on_full`` bound the spool. ``flush_at`` (100),
    ``flush_interval`` (5.0 s), ``max_batch_size`` (500), ``max_batch_bytes``
    (5 MiB), ``senders`` (``min(cpu, 4)``), ``lease_ttl`` (120 s) shape delivery;
    ``retry`` sets backoff and limits (:class:`~spoolpost.delivery.policy.RetryPolicy`),
    ``pause`` the pause after a configuration fault. ``max_event_bytes``
    (900 KiB) bounds one encoded event.
    ``before_send(event) -> event | None`` runs at capture, in the caller's
    thread, before the event reaches disk: it gets a copy of the event dict (and
    of its ``properties`` dict; deeper values are shared) and returns the event to
    write, or None to drop it (counted as ``filtered`` in the spool's counters).
    The event it returns is checked by capture's rules
    (:func:`~spoolpost.capture.events.check_event`: ``event``, ``distinct_id`` and
    ``properties`` required and valid; a missing ``uuid`` or ``timestamp`` is
    the captured one). If the hook raises, or returns anything else (not a
    mapping, or an invalid event), an ERROR is logged and the event is written
    unmodified.
    ``disabled=True`` captures nothing and raises nothing (every capture method
    returns None, ``flush``/``shutdown`` an empty result); no spool is opened.
    ``disable_geoip`` (default True, as in posthog-python) adds
    ``"$geoip_disable": true`` to every event unless a call says otherwise, so
    PostHog does not locate people from the server's IP address.
    ``historical_migration`` is sent with every batch (PostHog's flag for
    back-filled data). ``gzip`` compresses request bodies. ``timeout``:
    seconds per request, a positive number or a (connect, read) pair (default
    (5, 30)). ``shutdown_timeout``: seconds the ``atexit``
    shutdown and the ``with`` block exit may take (5). ``force_key``: deliver a
    spool created for another API key (re-binds it). ``clock``: time source (tests).

    Raises :class:`~spoolpost.errors.ConfigError` for settings that cannot work,
    including :class:`~spoolpost.errors.KeyMismatch` for a spool created with
    another key (unless ``force_key``), and the spool's own errors
    (:class:`~spoolpost.errors.SchemaTooNew`, …).
    """

    def __init__(
        self,
        api_key: str,
        host: str = DEFAULT_HOST,
        *,
        spool: str | os.PathLike[str] | None = None,
        send: bool = True,
        durability: Durability = "process",
        max_spool_bytes: int = DEFAULT_MAX_SPOOL_BYTES,
        on_full: OnFull = "drop_newest",
        flush_at: int = 100,
        flush_interval: float = 5.0,
        max_batch_size: int = 500,
        max_batch_bytes: int = 5 * 1024 * 1024,
        senders: int = 0,
        lease_ttl: float = 120.0,
        retry: RetryPolicy | None = None,
        pause: PausePolicy | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        before_send: BeforeSend | None = None,
        disabled: bool = False,
        disable_geoip: bool = True,
        historical_migration: bool = False,
        gzip: bool = False,
        timeout: Timeout = (5.0, 30.0),
        shutdown_timeout: float = 5.0,
        force_key: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.disabled = disabled
        self.send = send
        self.clock = clock
        self.before_send = before_send
        self.disable_geoip = disable_geoip
        self.max_event_bytes = max_event_bytes
        self.shutdown_timeout = shutdown_timeout
        self._shut = False
        self._shutdown_result = FlushResult()
        self._delivering = False
        self._reset_locks()
        if disabled:
            return
        if max_event_bytes < 1:
            raise ConfigError(f"max_event_bytes must be >= 1, not {max_event_bytes!r}")
        if shutdown_timeout < 0:
            raise ConfigError(f"shutdown_timeout must be >= 0 seconds, not {shutdown_timeout!r}")
        self.transport = HttpTransport(
            host,
            api_key,
            wire=PostHogV0(historical_migration),
            gzip=gzip,
            timeout=timeout,
        )
        config = DeliveryConfig(
            flush_at=flush_at,
            flush_interval=flush_interval,
            max_batch_size=max_batch_size,
            max_batch_bytes=max_batch_bytes,
            lease_ttl=lease_ttl,
            senders=senders,
        )
        self.spool = Spool(
            spool if spool is not None else default_spool_path(api_key),
            durability=durability,
            max_spool_bytes=max_spool_bytes,
            on_full=on_full,
        )
        try:
            self.spool.bind_key(key_fingerprint(api_key), force=force_key)
            self.dispatcher = Dispatcher(
                self.spool, self.transport, config=config, retry=retry, pause=pause, clock=clock
            )
        except BaseException:
            self.spool.close()
            raise
        if send:
            self._start_delivery()
        _register(self)

    def _reset_locks(self) -> None:
        """(Re)create the locks; also in a forked child, where another thread of the
        parent may have held one at the time of the fork."""
        self._lock = threading.Lock()  # serializes shutdown()
        self._start_lock = threading.Lock()
        self._filtered_lock = threading.Lock()
        self._filtered = 0  # before_send drops not yet added to the spool's counter
        self._filtered_due = 0.0  # monotonic time of the next counter write

    def _after_fork_in_child(self) -> None:
        # The parent's threads do not exist here; the spool reopens its connections
        # lazily (its own fork hook) and the next capture or flush starts delivery.
        self._reset_locks()
        self._delivering = False

    # -- capture -------------------------------------------------------------------

    def capture(
        self,
        event: str,
        *,
        distinct_id: ev.DistinctId,
        properties: Mapping[str, Any] | None = None,
        timestamp: Timestamp = None,
        uuid: EventUuid = None,
        groups: Mapping[str, Any] | None = None,
        disable_geoip: bool | None = None,
        send_feature_flags: object = False,
        flags: object = None,
    ) -> str | None:
        """Capture ``event`` (a non-empty str) for ``distinct_id``; return its uuid once
        it is committed to the spool, or None if ``before_send`` or ``on_full`` dropped
        it (or the client is disabled).

        Everything after ``event`` is keyword-only, as in posthog-python 7.x: the
        old ``capture(distinct_id, event)`` call raises ``TypeError``.
        ``distinct_id`` is a non-empty str, an int or a UUID (sent as a str); it is
        required: posthog-python's personless events (no distinct_id) are not supported.
        ``properties`` is copied, never mutated; values are encoded here, in the
        caller's thread (see :func:`~spoolpost.capture.encoding.encode_event`).
        ``timestamp`` (aware or naive-local datetime, date, or ISO 8601 string; default
        now) is sent as RFC 3339 UTC. ``uuid`` defaults to a new UUIDv7; a given
        one is normalized (canonical lowercase) and kept, and an event captured twice
        with the same uuid is stored and sent twice (PostHog deduplicates by uuid).
        ``groups`` maps group type → key.
        ``disable_geoip`` overrides the client's setting for this event.
        ``send_feature_flags`` and ``flags`` are accepted for posthog-python
        compatibility only when false/None.

        Raises ``ValueError`` for a bad event name, distinct_id, uuid or timestamp,
        or properties/groups that are not mappings; ``TypeError`` for
        ``send_feature_flags``/``flags`` and for arguments passed by position;
        :class:`~spoolpost.errors.EncodingError` naming the property path that
        cannot be encoded; :class:`~spoolpost.errors.EventTooLarge` over
        ``max_event_bytes``; :class:`~spoolpost.errors.SpoolFull` (``on_full``
        ``raise``/``block``); :class:`~spoolpost.errors.SpoolClosed` after
        :meth:`shutdown`. Nothing is written when it raises.
        """
        if self.disabled:
            return None
        if send_feature_flags or flags is not None:
            _no_feature_flags(send_feature_flags, flags)
        return self._emit(
            ev.capture_event, disable_geoip, event, distinct_id, properties, timestamp, uuid, groups
        )

    def identify(
        self,
        distinct_id: ev.DistinctId,
        properties: Mapping[str, Any] | None = None,
        *,
        timestamp: Timestamp = None,
        uuid: EventUuid = None,
        disable_geoip: bool | None = None,
    ) -> str | None:
        """``$identify``: set person ``properties`` on ``distinct_id`` (sent as
        ``properties.$set``). Returns and raises as :meth:`capture`.

        posthog-python 7.x has no ``identify`` (use :meth:`set`); its earlier
        ``identify(distinct_id, properties, context, timestamp, …)`` had ``context``
        third, so everything after ``properties`` is keyword-only here: a third
        positional argument raises ``TypeError`` instead of being misread."""
        return self._emit(
            ev.identify_event, disable_geoip, distinct_id, properties, timestamp, uuid
        )

    def set(
        self,
        *,
        distinct_id: ev.DistinctId,
        properties: Mapping[str, Any],
        timestamp: Timestamp = None,
        uuid: EventUuid = None,
        disable_geoip: bool | None = None,
    ) -> str | None:
        """``$set`` person ``properties`` (a mapping, required) on ``distinct_id``,
        overwriting earlier values. Returns and raises as :meth:`capture`.
        Keyword-only, as in posthog-python 7.x."""
        return self._emit(ev.set_event, disable_geoip, distinct_id, properties, timestamp, uuid)

    def set_once(
        self,
        *,
        distinct_id: ev.DistinctId,
        properties: Mapping[str, Any],
        timestamp: Timestamp = None,
        uuid: EventUuid = None,
        disable_geoip: bool | None = None,
    ) -> str | None:
        """``$set_once`` person ``properties`` (a mapping, required) on
        ``distinct_id``, only where not set yet. Returns and raises as :meth:`capture`.
        Keyword-only, as in posthog-python 7.x."""
        return self._emit(
            ev.set_once_event, disable_geoip, distinct_id, properties, timestamp, uuid
        )

    def alias(
        self,
        previous_id: ev.DistinctId,
        distinct_id: ev.DistinctId,
        timestamp: Timestamp = None,
        uuid: EventUuid = None,
        disable_geoip: bool | None = None,
    ) -> str | None:
        """``$create_alias``: make ``distinct_id`` an alias of ``previous_id`` (sent
        by ``previous_id``, properties ``{"distinct_id": previous_id, "alias":
        distinct_id}``). Arguments in posthog-python's order. Returns and raises as
        :meth:`capture`."""
        return self._emit(ev.alias_event, disable_geoip, previous_id, distinct_id, timestamp, uuid)

    def group_identify(
        self,
        group_type: str,
        group_key: ev.DistinctId,
        properties: Mapping[str, Any] | None = None,
        timestamp: Timestamp = None,
        uuid: EventUuid = None,
        disable_geoip: bool | None = None,
        distinct_id: ev.DistinctId | None = None,
    ) -> str | None:
        """``$groupidentify``: set ``properties`` on the group ``group_type``/
        ``group_key`` (properties ``$group_type``, ``$group_key``, ``$group_set``),
        sent by ``distinct_id`` (default ``"$<group_type>_<group_key>"``).
        Arguments in posthog-python's order. Returns and raises as :meth:`capture`."""
        return self._emit(
            ev.group_identify_event,
            disable_geoip,
            group_type,
            group_key,
            properties,
            timestamp,
            uuid,
            distinct_id,
        )

    def _emit(
        self, build: Callable[..., dict[str, Any]], disable_geoip: bool | None, *args: Any
    ) -> str | None:
        """Build an event with ``build(*args, now=…, disable_geoip=…)`` and write it
        (nothing at all when the client is disabled)."""
        if self.disabled:
            return None
        now = self.clock.now()
        geoip = self.disable_geoip if disable_geoip is None else disable_geoip
        return self._write(build(*args, now=now, disable_geoip=geoip), now)

    def _write(self, event: dict[str, Any], now: float) -> str | None:
        """Filter, encode and commit one built event (the capture hot path)."""
        if self._shut:
            raise SpoolClosed("this client was shut down; create a new Client to capture")
        if self.before_send is not None:
            kept = self._run_before_send(event)
            if kept is None:
                self._count_filtered()
                return None
            event = kept
        body = encode_event(event)
        if len(body) > self.max_event_bytes:
            raise EventTooLarge(len(body), self.max_event_bytes)
        uuid: str = event["uuid"]
        if not self.spool.append(uuid, body, now):
            return None
        if self.send:
            if not self._delivering:
                self._start_delivery()  # a forked child starts its own threads
            self.dispatcher.notify_captured()
        return uuid

    def _run_before_send(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The hook's verdict on ``event``: the event to write, or None to drop it."""
        assert self.before_send is not None
        copy = dict(event)
        copy["properties"] = dict(event["properties"])
        try:
            changed: object = self.before_send(copy)
        except Exception:
            log.exception("before_send raised; the event %s is kept unmodified", event["uuid"])
            return event
        if changed is None:
            return None
        if not isinstance(changed, Mapping):
            log.error(
                "before_send returned a %s instead of an event dict or None; the event %s "
                "is kept unmodified",
                type(changed).__name__,
                event["uuid"],
            )
            return event
        try:
            return ev.check_event(changed, event)
        except ValueError as exc:
            log.error(
                "before_send returned an invalid event (%s); the event %s is kept unmodified",
                exc,
                event["uuid"],
            )
            return event

    def _count_filtered(self) -> None:
        """Count a ``before_send`` drop; the spool's counter is written at most once
        per :data:`FILTERED_COUNT_EVERY` seconds, and by flush and shutdown."""
        with self._filtered_lock:
            self._filtered += 1
            due = self.clock.monotonic() >= self._filtered_due
        if due:
            self._save_filtered()

    def _save_filtered(self) -> None:
        with self._filtered_lock:
            n, self._filtered = self._filtered, 0
            self._filtered_due = self.clock.monotonic() + FILTERED_COUNT_EVERY
        if n:
            self.spool.add_counter("filtered", n)

    # -- delivery, flush and shutdown -------------------------------------------------

    def _start_delivery(self) -> None:
        """Start the dispatcher and sender threads (once per process)."""
        with self._start_lock:
            if not self._delivering:
                self.dispatcher.start()
                self._delivering = True

    def flush(self, timeout: float = 30.0) -> FlushResult:
        """Deliver everything captured before this call; wait up to ``timeout`` seconds.

        Returns when every such event is delivered or dead, when delivery is paused
        by a configuration fault, or at the timeout, with a :class:`FlushResult`:
        ``delivered`` and ``dead`` count what this call settled (events the
        background senders delivered before it are not counted), ``pending``
        what is left, and ``complete`` is True when nothing captured before the
        call is left in the spool. Events captured after the
        call, by any thread, are not waited for. Backoff and ``Retry-After`` are
        honoured. A capture-only client (``send=False``) sends nothing and reports
        what is pending. Never raises for delivery trouble; returns an empty
        result on a disabled client. ``timeout`` must be >= 0 (``inf``: no limit),
        else ``ValueError``. Raises :class:`~spoolpost.errors.SpoolClosed` after
        :meth:`shutdown` (whose own result says what was left).
        """
        _check_timeout(timeout)
        if self.disabled:
            return FlushResult()
        if self._shut:
            raise SpoolClosed("this client was shut down; its shutdown() result says what is left")
        try:
            self._save_filtered()
            barrier = FlushBarrier.take(self.spool, self.clock.now())
        except SpoolClosed:  # a shutdown() in another thread got there first
            return FlushResult()
        if not self.send:
            return FlushResult(pending=barrier.unsettled)
        if not self._delivering:
            self._start_delivery()  # a forked child that has not captured yet
        return self.dispatcher.flush(barrier, timeout)

    def shutdown(self, timeout: float = 5.0) -> FlushResult:
        """Flush, then stop the threads and close the spool, all within ``timeout``
        seconds; return the flush's :class:`FlushResult`.

        The flush gets ``timeout`` less :func:`stop_reserve` (at most 1 s, a quarter
        of a short timeout), so the threads can stop within what is left.
        Idempotent (a second call returns the first call's result). Whatever is not
        delivered by then stays in the spool for the next start or a cron drain:
        nothing is dropped at the deadline. Capturing afterwards raises
        :class:`~spoolpost.errors.SpoolClosed`.
        """
        _check_timeout(timeout)
        with self._lock:
            if self.disabled:
                return FlushResult()
            if self._shut:
                return self._shutdown_result
            start = self.clock.monotonic()
            reserve = stop_reserve(timeout) if self.send else 0.0
            result = self.flush(max(0.0, timeout - reserve))
            self._shut = True
            self._shutdown_result = result
        _live.discard(self)
        if self._delivering:
            self.dispatcher.stop(max(0.0, timeout - (self.clock.monotonic() - start)))
        self._save_filtered()
        if self.spool.any_open_through(self.spool.watermark(self.clock.now())):
            log.info("shutdown: undelivered events stay in the spool %s for later", self.spool.path)
        self.spool.close()
        return result

    close = shutdown

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(self.shutdown_timeout)


# -- process-wide: atexit and fork --------------------------------------------------

_live: weakref.WeakSet[Client] = weakref.WeakSet()
_atexit_registered = False
_registry_lock = threading.Lock()


def _register(client: Client) -> None:
    global _atexit_registered
    with _registry_lock:
        _live.add(client)
        if not _atexit_registered:
            atexit.register(_shutdown_all)
            _atexit_registered = True


def _shutdown_all() -> None:
    """At interpreter exit: shut every live client down within its shutdown_timeout."""
    for client in list(_live):
        try:
            client.shutdown(client.shutdown_timeout)
        except Exception:
            log.exception("shutdown at exit failed")


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for client in list(_live):
        client._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
