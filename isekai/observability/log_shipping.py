"""Access-log sinks beyond the file: Elasticsearch (bulk API) and Logstash (TCP, JSON lines).

The access-log writer thread hands each sink the JSON lines it wrote (`offer`, which never
blocks: past ``capacity`` lines are dropped and counted). Each sink has a thread of its own, so
a slow or dead collector delays neither the file nor the loop: it sends batches of up to
``batch_size`` lines, retries a failed batch ``retries`` times with a growing pause, then
drops it (counted in ``failed``), and logs failures at most once per ``error_log_interval``.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.request
from typing import Any

from isekai.config.units import parse_address

__all__ = ["Background", "ElasticsearchSink", "LogstashSink", "Shipper"]

log = logging.getLogger("isekai.access_log")

SEND_TIMEOUT = 5.0  # seconds one send may take
RETRY_PAUSE = 0.2  # seconds before the first retry; doubled for each next one


class Background:
    """A thread of its own, woken through ``_cond``; `_stop_thread` asks it to finish (it sees
    ``_stopping``) and waits for it."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._stopping = False
        self._thread: threading.Thread | None = None

    def _start_thread(self, name: str) -> None:
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _stop_thread(self, timeout: float) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        raise NotImplementedError


class Shipper(Background):
    """A bounded queue of lines and the thread that sends them with `send` (subclasses)."""

    name = "sink"

    def __init__(
        self,
        *,
        capacity: int = 10000,
        batch_size: int = 500,
        retries: int = 2,
        error_log_interval: float = 30.0,
    ) -> None:
        super().__init__()
        self.capacity = capacity
        self.batch_size = batch_size
        self.retries = retries
        self.error_log_interval = error_log_interval
        self.sent = 0
        self.failed = 0  # lines given up on after the retries
        self.dropped = 0  # lines refused because the queue was full
        self._lines: list[bytes] = []
        self._last_error_log = float("-inf")

    def offer(self, lines: list[bytes]) -> None:
        with self._cond:
            room = self.capacity - len(self._lines)
            if len(lines) > room:
                self.dropped += len(lines) - max(room, 0)
                lines = lines[: max(room, 0)]
            if lines:
                self._lines.extend(lines)
                self._cond.notify()

    def start(self) -> None:
        self._start_thread(f"isekai-{self.name}")

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (within ``timeout``) and end the thread."""
        self._stop_thread(timeout)
        self.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._lines and not self._stopping:
                    self._cond.wait()
                if not self._lines:
                    return
                batch = self._lines[: self.batch_size]
                del self._lines[: self.batch_size]
            self._deliver(batch)

    def _deliver(self, batch: list[bytes]) -> None:
        pause = RETRY_PAUSE
        for attempt in range(self.retries + 1):
            try:
                self.send(batch)
            except Exception as exc:
                self.close()
                if attempt == self.retries or self._stopping:
                    self.failed += len(batch)
                    self._log_error(len(batch), exc)
                    return
                time.sleep(pause)
                pause *= 2
            else:
                self.sent += len(batch)
                return

    def _log_error(self, count: int, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= self.error_log_interval:
            self._last_error_log = now
            log.warning(
                "access log: %s lost %d lines (%s); %d lost so far",
                self.name,
                count,
                exc,
                self.failed,
            )

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped}

    def send(self, batch: list[bytes]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Forget any connection (the next send opens one)."""


class ElasticsearchSink(Shipper):
    """``POST {url}/_bulk``: an ``index`` action and the line, per line (NDJSON)."""

    name = "elasticsearch"

    def __init__(self, url: str, index: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.url = url.rstrip("/") + "/_bulk"
        self.action = json.dumps({"index": {"_index": index}}).encode() + b"\n"

    def send(self, batch: list[bytes]) -> None:
        body = b"".join(self.action + line for line in batch)
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/x-ndjson"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=SEND_TIMEOUT) as resp:
            answer = resp.read()
        try:
            result = json.loads(answer)
        except ValueError:
            return  # accepted (2xx); nothing more to learn
        if isinstance(result, dict) and result.get("errors"):
            items = result.get("items") or []
            bad = sum(1 for item in items if "error" in next(iter(item.values()), {}))
            raise RuntimeError(f"Elasticsearch refused {bad or 'some'} of {len(batch)} documents")


class LogstashSink(Shipper):
    """Logstash's ``tcp`` input with the ``json_lines`` codec: the lines as they are."""

    name = "logstash"

    def __init__(self, address: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.address = parse_address(address)
        self._sock: socket.socket | None = None

    def send(self, batch: list[bytes]) -> None:
        if self._sock is None:
            self._sock = socket.create_connection(self.address, timeout=SEND_TIMEOUT)
        self._sock.sendall(b"".join(batch))

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
