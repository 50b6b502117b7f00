"""PostHog SDK compliance harness adapter for spoolpost's drop-in :class:`~spoolpost.Posthog`.

Serves the adapter contract of ``posthog-sdk-test-harness`` (``CONTRACT.yaml``:
``/health``, ``/init``, ``/capture``, ``/capture_ai``, ``/flush``, ``/state``,
``/reset``) on 127.0.0.1. Each ``/init`` shuts the previous client down and makes a
new ``Posthog`` on a fresh spool in a temporary folder (removed at exit).

The harness tells an adapter nothing of the capture protocol a suite expects, so one
adapter serves two, by URL prefix: the root speaks v0 (``/batch/``; declares
``capture_v0``) and ``/v1`` speaks v1 (``/i/v1/analytics/events``; declares
``capture_v1``), each with the one ``encoding_*`` that ``enable_compression`` turns
on (v0: gzip; v1: ``--compression``, default gzip). Only the root declares
``capture_ai_v0``: that suite also asserts that ``capture`` posts to ``/batch``.

    python tools/harness_adapter.py --port 0 --port-file /tmp/port
    ../shared/tools/posthog-harness http://127.0.0.1:PORT capture capture_ai
    ../shared/tools/posthog-harness http://127.0.0.1:PORT/v1 capture_v1
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from spoolpost import Posthog, __version__
from spoolpost.delivery.wire import OPTION_PROPERTIES

#: The harness's per-event ``options`` → the properties posthog-python reads them from.
OPTION_TO_PROPERTY = {option: prop for prop, option, _ in OPTION_PROPERTIES}

log = logging.getLogger("spoolpost.harness")

#: URL prefix → capture mode.
MODES = {"": "v0", "/v1": "v1"}


class Adapter:
    """One ``Posthog`` at a time under capture ``mode`` (``enable_compression``:
    ``compression``), and the counts ``/state`` reports."""

    def __init__(self, root: Path, mode: str = "v0", compression: str = "gzip") -> None:
        self.root = root
        self.mode = mode
        self.compression = compression if mode == "v1" else "gzip"
        self.lock = threading.Lock()
        self.client: Posthog | None = None
        self.serial = 0
        self.captured = 0
        self.last_error: str | None = None

    def init(self, body: dict[str, Any]) -> dict[str, Any]:
        self.reset()
        options: dict[str, Any] = {}
        if body.get("flush_at") is not None:
            options["flush_at"] = int(body["flush_at"])
        if body.get("flush_interval_ms") is not None:
            options["flush_interval"] = int(body["flush_interval_ms"]) / 1000
        if body.get("max_retries") is not None:
            options["max_retries"] = int(body["max_retries"])
        compress = bool(body.get("enable_compression"))
        options["capture_mode"] = self.mode
        if self.mode == "v1":  # explicit, so POSTHOG_CAPTURE_COMPRESSION cannot interfere
            options["capture_compression"] = self.compression if compress else "none"
        else:
            options["gzip"] = compress
        for name in ("disable_geoip", "historical_migration"):
            if body.get(name) is not None:
                options[name] = bool(body[name])
        with self.lock:
            self.serial += 1
            spool = self.root / f"{self.serial}" / "events.spool"
            self.client = Posthog(
                body["api_key"], host=body["host"], on_error=self._on_error, spool=str(spool),
                **options,
            )  # fmt: skip
        return {"success": True}

    def _on_error(self, error: Exception, events: list[dict[str, Any]]) -> None:
        self.last_error = str(error)

    def capture(self, body: dict[str, Any]) -> dict[str, Any]:
        client = self._client()
        properties = dict(body.get("properties") or {})
        for name, value in (body.get("options") or {}).items():
            if name in OPTION_TO_PROPERTY:  # v1 lifts them back into `options`
                properties[OPTION_TO_PROPERTY[name]] = value
        uuid = client.capture(
            body["event"],
            distinct_id=body.get("distinct_id"),
            properties=properties,
            timestamp=body.get("timestamp"),
            uuid=body.get("uuid"),
        )
        with self.lock:
            self.captured += uuid is not None
        return {"success": uuid is not None, "uuid": uuid}

    def capabilities(self) -> list[str]:
        # capture_ai's suite also asserts that capture() posts to /batch: v0 only.
        if self.mode == "v1":
            return ["capture_v1", f"encoding_{self.compression}"]
        return ["capture_v0", "capture_ai_v0", "encoding_gzip"]

    def capture_ai(self, body: dict[str, Any]) -> dict[str, Any]:
        client = self._client()
        uuid = client.capture_ai(
            body["event"],
            distinct_id=body.get("distinct_id"),
            properties=body.get("properties"),
            timestamp=body.get("timestamp"),
            uuid=body.get("uuid"),
        )
        with self.lock:
            self.captured += uuid is not None
        return {"success": uuid is not None, "uuid": uuid}

    def flush(self) -> dict[str, Any]:
        client = self._client()
        before = self._delivered(client)
        client.flush(timeout_seconds=30)
        return {"success": True, "events_flushed": self._delivered(client) - before}

    def state(self) -> dict[str, Any]:
        client = self.client
        pending = 0
        sent = 0
        if client is not None and client.client is not None:
            try:
                stats = client.client.spool.stats(time.time())
                pending = stats.counts.get("pending", 0) + stats.counts.get("leased", 0)
            except Exception:
                pending = 0
            sent = self._delivered(client)
        return {
            "pending_events": pending,
            "total_events_captured": self.captured,
            "total_events_sent": sent,
            "total_retries": 0,
            "last_error": self.last_error,
            "requests_made": [],
        }

    def reset(self) -> dict[str, Any]:
        with self.lock:
            client, self.client = self.client, None
            self.captured = 0
            self.last_error = None
        if client is not None:
            client.shutdown()
        return {"success": True}

    def _client(self) -> Posthog:
        client = self.client
        if client is None:
            raise LookupError("call /init first")
        return client

    @staticmethod
    def _delivered(client: Posthog) -> int:
        inner = client.client
        if inner is None:
            return 0
        try:
            return inner.spool.counters().get("delivered", 0)
        except Exception:
            return 0


def make_handler(adapters: dict[str, Adapter]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _route(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            prefix = "/" + path.split("/")[1] if path.count("/") > 1 else ""
            adapter = adapters.get(prefix)
            if adapter is None:
                self._reply(404, {"success": False, "error": f"no adapter at {prefix}"})
                return
            path = path[len(prefix) :]
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            routes = {
                ("GET", "/health"): lambda: {
                    "sdk_name": "spoolpost",
                    "sdk_version": __version__,
                    "adapter_version": "1.0.0",
                    "supports_parallel": False,
                    "capabilities": adapter.capabilities(),
                },
                ("POST", "/init"): lambda: adapter.init(body),
                ("POST", "/capture"): lambda: adapter.capture(body),
                ("POST", "/capture_ai"): lambda: adapter.capture_ai(body),
                ("POST", "/flush"): adapter.flush,
                ("GET", "/state"): adapter.state,
                ("POST", "/reset"): adapter.reset,
            }
            route = routes.get((method, path))
            if route is None:
                self._reply(404, {"success": False, "error": f"no route {method} {path}"})
                return
            try:
                self._reply(200, route())
            except Exception as exc:
                log.exception("%s %s failed", method, path)
                self._reply(500, {"success": False, "error": f"{type(exc).__name__}: {exc}"})

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument(
        "--compression",
        choices=["gzip", "deflate", "zstd"],
        default="gzip",
        help="what enable_compression means under /v1 (declared as encoding_<name>)",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="spoolpost-harness-"))
    adapters = {
        prefix: Adapter(root / mode, mode, args.compression) for prefix, mode in MODES.items()
    }
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(adapters))
    server.daemon_threads = True
    port = server.server_address[1]
    if args.port_file:
        Path(args.port_file).write_text(f"{port}\n")
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        for adapter in adapters.values():
            adapter.reset()
        server.server_close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
