"""posthog-python 7.x's feature-flag calls, answered "not evaluated".

spoolpost delivers events; a feature flag is an online query to PostHog's
``/flags`` endpoint, answered while the app waits, which a spool cannot make
durable. So each flag call of posthog-python's ``Posthog`` and module API exists
here (an app that switches its import keeps running), accepts posthog-python's
arguments, sends nothing, and returns what posthog-python 7.91.1 returns when it
cannot evaluate a flag (``/flags`` unreachable): :data:`UNEVALUATED`. The first call
of each logs one INFO line. ``tests/test_dropin_compat.py`` compares the answers
with the installed posthog-python's.

The context setters of posthog-python's exception code variables
(:data:`CODE_VARIABLE_SETTERS`) are accepted the same way: spoolpost captures no
code variables (``capture_exception`` sends the stack without them).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "CODE_VARIABLE_SETTERS",
    "UNEVALUATED",
    "FlagCalls",
    "UnevaluatedFlags",
    "code_variables_setter",
]

log = logging.getLogger("spoolpost")


class UnevaluatedFlags:
    """What ``evaluate_flags`` returns: posthog-python's ``FeatureFlagEvaluations``
    with no flag in it (its answer when it cannot evaluate): every flag disabled,
    no variant, no payload."""

    keys: list[str] = []  # noqa: RUF012 (read-only, as posthog-python's property)
    unresolved_flags: Mapping[str, Any] = {}

    def is_enabled(self, key: str, *args: Any, **kwargs: Any) -> bool:
        return False

    def get_flag(self, key: str, *args: Any, **kwargs: Any) -> None:
        return None

    def get_flag_payload(self, key: str) -> None:
        return None

    def only_accessed(self) -> UnevaluatedFlags:
        return self

    def only(self, keys: list[str]) -> UnevaluatedFlags:
        return self


#: Each flag call and its answer when nothing is evaluated (a function, so that a
#: caller never shares a mutable answer): posthog-python 7.91.1's answers with
#: ``/flags`` unreachable.
UNEVALUATED: dict[str, Callable[[], Any]] = {
    "feature_enabled": lambda: None,
    "get_feature_flag": lambda: None,
    "get_all_flags": dict,
    "get_feature_flag_result": lambda: None,
    "get_feature_flag_payload": lambda: None,
    "get_remote_config_payload": lambda: None,
    "get_all_flags_and_payloads": lambda: {"featureFlags": {}, "featureFlagPayloads": {}},
    "evaluate_flags": UnevaluatedFlags,
    "feature_flag_definitions": lambda: None,
    "get_feature_flag_evaluation_runtime": lambda: None,
    "get_feature_flag_keys_by_evaluation_runtime": list,
    "load_feature_flags": lambda: None,
}

#: posthog-python's context setters for exception code variables.
CODE_VARIABLE_SETTERS = (
    "set_capture_exception_code_variables_context",
    "set_code_variables_mask_patterns_context",
    "set_code_variables_ignore_patterns_context",
    "set_code_variables_mask_url_credentials_context",
    "set_code_variables_detect_secrets_context",
)

_told: set[str] = set()
_told_lock = threading.Lock()


def _tell_once(name: str, why: str) -> None:
    with _told_lock:
        if name in _told:
            return
        _told.add(name)
    log.info("%s() %s", name, why)


def _unevaluated(name: str) -> Callable[..., Any]:
    answer = UNEVALUATED[name]

    def call(self: object, *args: Any, **kwargs: Any) -> Any:
        _tell_once(
            name,
            f"is not evaluated by spoolpost (it delivers events, not flags); it returns "
            f"{answer()!r}, posthog-python's answer when it cannot evaluate",
        )
        return answer()

    call.__name__ = call.__qualname__ = name
    call.__doc__ = (
        f"posthog-python's ``{name}``, not evaluated: accepts its arguments, sends "
        f"nothing and returns ``{answer()!r}`` (its answer when it cannot evaluate); "
        "one INFO line at the first call."
    )
    return call


def code_variables_setter(name: str) -> Callable[..., None]:
    """posthog-python's context setter ``name``, accepted and ignored (one INFO line)."""

    def setter(*args: Any, **kwargs: Any) -> None:
        _tell_once(name, "is ignored: spoolpost captures no exception code variables")

    setter.__name__ = setter.__qualname__ = name
    setter.__doc__ = f"posthog-python's ``{name}``, ignored: spoolpost captures no code variables."
    return setter


class FlagCalls:
    """posthog-python's flag calls on ``Posthog``, each returning :data:`UNEVALUATED`."""

    feature_enabled = _unevaluated("feature_enabled")
    get_feature_flag = _unevaluated("get_feature_flag")
    get_all_flags = _unevaluated("get_all_flags")
    get_feature_flag_result = _unevaluated("get_feature_flag_result")
    get_feature_flag_payload = _unevaluated("get_feature_flag_payload")
    get_remote_config_payload = _unevaluated("get_remote_config_payload")
    get_all_flags_and_payloads = _unevaluated("get_all_flags_and_payloads")
    evaluate_flags = _unevaluated("evaluate_flags")
    feature_flag_definitions = _unevaluated("feature_flag_definitions")
    get_feature_flag_evaluation_runtime = _unevaluated("get_feature_flag_evaluation_runtime")
    get_feature_flag_keys_by_evaluation_runtime = _unevaluated(
        "get_feature_flag_keys_by_evaluation_runtime"
    )
    load_feature_flags = _unevaluated("load_feature_flags")
