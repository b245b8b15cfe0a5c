"""``GET /api/logs``: request logs from the store, filtered and paged, newest first."""

from __future__ import annotations

import datetime
import math
import re
from typing import Any

from aiohttp import web

from isekai.admin.context import CTX, AdminContext
from isekai.admin.http import ApiError, iso_time, ok
from isekai.admin.schemas import DEFAULT_LOG_LIMIT, MAX_LOG_LIMIT
from isekai.store import RequestLogQuery

__all__ = ["PARAMETERS", "parse_time", "query_logs"]

PARAMETERS = ("route", "consumer", "status", "status_class", "since", "until", "limit", "offset")
_STATUS_CLASS = re.compile(r"([1-5])(?:xx)?", re.I)
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _bad(name: str, message: str) -> ApiError:
    return ApiError(400, "bad_request", f"query parameter {name}: {message}", path=name)


_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?)?"
    r"([Zz]|[+-]\d{2}:?\d{2})?"
)


def parse_time(value: str) -> float:
    """ISO 8601 / RFC 3339 (``2026-01-02T03:04:05Z``; no offset = UTC) or unix seconds.

    Returns unix seconds; a leap second (``:60``) counts as ``:59``. ``ValueError`` otherwise.
    """
    text = value.strip()
    if _NUMBER.fullmatch(text):
        seconds = float(text)
        if not math.isfinite(seconds):
            raise ValueError(f"{value!r} is out of range")
        return seconds
    found = _DATE_TIME.fullmatch(text)
    if found is None:
        raise ValueError(
            f"{value!r} is not a time: use ISO 8601 like 2026-01-02T03:04:05Z or unix seconds"
        )
    year, month, day, hour, minute, second, fraction, offset = found.groups()
    zone = datetime.UTC
    if offset and offset not in "Zz":
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        delta = datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        if delta >= datetime.timedelta(days=1):
            raise ValueError(f"{value!r}: bad UTC offset")
        zone = datetime.timezone(sign * delta)
    shift = 0.0
    if int(year) == 0:  # RFC 3339 allows year 0; Python's datetime starts at year 1
        year, shift = "400", -146_097 * 86_400.0  # 400 Gregorian years earlier
    try:
        moment = datetime.datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            min(int(second or 0), 59),
            tzinfo=zone,
        )
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid time: {exc}") from None
    return moment.timestamp() + shift + (float(fraction) if fraction else 0.0)


def _integer(name: str, text: str, low: int, high: int | None = None) -> int:
    if not re.fullmatch(r"[+-]?\d{1,12}", text.strip()):
        raise _bad(name, f"expected an integer, got {text!r}")
    value = int(text)
    if value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise _bad(name, f"must be {span}, got {value}")
    return value


def _query(request: web.Request) -> RequestLogQuery:
    params = request.query
    for name in params:
        if name not in PARAMETERS:
            raise _bad(name, f"unknown parameter (known: {', '.join(PARAMETERS)})")
        if len(params.getall(name)) > 1:
            raise _bad(name, "given more than once")
    values: dict[str, Any] = {}
    if "route" in params:
        route = params["route"]
        if not route or len(route) > 256:
            raise _bad("route", "expected a route name")
        values["route"] = route
    if "consumer" in params:  # empty: requests no consumer was resolved for
        consumer = params["consumer"]
        if len(consumer) > 128:
            raise _bad("consumer", "expected a consumer name (at most 128 characters)")
        values["consumer"] = consumer
    if "status" in params:
        values["status"] = _integer("status", params["status"], 100, 599)
    if "status_class" in params:
        found = _STATUS_CLASS.fullmatch(params["status_class"].strip())
        if found is None:
            raise _bad("status_class", f"expected 1-5 or 1xx-5xx, got {params['status_class']!r}")
        values["status_class"] = int(found.group(1))
    for name in ("since", "until"):
        if name in params:
            try:
                values[name] = parse_time(params[name])
            except ValueError as exc:
                raise _bad(name, str(exc)) from None
    values["limit"] = (
        _integer("limit", params["limit"], 1, MAX_LOG_LIMIT)
        if "limit" in params
        else DEFAULT_LOG_LIMIT
    )
    values["offset"] = _integer("offset", params["offset"], 0) if "offset" in params else 0
    return RequestLogQuery(**values)


async def query_logs(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    query = _query(request)
    rows, total = await ctx.store.query_request_logs(query)
    items = []
    for row in rows:
        item = dict(row)
        ts = item.get("ts")
        if isinstance(ts, (int, float)):
            item["time"] = iso_time(ts)
        items.append(item)
    end = query.offset + len(items)
    return ok(
        {
            "items": items,
            "total": total,
            "limit": query.limit,
            "offset": query.offset,
            "next_offset": end if end < total else None,
        }
    )
