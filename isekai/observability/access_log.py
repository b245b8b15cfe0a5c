"""The access log: one line per sampled request, formatted and written by a thread of its own.

`_core` makes one record per finished request for both logs (`ServerState.take_request_log`);
the worker's feed hands each list of records to `AccessLog.offer` (on the loop, once per
hand-over, never per request). Records the access log does not take (``access`` false: the
route is off or was not sampled) ride along for the request log and are skipped here. The
writer thread turns the rest into JSON lines (the configured ``fields`` in order; ``request_id``
and ``trace_id`` always; ``consumer`` is ``""`` when no credential policy resolved one) or NCSA
combined lines (the consumer as the ``authuser``), and writes them to stdout or a file opened with
O_APPEND, in whole lines per ``write`` (several workers share one file). Header values of
``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie`` and the ``redact`` list
become ``"[redacted]"`` wherever they would appear. ``reopen()`` (SIGUSR1, after logrotate moved
the file) makes the thread open the path again.

The queue between the loop and the thread is bounded by ``queue_size`` lines: past it, lines are
dropped and counted (``dropped``, with the records `_core` could not buffer), requests never
wait. The optional Elasticsearch and Logstash sinks (`log_shipping`) get the JSON lines next.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from isekai._core.protocol import RECORD_EXTRAS
from isekai.config.observability import AccessLog as AccessLogSettings
from isekai.config.policies import PolicySpec
from isekai.config.schema import Config
from isekai.observability.log_shipping import (
    Background,
    ElasticsearchSink,
    LogstashSink,
    Shipper,
)
from isekai.store.base import LOG_KEYS

__all__ = ["ALWAYS_REDACTED", "REDACTED", "AccessLog", "credential_params", "header_names"]

log = logging.getLogger("isekai.access_log")

REDACTED = "[redacted]"
ALWAYS_REDACTED = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
ALWAYS_FIELDS = ("request_id", "trace_id")  # on every line, listed or not
WRITE_CHUNK = 64 * 1024  # bytes per write() at most, cut at line ends

# where each field is in a `_core` record (see RECORD_EXTRAS in isekai/_core/protocol.pyx)
_AT = {name: i for i, name in enumerate(LOG_KEYS + RECORD_EXTRAS)}
_AT["duration_ms"] = _AT["latency_ms"]
ACCESS = _AT["access"]
HEADERS = len(LOG_KEYS) + len(RECORD_EXTRAS)  # the configured headers' values start here
# fields whose value is a request header, so redacting that header hides them
_FIELD_HEADER = {"user_agent": "user-agent", "referer": "referer", "host": "host"}


def header_names(settings: AccessLogSettings) -> tuple[bytes, ...]:
    """The lower-case header names `_core` must copy into each record (`log_headers`)."""
    if "headers" not in settings.fields:
        return ()
    return tuple(name.lower().encode("latin-1") for name in settings.headers)


def _text(value: Any) -> Any:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def credential_params(config: Config) -> frozenset[str]:
    """The query parameters some policy of ``config`` reads a credential from (an
    ``api_key`` policy's ``query``, a bearer family's ``token.query``): their values are
    shown as ``[redacted]`` in the request target the access log writes."""
    specs = [*config.policies.values()]
    for policies in [route.policies for route in config.routes] + [
        listener.policies for listener in config.listeners
    ]:
        specs.extend(item for item in policies if isinstance(item, PolicySpec))
    names = set()
    for spec in specs:
        options = spec.options
        for holder in (options, getattr(options, "token", None)):
            name = getattr(holder, "query", None)
            if isinstance(name, str) and name:
                names.add(name)
    return frozenset(names)


def _param_name(raw: str) -> str:
    return urllib.parse.unquote_plus(raw)


def hide_params(query: str, names: frozenset[str]) -> str:
    """``query`` (without its "?") with the value of every parameter in ``names`` (compared
    percent-decoded, as the policies read them) replaced by ``[redacted]``."""
    if not names or not query:
        return query
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, eq, _ = part.partition("=")
        if eq and _param_name(name) in names:
            parts[i] = f"{name}={REDACTED}"
    return "&".join(parts)


class _Formatter:
    """Record -> line, as the settings say; built once."""

    def __init__(self, settings: AccessLogSettings) -> None:
        redacted = ALWAYS_REDACTED | {name.lower() for name in settings.redact}
        self.fields = tuple(settings.fields) + tuple(
            name for name in ALWAYS_FIELDS if name not in settings.fields
        )
        self.hidden = {f for f, header in _FIELD_HEADER.items() if header in redacted}
        names = settings.headers if "headers" in settings.fields else ()
        self.headers = tuple((name, name.lower() in redacted) for name in names)
        self.line = self.combined if settings.format == "combined" else self.json
        self.params: frozenset[str] = frozenset()  # `credential_params`, set by the worker

    def value(self, record: Sequence[Any], field: str) -> Any:
        if field in self.hidden:
            return REDACTED if record[_AT[field]] is not None else None
        if field == "ts":
            return _iso(record[0])
        if field == "duration_ms":
            return round(record[_AT[field]], 3)
        if field == "consumer":  # "" when no credential policy resolved one
            return record[_AT[field]] or ""
        if field == "query":  # `_core` keeps the "?"
            query = record[_AT[field]]
            return hide_params(_text(query[1:]), self.params) if query else None
        if field == "headers":
            return {
                name: (REDACTED if hide and value is not None else _text(value))
                for (name, hide), value in zip(self.headers, record[HEADERS:], strict=False)
            }
        return _text(record[_AT[field]])

    def json(self, record: Sequence[Any]) -> bytes:
        doc = {field: self.value(record, field) for field in self.fields}
        return json.dumps(doc, separators=(",", ":")).encode() + b"\n"

    def combined(self, record: Sequence[Any]) -> bytes:
        def quoted(field: str) -> str:
            value = self.value(record, field)
            return '"-"' if value is None else json.dumps(value)

        target = _text(record[_AT["path"]])
        query = record[_AT["query"]]
        if query:
            target += "?" + hide_params(_text(query[1:]), self.params)
        when = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(record[0]))
        size = record[_AT["bytes_out"]]
        request = json.dumps(f"{record[_AT['method']]} {target} HTTP/1.1")
        user = record[_AT["consumer"]]  # the consumer is the line's "authuser"
        user = json.dumps(user)[1:-1].replace(" ", "\\x20") if user else "-"
        return (
            f"{record[_AT['client_ip']] or '-'} - {user} [{when}] {request} "
            f"{record[_AT['status']]} "
            f"{size if size else '-'} {quoted('referer')} {quoted('user_agent')} "
            f"{quoted('request_id')} {quoted('trace_id')}\n"
        ).encode()


class AccessLog(Background):
    """The writer of one worker (or of the single process); see the module docstring."""

    def __init__(self, settings: AccessLogSettings) -> None:
        super().__init__()
        self.settings = settings
        self.path = settings.path
        self.capacity = settings.queue_size
        self.format = _Formatter(settings)
        self.written = 0
        self.dropped = 0  # lines the queue refused (`_core`'s own drops are counted apart)
        self.failed = 0  # lines a write() failed for
        self.sinks: list[Shipper] = []
        if settings.elasticsearch is not None:
            es = settings.elasticsearch
            self.sinks.append(ElasticsearchSink(es.url, es.index, capacity=settings.queue_size))
        if settings.logstash is not None:
            self.sinks.append(LogstashSink(settings.logstash, capacity=settings.queue_size))
        self._lists: list[list[tuple]] = []
        self._pending = 0
        self._reopen = False
        self._fd = -1
        self._last_error_log = float("-inf")

    # -- on the loop ---------------------------------------------------------------------

    def hide_credential_params(self, config: Config) -> None:
        """Redact, from now on, the query parameters ``config``'s policies read credentials
        from (`credential_params`); the worker calls it with every config it runs."""
        self.format.params = credential_params(config)

    def offer(self, records: list[tuple], count: int) -> None:
        """Queue the access-log share of ``records`` (``count`` of them have ``access`` set);
        past ``queue_size`` the rest are dropped and counted."""
        if not count:
            return
        with self._cond:
            room = self.capacity - self._pending if not self._stopping else 0
            if count > room:
                self.dropped += count - max(room, 0)
                records = _first_taken(records, max(room, 0))
                count = max(room, 0)
                if not count:
                    return
            self._lists.append(records)
            self._pending += count
            self._cond.notify()

    def reopen(self) -> None:
        """Open the file again before the next write (SIGUSR1, after log rotation)."""
        with self._cond:
            self._reopen = True
            self._cond.notify()

    def start(self) -> None:
        for sink in self.sinks:
            sink.start()
        self._open()
        self._start_thread("isekai-access-log")

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then end the thread and the sinks. Blocks (`asyncio.to_thread`
        it from a loop)."""
        self._stop_thread(timeout)
        for sink in self.sinks:
            sink.stop()
        self._close()

    def stats(self, core_dropped: int) -> dict[str, Any]:
        out: dict[str, Any] = {"written": self.written, "dropped": self.dropped + core_dropped}
        if self.sinks:
            out["sinks"] = {sink.name: sink.stats() for sink in self.sinks}
        return out

    # -- in the thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._lists and not self._stopping and not self._reopen:
                    self._cond.wait()
                lists, self._lists = self._lists, []
                self._pending = 0
                reopen, self._reopen = self._reopen, False
                stopping = self._stopping
            if reopen:
                self._close()
                self._open()
            if lists:
                self._write(lists)
            if stopping and not lists:
                return

    def _write(self, lists: list[list[tuple]]) -> None:
        line = self.format.line
        lines = [line(record) for records in lists for record in records if record[ACCESS]]
        if not lines:
            return
        if self._fd < 0:
            self._open()
        start = size = 0
        for i, item in enumerate(lines):  # whole lines per write(): no torn lines
            if size + len(item) > WRITE_CHUNK and i > start:
                self._write_lines(lines, start, i)
                start, size = i, 0
            size += len(item)
        self._write_lines(lines, start, len(lines))
        if self.sinks:
            if self.settings.format != "json":
                lines = [self.format.json(r) for records in lists for r in records if r[ACCESS]]
            for sink in self.sinks:
                sink.offer(lines)

    def _write_lines(self, lines: list[bytes], start: int, end: int) -> None:
        data = b"".join(lines[start:end])
        try:
            if self._fd < 0:
                raise OSError(f"{self.path} is not open")
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self.failed += end - start
            self._error("cannot write the access log %s: %s", self.path, exc)
            return
        self.written += end - start

    def _open(self) -> None:
        if self.path == "stdout":
            self._fd = sys.stdout.fileno() if sys.stdout is not None else 1
            return
        try:
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            self._fd = -1
            self._error("cannot open the access log %s: %s", self.path, exc)

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0 and self.path != "stdout":
            os.close(fd)

    def _error(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 30.0:
            self._last_error_log = now
            log.error(message, *args)


def _first_taken(records: list[tuple], keep: int) -> list[tuple]:
    """``records`` cut just before the access-log record number ``keep + 1``."""
    if keep <= 0:
        return []
    seen = 0
    for i, record in enumerate(records):
        if record[ACCESS]:
            seen += 1
            if seen > keep:
                return records[:i]
    return records
