"""The admin audit trail: one record per admin write, kept in the store, served by
``GET /api/audit``.

A handler that changes something calls ``await audit.record(request, action, kind, name,
before, after)`` once the change is stored (or builds the record with `entry` and hands it to
a store method that writes it in the change's own transaction, as the users endpoints do).
The record names the actor (the authenticated user; None when auth is off), the client
address (the connection's peer) and the request id; ``before``/``after`` are the item's
documents with every secret replaced by ``"[redacted]"`` (`redact`). Each record is also
logged: ``admin change by alice: route 'api' replaced``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from isekai.admin.context import CTX, REQUEST_ID, USER, AdminContext
from isekai.admin.http import ApiError, iso_time, ok
from isekai.admin.logs import parse_time
from isekai.admin.schemas import DEFAULT_LOG_LIMIT, MAX_LOG_LIMIT
from isekai.store import AuditQuery, AuditRecord, StoreError

__all__ = [
    "FILTER_PATTERN",
    "PARAMETERS",
    "REDACTED",
    "actor",
    "entry",
    "query_audit",
    "record",
    "redact",
]

log = logging.getLogger("isekai.admin")

REDACTED = "[redacted]"
PARAMETERS = ("actor", "kind", "name", "since", "limit", "offset")
FILTER_PATTERN = r"^[^\x00-\x1f\x7f]{1,256}$"  # actor, kind and name filters
_FILTER = re.compile(FILTER_PATTERN)
# keys whose values are secrets wherever they appear in a document
_SECRET_NAMES = frozenset(
    {
        "secret",
        "password",
        "passwd",
        "password_hash",
        "hash",
        "key",
        "token",
        "pepper",
        "private_key",
        "client_secret",
        "api_key",
        "jwt_secret",
        "credentials",
    }
)
_SECRET_SUFFIXES = ("_secret", "_password", "_key", "_token", "_hash", "_pepper")


def _is_secret(key: str) -> bool:
    lowered = key.lower().replace("-", "_")
    return lowered in _SECRET_NAMES or lowered.endswith(_SECRET_SUFFIXES)


def redact(value: Any) -> Any:
    """``value`` (a JSON-like document) with the value of every secret-named key (``secret``,
    ``password``, ``key``, ``hash``, ``token``, ``*_secret``, ``*_key``...) replaced by
    ``"[redacted]"``, at any depth; nothing else changes."""
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and _is_secret(k) and v is not None else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def actor(request: web.Request) -> str | None:
    """The authenticated user making ``request`` (None when auth is off)."""
    user = request.get(USER)
    return None if user is None else user.get("username")


def entry(
    request: web.Request,
    action: str,
    kind: str,
    name: str | None,
    before: Any = None,
    after: Any = None,
    *,
    who: str | None = None,
) -> AuditRecord:
    """The audit record of a change made by ``request`` (``who`` overrides the actor: a
    login names the user logging in). ``before``/``after`` are redacted here."""
    return AuditRecord(
        time=time.time(),
        actor=who if who is not None else actor(request),
        action=action,
        kind=kind,
        name=name,
        before=redact(before),
        after=redact(after),
        client_ip=request.remote,
        request_id=request.get(REQUEST_ID),
    )


def announce(record: AuditRecord) -> None:
    """Log ``record`` as one line naming its actor."""
    log.info(
        "admin change by %s: %s %r %s (from %s)",
        record.actor or _anonymous(record),
        record.kind,
        record.name,
        record.action,
        record.client_ip or "-",
    )


def _anonymous(record: AuditRecord) -> str:
    # a failed login has no authenticated actor whether or not auth is on
    if record.action.startswith("login"):
        return "an unauthenticated client"
    return "anonymous (auth is off)"


async def record(
    request: web.Request,
    action: str,
    kind: str,
    name: str | None,
    before: Any = None,
    after: Any = None,
) -> None:
    """Store and log the audit record of a change already made.

    A store failure here is logged (the change itself is done and stays done) rather than
    answered, so a client never retries a change that succeeded.
    """
    ctx: AdminContext = request.app[CTX]
    item = entry(request, action, kind, name, before, after)
    announce(item)
    try:
        await ctx.store.record_audit(item)
    except StoreError as exc:
        log.error("the audit record of %s %r %s was lost: %s", kind, name, action, exc)


# -- GET /api/audit ----------------------------------------------------------------------------


def _bad(name: str, message: str) -> ApiError:
    return ApiError(400, "bad_request", f"query parameter {name}: {message}", path=name)


def _integer(name: str, text: str, low: int, high: int | None = None) -> int:
    if not re.fullmatch(r"[+-]?\d{1,12}", text.strip()):
        raise _bad(name, f"expected an integer, got {text!r}")
    value = int(text)
    if value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise _bad(name, f"must be {span}, got {value}")
    return value


def _query(request: web.Request) -> AuditQuery:
    params = request.query
    for name in params:
        if name not in PARAMETERS:
            raise _bad(name, f"unknown parameter (known: {', '.join(PARAMETERS)})")
        if len(params.getall(name)) > 1:
            raise _bad(name, "given more than once")
    values: dict[str, Any] = {}
    for name in ("actor", "kind", "name"):
        if name in params:
            text = params[name]
            if not _FILTER.fullmatch(text):
                raise _bad(name, "expected 1 to 256 characters, no control characters")
            values[name] = text
    if "since" in params:
        try:
            values["since"] = parse_time(params["since"])
        except ValueError as exc:
            raise _bad("since", str(exc)) from None
    values["limit"] = (
        _integer("limit", params["limit"], 1, MAX_LOG_LIMIT)
        if "limit" in params
        else DEFAULT_LOG_LIMIT
    )
    values["offset"] = _integer("offset", params["offset"], 0) if "offset" in params else 0
    return AuditQuery(**values)


def _view(item: AuditRecord) -> dict[str, Any]:
    return {
        "id": item.id,
        "time": iso_time(item.time),
        "actor": item.actor,
        "action": item.action,
        "kind": item.kind,
        "name": item.name,
        "before": item.before,
        "after": item.after,
        "client_ip": item.client_ip,
        "request_id": item.request_id,
    }


async def query_audit(request: web.Request) -> web.Response:
    """``GET /api/audit``: one page of audit records, newest first."""
    ctx: AdminContext = request.app[CTX]
    query = _query(request)
    items, total = await ctx.store.query_audit(query)
    end = query.offset + len(items)
    return ok(
        {
            "items": [_view(item) for item in items],
            "total": total,
            "limit": query.limit,
            "offset": query.offset,
            "next_offset": end if end < total else None,
        }
    )
