"""The client applications use: capture into the spool, deliver in the background.

``capture()`` validates, encodes and writes the event to the spool in the
caller's thread and returns its uuid only once the row is committed. A
:class:`~spoolpost.delivery.dispatcher.Dispatcher` (a dispatcher thread plus sender
threads) delivers it. ``flush()`` is a barrier over everything captured before
the call; ``shutdown()`` flushes within a deadline and stops, leaving whatever is
not delivered in the spool for the next start or a cron ``spoolpost drain``.

The capture methods and their posthog-python call forms come from
:class:`~spoolpost.events.api.CaptureApi`; the steps between building an event and
its commit from :class:`~spoolpost.events.pipeline.CapturePipeline`. This module
wires them to the spool and to delivery and owns the client's lifecycle.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spoolpost.clock import SYSTEM_CLOCK, Clock
from spoolpost.delivery import (
    DEFAULT_HOST,
    DeliveryConfig,
    Dispatcher,
    FlushBarrier,
    FlushResult,
    HttpTransport,
    PausePolicy,
    RetryPolicy,
)
from spoolpost.delivery.hosts import canonical_host
from spoolpost.delivery.transport import DEFAULT_TIMEOUT, Timeout
from spoolpost.delivery.wire import resolve_capture_mode, wire_format
from spoolpost.errors import ConfigError, SpoolClosed, SpoolUnwritable
from spoolpost.events.api import CaptureApi
from spoolpost.events.pipeline import (
    DEFAULT_MAX_EVENT_BYTES,
    FILTERED_COUNT_EVERY,
    BeforeSend,
    CapturePipeline,
)
from spoolpost.spool import (
    DEFAULT_DURABILITY,
    DEFAULT_MAX_SPOOL_BYTES,
    DEFAULT_MIN_FREE_BYTES,
    DEFAULT_ON_FULL,
    Durability,
    OnFull,
    Spool,
    SpoolStats,
)
from spoolpost.spool.location import default_spool_path, key_fingerprint, preferred_spool_path

__all__ = [
    "DEFAULT_FLUSH_TIMEOUT",
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "FILTERED_COUNT_EVERY",
    "BeforeSend",
    "Client",
    "default_spool_path",
    "key_fingerprint",
]

log = logging.getLogger("spoolpost")

#: Seconds :meth:`Client.flush` waits by default.
DEFAULT_FLUSH_TIMEOUT = 30.0
#: Seconds :meth:`Client.shutdown` may take by default; also ``shutdown_timeout``'s default.
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
#: Most of a shutdown's deadline kept for stopping the threads (see :func:`stop_reserve`).
STOP_RESERVE = 1.0


def stop_reserve(timeout: float) -> float:
    """Seconds of a ``shutdown(timeout)`` kept for stopping the threads after the
    flush: ``min(STOP_RESERVE, timeout / 4)``, never negative. The flush gets the
    rest."""
    return max(0.0, min(STOP_RESERVE, timeout / 4))


def _default_spool(api_key: str) -> Path:
    """:func:`default_spool_path`, with one ERROR when it is the per-user fallback."""
    path = default_spool_path(api_key)
    preferred = preferred_spool_path(api_key)
    if path != preferred:
        log.error("the spool folder of %s cannot be created; using %s instead", preferred, path)
    return path


def _check_timeout(timeout: float) -> None:
    if not timeout >= 0:  # also refuses NaN
        raise ValueError(f"timeout must be >= 0 seconds (inf: no limit), not {timeout!r}")


class Client(CaptureApi):
    """A spoolpost client: PostHog-shaped capture into a crash-safe spool.

    ``api_key``: the project API key (applied at send time, never stored per
    event). ``host``: the ingestion base URL (default
    :data:`~spoolpost.delivery.transport.DEFAULT_HOST`), checked by
    :func:`~spoolpost.delivery.transport.check_host`; credentials in it
    (``user:password@``) are sent as HTTP basic auth and logged as ``user:***@``.
    ``spool``: the spool file (default :func:`default_spool_path`).
    ``send``: False makes a capture-only client that starts no threads at all (for
    short-lived scripts and serverless handlers; deliver with ``spoolpost drain``
    from cron).
    ``durability``, ``max_spool_bytes``, ``min_free_bytes`` and ``on_full`` go to the
    :class:`~spoolpost.spool.Spool`, which documents them and their defaults;
    ``flush_at``, ``flush_interval``, ``max_batch_size``, ``max_batch_bytes``,
    ``senders`` and ``lease_ttl`` shape delivery, as documented (defaults too) by
    :class:`~spoolpost.delivery.DeliveryConfig`; ``retry`` sets backoff and limits
    (:class:`~spoolpost.delivery.policy.RetryPolicy`), ``pause`` the pause after a
    configuration fault. ``max_event_bytes`` bounds one encoded event (default
    :data:`~spoolpost.events.pipeline.DEFAULT_MAX_EVENT_BYTES`).
    ``before_send(event) -> event | None`` runs at capture, in the caller's
    thread, before the event reaches disk: it gets a copy of the event dict (and
    of its ``properties`` dict; deeper values are shared) and returns the event to
    write, or None to drop it (counted as ``filtered`` in the spool's counters).
    The event it returns is checked by capture's rules
    (:func:`~spoolpost.events.build.check_event`: ``event``, ``distinct_id`` and
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
    back-filled data). ``gzip`` compresses request bodies. ``capture_mode``:
    PostHog's wire protocol, ``"v0"`` (``/batch/``, alias ``legacy``) or ``"v1"``
    (``/i/v1/analytics/events`` with per-event results, alias ``analytics_v1``);
    default ``SPOOLPOST_CAPTURE_MODE``, then ``POSTHOG_CAPTURE_MODE``, then v0
    (:func:`~spoolpost.delivery.wire.resolve_capture_mode`). The spool is the same
    under both. ``capture_compression``: ``none``, ``gzip``, ``deflate`` or ``zstd``
    (``pip install spoolpost[zstd]``) for v1 (default ``POSTHOG_CAPTURE_COMPRESSION``,
    then gzip if ``gzip``, else none); v0 ignores it, as posthog-python does, and
    sends gzip only with ``gzip`` (logged once at INFO). ``timeout``:
    seconds per request, a positive number or a (connect, read) pair (default:
    :class:`~spoolpost.delivery.transport.HttpTransport`'s). ``shutdown_timeout``:
    seconds the ``atexit`` shutdown and the ``with`` block exit may take (default
    :data:`DEFAULT_SHUTDOWN_TIMEOUT`). ``force_key``: deliver a
    spool created for another API key (re-binds it). ``clock``: time source (tests).
    ``force_host``: a delivering client records its endpoint in the spool the
    first time (:meth:`~spoolpost.spool.Spool.bind_host`, compared after
    :func:`~spoolpost.delivery.hosts.canonical_host`) and refuses a spool that
    delivers elsewhere with :class:`~spoolpost.errors.HostMismatch`, unless
    ``force_host`` (then the spool is re-bound to ``host``).

    Raises :class:`~spoolpost.errors.ConfigError` for settings that cannot work,
    including :class:`~spoolpost.errors.KeyMismatch` for a spool created with
    another key (unless ``force_key``), :class:`~spoolpost.errors.HostMismatch`,
    and the spool's own errors
    (:class:`~spoolpost.errors.SchemaTooNew`, …).
    """

    def __init__(
        self,
        api_key: str,
        host: str = DEFAULT_HOST,
        *,
        spool: str | os.PathLike[str] | None = None,
        send: bool = True,
        durability: Durability = DEFAULT_DURABILITY,
        max_spool_bytes: int = DEFAULT_MAX_SPOOL_BYTES,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        on_full: OnFull = DEFAULT_ON_FULL,
        flush_at: int = DeliveryConfig.flush_at,
        flush_interval: float = DeliveryConfig.flush_interval,
        max_batch_size: int = DeliveryConfig.max_batch_size,
        max_batch_bytes: int = DeliveryConfig.max_batch_bytes,
        senders: int = DeliveryConfig.senders,
        lease_ttl: float = DeliveryConfig.lease_ttl,
        retry: RetryPolicy | None = None,
        pause: PausePolicy | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        before_send: BeforeSend | None = None,
        disabled: bool = False,
        disable_geoip: bool = True,
        historical_migration: bool = False,
        gzip: bool = False,
        capture_mode: str | None = None,
        capture_compression: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        force_key: bool = False,
        clock: Clock = SYSTEM_CLOCK,
        force_host: bool = False,
    ) -> None:
        self.disabled = disabled
        self.send = send
        self.clock = clock
        self.disable_geoip = disable_geoip
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
            wire=wire_format(resolve_capture_mode(capture_mode), historical_migration),
            gzip=gzip,
            compression=capture_compression,
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
            spool if spool is not None else _default_spool(api_key),
            durability=durability,
            max_spool_bytes=max_spool_bytes,
            min_free_bytes=min_free_bytes,
            on_full=on_full,
        )
        self._capture = CapturePipeline(
            self.spool, before_send=before_send, max_event_bytes=max_event_bytes, clock=clock
        )
        try:
            self.spool.bind_key(key_fingerprint(api_key), force=force_key)
            self.spool.record_bound()  # inspect/check read how full it is
            if send:  # the spool remembers where it delivers (see bind_host)
                self.spool.bind_host(canonical_host(host), force=force_host)
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

    def _after_fork_in_child(self) -> None:
        # The parent's threads do not exist here; the spool reopens its connections
        # lazily (its own fork hook) and the next capture or flush starts delivery.
        self._reset_locks()
        self._capture.after_fork_in_child()
        self._delivering = False

    def _emit(
        self,
        build: Callable[..., dict[str, Any]],
        disable_geoip: bool | None,
        *args: Any,
        lane: str | None = None,
    ) -> str | None:
        """Build an event with ``build(*args, now=…, disable_geoip=…)``, write it through
        the capture pipeline on ``lane`` and tell delivery (nothing at all when the
        client is disabled)."""
        if self.disabled:
            return None
        now = self.clock.now()
        geoip = self.disable_geoip if disable_geoip is None else disable_geoip
        event = build(*args, now=now, disable_geoip=geoip)
        if self._shut:
            raise SpoolClosed("this client was shut down; create a new Client to capture")
        uuid = self._capture.write(event, now, lane)
        if uuid is not None and self.send:
            if not self._delivering:
                self._start_delivery()  # a forked child starts its own threads
            self.dispatcher.notify_captured()
        return uuid

    def _save_filtered(self) -> None:
        """Write the ``before_send`` drops counted so far to the spool's counter."""
        self._capture.save_filtered()

    # -- delivery, flush and shutdown -------------------------------------------------

    def _start_delivery(self) -> None:
        """Start the dispatcher and sender threads (once per process)."""
        with self._start_lock:
            if not self._delivering:
                self.dispatcher.start()
                self._delivering = True

    def flush(self, timeout: float = DEFAULT_FLUSH_TIMEOUT) -> FlushResult:
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
        :meth:`shutdown` (whose own result says what was left),
        :class:`~spoolpost.errors.SpoolUnwritable` when the spool cannot even be read
        (its folder lost its permissions: ``condition`` ``"readonly"``), and
        :class:`~spoolpost.errors.SpoolCorrupt` only when a damaged spool is still
        corrupt on a second try: damage met while counting, sending or settling
        quarantines the file (one ERROR, readable rows carried into a new spool)
        and the call runs once more on the new spool. Opening that new spool can
        raise what opening a spool raises (:class:`~spoolpost.errors.ConfigError`,
        :class:`~spoolpost.errors.SpoolLocked`).
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

    def shutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> FlushResult:
        """Flush, then stop the threads and close the spool, all within ``timeout``
        seconds; return the flush's :class:`FlushResult`.

        The flush gets ``timeout`` less :func:`stop_reserve` (at most 1 s, a quarter
        of a short timeout), so the threads can stop within what is left.
        Idempotent (a second call returns the first call's result). Whatever is not
        delivered by then stays in the spool for the next start or a cron drain:
        nothing is dropped at the deadline. Capturing afterwards raises
        :class:`~spoolpost.errors.SpoolClosed`. A spool it cannot read
        (:class:`~spoolpost.errors.SpoolUnwritable`) is logged and shut down all
        the same; the other errors :meth:`flush` raises (``SpoolCorrupt`` when a
        damaged spool is still corrupt on a second try, and what opening the new
        spool after a quarantine raises) come out of this call before anything
        is stopped or closed, so it may be called again.
        """
        _check_timeout(timeout)
        with self._lock:
            if self.disabled:
                return FlushResult()
            if self._shut:
                return self._shutdown_result
            start = self.clock.monotonic()
            reserve = stop_reserve(timeout) if self.send else 0.0
            try:
                result = self.flush(max(0.0, timeout - reserve))
            except SpoolUnwritable as exc:  # it cannot even be read: shut down all the same
                log.warning("shutdown: %s; what it holds stays there", exc)
                result = FlushResult(timed_out=True, outage=str(exc))
            self._shut = True
            self._shutdown_result = result
        _live.discard(self)
        if self._delivering:
            self.dispatcher.stop(max(0.0, timeout - (self.clock.monotonic() - start)))
        self._save_filtered()
        with contextlib.suppress(SpoolUnwritable):
            if self.spool.any_open_through(self.spool.watermark(self.clock.now())):
                log.info(
                    "shutdown: undelivered events stay in the spool %s for later", self.spool.path
                )
        self.spool.close()
        return result

    close = shutdown

    def stats(self) -> SpoolStats:
        """The spool's counts and ages now: a :class:`~spoolpost.spool.SpoolStats`
        (events and bytes by state pending/leased/dead, oldest pending age and
        next attempt in seconds, dead reasons, persisted counters, file and WAL
        bytes). One read of the spool; what ``spoolpost inspect`` starts from.
        Raises :class:`~spoolpost.errors.SpoolClosed` after :meth:`shutdown`, and
        ``RuntimeError`` for a ``disabled`` client (it has no spool)."""
        if self.disabled:
            raise RuntimeError("a disabled client has no spool")
        return self.spool.stats(self.clock.now())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(self.shutdown_timeout)


# Argument errors name a capture method as applications call it ("Client.capture() takes
# 2 positional arguments but 3 were given"), not by the class that defines it.
for _method in CaptureApi.METHODS:
    getattr(Client, _method).__qualname__ = f"Client.{_method}"


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
