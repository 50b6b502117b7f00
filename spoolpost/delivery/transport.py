"""Getting a batch of stored events onto the wire.

A :class:`~spoolpost.delivery.wire.WireFormat` (in :mod:`spoolpost.delivery.wire`:
PostHog's v0 ``/batch/``, v1 ``/i/v1/analytics/events`` and the AI endpoint
``/i/v0/ai/batch/``) builds each request; :meth:`HttpTransport.for_lane` gives the
transport of a spool lane.
:class:`HttpTransport` compresses and POSTs it with one ``requests.Session`` per
thread (keep-alive), TLS verification on, connect and read timeouts, and no
redirects followed. It never raises for I/O trouble: it returns a :class:`Reply`.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import requests

from spoolpost._version import __version__
from spoolpost.delivery.neterrors import summarize
from spoolpost.delivery.wire import (
    Compression,
    EventResult,
    PostHogAI,
    PostHogV0,
    PostHogV1,
    WireFormat,
    compress,
    parse_results,
    resolve_compression,
)
from spoolpost.errors import ConfigError
from spoolpost.spool import RequestStamp

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_TIMEOUT",
    "HttpTransport",
    "PostHogV0",
    "PostHogV1",
    "Reply",
    "WireFormat",
    "check_host",
    "check_timeout",
    "redact_key",
]

log = logging.getLogger("spoolpost")

USER_AGENT = f"spoolpost/{__version__}"
DEFAULT_HOST = "https://us.i.posthog.com"
#: (connect, read) timeouts of one request, in seconds.
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 30.0)


@dataclass(frozen=True)
class Reply:
    """What one POST came to.

    ``status`` is the HTTP status, or None when no response arrived (connection
    refused or dropped, timeout, DNS failure), with ``error`` saying why in one
    line (:func:`~spoolpost.delivery.neterrors.summarize`: ``connection refused to
    http://127.0.0.1:9/``, not urllib3's repr).
    ``retry_after`` is the raw ``Retry-After`` header; ``excerpt`` the first
    :data:`EXCERPT_BYTES` bytes of the response body, decoded leniently. :class:`HttpTransport`
    redacts its API key from ``excerpt`` and ``error`` (see :func:`redact_key`)
    before making a Reply, so neither logs, ``last_error``, dead-letter details nor
    paused reasons can carry it.
    """

    status: int | None
    retry_after: str | None = None
    excerpt: str = ""
    error: str = ""
    #: A per-event format's 2xx ``results`` map (None: not one, or malformed).
    results: dict[str, EventResult] | None = None
    #: The server refused the body's encoding (415, or "invalid encoding") even
    #: uncompressed: a transport fault, never the events' (see HttpTransport.post).
    encoding_fault: bool = False

    def describe(self) -> str:
        """A short human description, for ``last_error`` and logs."""
        if self.status is None:
            return f"transport error: {self.error}"
        return f"HTTP {self.status}" + (f": {self.excerpt}" if self.excerpt else "")


EXCERPT_BYTES = 300
#: The most of an answer's body read, in bytes (1 MiB). PostHog answers a few KiB;
#: a v1 ``results`` map of about 60 bytes an event fits over 15,000 events. A
#: longer body is cut there (its connection is dropped, not read to the end), and
#: a cut v1 ``results`` map is malformed: the batch is retried.
MAX_ANSWER_BYTES = 1 << 20


def _read_capped(response: requests.Response, cap: int) -> tuple[bytes, bool]:
    """Up to ``cap`` bytes of ``response``'s body (decoded per its
    ``Content-Encoding``), and whether there was more."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            return b"".join(chunks)[:cap], True
    return b"".join(chunks), False


def _marker(api_key: str) -> str:
    return "phc_***" if api_key.startswith("phc_") else "***"


def redact_key(text: str, api_key: str) -> str:
    """``text`` with every occurrence of ``api_key`` replaced by ``phc_***`` (or
    ``***`` for a key without PostHog's ``phc_`` prefix)."""
    if not api_key or api_key not in text:
        return text
    return text.replace(api_key, _marker(api_key))


