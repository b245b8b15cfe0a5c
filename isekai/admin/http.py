"""The admin API's HTTP vocabulary: the JSON envelope, API errors and request bodies.

Every response body is the envelope ``{"success": bool, "message"?, "data"?, "error"?}``;
a failure's ``error`` is an object with at least a ``code`` (see docs/admin-api.md).
Handlers raise `ApiError`; the error middleware in ``app.py`` turns it into the envelope.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web

__all__ = [
    "JSON_TYPES",
    "MERGE_PATCH_TYPE",
    "ApiError",
    "fail",
    "iso_time",
    "ok",
    "read_json",
]

JSON_TYPE = "application/json"
MERGE_PATCH_TYPE = "application/merge-patch+json"
JSON_TYPES = (JSON_TYPE,)
PATCH_TYPES = (MERGE_PATCH_TYPE, JSON_TYPE)
MAX_JSON_DEPTH = 64


class ApiError(Exception):
    """An error answered with ``status`` and the envelope; ``details`` go into ``error``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.details = details


def _default(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(body: Any) -> str:
    return json.dumps(body, default=_default, ensure_ascii=False, allow_nan=False)


def ok(
    data: Any = None,
    *,
    status: int = 200,
    message: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A success envelope."""
    body: dict[str, Any] = {"success": True}
    if message is not None:
        body["message"] = message
    if data is not None:
        body["data"] = data
    return web.Response(text=dumps(body), status=status, content_type=JSON_TYPE, headers=headers)


def fail(
    status: int,
    code: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    **details: Any,
) -> web.Response:
    """A failure envelope: ``error`` holds ``code`` and ``details``."""
    body = {"success": False, "message": message, "error": {"code": code, **details}}
    return web.Response(text=dumps(body), status=status, content_type=JSON_TYPE, headers=headers)


def iso_time(seconds: float | None) -> str | None:
    """Unix seconds as an ISO 8601 UTC timestamp (``2026-01-02T03:04:05.678Z``)."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range: numbers must be finite")
    return number


def _check_shape(value: Any, limit: int) -> None:
    # nesting no deeper than limit, no NUL in any key or string; iterative (no recursion limit)
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise ValueError(f"nested more than {limit} levels deep")
        if isinstance(item, dict):
            stack.extend((key, depth) for key in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str) and "\0" in item:
            raise ValueError("strings must not contain NUL (\\u0000)")


def parse_json(text: str) -> Any:
    """Strict JSON: finite numbers, no duplicate keys, no NUL in strings, bounded nesting;
    ``ValueError`` otherwise."""
    try:
        value = json.loads(
            text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_finite
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    _check_shape(value, MAX_JSON_DEPTH)
    return value


async def read_json(request: web.Request, types: tuple[str, ...] = JSON_TYPES) -> Any:
    """The request's JSON body: 415 for another content type, 400 when empty or malformed."""
    if request.content_type not in types:
        given = request.headers.get("Content-Type") or "none"
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the body must be JSON (Content-Type: {' or '.join(types)}), got {given}",
            headers={"Accept-Patch": MERGE_PATCH_TYPE} if MERGE_PATCH_TYPE in types else None,
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, "payload_too_large", f"the body is too large: {exc.text}") from None
    if not raw.strip():
        raise ApiError(400, "bad_request", "the request body is empty: send a JSON document")
    try:
        text = raw.decode(request.charset or "utf-8")
    except (UnicodeDecodeError, LookupError):
        raise ApiError(400, "bad_request", "the body is not valid UTF-8") from None
    try:
        return parse_json(text)
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"malformed JSON: {exc}") from None


async def listen(runner: web.AppRunner, host: str, port: int) -> tuple[int, str]:
    """Set up ``runner`` and serve it on ``host``:``port`` (0: any free port); the bound port
    and the address as a URL prefix (``http://[::1]:9080``)."""
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    addresses = runner.addresses
    if addresses:
        port = addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    return port, f"http://{shown}:{port}"
