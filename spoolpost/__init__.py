"""spoolpost: crash-safe analytics capture.

Every captured event is committed to a local SQLite spool (WAL) before
``capture()`` returns, then delivered in the background to PostHog's ``/batch/``
endpoint, at least once, with backoff that honours ``Retry-After``.

Use a :class:`Client` (strict: raises on bad input), a :class:`Posthog`
(posthog-python 7.x's class: logs and returns None), or the module-level default
client the way posthog-python's module API works (``import spoolpost as posthog``)::

    import spoolpost
    spoolpost.api_key = "phc_..."
    spoolpost.host = "https://eu.i.posthog.com"
    spoolpost.capture("signed_up", distinct_id="user-1", properties={"plan": "pro"})
    spoolpost.flush()

The module's settings are posthog-python 7.x's module settings, each meaning what
the :class:`Posthog` argument of that name means, plus ``spool_path``, ``deliver``
and ``client_options`` (spoolpost's). The default client is a :class:`Posthog` made
on first use from them (or by :func:`configure`/:func:`setup`): module-level capture
calls never raise. Without an API key it is disabled (one WARNING). Setting an
attribute spoolpost does not read warns once (:class:`~spoolpost.dropin.module.SettingWarning`).
Contexts (:func:`new_context`, :func:`tag`, :func:`identify_context`,
:func:`set_context_session`, …) are posthog-python's, over ``contextvars``.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from spoolpost._version import __version__
from spoolpost.client import Client
from spoolpost.delivery.dispatcher import FlushResult
from spoolpost.delivery.policy import PausePolicy, RetryPolicy
from spoolpost.dropin import Posthog
from spoolpost.dropin.flags import CODE_VARIABLE_SETTERS, code_variables_setter
from spoolpost.dropin.module import SettingsModule, make_default_client, reread_per_call
from spoolpost.dropin.report import OnError
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
    SpoolUnwritable,
    UnsupportedFilesystem,
)
from spoolpost.events.contexts import (
    get_tags,
    identify_context,
    new_context,
    scoped,
    set_context_device_id,
    set_context_session,
    tag,
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
    "SpoolUnwritable",
    "SpoolpostError",
    "UnsupportedFilesystem",
    "__version__",
    "alias",
    "capture",
    "capture_ai",
    "capture_exception",
    "configure",
    "evaluate_flags",
    "feature_enabled",
    "feature_flag_definitions",
    "flush",
    "get_all_flags",
    "get_all_flags_and_payloads",
    "get_feature_flag",
    "get_feature_flag_evaluation_runtime",
    "get_feature_flag_keys_by_evaluation_runtime",
    "get_feature_flag_payload",
    "get_feature_flag_result",
    "get_remote_config_payload",
    "get_tags",
    "group_identify",
    "identify",
    "identify_context",
    "join",
    "load_feature_flags",
    "new_context",
    "scoped",
    "set",
    "set_capture_exception_code_variables_context",
    "set_code_variables_detect_secrets_context",
    "set_code_variables_ignore_patterns_context",
    "set_code_variables_mask_patterns_context",
    "set_code_variables_mask_url_credentials_context",
    "set_context_device_id",
    "set_context_session",
    "set_once",
    "setup",
    "shutdown",
    "tag",
]

# -- settings: posthog-python 7.x's module settings (read when the default client is
# made; disabled and debug at every call, as there), with Posthog's defaults; see
# README, "Drop-in for posthog-python".
api_key: str | None = os.environ.get("SPOOLPOST_API_KEY")
project_api_key: str | None = None  # wins over api_key, as in posthog-python
host: str | None = os.environ.get("SPOOLPOST_HOST")  # None: PostHog Cloud US
on_error: OnError | None = None
debug: bool = False
send: bool = True  # False: store and send nothing (posthog-python's meaning)
sync_mode: bool = False
disabled: bool = False
disable_geoip: bool = True
is_server: bool = True
super_properties: dict[str, Any] | None = None
before_send: Callable[[dict[str, Any]], Any] | None = None
capture_mode: Any = None
# accepted and ignored (one INFO line each when not the default):
secret_key: str | None = None
personal_api_key: str | None = None
poll_interval: int = 30
feature_flags_request_timeout_seconds: float = 3
feature_flags_request_max_retries: int = 1
metrics: dict[str, Any] | None = None
traces: dict[str, Any] | None = None
enable_exception_autocapture: bool = False
log_captured_exceptions: bool = False
project_root: str | None = None
privacy_mode: bool = False
enable_local_evaluation: bool = True
flag_definition_cache_provider: Any = None
enable_full_ai_capture: bool = False
_use_ai_lane: bool = False
_enable_multimodal_capture: bool = False
capture_trace_context: bool = False
capture_exception_code_variables: bool = False
code_variables_mask_patterns: Any = None
code_variables_ignore_patterns: Any = None
code_variables_mask_url_credentials: Any = None
code_variables_detect_secrets: Any = None
in_app_modules: list[str] | None = None
enable_exception_autocapture_rate_limiting: bool = False
exception_autocapture_bucket_size: int = 50
exception_autocapture_refill_rate: int = 10
exception_autocapture_refill_interval_seconds: int = 10
# spoolpost's own:
spool_path: str | None = None  # not `spool`: that is the spoolpost.spool module
deliver: bool = True  # False: capture-only (store; deliver with `spoolpost drain`)
client_options: dict[str, Any] = {}  # other Client arguments

default_client: Posthog | None = None
_default_lock = threading.Lock()


def setup() -> Posthog:
    """The module-level default client, made from the settings on first use; at
    every call ``disabled`` and ``debug`` are read again, as posthog-python's
    ``setup()`` does (a client made disabled is made again once enabled)."""
    global default_client
    module = sys.modules[__name__]
    client = default_client
    if client is None or not reread_per_call(client, module):
        with _default_lock:
            if default_client is None or default_client is client:
                default_client = make_default_client(module)
            client = default_client
    return client


def configure(api_key: str | None = None, host: str | None = None, **options: Any) -> Posthog:
    """Make (or replace: the previous one is shut down) the default client from the
    settings, ``api_key``, ``host`` and ``options`` (:class:`Posthog` arguments, e.g.
    ``spool=``) winning over them, and return it."""
    global default_client
    if host is not None:
        options["host"] = host
    with _default_lock:
        if default_client is not None:
            default_client.shutdown()
            default_client = None
        default_client = make_default_client(sys.modules[__name__], api_key, **options)
        return default_client


def _lenient(name: str) -> Callable[..., str | None]:
    method = getattr(Posthog, name)

    def call(*args: Any, **kwargs: Any) -> str | None:
        result: str | None = getattr(setup(), name)(*args, **kwargs)
        return result

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f":meth:`Posthog.{name}` on the module-level default client (:func:`setup`)."
    signature = inspect.signature(method)  # help() and IDEs show its arguments
    parameters = list(signature.parameters.values())[1:]
    setattr(call, "__signature__", signature.replace(parameters=parameters))  # noqa: B010
    return call


capture = _lenient("capture")
capture_ai = _lenient("capture_ai")
identify = _lenient("identify")
set = _lenient("set")  # shadows the builtin here, as in posthog-python
set_once = _lenient("set_once")
alias = _lenient("alias")
group_identify = _lenient("group_identify")
capture_exception = _lenient("capture_exception")

# posthog-python's flag calls, not evaluated (dropin/flags.py): the same answers as
# posthog-python gives when it cannot evaluate, and one INFO line each.
feature_enabled = _lenient("feature_enabled")
get_feature_flag = _lenient("get_feature_flag")
get_all_flags = _lenient("get_all_flags")
get_feature_flag_result = _lenient("get_feature_flag_result")
get_feature_flag_payload = _lenient("get_feature_flag_payload")
get_remote_config_payload = _lenient("get_remote_config_payload")
get_all_flags_and_payloads = _lenient("get_all_flags_and_payloads")
evaluate_flags = _lenient("evaluate_flags")
feature_flag_definitions = _lenient("feature_flag_definitions")
get_feature_flag_evaluation_runtime = _lenient("get_feature_flag_evaluation_runtime")
get_feature_flag_keys_by_evaluation_runtime = _lenient(
    "get_feature_flag_keys_by_evaluation_runtime"
)
load_feature_flags = _lenient("load_feature_flags")
# posthog-python's code-variable context setters: accepted, ignored (INFO once).
set_capture_exception_code_variables_context = code_variables_setter(CODE_VARIABLE_SETTERS[0])
set_code_variables_mask_patterns_context = code_variables_setter(CODE_VARIABLE_SETTERS[1])
set_code_variables_ignore_patterns_context = code_variables_setter(CODE_VARIABLE_SETTERS[2])
set_code_variables_mask_url_credentials_context = code_variables_setter(CODE_VARIABLE_SETTERS[3])
set_code_variables_detect_secrets_context = code_variables_setter(CODE_VARIABLE_SETTERS[4])


def flush(timeout_seconds: float | None = 10) -> None:
    """:meth:`Posthog.flush` on the default client (nothing if there is none)."""
    client = default_client
    if client is not None:
        client.flush(timeout_seconds)


def join() -> None:
    """:meth:`Posthog.join` on the default client, which is then forgotten."""
    shutdown()


def shutdown() -> None:
    """Shut the default client down (:meth:`Posthog.shutdown`: pending events are
    delivered for up to 10 s, the rest stays in the spool) and forget it; a later
    capture makes a new one (posthog-python keeps the shut client, which drops)."""
    global default_client
    with _default_lock:
        client, default_client = default_client, None
    if client is not None:
        client.shutdown()


sys.modules[__name__].__class__ = SettingsModule
