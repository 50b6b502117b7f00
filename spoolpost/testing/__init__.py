"""A real HTTP endpoint on the loopback interface that can be told to fail.

:class:`LocalEndpoint` serves HTTP/1.1 (keep-alive) on 127.0.0.1 from a background
thread. Every request is recorded (headers, raw and gunzipped body, decoded JSON) and
answered from a script of :class:`Response` objects, then a dynamic handler, then a
default. A response can carry any status and headers (``Retry-After``), a delay, a
dropped connection or a hang, so tests, benchmarks, ``spoolpost demo`` and users
testing their integration exercise the real network path without mocking ``requests``.

Example::

    import requests
    from spoolpost.testing import LocalEndpoint, Response

    with LocalEndpoint() as endpoint:
        endpoint.respond(Response(503, headers={"Retry-After": "1"}), times=2)
        body = {"api_key": "phc_test", "batch": [{"uuid": "u1", "event": "e"}]}
        for _ in range(3):
            requests.post(f"{endpoint.url}/batch/", json=body, timeout=5)
        assert [r.status for r in endpoint.requests] == [503, 503, 200]
        assert endpoint.wait_for_uuids(["u1"], timeout=10)

The port is reserved when the endpoint is constructed, so :attr:`LocalEndpoint.url`
refuses connections until :meth:`LocalEndpoint.start` and again after
:meth:`LocalEndpoint.stop`; a later ``start()`` listens on the same port.

Only the standard library is used. Every request (raw and decoded body, JSON) is kept
in memory until :meth:`LocalEndpoint.clear`: a long benchmark should clear it now and
then, or run the endpoint in another process, so its memory is not counted as the
client's. Logs go to the ``spoolpost.testing`` logger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import http.server
import ipaddress
import json
import logging
import selectors
import socket
import socketserver
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, cast

__all__ = [
    "Handler",
    "LocalEndpoint",
    "RecordedRequest",
    "Response",
    "reject_uuids",
    "status_over_size",
]

logger = logging.getLogger("spoolpost.testing")

_JOIN_TIMEOUT = 5.0
"""Seconds stop() waits in total for request threads to finish before giving up on them."""


@dataclass(frozen=True)
class Response:
    """How the endpoint answers one request.

    ``status`` is the HTTP status code; ``headers`` are sent as given (``Content-Length``
    is always computed from ``body``, and ``Content-Type: application/json`` is added
    unless given). ``delay`` is in seconds, waited before answering; ``stop()`` cuts it
    short and the connection is then closed unanswered. ``drop`` closes the connection
    without answering (the client sees a connection error). ``hang`` reads the request
    and never answers until :meth:`LocalEndpoint.release_hung` or ``stop()``, which
    close the connection unanswered. Raises ``ValueError`` for an impossible response.
    """

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b'{"status":1}'
    delay: float = 0.0
    drop: bool = False
    hang: bool = False

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 599:
            raise ValueError(f"status must be within 100..599, not {self.status}")
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, not {self.delay}")
        if self.drop and self.hang:
            raise ValueError("a response cannot both drop and hang")


class _Headers(Mapping[str, str]):
    """Read-only request headers with case-insensitive lookup.

    Iteration yields the names as received; a header received several times has its
    values joined with ``", "``.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        merged: dict[str, tuple[str, str]] = {}
        for name, value in items:
            key = name.lower()
            if key in merged:
                merged[key] = (merged[key][0], f"{merged[key][1]}, {value}")
            else:
                merged[key] = (name, value)
        self._items = merged

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (original for original, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"_Headers({dict(self.items())!r})"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the endpoint received it.

    ``time`` is ``time.time()`` (UTC epoch seconds) and ``monotonic`` is
    ``time.monotonic()`` (seconds), both taken when the request was fully read.
    ``headers`` look up case-insensitively. ``raw_body`` is as received on the wire,
    ``body`` after gunzip when ``Content-Encoding: gzip`` (the raw bytes if that fails),
    ``json`` the decoded body or None when it is not JSON. ``status`` is the status
    answered, 0 while unanswered and for dropped or hung requests.
    """

    time: float
    monotonic: float
    method: str
    path: str
    headers: Mapping[str, str]
    raw_body: bytes
    body: bytes
    json: Any
    status: int

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events of a ``{"batch": [event, ...]}`` body; [] when the shape differs."""
        if not isinstance(self.json, dict):
            return []
        batch = self.json.get("batch")
        if not isinstance(batch, list):
            return []
        return [event for event in batch if isinstance(event, dict)]

    @property
    def uuids(self) -> list[str]:
        """The ``uuid`` of each event in :attr:`events` that has a string one, in order."""
        return [e["uuid"] for e in self.events if isinstance(e.get("uuid"), str)]


Handler = Callable[[RecordedRequest], Response | None]
"""A dynamic rule: given the request (``status`` 0), a :class:`Response`, or None (default)."""


def status_over_size(limit: int, status: int = 413) -> Handler:
    """Return a handler answering ``status`` to requests whose body exceeds ``limit`` bytes.

    The size is that of the decoded body (after gunzip). Smaller requests get None (the
    endpoint's default).
    """
    too_large = Response(status=status, body=b'{"error":"payload too large"}')

    def handler(request: RecordedRequest) -> Response | None:
        return too_large if len(request.body) > limit else None

    return handler


def reject_uuids(
    uuids: Iterable[str], status: int = 400, body: bytes = b'{"error":"bad event"}'
) -> Handler:
    """Return a handler answering ``status`` with ``body`` to any batch holding one of ``uuids``.

    Other requests get None (the endpoint's default).
    """
    rejected = frozenset(uuids)
    response = Response(status=status, body=body)

    def handler(request: RecordedRequest) -> Response | None:
        return response if any(uuid in rejected for uuid in request.uuids) else None

    return handler


class _Slot:
    """The latest version of one recorded request; replaced once it is answered.

    ``generation`` tells whether :meth:`LocalEndpoint.clear` ran since it was recorded.
    """

    __slots__ = ("generation", "record")

    def __init__(self, record: RecordedRequest, generation: int) -> None:
        self.record = record
        self.generation = generation


@dataclass
class _Scripted:
    """A queued scripted answer and how many more requests it answers."""

    response: Response
    uses_left: int


class _Run:
    """State of one start()..stop() period, so a restart never sees a stale stop flag."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.stopping = False
        self.connections: set[socket.socket] = set()
        self.threads: set[threading.Thread] = set()
        self.hung: set[threading.Event] = set()


class _Server(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer bound at construction, listening only once activated."""

    daemon_threads = True
    block_on_close = False  # the endpoint tracks and joins request threads itself

    def __init__(self, endpoint: LocalEndpoint, address: tuple[str, int]) -> None:
        self.endpoint = endpoint
        self.run = _Run()
        super().__init__(address, _RequestHandler, bind_and_activate=False)
        try:
            self.server_bind()
        except BaseException:
            self.server_close()
            raise

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can
        # take seconds; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def accept_until(self, wake: socket.socket) -> None:
        """Accept connections, one thread each, until ``wake`` becomes readable.

        Used instead of ``serve_forever()``, whose shutdown polls (0.5 s by default):
        here stop() takes effect at once.
        """
        self.socket.setblocking(False)  # a connection gone before accept() must not block
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if wake in ready:
                    return
                try:
                    request, client_address = self.get_request()
                except OSError:
                    continue
                try:
                    self.process_request(request, client_address)
                except Exception:
                    self.handle_error(request, client_address)
                    self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr; a client going away is routine.
        logger.debug("error serving %s", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    """Reads each request fully, records it, and answers per the endpoint's rules."""

    protocol_version = "HTTP/1.1"
    server_version = "spoolpost-testing"

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the stdlib writes every request to stderr."""

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server = cast(_Server, self.server)
        run = server.run
        with server.endpoint._lock:
            if run.stopping:
                # Accepted just as stop() began: refuse it like the closed listener would.
                _shutdown(self.connection)
            else:
                run.connections.add(self.connection)
                run.threads.add(threading.current_thread())

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            server = cast(_Server, self.server)
            with server.endpoint._lock:
                server.run.connections.discard(self.connection)
                server.run.threads.discard(threading.current_thread())

    def do_GET(self) -> None:
        """Serve a GET."""
        self._serve()

    def do_POST(self) -> None:
        """Serve a POST."""
        self._serve()

    do_PUT = do_PATCH = do_DELETE = do_POST

    def _read_body(self) -> bytes | None:
        """The request body per Content-Length or chunked framing; None if unreadable."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0:
            self.send_error(HTTPStatus.BAD_REQUEST, "bad Content-Length")
            self.close_connection = True
            return None
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True  # the client went away mid-body
            return None
        return body

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                return None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunk = self.rfile.read(size)
            self.rfile.readline(3)
            if len(chunk) != size:
                self.close_connection = True
                return None
            chunks.append(chunk)

    def _serve(self) -> None:
        raw_body = self._read_body()
        if raw_body is None:
            return
        server = cast(_Server, self.server)
        endpoint, run = server.endpoint, server.run
        wall, mono = time.time(), time.monotonic()
        headers = _Headers(self.headers.items())
        body = _decode_body(raw_body, headers.get("Content-Encoding", ""))
        record = RecordedRequest(
            time=wall,
            monotonic=mono,
            method=self.command,
            path=self.path,
            headers=headers,
            raw_body=raw_body,
            body=body,
            json=_decode_json(body),
            status=0,
        )
        slot = endpoint._record(record)
        response = endpoint._choose(record)
        if response.drop:
            self.close_connection = True
            return
        if response.hang:
            endpoint._hang(run)
            self.close_connection = True
            return
        if response.delay > 0 and run.stop_event.wait(response.delay):
            self.close_connection = True
            return
        endpoint._answered(slot, response.status)
        self._write(response)

    def _write(self, response: Response) -> None:
        status = response.status
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        lines = [
            f"HTTP/1.1 {status} {phrase}",
            f"Server: {self.version_string()}",
            f"Date: {self.date_time_string()}",
        ]
        has_content_type = False
        for name, value in response.headers.items():
            lowered = name.lower()
            if lowered == "content-length":
                continue
            if lowered == "content-type":
                has_content_type = True
            elif lowered == "connection" and value.lower() == "close":
                self.close_connection = True
                continue
            lines.append(f"{name}: {value}")
        # 1xx, 204 and 304 answers carry no body and no Content-Length (RFC 9110).
        body = b""
        if status >= 200 and status not in (204, 304):
            body = response.body
            if body and not has_content_type:
                lines.append("Content-Type: application/json")
            lines.append(f"Content-Length: {len(body)}")
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.wfile.write(head + body)  # one write: no Nagle/delayed-ACK stall
        except OSError:
            logger.debug("client went away before the answer", exc_info=True)
            self.close_connection = True


def _shutdown(connection: socket.socket) -> None:
    """Shut ``connection`` down both ways, waking a thread blocked on it; never raises."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


def _decode_body(raw_body: bytes, content_encoding: str) -> bytes:
    if content_encoding.strip().lower() not in ("gzip", "x-gzip"):
        return raw_body
    try:
        return gzip.decompress(raw_body)
    except (OSError, EOFError, zlib.error):
        logger.warning("request body claims gzip but does not decompress; kept as is")
        return raw_body


def _decode_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:  # also UnicodeDecodeError
        return None


def _loopback_host(host: str) -> str:
    """``host`` as an address to bind; ValueError unless it is a loopback address."""
    if host.lower() == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"LocalEndpoint serves loopback only; {host!r} is not") from None
    if not address.is_loopback:
        raise ValueError(f"LocalEndpoint serves loopback only; {host!r} is not")
    return str(address)


class LocalEndpoint:
    """An HTTP/1.1 server on a loopback address that records requests and injects faults.

    ``host`` must be a loopback address (127.0.0.0/8, ``::1``, ``localhost``), else
    ``ValueError``. ``port`` 0 picks a free port. The port is bound (reserved, not
    listening) at construction, so :attr:`url` is known and refuses connections until
    :meth:`start`. Call :meth:`stop` (or use ``with``) to release the port.

    Answers come, in order, from the script (:meth:`respond`), then the handler
    (:meth:`set_handler`), then :attr:`default`. A handler that raises is logged and
    answered with 500.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = _loopback_host(host)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._life_lock = threading.Lock()
        self._slots: list[_Slot] = []
        self._delivered: list[str] = []
        self._delivered_set: set[str] = set()
        self._generation = 0
        self._script: deque[_Scripted] = deque()
        self._handler: Handler | None = None
        self.default: Response = Response()
        """The answer when no scripted response is queued and the handler gives None."""
        self._running: _Server | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._server: _Server | None = self._make_server(port)
        self._port = int(self._server.server_address[1])

    def _make_server(self, port: int) -> _Server:
        cls = _Server6 if ":" in self._host else _Server
        return cls(self, (self._host, port))

    @property
    def port(self) -> int:
        """The TCP port, fixed at construction."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL without trailing slash, e.g. ``http://127.0.0.1:PORT``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    def start(self) -> LocalEndpoint:
        """Listen and serve from a daemon thread; returns self. A no-op while running.

        After :meth:`stop`, listens again on the same port (``OSError`` if another
        socket took it meanwhile).
        """
        with self._life_lock:
            if self._running is not None:
                return self
            server = self._server if self._server is not None else self._make_server(self._port)
            self._server = server
            try:
                server.server_activate()
            except BaseException:
                server.server_close()
                self._server = None
                raise
            self._wake = socket.socketpair()
            self._thread = threading.Thread(
                target=server.accept_until,
                args=(self._wake[0],),
                name=f"spoolpost-testing-{self._port}",
                daemon=True,
            )
            self._thread.start()
            self._running = server
            logger.debug("listening on %s", self.url)
            return self

    def stop(self) -> None:
        """Stop serving and release the port; idempotent.

        Closes the listener and every open connection, releases hung and delayed
        requests (closing them unanswered), joins the serving thread, and waits up to
        5 seconds in total for request threads to finish.
        """
        with self._life_lock:
            server, thread, wake = self._server, self._thread, self._wake
            self._server = self._thread = self._running = self._wake = None
            if server is None:
                return
            if thread is None or wake is None:  # bound, never started
                server.server_close()
                return
            wake[1].send(b"x")
            thread.join()  # no more accepts once the accept loop is gone
            for end in wake:
                end.close()
            run = server.run
            with self._lock:
                run.stopping = True
                connections = list(run.connections)
                threads = list(run.threads)
                hung = list(run.hung)
                run.hung.clear()
            run.stop_event.set()
            for event in hung:
                event.set()
            for connection in connections:
                _shutdown(connection)
            server.server_close()
            deadline = time.monotonic() + _JOIN_TIMEOUT
            current = threading.current_thread()
            for request_thread in threads:
                if request_thread is not current:
                    request_thread.join(max(0.0, deadline - time.monotonic()))
            stragglers = [t.name for t in threads if t.is_alive() and t is not current]
            if stragglers:
                logger.warning("request threads still running after stop(): %s", stragglers)
            logger.debug("stopped %s", self.url)

    def __enter__(self) -> LocalEndpoint:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def respond(self, *responses: Response, times: int = 1) -> None:
        """Queue scripted answers, first in first out, each used ``times`` times.

        Scripted answers come before the handler and :attr:`default`. ``ValueError``
        if ``times`` < 1.
        """
        if times < 1:
            raise ValueError(f"times must be >= 1, not {times}")
        with self._lock:
            self._script.extend(_Scripted(response, times) for response in responses)

    def set_handler(self, handler: Handler | None) -> None:
        """Consult ``handler`` when no scripted answer is queued; None removes it."""
        with self._lock:
            self._handler = handler

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every recorded request, in arrival order."""
        with self._lock:
            return [slot.record for slot in self._slots]

    def delivered_uuids(self) -> list[str]:
        """Event uuids of every request answered 2xx, in answer order, duplicates kept."""
        with self._lock:
            return list(self._delivered)

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> bool:
        """Block until at least ``n`` requests are recorded or ``timeout`` seconds pass.

        A request counts once fully read, before it is answered. Returns whether ``n``
        was reached.
        """
        with self._changed:
            return self._changed.wait_for(lambda: len(self._slots) >= n, timeout)

    def wait_for_uuids(self, uuids: Iterable[str], timeout: float = 10.0) -> bool:
        """Block until every uuid in ``uuids`` was answered 2xx, or ``timeout`` seconds pass.

        Returns whether all were delivered.
        """
        missing = set(uuids)

        def delivered() -> bool:
            missing.difference_update([u for u in missing if u in self._delivered_set])
            return not missing

        with self._changed:
            return self._changed.wait_for(delivered, timeout)

    def release_hung(self) -> None:
        """Close every currently hung request's connection without answering it."""
        with self._lock:
            server = self._running
            if server is None:
                return
            hung = list(server.run.hung)
            server.run.hung.clear()
        for event in hung:
            event.set()

    def clear(self) -> None:
        """Forget every recorded request and delivered uuid (the script is kept)."""
        with self._lock:
            self._generation += 1
            self._slots = []
            self._delivered = []
            self._delivered_set = set()

    # Called from request threads.

    def _record(self, record: RecordedRequest) -> _Slot:
        with self._changed:
            slot = _Slot(record, self._generation)
            self._slots.append(slot)
            self._changed.notify_all()
        return slot

    def _choose(self, record: RecordedRequest) -> Response:
        with self._lock:
            if self._script:
                entry = self._script[0]
                entry.uses_left -= 1
                if entry.uses_left == 0:
                    self._script.popleft()
                return entry.response
            handler = self._handler
        if handler is not None:
            try:
                response = handler(record)
            except Exception:
                logger.exception("handler failed for %s %s", record.method, record.path)
                return Response(status=500, body=b'{"error":"handler failed"}')
            if response is not None:
                return response
        return self.default

    def _answered(self, slot: _Slot, status: int) -> None:
        record = dataclasses.replace(slot.record, status=status)
        with self._changed:
            slot.record = record
            if 200 <= status < 300 and slot.generation == self._generation:
                uuids = record.uuids
                if uuids:
                    self._delivered.extend(uuids)
                    self._delivered_set.update(uuids)
                    self._changed.notify_all()

    def _hang(self, run: _Run) -> None:
        release = threading.Event()
        with self._lock:
            if run.stopping:
                return
            run.hung.add(release)
        release.wait()
