""":class:`LocalEndpoint`: start and stop, the script of answers, what was recorded,
and waiting for it."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

from spoolpost.testing.responses import (
    V1_PATH,
    Handler,
    RecordedRequest,
    Response,
    Verdict,
    v1_answer,
)
from spoolpost.testing.server import Run, Server, Server6, loopback_host, shutdown_connection

logger = logging.getLogger("spoolpost.testing")

_JOIN_TIMEOUT = 5.0
"""Seconds stop() waits in total for request threads to finish before giving up on them."""


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


class LocalEndpoint:
    """An HTTP/1.1 server on a loopback address that records requests and injects faults.

    ``host`` must be a loopback address (127.0.0.0/8, ``::1``, ``localhost``), else
    ``ValueError``. ``port`` 0 picks a free port. The port is bound (reserved, not
    listening) at construction, so :attr:`url` is known and refuses connections until
    :meth:`start`. Call :meth:`stop` (or use ``with``) to release the port.

    Answers come, in order, from the script (:meth:`respond`), then the handler
    (:meth:`set_handler`), then :attr:`default`. A handler that raises is logged and
    answered with 500. A request to PostHog's v1 path (``/i/v1/analytics/events``)
    that gets a 2xx :attr:`default` is answered with a per-event ``results`` map
    instead: each uuid's verdict scripted by :meth:`script_results`, else ``ok``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = loopback_host(host)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._life_lock = threading.Lock()
        self._slots: list[_Slot] = []
        self._delivered: list[str] = []
        self._delivered_set: set[str] = set()
        self._generation = 0
        self._script: deque[_Scripted] = deque()
        self._handler: Handler | None = None
        self._verdicts: dict[str, deque[Verdict]] = {}
        self.default: Response = Response()
        """The answer when no scripted response is queued and the handler gives None."""
        self._running: Server | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._server: Server | None = self._make_server(port)
        self._port = int(self._server.server_address[1])

    def _make_server(self, port: int) -> Server:
        cls = Server6 if ":" in self._host else Server
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
                shutdown_connection(connection)
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

    def script_results(self, verdicts: dict[str, Verdict]) -> None:
        """Script v1 per-event verdicts: each uuid's verdict (``"ok"``, ``"warning"``,
        ``"retry"``, ``"limited"``, ``("drop", "details")``, any other string, or None
        to leave the uuid out of the map) answers the next v1 request carrying it,
        once; calls queue further verdicts for the same uuid. Unscripted: ``ok``."""
        with self._lock:
            for uuid, verdict in verdicts.items():
                self._verdicts.setdefault(uuid, deque()).append(verdict)

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
        default = self.default
        if record.path.split("?", 1)[0] == V1_PATH and 200 <= default.status < 300:
            with self._lock:
                verdicts = {
                    u: self._verdicts[u].popleft() for u in record.uuids if self._verdicts.get(u)
                }
            return v1_answer(record, verdicts)
        return default

    def _answered(self, slot: _Slot, response: Response) -> None:
        status = response.status
        record = dataclasses.replace(slot.record, status=status)
        with self._changed:
            slot.record = record
            if 200 <= status < 300 and slot.generation == self._generation:
                uuids = record.uuids if response.delivered is None else list(response.delivered)
                if uuids:
                    self._delivered.extend(uuids)
                    self._delivered_set.update(uuids)
                    self._changed.notify_all()

    def _hang(self, run: Run) -> None:
        release = threading.Event()
        with self._lock:
            if run.stopping:
                return
            run.hung.add(release)
        release.wait()
