"""Transport errors in one line an operator can read, not urllib3's repr.

``requests`` wraps urllib3's exceptions, whose text is a nested repr
(``HTTPConnectionPool(host=…): Max retries exceeded … NewConnectionError(<…>)``).
:func:`summarize` walks the exception's causes and says what happened:
``connection refused to http://127.0.0.1:9/``, ``timed out after 5 s waiting for
an answer from …``, ``name resolution failed for nowhere.invalid``, and so on.
Whatever it cannot classify is its exception's class name and first line, cut short.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import requests

#: The longest summary kept (one log line, one ``last_error``).
MAX_CHARS = 200

_RESOLUTION = (
    "nameresolutionerror",
    "name or service not known",
    "nodename nor servname",
    "getaddrinfo failed",
    "temporary failure in name resolution",
    "no address associated",
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes and contexts (and the reasons urllib3 keeps), once each."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for nxt in (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def _seconds(value: float) -> str:
    return f"{value:g} s"


def summarize(exc: BaseException, url: str, hostname: str, timeout: tuple[float, float]) -> str:
    """One line saying why a request to ``url`` (on ``hostname``) got no answer,
    given the (connect, read) ``timeout`` in seconds."""
    chain = list(_chain(exc))
    text = " ".join(f"{type(e).__name__} {e}" for e in chain).lower()
    if isinstance(exc, requests.ConnectTimeout):
        return f"timed out after {_seconds(timeout[0])} connecting to {url}"
    if isinstance(exc, requests.ReadTimeout):
        return f"timed out after {_seconds(timeout[1])} waiting for an answer from {url}"
    if any(isinstance(e, socket.gaierror) for e in chain) or any(s in text for s in _RESOLUTION):
        return f"name resolution failed for {hostname}"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "connection refused" in text:
        return f"connection refused to {url}"
    if isinstance(exc, requests.exceptions.SSLError) or any(
        isinstance(e, ssl.SSLError) for e in chain
    ):
        reason = next((str(e) for e in chain if isinstance(e, ssl.SSLError)), "")
        return _cut(f"TLS error with {url}" + (f": {reason}" if reason else ""))
    if isinstance(exc, requests.exceptions.ProxyError):
        return f"the proxy refused or failed the connection to {url}"
    if any(isinstance(e, (ConnectionResetError, BrokenPipeError)) for e in chain) or (
        "remotedisconnected" in text or "connection aborted" in text
    ):
        return f"connection closed by {url} before an answer"
    if any(isinstance(e, TimeoutError | socket.timeout) for e in chain):
        return f"timed out talking to {url}"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return _cut(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"
