"""The OAuth2 authorization server on the admin listener (``admin.oauth``, docs/oauth2.md).

Endpoints (public: OAuth client authentication instead of the admin token):
``POST /oauth/token`` (RFC 6749: ``client_credentials`` and ``refresh_token`` grants),
``POST /oauth/revoke`` (RFC 7009), ``POST /oauth/introspect`` (RFC 7662),
``GET /oauth/jwks.json`` and the metadata ``GET /.well-known/oauth-authorization-server``
(RFC 8414) and ``/.well-known/openid-configuration``.

authlib's server classes are bound to a web framework's request objects (Flask, Django,
Starlette), so the aiohttp glue is written here; authlib provides the RFC 6749 error types
(their JSON bodies and headers) and scope handling, and joserfc (authlib's JOSE library) the
keys, signatures and JWKs (`oauth_keys`).

Access tokens are JWTs (``typ: at+jwt``) signed with the store's signing key: ``iss``, ``sub``
and ``client_id`` (the client), ``aud`` (when configured), ``scope``, ``iat``, ``exp``,
``jti``, and ``consumer`` for a client linked to a consumer. Refresh tokens are opaque random
strings stored as their SHA-256; each use consumes the token and returns a new one of the
same family, and a consumed token used again revokes the whole family (RFC 6749 section 10.4,
OAuth 2.0 Security BCP section 4.14).

Client secrets are 256-bit random strings, stored as ``sha256$<salt>$<digest>`` (SHA-256 of a
per-secret random salt and the secret: the secret's entropy makes a slow hash unnecessary).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from aiohttp import web
from authlib.oauth2.rfc6749 import errors
from authlib.oauth2.rfc6749.util import list_to_scope
from joserfc import jws, jwt
from joserfc.errors import JoseError

from isekai.admin.context import CTX, AdminContext
from isekai.admin.http import ApiError, dumps
from isekai.admin.oauth_keys import KeyRing, KeyUnavailable
from isekai.config.admin_oauth import AdminOAuth
from isekai.store.oauth import OAuthClient, RefreshToken

__all__ = [
    "GRANT_TYPES",
    "KEYS",
    "SCOPE_TOKEN",
    "enabled_config",
    "hash_secret",
    "introspect",
    "issuer",
    "jwks",
    "longest_token_ttl",
    "metadata",
    "new_secret",
    "revoke",
    "token",
    "token_hash",
    "verify_secret",
]

log = logging.getLogger("isekai.admin")

GRANT_TYPES = ("client_credentials", "refresh_token")
AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
SCOPE_TOKEN = r"[\x21\x23-\x5b\x5d-\x7e]{1,128}"  # RFC 6749 section 3.3, bounded
CLIENT_ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
MAX_FORM_FIELDS = 16
MAX_TOKEN_LENGTH = 8192
REALM = 'Basic realm="isekai-oauth"'
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
KEYS = web.AppKey("isekai_oauth_keys", KeyRing)
PRUNE_EVERY = 600.0  # seconds between two prunings of expired revocations and refresh tokens

_SCOPE_TOKEN = re.compile(SCOPE_TOKEN)
_CLIENT_ID = re.compile(CLIENT_ID_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


# -- client secrets ----------------------------------------------------------------------------


def new_secret() -> str:
    """A new client secret: 43 URL-safe characters (256 random bits)."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """``sha256$<salt hex>$<hex of SHA-256(salt + secret)>``."""
    salt = secrets.token_bytes(16)
    digest = hashlib.sha256(salt + secret.encode()).hexdigest()
    return f"sha256${salt.hex()}${digest}"


def verify_secret(secret: str, secret_hash: str) -> bool:
    """Whether ``secret`` matches ``secret_hash`` (constant time); False when malformed."""
    try:
        scheme, salt_hex, digest = secret_hash.split("$")
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    if scheme != "sha256":
        return False
    given = hashlib.sha256(salt + secret.encode("utf-8", "surrogatepass")).hexdigest()
    return hmac.compare_digest(given, digest)


_DUMMY_HASH = hash_secret(secrets.token_urlsafe(32))  # checked for unknown clients


def token_hash(token: str) -> str:
    """How a refresh token is looked up: the hex SHA-256 of the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


