"""The module-level API's machinery: ``import spoolpost as posthog``.

The package's settings are posthog-python 7.x's module settings
(:data:`POSTHOG_MODULE_SETTINGS`, each meaning what the :class:`~spoolpost.Posthog`
argument of the same name means) plus spoolpost's own (:data:`OWN_SETTINGS`).
:func:`make_default_client` builds the default client from them: a
:class:`~spoolpost.Posthog`, so module-level capture calls never raise; as
posthog-python's ``setup()`` does, ``disabled`` and ``debug`` are read again at
every call (:func:`reread_per_call`), the rest once.
:class:`SettingsModule` is the package's class: setting an attribute that spoolpost
does not read warns once (a misspelling, or ``spoolpost.spool`` meant as
``spool_path``). ``tests/test_dropin_compat.py`` checks the list against the
installed posthog-python's module.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import types
import warnings
from typing import Any, ClassVar

from spoolpost.dropin.posthog import Posthog

__all__ = [
    "OWN_SETTINGS",
    "POSTHOG_MODULE_SETTINGS",
    "SettingWarning",
    "SettingsModule",
    "make_default_client",
    "reread_per_call",
]

log = logging.getLogger("spoolpost")

#: posthog-python 7.x's module settings (``posthog/__init__.py``), all read here.
POSTHOG_MODULE_SETTINGS = (
    "api_key",
    "host",
    "on_error",
    "debug",
    "send",
    "sync_mode",
    "disabled",
    "secret_key",
    "personal_api_key",
    "project_api_key",
    "poll_interval",
    "disable_geoip",
    "is_server",
    "feature_flags_request_timeout_seconds",
    "feature_flags_request_max_retries",
    "super_properties",
    "metrics",
    "traces",
    "enable_exception_autocapture",
    "log_captured_exceptions",
    "project_root",
    "privacy_mode",
    "before_send",
    "enable_local_evaluation",
    "flag_definition_cache_provider",
    "capture_mode",
    "enable_full_ai_capture",
    "_use_ai_lane",
    "_enable_multimodal_capture",
    "capture_trace_context",
    "capture_exception_code_variables",
    "code_variables_mask_patterns",
    "code_variables_ignore_patterns",
    "code_variables_mask_url_credentials",
    "code_variables_detect_secrets",
    "in_app_modules",
    "enable_exception_autocapture_rate_limiting",
    "exception_autocapture_bucket_size",
    "exception_autocapture_refill_rate",
    "exception_autocapture_refill_interval_seconds",
)

#: spoolpost's own module settings: ``spool_path`` (→ ``Posthog(spool=)``),
#: ``deliver`` (False: capture-only), ``client_options`` (other ``Client`` arguments).
OWN_SETTINGS = ("spool_path", "deliver", "client_options")

_SETTINGS = frozenset(POSTHOG_MODULE_SETTINGS + OWN_SETTINGS + ("default_client",))


class SettingWarning(UserWarning):
    """A module attribute was set that spoolpost does not read."""


class SettingsModule(types.ModuleType):
    """The ``spoolpost`` package's class: warns once per name when an attribute is
    set that is neither a setting nor an existing function or class (a submodule's
    name, e.g. ``spool``, counts as unknown; the import system's own setting of a
    submodule does not warn)."""

    _warned: ClassVar[set[str]] = set()

    def __setattr__(self, name: str, value: Any) -> None:
        if not (
            name in _SETTINGS
            or name.startswith("__")
            or isinstance(value, types.ModuleType)
            or (name in self.__dict__ and not isinstance(self.__dict__[name], types.ModuleType))
            or name in SettingsModule._warned
        ):
            SettingsModule._warned.add(name)
            close = difflib.get_close_matches(name, sorted(_SETTINGS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            warnings.warn(
                f"spoolpost.{name} is not a setting spoolpost reads; it has no effect{hint}",
                SettingWarning,
                stacklevel=2,
            )
        super().__setattr__(name, value)


def make_default_client(
    module: types.ModuleType, api_key: str | None = None, **overrides: Any
) -> Posthog:
    """The module-level default client, from ``module``'s settings at this moment
    (``api_key`` and ``overrides``, :class:`~spoolpost.Posthog` arguments, win): a
    :class:`~spoolpost.Posthog`. Without an API key (``project_api_key``, else
    ``api_key``; blank counts as none) it is disabled, as in posthog-python, with one
    WARNING unless ``disabled`` is set."""
    settings = {name: getattr(module, name) for name in POSTHOG_MODULE_SETTINGS}
    project_key, legacy_key = settings.pop("project_api_key"), settings.pop("api_key")
    key = (api_key or project_key or "").strip() or (legacy_key or "").strip()
    accepted = inspect.signature(Posthog.__init__).parameters
    options: dict[str, Any] = {n: v for n, v in settings.items() if n in accepted}
    options.update(
        spool=module.spool_path, deliver=module.deliver, client_options=module.client_options
    )
    options.update(overrides)
    if not key and not options["disabled"]:
        log.warning(
            "spoolpost.api_key is not set: the module-level client is disabled and "
            "capture calls store nothing (set spoolpost.api_key or SPOOLPOST_API_KEY)"
        )
    return Posthog(key, **options)


#: The module settings read at every module-level call, as posthog-python 7.x's
#: ``setup()`` re-applies them (``posthog/__init__.py``); the others are read once,
#: when the default client is made.
PER_CALL_SETTINGS = ("disabled", "debug")


def reread_per_call(client: Posthog, module: types.ModuleType) -> bool:
    """Apply ``module``'s ``debug`` (capture calls re-raise; DEBUG logging is set
    when the client is made, as in posthog-python) and ``disabled`` to ``client``.
    Returns False when ``client`` must be made again: it was made disabled, so it
    opened no spool, and is now enabled."""
    client.debug = bool(module.debug)
    disabled = bool(module.disabled) or not client.api_key
    if disabled == client.disabled:
        return True
    if not disabled and client.unopened:
        return False
    client.disabled = disabled
    return True
