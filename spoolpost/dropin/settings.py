"""What each of posthog-python 7.x's ``Posthog.__init__`` options means for
:class:`~spoolpost.Posthog`: mapped to a :class:`~spoolpost.client.Client` setting,
or accepted and ignored with one INFO line. README's "Drop-in for posthog-python"
table says the same for users; ``tests/test_dropin_compat.py`` checks both against the
installed posthog-python.
"""

from __future__ import annotations

import logging

from spoolpost.delivery.hosts import APP_HOST_ALIASES
from spoolpost.delivery.transport import DEFAULT_HOST
from spoolpost.spool.location import fallback_spool_path

__all__ = ["IGNORED", "MAPPED", "fallback_spool_path", "log_ignored", "server_host"]

log = logging.getLogger("spoolpost")

#: Options with a meaning here (see :class:`~spoolpost.Posthog`).
MAPPED = frozenset(
    {
        "project_api_key",
        "host",
        "debug",
        "send",
        "on_error",
        "flush_at",
        "flush_interval",
        "gzip",
        "max_retries",
        "sync_mode",
        "timeout",
        "thread",
        "disabled",
        "disable_geoip",
        "is_server",
        "historical_migration",
        "super_properties",
        "before_send",
        "capture_mode",
        "capture_compression",
    }
)

#: Options accepted and ignored (one INFO line each when given a non-default value):
#: feature flags, exception autocapture, AI, metrics, tracing, emails, and the
#: in-memory queue bound (the spool's bound is ``max_spool_bytes``).
IGNORED = frozenset(
    {
        "max_queue_size",
        "poll_interval",
        "personal_api_key",
        "feature_flags_request_timeout_seconds",
        "feature_flags_request_max_retries",
        "enable_exception_autocapture",
        "log_captured_exceptions",
        "project_root",
        "privacy_mode",
        "flag_fallback_cache_url",
        "enable_local_evaluation",
        "flag_definition_cache_provider",
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
        "secret_key",
        "metrics",
        "enable_full_ai_capture",
        "capture_trace_context",
        "_use_ai_lane",
        "_enable_multimodal_capture",
        "traces",
        "app_host",
        "email_request_timeout_seconds",
        "email_request_max_retries",
        "migrated_from",
    }
)


def server_host(host: str | None) -> str:
    """The ingestion host for posthog-python's ``host``: None → the US default, an app
    host (``https://us.posthog.com``, ``https://eu.posthog.com``,
    ``https://app.posthog.com``) → its ingestion host, as posthog-python 7.x maps them."""
    if not host:
        return DEFAULT_HOST
    return APP_HOST_ALIASES.get(host.rstrip("/"), host)


def log_ignored(given: dict[str, object], defaults: dict[str, object]) -> list[str]:
    """Log one INFO line per :data:`IGNORED` option in ``given`` whose value is not its
    default; return their names (sorted)."""
    names = sorted(n for n in IGNORED if n in given and given[n] != defaults.get(n))
    for name in names:
        log.info("Posthog(%s=...) is accepted and ignored by spoolpost", name)
    return names
