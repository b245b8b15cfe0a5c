"""An OTLP/HTTP sink for the tracing scenarios: accepts `POST /v1/traces` (any body, read and
dropped) and answers 200 with an empty protobuf body (an ExportTraceServiceResponse with no
fields). `GET` answers 200 too, for the harness's readiness probe. On SIGTERM it prints how many
exports and bytes it took, and exits.

    python bench/harness/otlp_sink.py PORT

Started by bench/run.py like the backend (a process of its own, on the load side's cores), so
the gateway's exporter does real HTTP round trips without a collector's own cost in the way.
"""

from __future__ import annotations

import http.server
import signal
import sys
import threading

SUMMARY = "otlp-sink: {posts} exports, {bytes} bytes, {other} other requests"


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the exporter reuses its connection
    counts = {"posts": 0, "bytes": 0, "other": 0}
    lock = threading.Lock()

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):  # noqa: N802 - http.server's name
        size = int(self.headers.get("Content-Length") or 0)
        while size > 0:
            chunk = self.rfile.read(min(size, 65536))
            if not chunk:
                return
            size -= len(chunk)
            with self.lock:
                self.counts["bytes"] += len(chunk)
        ok = self.path.split("?", 1)[0] == "/v1/traces"
        with self.lock:
            self.counts["posts" if ok else "other"] += 1
        self._answer(200 if ok else 404)

    def do_GET(self):  # noqa: N802
        with self.lock:
            self.counts["other"] += 1
        self._answer(200)

    def log_message(self, *args) -> None:
        pass


def main(argv: list[str]) -> int:
    port = int(argv[1]) if len(argv) > 1 else 4318
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink)
    server.daemon_threads = True

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"otlp-sink listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
    server.server_close()
    print(SUMMARY.format(**Sink.counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