# -- configuration -----------------------------------------------------------------------------


def enabled_config(ctx: AdminContext) -> AdminOAuth:
    """``admin.oauth``, or 404 when the authorization server is off."""
    settings = ctx.config.admin.oauth
    if not settings.enabled:
        raise ApiError(
            404,
            "not_found",
            "the OAuth2 authorization server is off: set admin.oauth.enabled: true",
        )
    return settings


def issuer(ctx: AdminContext, request: web.Request) -> str:
    """``admin.oauth.issuer``, or the admin listener's URL (the bound port when it is 0)."""
    settings = ctx.config.admin.oauth
    if settings.issuer is not None:
        return settings.issuer
    host, port = ctx.config.admin.host, ctx.config.admin.port
    if port == 0:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        port = sockname[1] if sockname else 0
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


async def _prune_now_and_then(ctx: AdminContext, keys: KeyRing) -> None:
    # expired refresh tokens and revoked jtis go, at most once per PRUNE_EVERY per process
    now = time.time()
    if now - keys.pruned_at >= PRUNE_EVERY:
        keys.pruned_at = now
        removed = await ctx.store.prune_oauth(now)
        if removed:
            log.info("OAuth: forgot %d expired tokens and keys", removed)


def _longest_ttl(settings: AdminOAuth, clients: Iterable[OAuthClient]) -> float:
    return max([settings.access_token_ttl, *(c.access_token_ttl or 0.0 for c in clients)])


# -- responses ---------------------------------------------------------------------------------


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=dumps(body),
        status=status,
        content_type="application/json",
        headers={**NO_STORE, **(headers or {})},
    )


def _oauth_error(exc: errors.OAuth2Error) -> web.Response:
    body = dict(exc.get_body())
    if not body.get("error_description"):
        body.pop("error_description", None)
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    if exc.status_code == 401:
        description = (exc.description or "").replace('"', "'")
        headers["WWW-Authenticate"] = (
            f'{REALM}, error="{exc.error}", error_description="{description}"'
        )
    return _json(body, exc.status_code, headers)


def _invalid_client(message: str) -> errors.InvalidClientError:
    return errors.InvalidClientError(description=message, status_code=401)


OAuthHandler = Callable[[web.Request, AdminContext, AdminOAuth], Awaitable[web.Response]]


