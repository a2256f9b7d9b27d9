"""`/metrics`, `/healthz` and `/readyz` on one port, and the Cassandra probe behind `/readyz`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from consumer.observe.metrics import Metrics


class StoreProbe(threading.Thread):
    """Asks Cassandra whether it answers, every `interval_s`, in a thread of its own: a hung node blocks
    this probe for its request timeout, and nothing else."""

    def __init__(self, metrics: Metrics, ping: Callable[[], object], interval_s: float) -> None:
        super().__init__(name="store-probe", daemon=True)
        self.metrics = metrics
        self._ping = ping
        self.interval_s = interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.probe()
            self._stop_event.wait(self.interval_s)

    def probe(self) -> None:
        try:
            self._ping()
            self.metrics.store_answers = True
        except Exception:  # noqa: BLE001 - any failure means "Cassandra does not answer"
            self.metrics.store_answers = False

    def stop(self, timeout_s: float = 3.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout_s)


class HealthServer:
    """`/metrics`, `/healthz` and `/readyz` on one port."""

    def __init__(self, metrics: Metrics, host: str, port: int, stuck_after_s: float) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    outer.metrics.refresh()
                    self._send(200, generate_latest(outer.metrics.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = outer.metrics.healthy(stuck_after_s)
                    self._send(200 if ok else 503, b"ok\n" if ok else b"loop stuck\n")
                elif path == "/readyz":
                    ok = outer.metrics.ready()
                    why = b"ready\n" if ok else (b"no assignment yet\n" if not outer.metrics.assignment_received
                                                 else b"cassandra does not answer\n")
                    self._send(200 if ok else 503, why)
                else:
                    self._send(404, b"not found\n")

            def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.metrics = metrics
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever, which never ran if not started
            self.server.shutdown()
        self.server.server_close()
