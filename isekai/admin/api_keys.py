"""A consumer's API keys through the admin API: ``/api/consumers/{id}/keys`` and
``/api/consumers/{id}/usage``.

``POST .../keys`` makes a key (``isk_`` + 32 random bytes), answers it once (201, ``Cache-Control:
no-store``) and stores only its hash (``HMAC-SHA256(security.api_key_pepper, key)``), its first
8 characters (``prefix``) and its times, in the consumer's document (``keys``). With ``rotate``
the named old key's ``expires_at`` becomes now + ``grace`` (never later than it was), so both
work during the grace period. ``DELETE .../keys/{key_id}`` revokes a key. Each write is a
read-modify-write of the consumer item: read it, change its ``keys``, check the result as the
loader would, store it with ``if_version`` (retried on a version mismatch), then apply it to
every worker, like every other change (`isekai.admin.items`); the workers rebuild their key
index from the new consumers, so a revocation takes effect with that snapshot.

Keys of a consumer defined in the config file are read-only here (409): they are changed in
the file. Without ``security.api_key_pepper`` no key is made (409): the hashes would stop
matching once a pepper is set.

``GET .../usage`` sums the per-key request counts and last-use times that every worker's
``api_key`` policies keep (``extra["api_keys"]`` of the worker statistics), so the numbers
count requests since each worker started.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from isekai.admin import audit
from isekai.admin.context import CTX, AdminContext
from isekai.admin.http import ApiError, iso_time, ok, read_json
from isekai.admin.items import CONSUMER, _commit, _explain
from isekai.admin.schemas import COMPONENTS, NAME_PATTERN, first_error
from isekai.config import units
from isekai.config.api_key_policy import PREFIX_LENGTH, key_hash, make_key
from isekai.errors import ConfigError
from isekai.store import NotFound, VersionMismatch

__all__ = ["SCHEMAS", "create_key", "delete_key", "list_keys", "usage"]

log = logging.getLogger("isekai.admin")

KIND = "consumer"
MAX_KEYS = 100  # keys per consumer (the consumer document stays small)
DEFAULT_GRACE = 3600.0  # seconds the old key of a rotation stays valid, unless `grace` says
MAX_LIFETIME = 10 * 365 * 86400.0  # seconds: the furthest expiry accepted
WRITE_ATTEMPTS = 5  # read-modify-write tries before giving up on concurrent writers
GATHER_TIMEOUT = 3.0  # seconds the workers have to answer a usage request

_DURATION = {
    "oneOf": [
        {"type": "string", "minLength": 1, "maxLength": 32},
        {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_LIFETIME},
    ]
}
_TIME = {"type": ["string", "null"], "format": "date-time"}

SCHEMAS: dict[str, dict[str, Any]] = {
    "ApiKeyCreate": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 64},
            "expires_in": {**_DURATION, "description": "A duration (`30d`, `12h`) or seconds."},
            "expires_at": {
                "oneOf": [
                    {"type": "string", "format": "date-time", "minLength": 1, "maxLength": 64},
                    {"type": "number", "exclusiveMinimum": 0},
                ],
                "description": "An ISO 8601 time or unix seconds.",
            },
            "rotate": {
                "type": "string",
                "pattern": NAME_PATTERN,
                "maxLength": 128,
                "description": "The id of the key this one replaces.",
            },
            "grace": {
                **_DURATION,
                "description": "How long the rotated key stays valid (default 1h).",
            },
        },
        "examples": [{"id": "ci", "expires_in": "90d"}, {"rotate": "ci", "grace": "24h"}],
    },
    "ApiKey": {
        "type": "object",
        "required": ["id", "prefix", "created_at", "expires_at"],
        "properties": {
            "id": {"type": "string"},
            "key": {"type": "string", "description": "The key itself: only in the 201 answer."},
            "prefix": {"type": ["string", "null"]},
            "created_at": _TIME,
            "expires_at": _TIME,
            "expired": {"type": "boolean"},
            "source": {"type": "string", "enum": ["file", "api"]},
            "rotated": {"type": "object", "description": "The old key of a rotation, after it."},
        },
    },
    "ApiKeyUsage": {
        "type": "object",
        "required": ["consumer", "keys", "requests", "last_used_at"],
        "properties": {
            "consumer": {"type": "string"},
            "keys": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "requests", "last_used_at"],
                    "properties": {
                        "id": {"type": "string"},
                        "requests": {"type": "integer", "minimum": 0},
                        "last_used_at": _TIME,
                    },
                },
            },
            "requests": {"type": "integer", "minimum": 0},
            "last_used_at": _TIME,
            "workers_answered": {"type": "integer", "minimum": 0},
        },
    },
}
COMPONENTS.update(SCHEMAS)  # the request schemas the handlers check bodies with


# -- views ---------------------------------------------------------------------------------------


def _view(key: dict[str, Any], source: str, now: float) -> dict[str, Any]:
    expires_at = key.get("expires_at")
    return {
        "id": key["id"],
        "prefix": key.get("prefix"),
        "created_at": iso_time(key.get("created_at")),
        "expires_at": iso_time(expires_at),
        "expired": expires_at is not None and expires_at <= now,
        "source": source,
    }


def _file_consumer(ctx: AdminContext, name: str) -> Any | None:
    return next((c for c in ctx.config.consumers if c.name == name), None)


def _file_keys(consumer: Any) -> list[dict[str, Any]]:
    # YAML keys as views: never the key itself, its prefix only when one was given
    return [
        {"id": k.id, "prefix": k.prefix, "created_at": k.created_at, "expires_at": k.expires_at}
        for k in consumer.keys
    ]


def _read_only(name: str) -> ApiError:
    return ApiError(
        409,
        "read_only",
        f"consumer {name!r} is defined in the config file: its keys are changed there (a "
        '`key: "${ENV}"` entry under its `keys`) and take effect on reload',
        source="file",
    )


def _not_found(name: str) -> ApiError:
    return ApiError(404, "not_found", f"no consumer named {name!r}")


# -- request bodies ------------------------------------------------------------------------------


def _duration(body: dict[str, Any], field: str) -> float | None:
    if field not in body:
        return None
    try:
        seconds = units.parse_duration(body[field])
    except ValueError as exc:
        raise ApiError(422, "invalid", f"key.{field}: {exc}", path=f"key.{field}") from None
    if not 0 < seconds <= MAX_LIFETIME:
        raise ApiError(
            422,
            "invalid",
            f"key.{field}: must be more than 0 and at most 10 years, got {body[field]!r}",
            path=f"key.{field}",
        )
    return seconds


def _moment(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("needs a time zone (e.g. Z or +02:00)")
    return moment.timestamp()


def _expiry(body: dict[str, Any], now: float) -> float | None:
    if "expires_in" in body and "expires_at" in body:
        raise ApiError(
            422, "invalid", "key: give expires_in or expires_at, not both", path="key.expires_at"
        )
    expires_in = _duration(body, "expires_in")
    if expires_in is not None:
        return now + expires_in
    if "expires_at" not in body:
        return None
    try:
        moment = _moment(body["expires_at"])
    except (ValueError, OverflowError) as exc:
        raise ApiError(
            422,
            "invalid",
            f"key.expires_at: not an ISO 8601 time or unix seconds: {exc}",
            path="key.expires_at",
        ) from None
    if not now < moment <= now + MAX_LIFETIME:
        raise ApiError(
            422,
            "invalid",
            f"key.expires_at: must be in the future and at most 10 years away, got "
            f"{body['expires_at']!r}",
            path="key.expires_at",
        )
    return moment


def _check_body(body: Any) -> dict[str, Any]:
    problem = first_error("ApiKeyCreate", body, "key")
    if problem is not None:
        path, message = problem
        raise ApiError(422, "invalid", f"{path}: {message}", path=path)
    return body


def _new_id(keys: list[dict[str, Any]]) -> str:
    taken = {key.get("id") for key in keys}
    while True:
        candidate = "key-" + secrets.token_hex(4)
        if candidate not in taken:
            return candidate


# -- the read-modify-write -----------------------------------------------------------------------


async def _change_keys(
    ctx: AdminContext,
    name: str,
    change: Callable[[list[dict[str, Any]], float], tuple[list[dict[str, Any]], Any]],
    what: str,
) -> Any:
    """Apply ``change(keys, now) -> (new keys, result)`` to consumer ``name``'s stored keys
    and return ``result``: read, check, store with ``if_version`` (again on a mismatch), apply."""
    if _file_consumer(ctx, name) is not None:
        raise _read_only(name)
    for _ in range(WRITE_ATTEMPTS):
        async with ctx.lock, ctx.store.exclusive():
            await ctx.catch_up()
            item = await ctx.store.get_item(KIND, name)
            if item is None:
                raise _not_found(name)
            now = time.time()
            keys = [dict(key) for key in item.doc.get("keys", ()) if isinstance(key, dict)]
            new_keys, result = change(keys, now)
            doc = {**item.doc, "keys": new_keys}
            assert ctx.live is not None
            try:
                prepared = ctx.live.prepare(KIND, name, doc)
            except ConfigError as exc:  # the loader's word on the new document
                raise _explain(ctx, exc, CONSUMER, name) from None
            try:
                stored = await ctx.store.replace_item(KIND, name, doc, if_version=item.version)
            except NotFound:
                raise _not_found(name) from None
            except VersionMismatch:
                continue  # someone changed the consumer meanwhile: read it again
            await _commit(ctx, prepared, stored.version, f"consumer {name!r}: {what}")
            return result
    raise ApiError(
        409,
        "conflict",
        f"consumer {name!r} kept changing while its keys were written; try again",
    )


# -- handlers ------------------------------------------------------------------------------------


async def create_key(request: web.Request) -> web.Response:
    """``POST /api/consumers/{id}/keys``: make a key (shown once), maybe rotating another."""
    ctx: AdminContext = request.app[CTX]
    name = request.match_info["id"]
    body = await read_json(request)
    if _file_consumer(ctx, name) is not None:
        raise _read_only(name)
    pepper = ctx.config.security.api_key_pepper
    if not pepper:
        raise ApiError(
            409,
            "no_pepper",
            "security.api_key_pepper is not set: keys are hashed with it, so set it (the same "
            "on every gateway sharing the store) before making keys",
        )
    body = _check_body(body)
    grace = _duration(body, "grace")
    if grace is not None and "rotate" not in body:
        raise ApiError(422, "invalid", "key.grace: only with rotate", path="key.grace")
    secret = make_key()
    digest = key_hash(pepper, secret)

    def change(keys: list[dict[str, Any]], now: float) -> tuple[list[dict[str, Any]], Any]:
        key_id = body.get("id") or _new_id(keys)
        if any(key.get("id") == key_id for key in keys):
            raise ApiError(409, "already_exists", f"consumer {name!r} already has a key {key_id!r}")
        if len(keys) >= MAX_KEYS:
            raise ApiError(
                409,
                "too_many_keys",
                f"consumer {name!r} has {len(keys)} keys, the most it may have: revoke some",
            )
        rotated = None
        if "rotate" in body:
            old = next((key for key in keys if key.get("id") == body["rotate"]), None)
            if old is None:
                raise ApiError(
                    422,
                    "invalid",
                    f"key.rotate: consumer {name!r} has no key {body['rotate']!r} to rotate",
                    path="key.rotate",
                )
            end = now + (DEFAULT_GRACE if grace is None else grace)
            if old.get("expires_at") is None or old["expires_at"] > end:
                old["expires_at"] = end
            rotated = old
        entry = {
            "id": key_id,
            "hash": digest,
            "prefix": secret[:PREFIX_LENGTH],
            "created_at": now,
            "expires_at": _expiry(body, now),
        }
        if entry["expires_at"] is None:
            del entry["expires_at"]
        view = {**_view(entry, "api", now), "key": secret}
        if rotated is not None:
            view["rotated"] = _view(rotated, "api", now)
        return [*keys, entry], view

    view = await _change_keys(ctx, name, change, "key made")
    log.info("API key %s (%s...) made for consumer %r", view["id"], view["prefix"], name)
    shown = {field: value for field, value in view.items() if field not in ("key", "rotated")}
    await audit.record(request, "created", "api_key", f"{name}/{view['id']}", None, shown)
    location = f"/api/consumers/{name}/keys/{view['id']}"
    return ok(
        view,
        status=201,
        headers={"Cache-Control": "no-store", "Pragma": "no-cache", "Location": location},
    )


async def list_keys(request: web.Request) -> web.Response:
    """``GET /api/consumers/{id}/keys``: the consumer's keys, never their secrets."""
    ctx: AdminContext = request.app[CTX]
    name = request.match_info["id"]
    now = time.time()
    consumer = _file_consumer(ctx, name)
    if consumer is not None:
        return ok([_view(key, "file", now) for key in _file_keys(consumer)])
    item = await ctx.store.get_item(KIND, name)
    if item is None:
        raise _not_found(name)
    keys = [key for key in item.doc.get("keys", ()) if isinstance(key, dict) and "id" in key]
    return ok([_view(key, "api", now) for key in keys])


