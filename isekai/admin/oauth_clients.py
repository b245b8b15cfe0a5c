"""Admin API of the OAuth2 authorization server: clients and signing keys (``/api/oauth/``).

``POST /api/oauth/clients`` registers a client and answers its ``client_secret`` once (only
its hash is stored); ``POST /api/oauth/clients/{client_id}/secret`` replaces the secret.
Clients carry a version (``ETag``; ``If-Match`` on delete and secret rotation, 412 on a
mismatch). ``POST /api/oauth/keys/rotate`` makes a new signing key; the replaced ones stay in
the JWKS until the tokens they signed have expired.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from aiohttp import web

from isekai.admin import audit
from isekai.admin.context import CTX, AdminContext
from isekai.admin.http import ApiError, iso_time, ok, read_json
from isekai.admin.items import parse_if_match
from isekai.admin.oauth import KEYS, enabled_config, hash_secret, longest_token_ttl, new_secret
from isekai.admin.schemas import first_error
from isekai.config import units
from isekai.config.admin_oauth import ACCESS_TOKEN_TTL_LIMIT
from isekai.store import AlreadyExists, NotFound, VersionMismatch
from isekai.store.oauth import OAuthClient, SigningKey

__all__ = [
    "create_client",
    "delete_client",
    "get_client",
    "list_clients",
    "list_keys",
    "rotate_keys",
    "rotate_secret",
]


def _view(client: OAuthClient, secret: str | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {"client_id": client.client_id}
    if secret is not None:
        view["client_secret"] = secret
    view.update(
        name=client.name,
        scopes=list(client.scopes),
        grant_types=list(client.grant_types),
        consumer=client.consumer,
        access_token_ttl=client.access_token_ttl,
        version=client.version,
        created_at=iso_time(client.created_at),
        updated_at=iso_time(client.updated_at),
    )
    return view


def _etag(client: OAuthClient) -> dict[str, str]:
    return {"ETag": f'"{client.version}"'}


def _ttl(value: Any) -> float | None:
    if value is None:
        return None
    seconds = float(value) if isinstance(value, int) else units.parse_duration(value)
    if not 1 <= seconds <= ACCESS_TOKEN_TTL_LIMIT:
        raise ApiError(
            422,
            "invalid",
            f"body.access_token_ttl: must be from 1s to 1d, got {value!r}",
            path="body.access_token_ttl",
        )
    return seconds


def _wanted_version(request: web.Request) -> list[int] | None:
    try:
        return parse_if_match(request.headers.get("If-Match"))
    except ValueError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None


async def _existing(ctx: AdminContext, request: web.Request) -> tuple[OAuthClient, int | None]:
    client_id = request.match_info["client_id"]
    client = await ctx.store.get_oauth_client(client_id)
    if client is None:
        raise ApiError(404, "not_found", f"no OAuth client {client_id!r}")
    wanted = _wanted_version(request)
    if wanted is not None and client.version not in wanted:
        raise ApiError(
            412,
            "precondition_failed",
            f"OAuth client {client_id!r} is at version {client.version}, not "
            f"{request.headers.get('If-Match')}: fetch it again and retry",
            current_version=client.version,
            headers=_etag(client),
        )
    return client, None if wanted is None else client.version


def _changed_meanwhile(exc: VersionMismatch) -> ApiError:
    return ApiError(
        412,
        "precondition_failed",
        f"OAuth client {exc.name!r} changed meanwhile (now version {exc.current_version})",
        current_version=exc.current_version,
    )


async def list_clients(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    enabled_config(ctx)
    return ok([_view(c) for c in await ctx.store.list_oauth_clients()])


async def get_client(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    enabled_config(ctx)
    client_id = request.match_info["client_id"]
    client = await ctx.store.get_oauth_client(client_id)
    if client is None:
        raise ApiError(404, "not_found", f"no OAuth client {client_id!r}")
    return ok(_view(client), headers=_etag(client))


async def create_client(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    enabled_config(ctx)
    body = await read_json(request)
    problem = first_error("OAuthClientCreate", body, "body")
    if problem is not None:
        raise ApiError(422, "invalid", f"{problem[0]}: {problem[1]}", path=problem[0])
    secret = new_secret()
    now = time.time()
    for _ in range(3):  # 96 random bits: a collision is for the record only
        client = OAuthClient(
            client_id=secrets.token_hex(12),
            name=body["name"],
            secret_hash=hash_secret(secret),
            scopes=tuple(body.get("scopes", ())),
            grant_types=tuple(body.get("grant_types", ("client_credentials",))),
            consumer=body.get("consumer"),
            access_token_ttl=_ttl(body.get("access_token_ttl")),
            version=1,
            created_at=now,
            updated_at=now,
        )
        try:
            await ctx.store.create_oauth_client(client)
        except AlreadyExists:
            continue
        break
    else:  # pragma: no cover - three 96-bit collisions in a row
        raise ApiError(409, "conflict", "could not pick a free client_id; retry")
    await audit.record(request, "created", "oauth_client", client.client_id, None, _view(client))
    headers = {**_etag(client), "Location": f"/api/oauth/clients/{client.client_id}"}
    return ok(
        _view(client, secret),
        status=201,
        message="the client_secret is shown this once: keep it now",
        headers={**headers, "Cache-Control": "no-store"},
    )


async def delete_client(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    enabled_config(ctx)
    client, version = await _existing(ctx, request)
    try:
        await ctx.store.delete_oauth_client(client.client_id, if_version=version)
    except NotFound:
        raise ApiError(404, "not_found", f"no OAuth client {client.client_id!r}") from None
    except VersionMismatch as exc:
        raise _changed_meanwhile(exc) from None
    await audit.record(request, "deleted", "oauth_client", client.client_id, _view(client), None)
    return ok(message=f"OAuth client {client.client_id!r} deleted, with its refresh tokens")


async def rotate_secret(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    enabled_config(ctx)
    client, version = await _existing(ctx, request)
    secret = new_secret()
    try:
        updated = await ctx.store.set_oauth_client_secret(
            client.client_id, hash_secret(secret), if_version=version
        )
    except NotFound:
        raise ApiError(404, "not_found", f"no OAuth client {client.client_id!r}") from None
    except VersionMismatch as exc:
        raise _changed_meanwhile(exc) from None
    await audit.record(
        request, "secret_rotated", "oauth_client", client.client_id, _view(client), _view(updated)
    )
    return ok(
        _view(updated, secret),
        message="the new client_secret is shown this once; the old one no longer works",
        headers={**_etag(updated), "Cache-Control": "no-store"},
    )


def _key_view(key: SigningKey) -> dict[str, Any]:
    return {
        "kid": key.kid,
        "algorithm": key.algorithm,
        "state": "active" if key.retired_at is None else "retired",
        "created_at": iso_time(key.created_at),
        "retired_at": iso_time(key.retired_at),
        "published_until": iso_time(key.verify_until),
    }


async def list_keys(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    settings = enabled_config(ctx)
    keys = request.app[KEYS]
    await keys.active(settings.signing_algorithm, settings.key_passphrase)
    return ok([_key_view(k) for k in await keys.published(fresh=True)])


async def rotate_keys(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    settings = enabled_config(ctx)
    keys = request.app[KEYS]
    verify_for = await longest_token_ttl(ctx)
    await ctx.store.prune_oauth(time.time())
    key = await keys.rotate(settings.signing_algorithm, settings.key_passphrase, verify_for)
    await audit.record(request, "rotated", "oauth_key", key.kid, None, _key_view(key))
    return ok(
        _key_view(key),
        status=201,
        message=f"signing key {key.kid} now signs; the replaced keys stay in the JWKS until "
        "their tokens expire",
    )