#: A body ending in this many leading bytes of the key, or more, has them hidden too.
_KEY_PREFIX_SHOWN = 5


def _excerpt(content: bytes, api_key: str) -> str:
    """The first :data:`EXCERPT_BYTES` bytes of a response body as text (decoded
    leniently), ``api_key`` redacted: also a key that starts inside the excerpt and
    runs past its end (taken whole, then redacted), and the start of a key the
    excerpt ends in, so no part of the key longer than ``phc_`` is ever shown."""
    key = api_key.encode()
    head = content[:EXCERPT_BYTES]
    if key:
        straddling = content.find(
            key, max(0, EXCERPT_BYTES - len(key) + 1), EXCERPT_BYTES + len(key) - 1
        )
        if straddling != -1:
            head = content[: straddling + len(key)]
        marker = _marker(api_key).encode()
        head = head.replace(key, marker)
        for n in range(min(len(key) - 1, len(head)), _KEY_PREFIX_SHOWN - 1, -1):
            if head.endswith(key[:n]):
                head = head[:-n] + marker
                break
    return head.decode("utf-8", "replace")


@dataclass(frozen=True)
class Host:
    """An endpoint base URL, checked and taken apart by :func:`check_host`.

    ``url`` is the base URL requests go to, without credentials and without a
    trailing slash; ``display_url`` is the same with ``user:***@`` where the given
    URL had credentials, for logs and messages; ``auth`` is the (user, password)
    pair for HTTP basic auth, or None.
    """

    url: str
    display_url: str
    auth: tuple[str, str] | None = None


_USERINFO = re.compile(r"(//[^/?#@]*?):[^/?#@]*@")


