"""spoolpost: crash-safe analytics capture.

Every captured event is committed to a local SQLite spool (WAL) before
``capture()`` returns, then delivered in the background to PostHog's ``/batch/``
endpoint, at least once, with backoff that honours ``Retry-After``.

Use a :class:`Client`, or the module-level default client the way
posthog-python's module API works::

    import spoolpost
    spoolpost.api_key = "phc_..."
    spoolpost.host = "https://eu.i.posthog.com"
    spoolpost.capture("signed_up", distinct_id="user-1", properties={"plan": "pro"})
    spoolpost.flush()

The default client is created on first use from the module attributes below
(``api_key`` or ``project_api_key``, ``host``, ``spool_path``, ``disabled``, ``send``,
``before_send``, ``disable_geoip``, and any other :class:`Client` argument in
``client_options``), or explicitly with :func:`configure`. Without an API key (and
not ``disabled``) the first capture raises :class:`ConfigError`.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar

from spoolpost._version import __version__
from spoolpost.client import DEFAULT_FLUSH_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT, BeforeSend, Client
from spoolpost.delivery.dispatcher import FlushResult
from spoolpost.delivery.policy import PausePolicy, RetryPolicy
from spoolpost.delivery.transport import DEFAULT_HOST
from spoolpost.dropin import Posthog
from spoolpost.errors import (
    ConfigError,
    EncodingError,
    EventTooLarge,
    KeyMismatch,
    SchemaTooNew,
    SpoolClosed,
    SpoolCorrupt,
    SpoolFull,
    SpoolLocked,
    SpoolpostError,
    UnsupportedFilesystem,
)
from spoolpost.spool import Spool

__all__ = [
    "Client",
    "ConfigError",
    "EncodingError",
    "EventTooLarge",
    "FlushResult",
    "KeyMismatch",
    "PausePolicy",
    "Posthog",
    "RetryPolicy",
    "SchemaTooNew",
    "Spool",
    "SpoolClosed",
    "SpoolCorrupt",
    "SpoolFull",
    "SpoolLocked",
    "SpoolpostError",
    "UnsupportedFilesystem",
    "__version__",
    "alias",
    "capture",
    "configure",
    "flush",
    "group_identify",
    "identify",
    "set",
    "set_once",
    "shutdown",
]

#: Settings of the module-level default client (read when it is first created).
api_key: str | None = os.environ.get("SPOOLPOST_API_KEY")
project_api_key: str | None = None  # posthog-python's other name for api_key
host: str = os.environ.get("SPOOLPOST_HOST", DEFAULT_HOST)
spool_path: str | None = None  # not `spool`: that would hide the spoolpost.spool module
disabled: bool = False
send: bool = True
before_send: BeforeSend | None = None
disable_geoip: bool = True
client_options: dict[str, Any] = {}

default_client: Client | None = None
_default_lock = threading.Lock()


def configure(api_key: str | None = None, host: str | None = None, **options: Any) -> Client:
    """Create (or replace) the module-level default client and return it.

    Arguments are those of :class:`Client`; ``api_key`` and ``host`` default to
    the module attributes, other options to the module attributes and
    ``client_options``. A previous default client is shut down first. Raises
    :class:`ConfigError` when there is no API key (unless ``disabled``) and
    whatever :class:`Client` raises.
    """
    global default_client
    with _default_lock:
        if default_client is not None:
            default_client.shutdown()
            default_client = None
        default_client = _make_client(api_key, host, options)
        return default_client


def _make_client(key: str | None, base: str | None, options: Mapping[str, Any]) -> Client:
    key = (key or api_key or project_api_key or "").strip()
    settings: dict[str, Any] = {
        "disabled": disabled,
        "send": send,
        "before_send": before_send,
        "disable_geoip": disable_geoip,
        **client_options,
        **options,
    }
    if spool_path is not None:
        settings.setdefault("spool", spool_path)
    if not key:
        if settings.get("disabled"):
            return Client("disabled", base or host, **settings)
        raise ConfigError(
            "spoolpost.api_key is not set: set it (or SPOOLPOST_API_KEY) before "
            "spoolpost.capture(), or call spoolpost.configure(api_key=...)"
        )
    return Client(key, base or host, **settings)


def _client() -> Client:
    client = default_client
    if client is None:
        with _default_lock:
            client = _default_or_new()
    return client


def _default_or_new() -> Client:
    global default_client
    if default_client is None:
        default_client = _make_client(None, None, {})
    return default_client


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _on_default_client(method: Callable[Concatenate[Client, _P], _R]) -> Callable[_P, _R]:
    """The module-level twin of a :class:`Client` capture method: the same
    arguments, called on the default client (created on first use)."""

    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        return method(_client(), *args, **kwargs)

    name = method.__name__
    call.__name__ = call.__qualname__ = name
    call.__doc__ = (
        f":meth:`Client.{name}` on the module-level default client, which is created "
        "on first use from the module settings (:class:`ConfigError` without an API key)."
    )
    signature = inspect.signature(method)
    setattr(  # noqa: B010 (help() and IDEs show the arguments of the method)
        call, "__signature__", signature.replace(parameters=list(signature.parameters.values())[1:])
    )
    return call


capture = _on_default_client(Client.capture)
identify = _on_default_client(Client.identify)
set = _on_default_client(Client.set)  # shadows the builtin here, as in posthog-python
set_once = _on_default_client(Client.set_once)
alias = _on_default_client(Client.alias)
group_identify = _on_default_client(Client.group_identify)


def flush(timeout: float = DEFAULT_FLUSH_TIMEOUT) -> FlushResult:
    """:meth:`Client.flush` on the default client; an empty result if there is none."""
    client = default_client
    return client.flush(timeout) if client is not None else FlushResult()


def shutdown(timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> FlushResult:
    """Shut the default client down and forget it (a later capture makes a new one);
    an empty result if there is none."""
    global default_client
    with _default_lock:
        client, default_client = default_client, None
    return client.shutdown(timeout) if client is not None else FlushResult()
