""":class:`Posthog`: posthog-python 7.x's client class over a spoolpost
:class:`~spoolpost.client.Client`, for apps that change only the import.

Where posthog-python logs and returns None, so does this class: capture calls never
raise (unless ``debug=True``, which re-raises, as posthog-python's ``no_throw`` does).
What a capture call could not store is logged, counted (:attr:`Posthog.lost`, and the
spool's persisted ``lost`` counter while a spool is open) and reported to
``on_error``. The strict, raising :class:`~spoolpost.client.Client` is unchanged.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from spoolpost.client import Client, default_spool_path
from spoolpost.delivery.policy import RetryPolicy
from spoolpost.delivery.wire import resolve_capture_mode, resolve_compression
from spoolpost.dropin.calls import CaptureCalls
from spoolpost.dropin.enrich import Enricher, Unsent, repair_arguments
from spoolpost.dropin.flags import FlagCalls
from spoolpost.dropin.report import LOST_COUNTER, EventsNotStored, OnError, Reporter
from spoolpost.dropin.settings import fallback_spool_path, log_ignored, server_host
from spoolpost.errors import HostMismatch, SpoolFull
from spoolpost.events.api import CaptureApi

__all__ = ["DEFAULT_FLUSH_TIMEOUT", "Posthog"]

log = logging.getLogger("spoolpost")

#: Seconds :meth:`Posthog.flush` waits by default (posthog-python's ``flush`` default).
DEFAULT_FLUSH_TIMEOUT = 10.0

_NOT_GIVEN: dict[str, Any] = {}  # the ignored options' posthog-python defaults, filled below


class Posthog(CaptureCalls, FlagCalls):
    """posthog-python 7.x's ``Posthog`` (``posthog.Client``), storing every event in a
    spoolpost spool before a capture call returns.

    Every posthog-python 7.x constructor argument is accepted. Mapped ones, each only
    when given (otherwise spoolpost's own default holds, so an outage of days is
    survived): ``project_api_key`` (or ``api_key``; empty: disabled, as there),
    ``host`` (None: the US host; app hosts map to ingestion hosts, as there),
    ``flush_at``, ``flush_interval`` (seconds), ``gzip``, ``timeout`` (seconds per
    request), ``thread`` → ``senders``, ``max_retries=n`` →
    ``RetryPolicy(max_attempts=n + 1)``, ``disabled``, ``disable_geoip``,
    ``historical_migration``. Meant as there: ``debug`` (DEBUG logging on the
    ``spoolpost`` logger, and capture calls re-raise), ``on_error(error, events)``
    (called in a reporter thread: once per batch dead-lettered, with
    :class:`~spoolpost.dropin.EventsRejected`, once per capture call that stored
    nothing, with :class:`~spoolpost.dropin.EventsNotStored`, once per outage or pause
    episode, and once per full-spool episode in which ``on_full`` drops events, with
    :class:`~spoolpost.errors.SpoolFull`), ``send=False`` (send
    and store nothing; capture calls still return uuids), ``sync_mode`` (each capture
    call also delivers what is pending, waiting up to ``timeout`` seconds, default 15),
    ``super_properties`` (merged over every event's properties),
    ``is_server`` (``$is_server: true`` on every event), ``before_send(event)`` (an
    exception or a non-dict result drops the event, as there). The rest (feature
    flags, exception autocapture, AI, metrics, tracing, emails, ``max_queue_size``)
    is ignored with one INFO line each when given a value other than posthog-python's
    default. ``capture_exception`` sends ``$exception`` as posthog-python builds it;
    the flag calls (``feature_enabled``, ``get_feature_flag``, …,
    :class:`~spoolpost.dropin.flags.FlagCalls`) evaluate nothing and return
    posthog-python's answer when it cannot evaluate.

    spoolpost's own options, keyword-only: ``spool`` (the spool file; default
    :func:`~spoolpost.client.default_spool_path`, and when that cannot be opened
    :func:`~spoolpost.dropin.settings.fallback_spool_path`, with one ERROR),
    ``deliver=False`` (capture-only: store, start no thread; deliver with
    ``spoolpost drain``, which is ``Client(send=False)``), ``client_options`` (any
    other :class:`~spoolpost.client.Client` argument).

    Never raises: a spool that cannot be opened is logged (ERROR) and every capture
    call then stores nothing, counts it and tells ``on_error`` (``debug=True``
    raises instead).
    """

    def __init__(
        self,
        project_api_key: str = "",
        host: str | None = None,
        debug: bool = False,
        max_queue_size: int = 10000,
        send: bool = True,
        on_error: OnError | None = None,
        flush_at: int | None = None,
        flush_interval: float | None = None,
        gzip: bool = False,
        max_retries: int | None = None,
        sync_mode: bool = False,
        timeout: float | None = None,
        thread: int | None = None,
        poll_interval: int = 30,
        personal_api_key: str | None = None,
        disabled: bool = False,
        disable_geoip: bool = True,
        is_server: bool = True,
        historical_migration: bool = False,
        feature_flags_request_timeout_seconds: float = 3,
        feature_flags_request_max_retries: int = 1,
        super_properties: Mapping[str, Any] | None = None,
        enable_exception_autocapture: bool = False,
        log_captured_exceptions: bool = False,
        project_root: str | None = None,
        privacy_mode: bool = False,
        before_send: Callable[[dict[str, Any]], Any] | None = None,
        flag_fallback_cache_url: str | None = None,
        enable_local_evaluation: bool = True,
        flag_definition_cache_provider: Any = None,
        capture_exception_code_variables: bool = False,
        code_variables_mask_patterns: Any = None,
        code_variables_ignore_patterns: Any = None,
        code_variables_mask_url_credentials: Any = None,
        code_variables_detect_secrets: Any = None,
        in_app_modules: list[str] | None = None,
        enable_exception_autocapture_rate_limiting: bool = False,
        exception_autocapture_bucket_size: int = 50,
        exception_autocapture_refill_rate: int = 10,
        exception_autocapture_refill_interval_seconds: int = 10,
        capture_mode: Any = None,
        capture_compression: Any = None,
        secret_key: str | None = None,
        metrics: dict[str, Any] | None = None,
        enable_full_ai_capture: bool = False,
        capture_trace_context: bool = False,
        _use_ai_lane: bool = False,
        _enable_multimodal_capture: bool = False,
        traces: dict[str, Any] | None = None,
        app_host: str | None = None,
        email_request_timeout_seconds: float = 15,
        email_request_max_retries: int = 2,
        migrated_from: str | None = None,
        *,
        api_key: str | None = None,
        spool: str | None = None,
        deliver: bool = True,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        given = dict(locals())
        self.debug = debug
        if debug:
            log.setLevel(logging.DEBUG)
        self.ignored = log_ignored(given, _NOT_GIVEN)
        self.api_key = (api_key or project_api_key or "").strip()
        self.disabled = disabled or not self.api_key
        self.send = send
        self.sync_mode = sync_mode
        self.timeout = 15.0 if timeout is None else float(timeout)
        self.enrich = Enricher(dict(super_properties or {}), is_server, before_send)
        self.reporter = Reporter(on_error)
        #: Capture calls that stored nothing (this object's count; see the module doc).
        self.lost = 0
        self._lock = threading.Lock()
        self._shut = False
        self.client: Client | None = None
        self._open_error: Exception | None = None
        self._unsent = Unsent(self.enrich, disable_geoip)
        if self.disabled or not send:
            return
        options: dict[str, Any] = {
            "send": deliver,
            "disable_geoip": disable_geoip,
            "historical_migration": historical_migration,
            "gzip": gzip,
            "before_send": self.enrich,
            **dict(client_options or {}),
        }
        for name, value in (
            ("flush_at", flush_at),
            ("flush_interval", flush_interval),
            ("capture_mode", capture_mode),
            ("capture_compression", capture_compression),
        ):
            if value is not None:
                options[name] = value
        # Wire settings that cannot work raise here, as posthog-python's constructor
        # raises ValueError: not later, where they would stop every capture from storing.
        if capture_mode is not None:
            resolve_capture_mode(capture_mode)
        if capture_compression is not None:
            resolve_compression(capture_compression)
        if thread is not None:
            options["senders"] = max(1, thread)
        if timeout is not None:
            options["timeout"] = timeout
        if max_retries is not None:
            options["retry"] = RetryPolicy(max_attempts=max(0, max_retries) + 1)
        self._open(server_host(host), spool, options)

    def _open(self, host: str, spool: str | None, options: dict[str, Any]) -> None:
        try:
            self.client = self._client(host, spool, options)
        except Exception as exc:
            if spool is None and not self.debug:
                try:
                    self._open_fallback(host, exc, options)
                    return
                except Exception as again:
                    exc = again
            if self.debug:
                raise
            self._open_error = exc
            log.error("Posthog: no spool could be opened (%s); capture calls store nothing", exc)
            return
        self.client._capture.null_unencodable = True  # posthog-python sends null
        self.client._capture.on_dropped = self._dropped
        self.client.dispatcher.set_on_dead(self.reporter.dead, self.reporter.episode)

    def _client(self, host: str, spool: str | None, options: dict[str, Any]) -> Client:
        """A Client on ``spool``; when the spool delivers to another endpoint than
        ``host`` (:class:`HostMismatch`), a capture-only one: events are stored, not
        lost, and wait for an operator's ``spoolpost drain --host … --force-host``."""
        try:
            return Client(self.api_key, host, spool=spool, **options)
        except HostMismatch as exc:
            if self.debug:
                raise
            client = Client(self.api_key, host, spool=spool, **{**options, "send": False})
            log.error("Posthog: %s; events are stored in the spool but not delivered", exc)
            self.reporter.report(exc, [])
            return client

    def _open_fallback(self, host: str, exc: Exception, options: dict[str, Any]) -> None:
        path = fallback_spool_path(self.api_key)
        self.client = self._client(host, str(path), options)
        log.error(
            "Posthog: the spool %s cannot be used (%s); using %s instead",
            default_spool_path(self.api_key),
            exc,
            path,
        )

    @property
    def unopened(self) -> bool:
        """True when this client was made disabled (or with ``send=False``) and so
        opened no spool."""
        return self.client is None and self._open_error is None

    # -- the capture calls ---------------------------------------------------------

    def _target(self) -> CaptureApi | None:
        return self._unsent if not self.send else self.client

    def _call(self, method: str, summary: dict[str, Any], *args: Any, **kwargs: Any) -> str | None:
        """Call ``method`` on the client, posthog-python's way: log, count, report and
        return None instead of raising (``debug``: raise)."""
        if self.disabled:
            return None
        repair_arguments(kwargs)
        try:
            target = self._target()
            if target is None:
                assert self._open_error is not None
                raise self._open_error
            result: str | None = getattr(target, method)(*args, **kwargs)
            if result is not None and self.client is not None:
                self._stored(self.client)
            if result is not None and self.sync_mode and self.client is not None:
                self.client.flush(self.timeout)
            return result
        except Exception as exc:
            if self.debug:
                raise
            log.error("%s() stored nothing: %s: %s", method, type(exc).__name__, exc)
            self._lose(EventsNotStored(method, exc), summary)
            return None

    def _stored(self, client: Client) -> None:
        """A capture call stored its event: a full episode ends once the spool's
        (its WARNING's) is over; one that ``drop_oldest`` began by deleting older
        pending events to make room is told to ``on_error`` with no events."""
        full = client.spool.full
        if full == self.reporter.full_episode:
            return  # the common case: no episode, and none beginning
        if not full:
            self.reporter.stored()
        elif client.spool.on_full == "drop_oldest":
            self._dropped(None)

    def _dropped(self, event: dict[str, Any] | None) -> None:
        """The spool's ``on_full`` policy dropped ``event`` (None: older events, for
        ``drop_oldest``), counted as ``dropped``: ``on_error(SpoolFull, [event])``
        once per full episode."""
        assert self.client is not None  # the hook is set on its pipeline
        spool = self.client.spool
        error = SpoolFull(
            f"spool {spool.path} is full (max_spool_bytes={spool.max_spool_bytes}, "
            f"on_full={spool.on_full}); events are dropped and counted as 'dropped' "
            "until it is back down to 7/8 of that"
        )
        self.reporter.dropped(error, event)

    def _lose(self, error: EventsNotStored, summary: dict[str, Any]) -> None:
        with self._lock:
            self.lost += 1
        client = self.client
        if client is not None and not self._shut:
            try:
                client.spool.add_counter(LOST_COUNTER)
            except Exception:  # a spool closed by a shutdown in another thread
                log.debug("the lost counter could not be written", exc_info=True)
        self.reporter.report(error, [summary])

    # -- lifecycle -----------------------------------------------------------------

    def flush(self, timeout_seconds: float | None = DEFAULT_FLUSH_TIMEOUT) -> None:
        """posthog-python's ``flush``: deliver what was captured before the call,
        waiting up to ``timeout_seconds`` (default 10; None: no limit); returns None.
        What is not delivered by then stays in the spool. Never raises (``debug``:
        does); after :meth:`shutdown` it does nothing."""
        client = self.client
        if client is None or self._shut:
            return
        wait = math.inf if timeout_seconds is None else max(0.0, timeout_seconds)
        try:
            client.flush(wait)
        except Exception:
            if self.debug:
                raise
            log.exception("flush failed")

    def join(self) -> None:
        """posthog-python's ``join``: deliver what is pending (up to 10 s, then it
        stays in the spool), stop the threads and close the spool; returns None."""
        with self._lock:
            if self._shut:
                return
            self._shut = True
        client = self.client
        try:
            if client is not None:
                client.shutdown(DEFAULT_FLUSH_TIMEOUT)
        except Exception:
            if self.debug:
                raise
            log.exception("shutdown failed")
        finally:
            self.reporter.close(timeout=1.0)

    def shutdown(self) -> None:
        """posthog-python's ``shutdown``: :meth:`join`, idempotent; returns None. Capture
        calls afterwards store nothing, are counted and told to ``on_error``."""
        self.join()


def _ignored_defaults() -> dict[str, Any]:
    import inspect

    parameters = inspect.signature(Posthog.__init__).parameters
    return {name: p.default for name, p in parameters.items()}


_NOT_GIVEN.update(_ignored_defaults())
