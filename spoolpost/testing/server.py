"""The HTTP side of :class:`~spoolpost.testing.LocalEndpoint`: the listening server,
the request handler (body framing, gunzip, JSON, the answer on the wire) and the
loopback check.

Each request is read fully, recorded and answered by asking the endpoint it serves
(:class:`Endpoint`).
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any, Protocol, cast

from spoolpost.testing.responses import RecordedRequest, Response

logger = logging.getLogger("spoolpost.testing")


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


class Run:
    """State of one start()..stop() period, so a restart never sees a stale stop flag."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.stopping = False
        self.connections: set[socket.socket] = set()
        self.threads: set[threading.Thread] = set()
        self.hung: set[threading.Event] = set()


class Endpoint(Protocol):
    """What a request thread asks of the endpoint it serves (a :class:`LocalEndpoint`)."""

    _lock: threading.Lock

    def _record(self, record: RecordedRequest) -> Any:
        """Keep ``record``; returns the token :meth:`_answered` takes."""

    def _choose(self, record: RecordedRequest) -> Response:
        """The answer to ``record``."""

    def _answered(self, slot: Any, response: Response) -> None:
        """Note that the request recorded as ``slot`` was answered ``response``."""

    def _hang(self, run: Run) -> None:
        """Block until released or stopped."""


class Server(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer bound at construction, listening only once activated."""

    daemon_threads = True
    block_on_close = False  # the endpoint tracks and joins request threads itself

    def __init__(self, endpoint: Endpoint, address: tuple[str, int]) -> None:
        self.endpoint = endpoint
        self.run = Run()
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


class Server6(Server):
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
        server = cast(Server, self.server)
        run = server.run
        with server.endpoint._lock:
            if run.stopping:
                # Accepted just as stop() began: refuse it like the closed listener would.
                shutdown_connection(self.connection)
            else:
                run.connections.add(self.connection)
                run.threads.add(threading.current_thread())

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            server = cast(Server, self.server)
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
        server = cast(Server, self.server)
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
        endpoint._answered(slot, response)
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


def shutdown_connection(connection: socket.socket) -> None:
    """Shut ``connection`` down both ways, waking a thread blocked on it; never raises."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


def _zstd_decompress(data: bytes) -> bytes:
    import zstandard  # optional: only a zstd body needs it

    # A frame without its content size (streamed) needs a bound to decompress.
    return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))


_DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "x-gzip": gzip.decompress,
    "deflate": zlib.decompress,
    "zstd": _zstd_decompress,
}


def _decode_body(raw_body: bytes, content_encoding: str) -> bytes:
    """``raw_body`` decoded per ``content_encoding`` (gzip, deflate as zlib, zstd);
    as is for none or an unknown encoding, or when it does not decode (logged)."""
    encoding = content_encoding.strip().lower()
    decode = _DECODERS.get(encoding)
    if decode is None:
        return raw_body
    try:
        return decode(raw_body)
    except ImportError:
        logger.warning("request body is zstd but zstandard is not installed; kept as is")
    except Exception:  # each library has its own error type
        logger.warning("request body claims %s but does not decompress; kept as is", encoding)
    return raw_body


def _decode_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:  # also UnicodeDecodeError
        return None


def loopback_host(host: str) -> str:
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
