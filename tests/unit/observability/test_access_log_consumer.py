"""The access log's consumer field: a `_core` record's consumer as JSON (``""`` when none) and
as the combined format's user field."""

from __future__ import annotations

import dataclasses
import json

from isekai._core.protocol import RECORD_EXTRAS
from isekai.config.observability import AccessLog as AccessLogSettings
from isekai.observability.access_log import _Formatter
from isekai.store.base import LOG_KEYS


def record(consumer: str | None) -> tuple:
    """A record laid out as `_core` makes it (request-log columns, then the extras)."""
    row = {
        "ts": 1795683600.5,
        "route": "secure",
        "method": "GET",
        "path": "/secure/x",
        "status": 200,
        "upstream": "app",
        "latency_ms": 1.25,
        "bytes_in": 0,
        "bytes_out": 12,
        "client_ip": "10.0.0.7",
        "user_agent": "curl/8",
        "request_id": "rid-1",
        "consumer": consumer,
    }
    extras = (None, None, b"", None, b"h", "public", True)
    assert len(extras) == len(RECORD_EXTRAS)
    return tuple(row[key] for key in LOG_KEYS) + extras


def test_json_lines_carry_the_consumer_or_an_empty_string():
    formatter = _Formatter(AccessLogSettings(enabled=True))
    assert "consumer" in formatter.fields
    assert json.loads(formatter.line(record("acme")))["consumer"] == "acme"
    assert json.loads(formatter.line(record(None)))["consumer"] == ""


def test_combined_lines_carry_the_consumer_as_the_user():
    settings = dataclasses.replace(AccessLogSettings(enabled=True), format="combined")
    formatter = _Formatter(settings)
    assert formatter.line(record("acme")).startswith(b"10.0.0.7 - acme [")
    assert formatter.line(record(None)).startswith(b"10.0.0.7 - - [")
    odd = formatter.line(record('a "b" c'))  # never breaks the line's fields
    assert odd.split(b" [")[0] == rb"10.0.0.7 - a\x20\"b\"\x20c"
