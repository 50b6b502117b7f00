"""The client applications use: capture into the spool, deliver in the background.

``capture()`` validates, encodes and writes the event to the spool in the
caller's thread and returns its uuid only once the row is committed. A
:class:`~spoolpost.dispatcher.Dispatcher` (a dispatcher thread plus sender
threads) delivers it. ``flush()`` is a barrier over everything captured before
the call; ``shutdown()`` flushes within a deadline and stops, leaving whatever is
not delivered in the spool for the next start or a cron ``spoolpost drain``.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from spoolpost import events as ev
from spoolpost.clock import SYSTEM_CLOCK, Clock
from spoolpost.dispatcher import DeliveryConfig, Dispatcher, FlushResult
from spoolpost.encoding import encode_event
from spoolpost.errors import ConfigError, EventTooLarge, SpoolClosed
from spoolpost.policy import PausePolicy, RetryPolicy
from spoolpost.spool import DEFAULT_MAX_SPOOL_BYTES, Durability, OnFull, Spool
from spoolpost.transport import DEFAULT_HOST, HttpTransport, PostHogV0

log = logging.getLogger("spoolpost")

DEFAULT_MAX_EVENT_BYTES = 900 * 1024
BeforeSend = Callable[[dict[str, Any]], "dict[str, Any] | None"]
Timestamp = datetime | date | str | None


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


class Client:
    """A spoolpost client: PostHog-shaped capture into a crash-safe spool.

    ``api_key``: the project API key (applied at send time, never stored per
    event). ``host``: the ingestion base URL (default ``https://us.i.posthog.com``).
    ``spool``: the spool file (default :func:`default_spool_path`).
    ``send``: False makes a capture-only client that starts no threads (for
    short-lived scripts; deliver with ``spoolpost drain`` from cron).
    ``durability``: ``"process"`` or ``"power"``; ``max_spool_bytes`` (default
    512 MiB) and ``on_full`` bound the spool. ``flush_at`` (100),
    ``flush_interval`` (5.0 s), ``max_batch_size`` (500), ``max_batch_bytes``
    (5 MiB), ``senders`` (``min(cpu, 4)``) shape delivery; ``retry`` sets backoff
    and limits (:class:`~spoolpost.policy.RetryPolicy`). ``max_event_bytes``
    (900 KiB) bounds one encoded event. ``before_send(event) -> event | None``
    runs at capture, before the event reaches disk. ``disabled=True`` captures
    nothing and raises nothing. ``historical_migration`` is sent with every batch.
    ``gzip`` compresses request bodies. ``timeout``: (connect, read) seconds.
    ``shutdown_timeout``: seconds the ``atexit`` shutdown may take (5).
    ``force_key``: deliver a spool created for another API key.

    Raises :class:`~spoolpost.errors.ConfigError` for settings that cannot work,
    including :class:`~spoolpost.errors.KeyMismatch`.
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
        historical_migration: bool = False,
        gzip: bool = False,
        timeout: tuple[float, float] = (5.0, 30.0),
        shutdown_timeout: float = 5.0,
        force_key: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.disabled = disabled
        self.clock = clock
        self.before_send = before_send
        self.max_event_bytes = max_event_bytes
        self.shutdown_timeout = shutdown_timeout
        self._shut = False
        self._lock = threading.Lock()
        if disabled:
            return
        self.transport = HttpTransport(
            host,
            api_key,
            wire=PostHogV0(historical_migration),
            gzip=gzip,
            timeout=timeout,
        )
        if max_event_bytes < 1:
            raise ConfigError("max_event_bytes must be >= 1")
        self.spool = Spool(
            spool if spool is not None else default_spool_path(api_key),
            durability=durability,
            max_spool_bytes=max_spool_bytes,
            on_full=on_full,
        )
        try:
            self.spool.bind_key(key_fingerprint(api_key), force=force_key)
            self.dispatcher = Dispatcher(
                self.spool,
                self.transport,
                config=DeliveryConfig(
                    flush_at=flush_at,
                    flush_interval=flush_interval,
                    max_batch_size=max_batch_size,
                    max_batch_bytes=max_batch_bytes,
                    lease_ttl=lease_ttl,
                    senders=senders,
                ),
                retry=retry,
                pause=pause,
                clock=clock,
            )
        except BaseException:
            self.spool.close()
            raise
        self.send = send
        if send:
            self.dispatcher.start()
        _register_atexit(self)

    # -- capture -------------------------------------------------------------------

    def capture(
        self,
        event: str,
        distinct_id: Any,
        properties: Mapping[str, Any] | None = None,
        timestamp: Timestamp = None,
        uuid: UUID | str | None = None,
        groups: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Capture ``event`` for ``distinct_id``; return its uuid once it is committed
        to the spool, or None if ``before_send`` or ``on_full`` dropped it (or the
        client is disabled).

        ``timestamp`` (datetime, date or ISO 8601 string; default now) is sent as
        RFC 3339 UTC. ``uuid`` defaults to a new UUIDv7; capturing the same uuid
        twice stores one event. ``groups`` maps group type → key.
        Raises ``ValueError`` for a bad event name or distinct_id,
        :class:`~spoolpost.errors.EncodingError` naming the property path that
        cannot be encoded, :class:`~spoolpost.errors.EventTooLarge`,
        :class:`~spoolpost.errors.SpoolFull` (``on_full`` ``raise``/``block``),
        :class:`~spoolpost.errors.SpoolClosed` after :meth:`shutdown`.
        """
        if self.disabled:
            return None
        now = self.clock.now()
        return self._write(
            ev.capture_event(event, distinct_id, properties, timestamp, uuid, groups, now=now),
            now,
        )

    def identify(
        self,
        distinct_id: Any,
        properties: Mapping[str, Any] | None = None,
        timestamp: Timestamp = None,
        uuid: UUID | str | None = None,
    ) -> str | None:
        """``$identify``: set person ``properties`` on ``distinct_id``. As :meth:`capture`."""
        if self.disabled:
            return None
        now = self.clock.now()
        return self._write(
            ev.identify_event(distinct_id, properties, timestamp, uuid, now=now), now
        )

    def set(
        self,
        distinct_id: Any,
        properties: Mapping[str, Any],
        timestamp: Timestamp = None,
        uuid: UUID | str | None = None,
    ) -> str | None:
        """``$set`` person ``properties`` on ``distinct_id``. As :meth:`capture`."""
        if self.disabled:
            return None
        now = self.clock.now()
        return self._write(ev.set_event(distinct_id, properties, timestamp, uuid, now=now), now)

    def set_once(
        self,
        distinct_id: Any,
        properties: Mapping[str, Any],
        timestamp: Timestamp = None,
        uuid: UUID | str | None = None,
    ) -> str | None:
        """``$set_once`` person ``properties`` (only where unset). As :meth:`capture`."""
        if self.disabled:
            return None
        now = self.clock.now()
        return self._write(
            ev.set_once_event(distinct_id, properties, timestamp, uuid, now=now), now
        )

    def alias(
        self,
        previous_id: Any,
        distinct_id: Any,
        timestamp: Timestamp = None,
        uuid: UUID | str | None = None,
    ) -> str | None:
        """``$create_alias``: link ``previous_id`` to ``distinct_id``. As :meth:`capture`."""
        if self.disabled:
            return None
        now = self.clock.now()
        return self._write(ev.alias_event(previous_id, distinct_id, timestamp, uuid, now=now), now)

    def group_identify(
        self,
        group_type: str,
        group_key: Any,
        properties: Mapping[str, Any] | None = None,
        timestamp: Timestamp = None,
        uuid: UUID | str | None = None,
        distinct_id: Any = None,
    ) -> str | None:
        """``$groupidentify``: set ``properties`` on a group. As :meth:`capture`."""
        if self.disabled:
            return None
        now = self.clock.now()
        return self._write(
            ev.group_identify_event(
                group_type, group_key, properties, timestamp, uuid, distinct_id, now=now
            ),
            now,
        )

    def _write(self, event: dict[str, Any], now: float) -> str | None:
        if self._shut:
            raise SpoolClosed("this client was shut down; create a new Client to capture")
        if self.before_send is not None:
            try:
                changed = self.before_send(event)
            except Exception:
                log.exception("before_send raised; the event is kept unmodified")
            else:
                if changed is None:
                    self.spool.add_counter("filtered", 1)
                    return None
                event = changed
        body = encode_event(event)
        if len(body) > self.max_event_bytes:
            raise EventTooLarge(len(body), self.max_event_bytes)
        uuid = str(event["uuid"])
        if not self.spool.append(uuid, body, now):
            return None
        if self.send:
            if not self.dispatcher.running and not self._shut:
                self.dispatcher.start()  # a forked child restarts delivery lazily
            self.dispatcher.notify_captured()
        return uuid

    # -- flush and shutdown -----------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> FlushResult:
        """Deliver everything captured before this call; wait up to ``timeout`` seconds.

        Returns when every such event is delivered or dead, when delivery is paused
        by a configuration fault, or at the timeout, with a :class:`FlushResult`.
        Backoff and ``Retry-After`` are honoured. A capture-only client sends
        nothing and reports what is pending. Never raises for delivery trouble.
        """
        if self.disabled or self._shut:
            return FlushResult()
        watermark = self.spool.watermark(self.clock.now())
        before = self.spool.states_through(watermark)
        if self.send and not self.dispatcher.running:
            self.dispatcher.start()
        if not self.send:
            return FlushResult(pending=before.get("pending", 0) + before.get("leased", 0))
        return self.dispatcher.flush(watermark, timeout, before)

    def shutdown(self, timeout: float = 5.0) -> FlushResult:
        """Flush within ``timeout`` seconds, then stop the threads and close the spool.

        Idempotent. Whatever is not delivered by then stays in the spool for the
        next start or a cron drain: nothing is dropped at the deadline.
        """
        with self._lock:
            if self.disabled or self._shut:
                return FlushResult()
            start = self.clock.monotonic()
            result = self.flush(timeout) if self.send else FlushResult()
            self._shut = True
        if self.send:
            self.dispatcher.stop(max(0.0, timeout - (self.clock.monotonic() - start)))
        pending = self.spool.states_through(self.spool.watermark(self.clock.now()))
        left = pending.get("pending", 0) + pending.get("leased", 0)
        if left:
            log.info("shutdown: %d event(s) stay in the spool %s for later", left, self.spool.path)
        self.spool.close()
        return result

    close = shutdown

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(self.shutdown_timeout)


_live: weakref.WeakSet[Client] = weakref.WeakSet()
_atexit_registered = False


def _register_atexit(client: Client) -> None:
    global _atexit_registered
    _live.add(client)
    if not _atexit_registered:
        atexit.register(_shutdown_all)
        _atexit_registered = True


def _shutdown_all() -> None:
    for client in list(_live):
        try:
            client.shutdown(client.shutdown_timeout)
        except Exception:
            log.exception("shutdown at exit failed")