def redact_credentials(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it
    replaced by ``***`` (for messages about a URL that could not be parsed)."""
    return _USERINFO.sub(r"\1:***@", text)


_FORBIDDEN_HOST_CHARS = re.compile(r"[\s\x00-\x1f\x7f<>\"{}|\\^`]")


def check_host(host: str) -> Host:
    """Check an endpoint base URL, ``http(s)://[user:password@]host[:port][/prefix]``,
    and return it as a :class:`Host` (built from its parts: no trailing slash, no
    credentials in :attr:`Host.url`).

    Raises :class:`~spoolpost.errors.ConfigError` naming the problem (with any
    password shown as ``***``): not a string or not parsable, a scheme other than
    http/https, no host name or one with spaces or control characters, a port
    that is not a number from 1 to 65535, a query (``?…``) or fragment (``#…``).
    """
    if not isinstance(host, str):
        raise ConfigError(f"host must be an http(s) URL like {DEFAULT_HOST}, not {host!r}")
    shown = redact_credentials(host)
    try:
        parts = urlsplit(host.strip())
    except ValueError as exc:
        raise ConfigError(f"host {shown!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"host must be an http(s) URL like {DEFAULT_HOST}, not {shown!r}")
    hostname = parts.hostname
    if not hostname:
        raise ConfigError(f"host {shown!r} has no host name")
    if _FORBIDDEN_HOST_CHARS.search(hostname):
        raise ConfigError(f"host {shown!r} has a host name with spaces or control characters")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ConfigError(
            f"host {shown!r} has an invalid port: it must be a number from 1 to 65535"
        )
    if parts.query or parts.fragment or "?" in host or "#" in host:
        raise ConfigError(
            f"host {shown!r} must not have a query (?…) or fragment (#…): give the base "
            f"URL, like {DEFAULT_HOST}"
        )
    name = f"[{hostname}]" if ":" in hostname else hostname
    where = name if port is None else f"{name}:{port}"
    path = parts.path.rstrip("/")
    if path.rsplit("/", 1)[-1] in ("batch", "capture"):
        raise ConfigError(
            f"host {shown!r} names an ingestion path ({parts.path}); give the base URL, "
            f"like {DEFAULT_HOST}: spoolpost adds /batch/ itself"
        )
    url = f"{parts.scheme}://{where}{path}"
    try:
        requests.PreparedRequest().prepare_url(url, None)  # what requests will refuse
    except requests.RequestException as exc:
        raise ConfigError(f"host {shown!r} is not a usable URL: {exc}") from None
    if parts.username is None and parts.password is None:
        return Host(url, url)
    user = unquote(parts.username or "")
    return Host(
        url,
        f"{parts.scheme}://{parts.username or ''}:***@{where}{path}",
        (
            user,
            unquote(parts.password or ""),
        ),
    )


Timeout = float | tuple[float, float]
"""A request timeout in seconds: one for connect and read, or a (connect, read) pair."""


def check_timeout(timeout: object) -> tuple[float, float]:
    """``timeout`` as a (connect, read) pair of seconds. Raises
    :class:`~spoolpost.errors.ConfigError` unless it is a positive finite number or a
    pair of them (a zero, negative, infinite or missing timeout would make every
    request fail, or let a hung server hold a sender for ever)."""
    values = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    if len(values) == 2 and all(_positive_seconds(v) for v in values):
        return float(values[0]), float(values[1])
    raise ConfigError(
        "timeout must be a positive number of seconds or a (connect, read) pair of "
        f"them, not {timeout!r}"
    )


def _positive_seconds(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value > 0


def _compression_for(wire: WireFormat, compression: str | None, gzip: bool) -> Compression:
    """The body compression of a transport for ``wire``: under v1, ``compression``,
    else ``POSTHOG_CAPTURE_COMPRESSION``, else gzip if ``gzip`` (see
    :func:`resolve_compression`). Under v0 and the AI endpoint, gzip if ``gzip``,
    else none, whatever ``compression`` says (posthog-python's rule: its
    ``capture_compression`` is "ignored in V0, which uses gzip"); a given
    ``compression`` is still checked (:class:`ConfigError`), and one that would
    have meant another compression is logged once, at INFO."""
    if wire.per_event:
        return resolve_compression(compression, gzip=gzip)
    asked = resolve_compression(compression, gzip=gzip, environ={})
    chosen: Compression = "gzip" if gzip else "none"
    if compression is not None and asked != chosen:
        log.info(
            "capture_compression %r applies to the v1 capture mode only; v0 sends %s "
            "(gzip only with gzip=True, as posthog-python)",
            compression,
            "gzip" if gzip else "uncompressed bodies",
        )
    return chosen


class HttpTransport:
    """POSTs batches to ``host`` + ``wire.path``.

    ``host`` is checked by :func:`check_host` (credentials in it, ``user:password@``,
    are sent as HTTP basic auth and shown as ``user:***@`` in :attr:`display_url`,
    which is what logs and messages use). ``timeout``: seconds, one positive number
    for both, or a (connect, read) pair (default 5, 30); ``gzip`` sends
    ``Content-Encoding: gzip``; ``compression`` (none, gzip, deflate, zstd) is
    v1's (v0 takes gzip from ``gzip`` only, as posthog-python); ``verify`` is
    passed to requests (TLS on by default). One ``requests.Session`` per calling thread.
    Raises :class:`~spoolpost.errors.ConfigError` for a bad ``host``, ``api_key``
    or ``timeout``.
    """

    def __init__(
        self,
        host: str,
        api_key: str,
        *,
        wire: WireFormat | None = None,
        gzip: bool = False,
        compression: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        verify: bool | str = True,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigError("api_key must be a non-empty string (the project API key)")
        checked = check_host(host)
        self._host_setting = host
        self._ai: HttpTransport | None = None  # for_lane("ai"), made on first use
        self.host = checked.url
        self.api_key = api_key
        self.wire: WireFormat = wire or PostHogV0()
        self.url = checked.url + self.wire.path
        #: The endpoint's base for error summaries (``connection refused to …/``).
        self._error_url = checked.display_url + "/"
        self._hostname = urlsplit(checked.url).hostname or checked.url
        #: :attr:`url` with ``user:***@`` where the host had credentials: for logs.
        self.display_url = checked.display_url + self.wire.path
        self.auth = checked.auth
        chosen = _compression_for(self.wire, compression, gzip)
        #: The compression in use; ``none`` after a fallback (see :meth:`post`).
        self.compression: Compression = chosen
        self.gzip = chosen == "gzip"
        self._fallback_lock = threading.Lock()
        self.timeout = check_timeout(timeout)
        self.verify = verify
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            # Read the environment (HTTPS_PROXY/NO_PROXY, REQUESTS_CA_BUNDLE) once
            # per session instead of on every request, where requests spends
            # about a quarter of its time; the result is pinned on the session.
            env = session.merge_environment_settings(self.url, {}, None, self.verify, None)
            session.proxies.update(env["proxies"])
            session.verify = env["verify"]
            session.trust_env = False
            self._local.session = session
        return session

    def reset(self) -> None:
        """Forget this thread's session (after a fork, a session must not be shared)."""
        self._local = threading.local()
        if self._ai is not None:
            self._ai.reset()

    def for_lane(self, lane: str | None) -> HttpTransport:
        """The transport of a spool lane: this one for analytics (None); for ``"ai"``
        (``capture_ai``) one to PostHog's ``/i/v0/ai/batch/`` (:class:`PostHogAI`,
        whatever this one's wire format), same host, key, timeouts and TLS, gzip
        when this one compresses (the AI endpoint takes the v0 body)."""
        if lane is None:
            return self
        with self._fallback_lock:
            if self._ai is None:
                self._ai = HttpTransport(
                    self._host_setting,
                    self.api_key,
                    wire=PostHogAI(getattr(self.wire, "historical_migration", False)),
                    gzip=self.compression != "none",
                    timeout=self.timeout,
                    verify=self.verify,
                )
            return self._ai

    def post(self, events: Sequence[bytes], now: float, stamp: RequestStamp | None = None) -> Reply:
        """POST ``events`` (stored JSON bytes) built by the wire format at ``now``
        (UTC seconds; v0's ``sent_at``, v1's ``PostHog-Request-Timestamp``) with the
        stored v1 request identity ``stamp``. Never raises for I/O errors.

        If the server refuses a compressed body's encoding (415, or a 4xx whose
        body says "invalid encoding"), compression is turned off for this
        transport (logged once, WARNING) and the request is sent again at once,
        uncompressed, with the same identity. A refusal of an uncompressed body
        comes back with :attr:`Reply.encoding_fault` set (a configuration fault:
        the settler pauses, never dead-letters)."""
        headers, raw = self.wire.request(self.api_key, events, now, stamp)
        compression = self.compression
        reply = self._post(headers, raw, compression)
        if reply.encoding_fault and compression != "none":
            with self._fallback_lock:
                if self.compression != "none":
                    self.compression = "none"
                    self.gzip = False
                    log.warning(
                        "%s refused %s-compressed bodies (%s); sending uncompressed from now on",
                        self.display_url,
                        compression,
                        reply.describe(),
                    )
            reply = self._post(headers, raw, "none")
        return reply

    def _post(self, headers: dict[str, str], raw: bytes, compression: Compression) -> Reply:
        body, encoding = compress(raw, compression)
        if encoding is not None:
            headers = {**headers, "Content-Encoding": encoding}
        try:
            response = self._session().post(
                self.url,
                data=body,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
                auth=self.auth,
                stream=True,
            )
            with response:
                status = response.status_code
                content, cut = _read_capped(response, MAX_ANSWER_BYTES)
        except requests.RequestException as exc:
            error = summarize(exc, self._error_url, self._hostname, self.timeout)
            return Reply(None, error=redact_key(error, self.api_key))
        excerpt = _excerpt(content, self.api_key)
        results = None
        per_event = self.wire.per_event and 200 <= status < 300
        if cut:
            log.warning(
                "%s answered %s with a body over %d bytes; only that much was read%s",
                self.display_url,
                status,
                MAX_ANSWER_BYTES,
                ", so its results map is malformed and the batch is retried" if per_event else "",
            )
        elif per_event:
            results = parse_results(content)
        refused = status == 415 or (
            400 <= status < 500 and "invalid encoding" in excerpt.lower().replace("_", " ")
        )
        return Reply(
            status,
            response.headers.get("Retry-After"),
            excerpt,
            results=results,
            encoding_fault=refused,
        )