def _endpoint(handler: OAuthHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    # the OAuth errors as RFC 6749 section 5.2 JSON; a key that cannot be used as 503
    async def run(request: web.Request) -> web.Response:
        ctx: AdminContext = request.app[CTX]
        settings = enabled_config(ctx)
        try:
            return await handler(request, ctx, settings)
        except errors.OAuth2Error as exc:
            return _oauth_error(exc)
        except KeyUnavailable as exc:
            log.error("OAuth: %s", exc)
            return _json(
                {
                    "error": "temporarily_unavailable",
                    "error_description": "the signing key cannot be used; the gateway log "
                    "has the details",
                },
                503,
            )

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


# -- requests ----------------------------------------------------------------------------------


async def _form(request: web.Request) -> dict[str, str]:
    # application/x-www-form-urlencoded, each parameter at most once (RFC 6749 section 3.2)
    if request.content_type != "application/x-www-form-urlencoded":
        raise errors.InvalidRequestError(
            description="the body must be application/x-www-form-urlencoded"
        )
    try:
        raw = await request.read()
        text = raw.decode("utf-8")
        pairs = parse_qsl(
            text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FORM_FIELDS
        )
    except web.HTTPRequestEntityTooLarge:
        raise errors.InvalidRequestError(description="the body is too large") from None
    except (UnicodeDecodeError, ValueError):
        raise errors.InvalidRequestError(
            description=f"the body is not valid form data (at most {MAX_FORM_FIELDS} fields)"
        ) from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise errors.InvalidRequestError(description=f"parameter {key[:40]!r} is repeated")
        if _CONTROL.search(key) or _CONTROL.search(value):
            raise errors.InvalidRequestError(description="parameters must not hold control bytes")
        form[key] = value
    return form


def _basic_credentials(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise _invalid_client("use HTTP Basic client authentication or client_secret_post")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise _invalid_client("the Basic credentials are not valid base64 UTF-8") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise _invalid_client("the Basic credentials need client_id:client_secret")
    # RFC 6749 section 2.3.1: both are form-urlencoded before base64
    return unquote_plus(client_id), unquote_plus(secret)


async def _client(ctx: AdminContext, request: web.Request, form: dict[str, str]) -> OAuthClient:
    # client_secret_basic or client_secret_post, never both (RFC 6749 section 2.3)
    basic = _basic_credentials(request)
    posted = "client_secret" in form
    if basic is not None and posted:
        raise errors.InvalidRequestError(
            description="use one client authentication method, not Basic and client_secret"
        )
    if basic is not None:
        client_id, secret = basic
        if "client_id" in form and form["client_id"] != client_id:
            raise errors.InvalidRequestError(description="client_id differs from the Basic one")
    elif posted:
        client_id, secret = form.get("client_id", ""), form["client_secret"]
    else:
        raise _invalid_client("client authentication required (Basic or client_secret)")
    client = None
    if _CLIENT_ID.fullmatch(client_id) and len(secret) <= 256:
        client = await ctx.store.get_oauth_client(client_id)
    if client is None:
        verify_secret(secret, _DUMMY_HASH)  # as long as a wrong secret takes
        raise _invalid_client("unknown client or wrong secret")
    if not verify_secret(secret, client.secret_hash):
        log.info("OAuth: wrong secret for client %s from %s", client.client_id, request.remote)
        raise _invalid_client("unknown client or wrong secret")
    return client


def _scopes(requested: str | None, allowed: Iterable[str]) -> list[str]:
    # the requested scopes, each allowed; all the allowed ones when none is requested
    allowed = list(allowed)
    if requested is None:
        return allowed
    tokens = requested.split(" ")
    if not all(_SCOPE_TOKEN.fullmatch(t) for t in tokens):
        raise errors.InvalidScopeError(description="malformed scope (RFC 6749 section 3.3)")
    beyond = [t for t in dict.fromkeys(tokens) if t not in allowed]
    if beyond:
        raise errors.InvalidScopeError(
            description=f"scope {beyond[0][:64]!r} is not granted to this client"
        )
    return list(dict.fromkeys(tokens))


# -- tokens ------------------------------------------------------------------------------------


async def _access_token(
    ctx: AdminContext,
    request: web.Request,
    settings: AdminOAuth,
    client: OAuthClient,
    scopes: list[str],
) -> tuple[str, int]:
    keys = request.app[KEYS]
    active = await keys.active(settings.signing_algorithm, settings.key_passphrase)
    now = int(time.time())
    ttl = int(client.access_token_ttl or settings.access_token_ttl)
    claims: dict[str, Any] = {
        "iss": issuer(ctx, request),
        "sub": client.client_id,
        "client_id": client.client_id,
        "scope": list_to_scope(scopes) or "",
        "iat": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }
    if settings.audience is not None:
        claims["aud"] = settings.audience
    if client.consumer is not None:
        claims["consumer"] = client.consumer
    header = {"alg": active.algorithm, "kid": active.kid, "typ": "at+jwt"}
    return jwt.encode(header, claims, active.key), ttl


async def _token_response(
    ctx: AdminContext,
    request: web.Request,
    settings: AdminOAuth,
    client: OAuthClient,
    scopes: list[str],
    refresh_token: str | None,
) -> web.Response:
    token, ttl = await _access_token(ctx, request, settings, client, scopes)
    body: dict[str, Any] = {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": list_to_scope(scopes) or "",
    }
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    return _json(body)


def _new_refresh(client: OAuthClient, settings: AdminOAuth, scope: str) -> tuple[str, RefreshToken]:
    token = secrets.token_urlsafe(32)
    now = time.time()
    stored = RefreshToken(
        token_hash(token),
        uuid.uuid4().hex,
        client.client_id,
        scope,
        now,
        now + settings.refresh_token_ttl,
    )
    return token, stored


_REFUSED = {
    "unknown": "the refresh token is not valid for this client",
    "expired": "the refresh token has expired",
    "revoked": "the refresh token was revoked",
    "reused": "the refresh token was used already: every token of its grant is now revoked",
}


@_endpoint
async def token(request: web.Request, ctx: AdminContext, settings: AdminOAuth) -> web.Response:
    """``POST /oauth/token``: an access token for the client credentials or a refresh token."""
    form = await _form(request)
    client = await _client(ctx, request, form)
    await _prune_now_and_then(ctx, request.app[KEYS])
    grant = form.get("grant_type")
    if not grant:
        raise errors.InvalidRequestError(description="missing grant_type")
    if grant not in GRANT_TYPES:
        unsupported = errors.UnsupportedGrantTypeError(grant[:64])
        unsupported.description = f"grant_type must be one of {', '.join(GRANT_TYPES)}"
        raise unsupported
    if grant not in client.grant_types:
        raise errors.UnauthorizedClientError(
            description=f"the client may not use the {grant} grant"
        )
    if grant == "client_credentials":
        scopes = _scopes(form.get("scope"), client.scopes)
        refresh = None
        if "refresh_token" in client.grant_types:
            refresh, stored = _new_refresh(client, settings, list_to_scope(scopes) or "")
            await ctx.store.add_refresh_token(stored)
        log.info("OAuth: token for client %s (client_credentials)", client.client_id)
        return await _token_response(ctx, request, settings, client, scopes, refresh)
    given = form.get("refresh_token")
    if not given:
        raise errors.InvalidRequestError(description="missing refresh_token")
    if len(given) > MAX_TOKEN_LENGTH:
        raise errors.InvalidGrantError(description=_REFUSED["unknown"])
    current = await ctx.store.get_refresh_token(token_hash(given))
    if current is None or current.client_id != client.client_id:
        raise errors.InvalidGrantError(description=_REFUSED["unknown"])
    granted = [s for s in current.scope.split(" ") if s and s in client.scopes]
    scopes = _scopes(form.get("scope"), granted)
    refresh, replacement = _new_refresh(client, settings, current.scope)
    outcome = await ctx.store.consume_refresh_token(
        token_hash(given), client.client_id, replacement, time.time()
    )
    if outcome.status != "ok":
        if outcome.status == "reused":
            log.warning(
                "OAuth: a used refresh token of client %s came again: its grant is revoked",
                client.client_id,
            )
        raise errors.InvalidGrantError(description=_REFUSED[outcome.status])
    log.info("OAuth: token for client %s (refresh_token)", client.client_id)
    return await _token_response(ctx, request, settings, client, scopes, refresh)


async def _decode_access(
    request: web.Request, ctx: AdminContext, given: str
) -> dict[str, Any] | None:
    # the claims of one of our access tokens with a valid signature (expired or not)
    if given.count(".") != 2 or len(given) > MAX_TOKEN_LENGTH:
        return None
    try:
        header = jws.extract_compact(given.encode("utf-8", "surrogatepass")).headers()
    except (JoseError, ValueError, TypeError):
        return None
    kid = header.get("kid")
    keys = await request.app[KEYS].verification_keys(kid if isinstance(kid, str) else None)
    try:
        decoded = jwt.decode(given, keys, algorithms=["RS256", "ES256"])
    except (JoseError, ValueError, TypeError, KeyError):
        return None
    claims = dict(decoded.claims)
    if claims.get("iss") != issuer(ctx, request) or not isinstance(claims.get("jti"), str):
        return None
    return claims


@_endpoint
async def revoke(request: web.Request, ctx: AdminContext, settings: AdminOAuth) -> web.Response:
    """``POST /oauth/revoke`` (RFC 7009): 200 whether or not the token was known."""
    form = await _form(request)
    client = await _client(ctx, request, form)
    given = form.get("token")
    if not given:
        raise errors.InvalidRequestError(description="missing token")
    claims = await _decode_access(request, ctx, given)
    if claims is not None:
        if claims.get("client_id") == client.client_id:
            exp = claims.get("exp")
            until = float(exp) if isinstance(exp, (int, float)) else time.time() + 86400
            await ctx.store.revoke_access_token(claims["jti"], until)
            log.info("OAuth: client %s revoked access token %s", client.client_id, claims["jti"])
        return _json({})
    if len(given) <= MAX_TOKEN_LENGTH:
        stored = await ctx.store.get_refresh_token(token_hash(given))
        if stored is not None and stored.client_id == client.client_id:
            await ctx.store.revoke_refresh_family(stored.family, time.time())
            log.info("OAuth: client %s revoked a refresh token grant", client.client_id)
    return _json({})


@_endpoint
async def introspect(request: web.Request, ctx: AdminContext, settings: AdminOAuth) -> web.Response:
    """``POST /oauth/introspect`` (RFC 7662): whether a token is active, and its claims."""
    form = await _form(request)
    client = await _client(ctx, request, form)
    given = form.get("token")
    if not given:
        raise errors.InvalidRequestError(description="missing token")
    inactive = _json({"active": False})
    now = time.time()
    claims = await _decode_access(request, ctx, given)
    if claims is not None:
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp <= now:
            return inactive
        if await ctx.store.is_access_token_revoked(claims["jti"]):
            return inactive
        owner = claims.get("client_id")
        if not isinstance(owner, str) or await ctx.store.get_oauth_client(owner) is None:
            return inactive
        body = {"active": True, "token_type": "Bearer"}
        for key in ("scope", "client_id", "sub", "exp", "iat", "iss", "aud", "jti", "consumer"):
            if key in claims:
                body[key] = claims[key]
        return _json(body)
    if len(given) > MAX_TOKEN_LENGTH:
        return inactive
    stored = await ctx.store.get_refresh_token(token_hash(given))
    if (
        stored is None
        or stored.client_id != client.client_id  # a refresh token only to its own client
        or stored.consumed_at is not None
        or stored.revoked_at is not None
        or stored.expires_at <= now
    ):
        return inactive
    return _json(
        {
            "active": True,
            "token_type": "refresh_token",
            "scope": stored.scope,
            "client_id": stored.client_id,
            "sub": stored.client_id,
            "exp": int(stored.expires_at),
            "iat": int(stored.created_at),
            "iss": issuer(ctx, request),
        }
    )


@_endpoint
async def jwks(request: web.Request, ctx: AdminContext, settings: AdminOAuth) -> web.Response:
    """``GET /oauth/jwks.json``: the public signing keys (never a private part)."""
    keys = request.app[KEYS]
    try:
        await keys.active(settings.signing_algorithm, settings.key_passphrase)  # one exists
    except KeyUnavailable as exc:  # the public halves are published all the same
        log.error("OAuth: %s", exc)
    return web.Response(
        text=dumps(await keys.jwks()),
        content_type="application/json",
        headers={"Cache-Control": "public, max-age=60"},
    )


def metadata_document(ctx: AdminContext, request: web.Request) -> dict[str, Any]:
    """The RFC 8414 authorization server metadata."""
    base = issuer(ctx, request)
    return {
        "issuer": base,
        "token_endpoint": f"{base}/oauth/token",
        "jwks_uri": f"{base}/oauth/jwks.json",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "introspection_endpoint": f"{base}/oauth/introspect",
        "grant_types_supported": list(GRANT_TYPES),
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "id_token_signing_alg_values_supported": [ctx.config.admin.oauth.signing_algorithm],
        "subject_types_supported": ["public"],
    }


@_endpoint
async def metadata(request: web.Request, ctx: AdminContext, settings: AdminOAuth) -> web.Response:
    """``GET /.well-known/oauth-authorization-server`` and ``/.well-known/openid-configuration``."""
    return web.Response(
        text=dumps(metadata_document(ctx, request)),
        content_type="application/json",
        headers={"Cache-Control": "public, max-age=300"},
    )


async def longest_token_ttl(ctx: AdminContext) -> float:
    """The longest access-token lifetime any client has now (how long a retired key stays
    published)."""
    return _longest_ttl(ctx.config.admin.oauth, await ctx.store.list_oauth_clients())
