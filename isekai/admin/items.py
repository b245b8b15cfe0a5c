"""Routes, upstreams, policies and consumers as API resources: ``/api/routes``,
``/api/upstreams``, ``/api/policies`` and ``/api/consumers`` are the same six handlers
(`handlers`) over a `Kind`.

Items come from two sources. ``file`` items are in the YAML file: listed, readable, never
changed through the API (409). ``api`` items are stored (``isekai.store``) with a version that
is their ETag. Every change is checked against the running config by the config loader's own
reader and rules (`isekai.config.changes`: what validating the whole resulting config would
say, without reading it all again), then stored, then applied, all under ``ctx.lock`` and the
store's writer lock, so that changes happen one at a time across every gateway on the store.

A mistake is answered 422 with ``error.path`` relative to the submitted document
(``route.match.path``, ``upstream.targets[0]``, ``policy.origins[1]``) when it lies there, else
the path in the whole config (``routes[4].upstream``) and ``error.item`` naming the item it
lies in.

A consumer's ``keys`` are not changed here: they are made and revoked at
``/api/consumers/{name}/keys``. A body with ``keys`` is refused (422, ``consumer.keys``), a
replace keeps the stored keys, and every view shows a key as ``id``, ``prefix``,
``created_at`` and ``expires_at`` only, never the key or its hash. Nothing in the config
names a consumer, so deleting one is always allowed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from isekai.admin import audit
from isekai.admin.context import CTX, AdminContext
from isekai.admin.http import PATCH_TYPES, ApiError, iso_time, ok, read_json
from isekai.admin.live_config import ROUTE_PATH
from isekai.admin.schemas import first_error
from isekai.config.changes import Change, RouteShadowError
from isekai.errors import ConfigError
from isekai.store import AlreadyExists, NotFound, VersionMismatch

__all__ = [
    "CONSUMER",
    "IF_MATCH_PATTERN",
    "POLICY",
    "ROUTE",
    "UPSTREAM",
    "Handlers",
    "Kind",
    "handlers",
    "merge_patch",
    "parse_if_match",
]

log = logging.getLogger("isekai.admin")


@dataclass(frozen=True, slots=True)
class Kind:
    """``route``, ``upstream``, ``policy`` or ``consumer``: how the API names, shows and
    checks items of one kind."""

    name: str  # store kind and error prefix: route, upstream, policy, consumer
    plural: str  # URL segment and config key: routes, upstreams, policies, consumers
    create_schema: str
    replace_schema: str
    doc_has_name: bool  # a route's or consumer's doc holds its name; others' is the YAML key


ROUTE = Kind("route", "routes", "Route", "RouteReplace", True)
UPSTREAM = Kind("upstream", "upstreams", "Upstream", "UpstreamReplace", False)
POLICY = Kind("policy", "policies", "Policy", "PolicyReplace", False)
CONSUMER = Kind("consumer", "consumers", "Consumer", "ConsumerReplace", True)

_KEY_FIELDS = ("id", "prefix", "created_at", "expires_at")  # what a view shows of a key
# settings whose values a view never shows (an hmac/jwt `secret`, an introspection
# `client_secret`...): they are replaced by audit.REDACTED unless written as `${VAR}`
_SECRET_SETTINGS = frozenset(
    {
        "secret",
        "client_secret",
        "password",
        "passphrase",
        "key_passphrase",
        "pepper",
        "api_key_pepper",
        "jwt_secret",
        "private_key",
    }
)
_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


# -- views -------------------------------------------------------------------------------------


def _file_items(ctx: AdminContext, kind: Kind) -> dict[str, dict[str, Any]]:
    if kind is POLICY:
        return ctx.file_policies()
    if kind is CONSUMER:
        return {consumer.name: _consumer_doc(consumer) for consumer in ctx.config.consumers}
    routes, upstreams = ctx.file_documents()
    if kind.doc_has_name:
        return {str(doc.get("name")): doc for doc in routes if isinstance(doc, dict)}
    return dict(upstreams)


def _consumer_doc(consumer: Any) -> dict[str, Any]:
    # a file consumer as a document (validated values; its keys as `_shown` makes them)
    doc: dict[str, Any] = {"name": consumer.name}
    if consumer.tier is not None:
        doc["tier"] = consumer.tier
    if consumer.tags:
        doc["tags"] = list(consumer.tags)
    if consumer.keys:
        doc["keys"] = [{key: getattr(k, key) for key in _KEY_FIELDS} for k in consumer.keys]
    return doc


def _without_secrets(value: Any) -> Any:
    # ``value`` with every secret setting's value hidden, at any depth (references kept)
    if isinstance(value, dict):
        return {
            k: (
                audit.REDACTED
                if k in _SECRET_SETTINGS
                and isinstance(v, str)
                and not _REFERENCE.fullmatch(v.strip())
                else _without_secrets(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value


def _keep_secrets(new: Any, current: Any) -> Any:
    # ``new`` with each secret setting still written as audit.REDACTED (a view sent back by a
    # PUT) given its value in ``current``, at the same place
    if isinstance(new, dict) and isinstance(current, dict):
        return {
            k: (
                current[k]
                if k in _SECRET_SETTINGS and v == audit.REDACTED and isinstance(current.get(k), str)
                else _keep_secrets(v, current.get(k))
            )
            for k, v in new.items()
        }
    if isinstance(new, list) and isinstance(current, list):
        return [_keep_secrets(v, c) for v, c in zip(new, current, strict=False)] + new[
            len(current) :
        ]
    return new


def _shown(kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    # what a view may show of a document: no secret setting's value, and a consumer's keys
    # without the key or its hash
    doc = _without_secrets(doc)
    if kind != "consumer" or not isinstance(doc.get("keys"), list):
        return doc
    keys = [
        {field: key.get(field) for field in _KEY_FIELDS}
        for key in doc["keys"]
        if isinstance(key, dict)
    ]
    return {**doc, "keys": keys}


def _view_file(name: str, doc: dict[str, Any], kind: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "source": "file",
        "version": None,
        "created_at": None,
        "updated_at": None,
        "spec": _shown(kind, doc),
    }


def _view_stored(item: Any) -> dict[str, Any]:
    return {
        "name": item.name,
        "source": "api",
        "version": item.version,
        "created_at": iso_time(item.created_at),
        "updated_at": iso_time(item.updated_at),
        "spec": _shown(item.kind, item.doc),
    }


def _etag(version: int) -> str:
    return f'"{version}"'


def _with_etag(item: Any, status: int = 200, **headers: str) -> web.Response:
    return ok(_view_stored(item), status=status, headers={"ETag": _etag(item.version), **headers})


# -- If-Match and merge patch ------------------------------------------------------------------


_LISTENER_PATH = re.compile(r"listeners\[(\d+)\].*", re.S)
_CONSUMER_PATH = re.compile(r"consumers\[(\d+)\](.*)", re.S)
_ENTITY_TAG = r'(?:W/)?"[\x21\x23-\x7e]*"'
IF_MATCH_PATTERN = rf"^\s*(\*|{_ENTITY_TAG}(\s*,\s*{_ENTITY_TAG})*)\s*$"
_IF_MATCH = re.compile(IF_MATCH_PATTERN)


def parse_if_match(header: str | None) -> list[int] | None:
    """The versions an ``If-Match`` header accepts: None = any (absent or ``*``).

    Entity tags are compared strongly: ``W/"3"`` and non-numeric tags match no version (an
    empty list, so the request fails with 412). ``ValueError`` when the header is not a list
    of entity tags (RFC 9110 section 13.1.1).
    """
    if header is None:
        return None
    if not _IF_MATCH.fullmatch(header):
        raise ValueError(f'If-Match must be * or entity tags like "3", got {header!r}')
    if header.strip() == "*":
        return None
    versions = []
    for tag in header.split(","):
        tag = tag.strip()
        if len(tag) >= 3 and tag[0] == tag[-1] == '"' and tag[1:-1].isdigit():
            versions.append(int(tag[1:-1]))
    return versions


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: ``patch`` applied to ``target`` (neither is modified)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _check_precondition(request: web.Request, item: Any) -> int | None:
    # 412 unless If-Match accepts the item's version; the version to write against
    try:
        wanted = parse_if_match(request.headers.get("If-Match"))
    except ValueError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    if wanted is None:
        return None
    if item.version not in wanted:
        raise ApiError(
            412,
            "precondition_failed",
            f"{item.kind} {item.name!r} is at version {item.version}, "
            f"not {request.headers.get('If-Match')}: fetch it again and retry",
            current_version=item.version,
            headers={"ETag": _etag(item.version)},
        )
    return item.version


# -- validation --------------------------------------------------------------------------------


def _prepare(ctx: AdminContext, kind: Kind, name: str, doc: dict[str, Any] | None) -> Change:
    # the loader's word first (the same messages as for YAML), against the running config
    assert ctx.live is not None
    try:
        return ctx.live.prepare(kind.name, name, doc)
    except RouteShadowError as exc:  # admin.api_routes.may_shadow_yaml is false
        raise ApiError(
            409,
            "shadows_file_route",
            f"route {name!r} {exc.message}",
            path="route.match",
            route=exc.route,
            source="file",
        ) from None
    except ConfigError as exc:
        raise _explain(ctx, exc, kind, name) from None


def _explain(ctx: AdminContext, exc: ConfigError, kind: Kind, name: str) -> ApiError:
    # error.path relative to the changed document when the mistake lies there, else the path
    # in the whole config with error.item naming the item it lies in
    assert ctx.live is not None
    item: dict[str, Any] | None = None
    path = config_path = exc.path
    found = ROUTE_PATH.fullmatch(exc.path)
    consumer = _CONSUMER_PATH.fullmatch(exc.path)
    if consumer is not None and kind is CONSUMER:  # only its own document
        item = {"kind": "consumer", "name": name, "source": "api"}
        path = f"consumer{consumer.group(2)}"
    elif found is not None and kind.doc_has_name:  # a route change: only its own document
        item = {"kind": "route", "name": name, "source": "api"}
        path = f"route{found.group(2)}"
    elif found is not None:  # an upstream or policy change refused for a route that uses it
        names = list(ctx.live.index.routes)
        other = names[int(found.group(1))]
        source = "file" if other in ctx.live.index.file_routes else "api"
        item = {"kind": "route", "name": other, "source": source}
    elif (listener := _LISTENER_PATH.fullmatch(exc.path)) is not None:
        listeners = ctx.live.config.listeners
        position = int(listener.group(1))
        if position < len(listeners):
            item = {"kind": "listener", "name": listeners[position].name, "source": "file"}
    elif exc.path == f"{kind.plural}.{name}" or exc.path.startswith(
        (f"{kind.plural}.{name}.", f"{kind.plural}.{name}[")
    ):
        item = {"kind": kind.name, "name": name, "source": "api"}
        path = kind.name + exc.path[len(f"{kind.plural}.{name}") :]
    where = path or "config"
    if item is not None and path == config_path:
        where = f"{item['kind']} {item['name']!r} ({path})"
    return ApiError(
        422, "invalid", f"{where}: {exc.message}", path=path, config_path=config_path, item=item
    )


def _check_schema(kind: Kind, schema: str, doc: Any) -> None:
    problem = first_error(schema, doc, kind.name)
    if problem is not None:
        path, message = problem
        raise ApiError(422, "invalid", f"{path}: {message}", path=path, config_path=path)


async def _commit(ctx: AdminContext, change: Change, version: int | None, what: str) -> None:
    # the change is stored: make it the running config, then apply it everywhere
    assert ctx.live is not None
    config = await ctx.live.commit(change, version)
    try:
        await ctx.apply(config, [change])
    except Exception as exc:
        log.exception("%s was stored but applying it failed", what)
        raise ApiError(
            500,
            "apply_failed",
            f"{what} was stored but could not be applied: {exc}; it applies at the next "
            "successful change or restart",
        ) from exc
    log.info("admin API: %s", what)


def _read_only(kind: Kind, name: str) -> ApiError:
    return ApiError(
        409,
        "read_only",
        f"{kind.name} {name!r} is defined in the config file: change it there and reload",
        source="file",
    )


def _refuse_keys(kind: Kind, body: Any) -> None:
    # a consumer's keys are made and revoked at /api/consumers/{name}/keys only
    if kind is CONSUMER and isinstance(body, dict) and "keys" in body:
        raise ApiError(
            422,
            "invalid",
            "consumer.keys: a consumer's keys cannot be set here; make one with "
            "POST /api/consumers/{name}/keys and revoke one with "
            "DELETE /api/consumers/{name}/keys/{id}",
            path="consumer.keys",
        )


def _keep_keys(kind: Kind, doc: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    # a replaced consumer keeps the keys it has
    if kind is CONSUMER and current.get("keys"):
        return {**doc, "keys": current["keys"]}
    return doc


def _document(kind: Kind, name: str | None, body: Any, *, schema: str) -> tuple[str, dict]:
    # (name, doc as stored) from a request body; the name comes from the body or the URL
    if not isinstance(body, dict):
        _check_schema(kind, schema, body)  # raises: the body must be an object
        raise AssertionError("unreachable")
    given = body.get("name")
    if name is None:  # create: the body names the item
        if given is None:
            raise ApiError(
                422,
                "invalid",
                f"{kind.name}.name: missing required key 'name'",
                path=f"{kind.name}.name",
            )
        if not isinstance(given, str):
            _check_schema(kind, schema, body)
            raise ApiError(422, "invalid", f"{kind.name}.name: expected a string")
        name = given
    elif given is not None and given != name:
        raise ApiError(
            422,
            "invalid",
            f"{kind.name}.name: {given!r} is not {name!r}: an item cannot be renamed "
            "(create the new one, then delete the old one)",
            path=f"{kind.name}.name",
        )
    doc = {key: value for key, value in body.items() if key != "name"}
    return name, {"name": name, **doc} if kind.doc_has_name else doc


# -- handlers ----------------------------------------------------------------------------------


async def list_items(request: web.Request, kind: Kind) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    views = [_view_file(name, doc, kind.name) for name, doc in _file_items(ctx, kind).items()]
    views += [_view_stored(item) for item in await ctx.store.list_items(kind.name)]
    return ok(views)


async def get_item(request: web.Request, kind: Kind) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    name = request.match_info["id"]
    file_items = _file_items(ctx, kind)
    if name in file_items:
        return ok(_view_file(name, file_items[name], kind.name))
    item = await ctx.store.get_item(kind.name, name)
    if item is None:
        raise ApiError(404, "not_found", f"no {kind.name} named {name!r}")
    return _with_etag(item)


async def create_item(request: web.Request, kind: Kind) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    body = await read_json(request)
    _refuse_keys(kind, body)
    name, doc = _document(kind, None, body, schema=kind.create_schema)
    if name in _file_items(ctx, kind):
        raise ApiError(
            409,
            "conflict",
            f"{kind.name} {name!r} is defined in the config file",
            source="file",
        )
    async with ctx.lock, ctx.store.exclusive():
        await ctx.catch_up()
        if await ctx.store.get_item(kind.name, name) is not None:
            raise ApiError(409, "already_exists", f"{kind.name} {name!r} already exists")
        change = _prepare(ctx, kind, name, doc)
        _check_schema(kind, kind.create_schema, body)
        try:
            item = await ctx.store.create_item(kind.name, name, doc)
        except AlreadyExists:
            raise ApiError(409, "already_exists", f"{kind.name} {name!r} already exists") from None
        await _commit(ctx, change, item.version, f"{kind.name} {name!r} created")
        await audit.record(request, "created", kind.name, name, None, doc)
    location = f"/api/{kind.plural}/{name}"
    return _with_etag(item, 201, Location=location)


async def _replace(
    request: web.Request, kind: Kind, name: str, build: Any, schema: str
) -> web.Response:
    # shared by PUT and PATCH: build(current_doc) -> (request body to check, new doc)
    ctx: AdminContext = request.app[CTX]
    if name in _file_items(ctx, kind):
        raise _read_only(kind, name)
    async with ctx.lock, ctx.store.exclusive():
        await ctx.catch_up()
        current = await ctx.store.get_item(kind.name, name)
        if current is None:
            raise ApiError(404, "not_found", f"no {kind.name} named {name!r}")
        version = _check_precondition(request, current)
        body, doc = build(current.doc)
        doc = _keep_keys(kind, _keep_secrets(doc, current.doc), current.doc)
        change = _prepare(ctx, kind, name, doc)
        _check_schema(kind, schema, body)
        try:
            item = await ctx.store.replace_item(
                kind.name, name, doc, if_version=version or current.version
            )
        except NotFound:
            raise ApiError(404, "not_found", f"no {kind.name} named {name!r}") from None
        except VersionMismatch as exc:
            raise ApiError(
                412,
                "precondition_failed",
                f"{kind.name} {name!r} changed meanwhile (now version {exc.current_version})",
                current_version=exc.current_version,
            ) from None
        await _commit(ctx, change, item.version, f"{kind.name} {name!r} changed (v{item.version})")
        action = "patched" if request.method == "PATCH" else "replaced"
        await audit.record(request, action, kind.name, name, current.doc, doc)
    return _with_etag(item)


async def replace_item(request: web.Request, kind: Kind) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    name = request.match_info["id"]
    if name in _file_items(ctx, kind):
        raise _read_only(kind, name)
    body = await read_json(request)
    _refuse_keys(kind, body)
    _, doc = _document(kind, name, body, schema=kind.replace_schema)
    return await _replace(request, kind, name, lambda _current: (body, doc), kind.replace_schema)


async def patch_item(request: web.Request, kind: Kind) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    name = request.match_info["id"]
    if name in _file_items(ctx, kind):
        raise _read_only(kind, name)
    patch = await read_json(request, PATCH_TYPES)
    if not isinstance(patch, dict):
        raise ApiError(
            422,
            "invalid",
            f"{kind.name}: a merge patch must be a JSON object, got {type(patch).__name__}",
            path=kind.name,
        )
    _refuse_keys(kind, patch)

    def build(current: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        if kind is CONSUMER:  # the keys are not the API's to change: checked without them
            current = {key: value for key, value in current.items() if key != "keys"}
        merged = merge_patch(current, patch)
        if kind.doc_has_name and "name" not in merged:
            merged["name"] = name
        _, doc = _document(kind, name, merged, schema=kind.replace_schema)
        return merged, doc

    return await _replace(request, kind, name, build, kind.replace_schema)


async def delete_item(request: web.Request, kind: Kind) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    name = request.match_info["id"]
    if name in _file_items(ctx, kind):
        raise _read_only(kind, name)
    async with ctx.lock, ctx.store.exclusive():
        await ctx.catch_up()
        current = await ctx.store.get_item(kind.name, name)
        if current is None:
            raise ApiError(404, "not_found", f"no {kind.name} named {name!r}")
        version = _check_precondition(request, current)
        change = _prepare(ctx, kind, name, None)
        try:
            await ctx.store.delete_item(kind.name, name, if_version=version or current.version)
        except NotFound:
            raise ApiError(404, "not_found", f"no {kind.name} named {name!r}") from None
        except VersionMismatch as exc:
            raise ApiError(
                412,
                "precondition_failed",
                f"{kind.name} {name!r} changed meanwhile (now version {exc.current_version})",
                current_version=exc.current_version,
            ) from None
        await _commit(ctx, change, None, f"{kind.name} {name!r} deleted")
        await audit.record(request, "deleted", kind.name, name, current.doc, None)
    return ok(message=f"{kind.name} {name!r} deleted")


@dataclass(frozen=True, slots=True)
class Handlers:
    """The request handlers of one kind's endpoints (``/api/<plural>[/{id}]``)."""

    list_all: Callable[[web.Request], Awaitable[web.Response]]
    get: Callable[[web.Request], Awaitable[web.Response]]
    create: Callable[[web.Request], Awaitable[web.Response]]
    replace: Callable[[web.Request], Awaitable[web.Response]]
    patch: Callable[[web.Request], Awaitable[web.Response]]
    delete: Callable[[web.Request], Awaitable[web.Response]]


def handlers(kind: Kind) -> Handlers:
    """List, read, create, replace, merge-patch and delete items of ``kind``."""

    async def list_all(request: web.Request) -> web.Response:
        return await list_items(request, kind)

    async def get(request: web.Request) -> web.Response:
        return await get_item(request, kind)

    async def create(request: web.Request) -> web.Response:
        return await create_item(request, kind)

    async def replace(request: web.Request) -> web.Response:
        return await replace_item(request, kind)

    async def patch(request: web.Request) -> web.Response:
        return await patch_item(request, kind)

    async def delete(request: web.Request) -> web.Response:
        return await delete_item(request, kind)

    return Handlers(list_all, get, create, replace, patch, delete)
