"""Which ingestion endpoint a host setting means, compared as posthog-python does.

posthog-python (``posthog.request.determine_server_host``) trims a trailing
slash and sends ``https://app.posthog.com`` and ``https://us.posthog.com`` to
``https://us.i.posthog.com``, and ``https://eu.posthog.com`` to
``https://eu.i.posthog.com``. :func:`canonical_host` does the same after
:func:`~spoolpost.delivery.transport.check_host` (lower-case host name, no
credentials, no trailing slash), so that equivalent settings compare equal when
a spool checks where it delivers (:meth:`Spool.bind_host`).
"""

from __future__ import annotations

from spoolpost.delivery.transport import check_host

US_INGESTION = "https://us.i.posthog.com"
EU_INGESTION = "https://eu.i.posthog.com"

#: App hosts that posthog-python sends to an ingestion host.
APP_HOST_ALIASES = {
    "https://app.posthog.com": US_INGESTION,
    "https://us.posthog.com": US_INGESTION,
    "https://eu.posthog.com": EU_INGESTION,
}


def canonical_host(host: str) -> str:
    """The ingestion base URL ``host`` means: checked (``check_host``), without
    credentials or trailing slash, a default port (443 for https, 80 for http)
    dropped, and PostHog Cloud's app hosts mapped to their ingestion hosts.
    Raises :class:`~spoolpost.errors.ConfigError` for a bad ``host``."""
    url = check_host(host).url
    for scheme, port in (("https", 443), ("http", 80)):
        prefix = f"{scheme}://"
        if url.startswith(prefix):
            where, sep, path = url[len(prefix) :].partition("/")
            if where.endswith(f":{port}"):
                where = where[: -len(f":{port}")]
            url = prefix + where + sep + path
    return APP_HOST_ALIASES.get(url, url)