async def delete_key(request: web.Request) -> web.Response:
    """``DELETE /api/consumers/{id}/keys/{key_id}``: revoke a key (on every worker, at once)."""
    ctx: AdminContext = request.app[CTX]
    name = request.match_info["id"]
    key_id = request.match_info["key_id"]

    def change(keys: list[dict[str, Any]], now: float) -> tuple[list[dict[str, Any]], Any]:
        kept = [key for key in keys if key.get("id") != key_id]
        if len(kept) == len(keys):
            raise ApiError(404, "not_found", f"consumer {name!r} has no key {key_id!r}")
        revoked = next(key for key in keys if key.get("id") == key_id)
        return kept, _view(revoked, "api", now)

    view = await _change_keys(ctx, name, change, f"key {key_id!r} revoked")
    log.info("API key %s (%s...) of consumer %r revoked", key_id, view["prefix"], name)
    await audit.record(request, "revoked", "api_key", f"{name}/{key_id}", view, None)
    return ok(view, message=f"key {key_id!r} of consumer {name!r} revoked")


async def usage(request: web.Request) -> web.Response:
    """``GET /api/consumers/{id}/usage``: requests and last use per key, every worker summed."""
    ctx: AdminContext = request.app[CTX]
    name = request.match_info["id"]
    consumer = _file_consumer(ctx, name)
    if consumer is not None:
        known = [key.id for key in consumer.keys]
    else:
        item = await ctx.store.get_item(KIND, name)
        if item is None:
            raise _not_found(name)
        known = [k["id"] for k in item.doc.get("keys", ()) if isinstance(k, dict) and "id" in k]
    try:
        gathered = await asyncio.wait_for(ctx.status.gather(), GATHER_TIMEOUT)
    except TimeoutError:
        raise ApiError(503, "workers_unavailable", "the workers did not answer in time") from None
    totals: dict[str, list[float]] = {key_id: [0, 0.0] for key_id in known}
    for stats in gathered.workers:
        per_key = stats.get("extra", {}).get("api_keys", {}).get("usage", {}).get(name, {})
        for key_id, (requests, last_used) in per_key.items():
            total = totals.setdefault(key_id, [0, 0.0])
            total[0] += int(requests)
            total[1] = max(total[1], float(last_used))
    rows = [
        {"id": key_id, "requests": int(requests), "last_used_at": iso_time(last or None)}
        for key_id, (requests, last) in totals.items()
    ]
    last_used = max((last for _, last in totals.values()), default=0.0)
    return ok(
        {
            "consumer": name,
            "keys": rows,
            "requests": sum(int(requests) for requests, _ in totals.values()),
            "last_used_at": iso_time(last_used or None),
            "workers_answered": len(gathered.workers),
        }
    )
