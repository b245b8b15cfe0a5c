"""The admin API's endpoint table, its OpenAPI 3.1 document, and Swagger UI.

`OPERATIONS` is the one list of endpoints: ``app.py`` registers its handlers and permissions
from it and `document()` describes it, with the request schemas the handlers validate with
(``schemas.py``). ``GET /openapi.json`` serves the document; ``GET /docs`` serves Swagger UI
from the ``swagger-ui-bundle`` package's files (no CDN). That Swagger UI release reads OpenAPI
3.0 only, so it is given ``/docs/openapi-3.0.json``: the same document with 3.1-only schema
keywords rewritten (`to_openapi_30`).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from isekai.admin import (
    api_keys,
    audit,
    auth,
    items,
    logs,
    oauth,
    oauth_clients,
    observe,
    rate_limits,
    schemas,
    status,
)
from isekai.admin.auth import Permission
from isekai.admin.http import MERGE_PATCH_TYPE, dumps
from isekai.admin.items import IF_MATCH_PATTERN
from isekai.admin.schemas import COMPONENTS, NAME_PATTERN, USERNAME_PATTERN

__all__ = ["OPERATIONS", "Operation", "document", "to_openapi_30"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Operation:
    """One endpoint: what it does, who may call it, and how the document describes it."""

    method: str
    path: str
    handler: Handler
    permission: str | None
    operation_id: str
    summary: str
    tag: str
    body: str | None = None  # the request body's schema in COMPONENTS
    data: dict[str, Any] | None = None  # the schema of the response envelope's data
    status: int = 200
    also: tuple[int, ...] = ()  # other success statuses, with the same body
    errors: tuple[int, ...] = ()
    parameters: tuple[dict[str, Any], ...] = ()
    etag: bool = False
    if_match: bool = False
    links: dict[str, Any] = field(default_factory=dict)
    text: str | None = None  # a media type: the success body is that text, not the envelope
    raw: dict[str, Any] | None = None  # the success body's schema as is (not the envelope)
    form: str | None = None  # a form-encoded request body's schema in COMPONENTS
    oauth_errors: tuple[int, ...] = ()  # errors answered as RFC 6749 JSON, not the envelope
    security: tuple[dict[str, list[str]], ...] | None = None  # instead of the bearer token


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The item's name.",
    "schema": {"type": "string", "pattern": NAME_PATTERN},
}
_USERNAME = {
    "name": "username",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": USERNAME_PATTERN},
}
_CONSUMER_ID = {**_ID, "description": "The consumer's name."}
_KEY_ID = {
    "name": "key_id",
    "in": "path",
    "required": True,
    "description": "The key's id.",
    "schema": {"type": "string", "pattern": NAME_PATTERN},
}
_LOG_PARAMETERS = (
    {
        "name": "route",
        "in": "query",
        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
    },
    {
        "name": "consumer",
        "in": "query",
        "description": "The consumer a credential policy resolved; empty: requests without one.",
        "schema": {"type": "string", "maxLength": 128},
    },
    {
        "name": "status",
        "in": "query",
        "schema": {"type": "integer", "minimum": 100, "maximum": 599},
    },
    {
        "name": "status_class",
        "in": "query",
        "description": "1-5 or 1xx-5xx: 5 and 5xx both mean 500-599.",
        "schema": {"type": "string", "pattern": "^[1-5]([xX][xX])?$"},
    },
    *(
        {
            "name": name,
            "in": "query",
            "description": f"Rows {what}: ISO 8601 date-time or unix seconds.",
            "schema": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}]},
        }
        for name, what in (("since", "at or after this time"), ("until", "before this time"))
    ),
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
    },
    {
        "name": "offset",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0, "maximum": 999_999_999_999, "default": 0},
    },
)

_AUDIT_PARAMETERS = (
    *(
        {
            "name": name,
            "in": "query",
            "description": what,
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": 256,
                "pattern": audit.FILTER_PATTERN,
            },
        }
        for name, what in (
            ("actor", "Records of this user's changes."),
            ("kind", "Records of this kind of item: route, upstream, policy, user..."),
            ("name", "Records of the item of this name."),
        )
    ),
    {
        "name": "since",
        "in": "query",
        "description": "Records at or after this time: ISO 8601 date-time or unix seconds.",
        "schema": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}]},
    },
    *_LOG_PARAMETERS[-2:],  # limit, offset
)
_ROUTE_DATA = _ref("RouteResource")
_UPSTREAM_DATA = _ref("UpstreamResource")
_POLICY_DATA = _ref("PolicyResource")
_CONSUMER_DATA = _ref("ConsumerResource")
_READ = (401, 403)
_WRITE = (400, 401, 403, 409, 413, 415, 422)


def _item_links(kind: str) -> dict[str, Any]:
    name = {"id": "$response.body#/data/name"}
    title = kind.capitalize()
    return {
        f"Get{title}": {"operationId": f"get{title}", "parameters": name},
        f"Replace{title}": {"operationId": f"replace{title}", "parameters": name},
        f"Patch{title}": {"operationId": f"patch{title}", "parameters": name},
        f"Delete{title}": {"operationId": f"delete{title}", "parameters": name},
    }


def _item_operations(
    kind: str, module: items.Handlers, data: dict[str, Any], plural: str | None = None
) -> list[Operation]:
    title = kind.capitalize()
    plural = plural or f"{kind}s"
    titles = plural.capitalize()
    base = f"/api/{plural}"
    tag = plural
    return [
        Operation(
            "GET",
            base,
            module.list_all,
            Permission.READ,
            f"list{titles}",
            f"List {plural}, from the file and from the API",
            tag,
            data={"type": "array", "items": data},
            errors=_READ,
        ),
        Operation(
            "POST",
            base,
            module.create,
            Permission.WRITE,
            f"create{title}",
            f"Create a {kind}",
            tag,
            body=title,
            data=data,
            status=201,
            errors=_WRITE,
            etag=True,
            links=_item_links(kind),
        ),
        Operation(
            "GET",
            f"{base}/{{id}}",
            module.get,
            Permission.READ,
            f"get{title}",
            f"Read one {kind}",
            tag,
            data=data,
            errors=(*_READ, 404),
            parameters=(_ID,),
            etag=True,
        ),
        Operation(
            "PUT",
            f"{base}/{{id}}",
            module.replace,
            Permission.WRITE,
            f"replace{title}",
            f"Replace an API-made {kind}",
            tag,
            body=f"{title}Replace",
            data=data,
            errors=(*_WRITE, 404, 412),
            parameters=(_ID,),
            etag=True,
            if_match=True,
        ),
        Operation(
            "PATCH",
            f"{base}/{{id}}",
            module.patch,
            Permission.WRITE,
            f"patch{title}",
            f"Change an API-made {kind} with a JSON merge patch (RFC 7396)",
            tag,
            body="MergePatch",
            data=data,
            errors=(*_WRITE, 404, 412),
            parameters=(_ID,),
            etag=True,
            if_match=True,
        ),
        Operation(
            "DELETE",
            f"{base}/{{id}}",
            module.delete,
            Permission.WRITE,
            f"delete{title}",
            f"Delete an API-made {kind}",
            tag,
            errors=(*_READ, 404, 409, 412, 422),
            parameters=(_ID,),
            if_match=True,
        ),
    ]


_STATS = {"type": "object", "additionalProperties": True}

# -- the live status of upstreams (GET /api/load-balancer/status, /api/circuit-breaker/status) --

_INT = {"type": "integer", "minimum": 0}
_SECONDS = {"type": "number", "minimum": 0}
_MAYBE_SECONDS = {"type": ["number", "null"], "minimum": 0}
_WORKERS = {**_INT, "description": "A number of workers."}
_BREAKER_STATE = {"type": "string", "enum": ["closed", "half_open", "open"]}
_WORST_OF_WORKERS = {**_BREAKER_STATE, "description": "The most severe of any worker."}
_BREAKER_COUNTS = {
    "closed": {**_WORKERS, "description": "Workers in which the breaker is closed."},
    "half_open": {**_WORKERS, "description": "Workers in which the breaker is half-open."},
    "open": {**_WORKERS, "description": "Workers in which the breaker is open."},
}
_REFUSED = {
    "type": "object",
    "description": "Requests answered 503 before any attempt, by reason, summed over workers.",
    "properties": {"no_target": _INT, "max_requests": _INT, "max_pending": _INT},
}
_NEXT_PROBE = {
    "next_probe_in": {
        **_MAYBE_SECONDS,
        "description": "Seconds until the soonest open breaker of any worker lets probes "
        "through (half-open); null when no worker's breaker is open.",
    },
    "next_probe_at": {
        "type": ["string", "null"],
        "format": "date-time",
        "description": "The same as a time.",
    },
}
_LB_TARGET = {
    "type": "object",
    "required": ["target", "weight", "health", "breaker", "in_flight", "per_worker"],
    "properties": {
        "target": {"type": "string", "description": "host:port ([IPv6]:port)."},
        "weight": {"type": "integer"},
        "health": {
            "type": "string",
            "enum": ["healthy", "unhealthy", "unknown"],
            "description": "The active health check's verdict; unknown without health "
            "checks or before the first verdict.",
        },
        "healthy": {"type": ["boolean", "null"]},
        "health_check": {
            "type": ["object", "null"],
            "description": "The checker's numbers: checks, failures, consecutive_successes, "
            "consecutive_failures, last_status, last_error, last_check_age (s).",
        },
        "workers": {**_WORKERS, "description": "Workers that reported the target."},
        "healthy_in": {
            **_WORKERS,
            "description": "Workers in which the target is not marked unhealthy by the checker.",
        },
        "selectable_in": {**_WORKERS, "description": "Workers whose balancer may choose it."},
        "in_flight": {**_INT, "description": "Requests in flight to it, summed."},
        "ewma_ms": {
            "type": ["number", "null"],
            "description": "Moving average of the time to the response head (ms), the mean "
            "over the workers that have a sample.",
        },
        "ejected_in": {**_WORKERS, "description": "Workers in which it is ejected."},
        "ejected_for": {**_SECONDS, "description": "The longest ejection left (s)."},
        "ejections": {**_INT, "description": "Outlier ejections, summed."},
        "consecutive_failures": {**_INT, "description": "The most in one worker."},
        "breaker": {
            "type": "object",
            "properties": {
                "state": _WORST_OF_WORKERS,
                **_BREAKER_COUNTS,
                **_NEXT_PROBE,
                "opened_total": _INT,
            },
        },
        "requests": {**_INT, "description": "Attempts sent to it, summed."},
        "failures": {**_INT, "description": "Attempts that failed (5xx or transport)."},
        "open": _INT,
        "idle": _INT,
        "busy": _INT,
        "waiting": _INT,
        "opened_total": {**_INT, "description": "Connections opened."},
        "connect_failures": _INT,
        "pool_timeouts": _INT,
        "reachable": {"type": "boolean"},
        "per_worker": {
            "type": "array",
            "items": {"type": "object", "description": "One worker's view, with its pid."},
        },
    },
}
_LOAD_BALANCER_STATUS = {
    "type": "object",
    "description": "Upstream name -> its balancer, load and targets, summed over workers.",
    "additionalProperties": {
        "type": "object",
        "required": ["balancer", "targets"],
        "properties": {
            "balancer": {"type": "string"},
            "health_checks": {"type": "boolean", "description": "Active checks configured."},
            "in_flight": _INT,
            "panic": {"type": "boolean", "description": "Panic mode in any worker."},
            "panic_in": _WORKERS,
            "retries": _INT,
            "retries_active": _INT,
            "retries_refused": {**_INT, "description": "Retries the budget refused."},
            "refused": _REFUSED,
            "targets": {"type": "array", "items": _LB_TARGET},
            "per_worker": {"type": "array", "items": {"type": "object"}},
        },
    },
}
_CIRCUIT_BREAKER_STATUS = {
    "type": "object",
    "description": "Upstream name -> its circuit breakers, per target, over every worker.",
    "additionalProperties": {
        "type": "object",
        "required": ["enabled", "state", "targets"],
        "properties": {
            "enabled": {"type": "boolean", "description": "A `breaker` is configured."},
            "settings": {
                "type": ["object", "null"],
                "description": "failure_ratio, window (s), min_requests, open_for (s), "
                "half_open_requests, failure_statuses.",
            },
            "state": {**_BREAKER_STATE, "description": "The most severe of any target."},
            "limits": {
                "type": "object",
                "properties": {
                    "max_requests": {"type": ["integer", "null"]},
                    "max_pending": {"type": ["integer", "null"]},
                    "max_retries": {"type": ["integer", "null"]},
                    "refused": _REFUSED,
                },
            },
            "targets": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["target", "state", "states", "per_worker"],
                    "properties": {
                        "target": {"type": "string"},
                        "state": {
                            **_BREAKER_STATE,
                            "description": "The most severe of any worker.",
                        },
                        "states": {"type": "object", "properties": _BREAKER_COUNTS},
                        "window_requests": {**_INT, "description": "In the rolling window."},
                        "window_failures": _INT,
                        "failure_ratio": {"type": ["number", "null"]},
                        "opened_total": _INT,
                        **_NEXT_PROBE,
                        "per_worker": {"type": "array", "items": {"type": "object"}},
                    },
                },
            },
        },
    },
}

# -- the OAuth2 authorization server (admin.oauth; 404 while it is off) --------------------------

_CLIENT_ID = {
    "name": "client_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
}
_OAUTH_CLIENT_AUTH = ({"oauthClient": []}, {})  # Basic, or client_secret in the form
_OAUTH_OPERATIONS = [
    Operation(
        "POST",
        "/oauth/token",
        oauth.token,
        Permission.PUBLIC,
        "oauthToken",
        "OAuth2 token endpoint: client_credentials and refresh_token grants (RFC 6749)",
        "oauth",
        form="OAuthTokenRequest",
        raw=_ref("OAuthTokenResponse"),
        errors=(404,),
        oauth_errors=(400, 401),
        security=_OAUTH_CLIENT_AUTH,
    ),
    Operation(
        "POST",
        "/oauth/revoke",
        oauth.revoke,
        Permission.PUBLIC,
        "oauthRevoke",
        "Revoke an access or refresh token (RFC 7009); 200 for unknown tokens too",
        "oauth",
        form="OAuthTokenForm",
        raw={"type": "object"},
        errors=(404,),
        oauth_errors=(400, 401),
        security=_OAUTH_CLIENT_AUTH,
    ),
    Operation(
        "POST",
        "/oauth/introspect",
        oauth.introspect,
        Permission.PUBLIC,
        "oauthIntrospect",
        "Whether a token is active, and its claims (RFC 7662)",
        "oauth",
        form="OAuthTokenForm",
        raw=_ref("OAuthIntrospection"),
        errors=(404,),
        oauth_errors=(400, 401),
        security=_OAUTH_CLIENT_AUTH,
    ),
    Operation(
        "GET",
        "/oauth/jwks.json",
        oauth.jwks,
        Permission.PUBLIC,
        "oauthJwks",
        "The public keys that verify access tokens (JWKS)",
        "oauth",
        raw=_ref("OAuthJWKS"),
        errors=(404,),
    ),
    *(
        Operation(
            "GET",
            path,
            oauth.metadata,
            Permission.PUBLIC,
            operation_id,
            summary,
            "oauth",
            raw=_ref("OAuthServerMetadata"),
            errors=(404,),
        )
        for path, operation_id, summary in (
            (
                "/.well-known/oauth-authorization-server",
                "oauthServerMetadata",
                "Authorization server metadata (RFC 8414)",
            ),
            (
                "/.well-known/openid-configuration",
                "oauthOpenidConfiguration",
                "The same metadata at the OpenID Connect discovery path",
            ),
        )
    ),
    Operation(
        "GET",
        "/api/oauth/clients",
        oauth_clients.list_clients,
        Permission.READ,
        "listOAuthClients",
        "List OAuth2 clients (never their secrets)",
        "oauth",
        data={"type": "array", "items": _ref("OAuthClient")},
        errors=(*_READ, 404),
    ),
    Operation(
        "POST",
        "/api/oauth/clients",
        oauth_clients.create_client,
        Permission.WRITE,
        "createOAuthClient",
        "Register an OAuth2 client; its client_secret is in this answer only",
        "oauth",
        body="OAuthClientCreate",
        data=_ref("OAuthClient"),
        status=201,
        errors=(*_WRITE, 404),
        etag=True,
    ),
    Operation(
        "GET",
        "/api/oauth/clients/{client_id}",
        oauth_clients.get_client,
        Permission.READ,
        "getOAuthClient",
        "Read one OAuth2 client",
        "oauth",
        data=_ref("OAuthClient"),
        errors=(*_READ, 404),
        parameters=(_CLIENT_ID,),
        etag=True,
    ),
    Operation(
        "DELETE",
        "/api/oauth/clients/{client_id}",
        oauth_clients.delete_client,
        Permission.WRITE,
        "deleteOAuthClient",
        "Delete an OAuth2 client and its refresh tokens",
        "oauth",
        errors=(400, *_READ, 404, 412),
        parameters=(_CLIENT_ID,),
        if_match=True,
    ),
    Operation(
        "POST",
        "/api/oauth/clients/{client_id}/secret",
        oauth_clients.rotate_secret,
        Permission.WRITE,
        "rotateOAuthClientSecret",
        "Replace a client's secret (If-Match honoured); the new one is in this answer only",
        "oauth",
        data=_ref("OAuthClient"),
        errors=(400, *_READ, 404, 412),
        parameters=(_CLIENT_ID,),
        etag=True,
    ),
    Operation(
        "GET",
        "/api/oauth/keys",
        oauth_clients.list_keys,
        Permission.READ,
        "listOAuthSigningKeys",
        "The signing keys in the JWKS (never a private part)",
        "oauth",
        data={"type": "array", "items": _ref("OAuthSigningKey")},
        errors=(*_READ, 404, 503),
    ),
    Operation(
        "POST",
        "/api/oauth/keys/rotate",
        oauth_clients.rotate_keys,
        Permission.USERS,
        "rotateOAuthSigningKey",
        "Make a new signing key; the replaced ones verify their tokens until they expire",
        "oauth",
        data=_ref("OAuthSigningKey"),
        status=201,
        errors=(*_READ, 404, 503),
    ),
]

OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "/health",
        status.health,
        Permission.PUBLIC,
        "health",
        "Liveness: the admin API answers",
        "status",
        data={"type": "object"},
    ),
    Operation(
        "GET",
        "/health/ready",
        observe.ready,
        Permission.PUBLIC,
        "ready",
        "Readiness: the store and every worker answer, upstreams reachable",
        "status",
        data={"type": "object"},
        errors=(503,),
    ),
    Operation(
        "GET",
        "/metrics",
        observe.metrics,
        Permission.READ,
        "metrics",
        "Prometheus metrics, summed over the workers",
        "status",
        errors=(*_READ, 404),
        text="text/plain",
    ),
    Operation(
        "GET",
        "/api/status",
        status.status,
        Permission.READ,
        "status",
        "Version, uptime, workers, config version and counts",
        "status",
        data=_ref("Status"),
        errors=_READ,
    ),
    Operation(
        "POST",
        "/api/auth/login",
        auth.login,
        Permission.PUBLIC,
        "login",
        "Trade a username and password for a token",
        "auth",
        body="Login",
        data=_ref("Token"),
        errors=(400, 401, 413, 415, 422, 429),
    ),
    Operation(
        "POST",
        "/api/auth/logout",
        auth.logout,
        Permission.READ,
        "logout",
        "End every token of the caller (its token version is bumped)",
        "auth",
        errors=(*_READ, 409),
    ),
    Operation(
        "GET",
        "/api/auth/me",
        auth.me,
        Permission.READ,
        "me",
        "Who the token belongs to",
        "auth",
        data={"type": "object"},
        errors=_READ,
    ),
    *_item_operations("route", items.handlers(items.ROUTE), _ROUTE_DATA),
    *_item_operations("upstream", items.handlers(items.UPSTREAM), _UPSTREAM_DATA),
    *_item_operations("policy", items.handlers(items.POLICY), _POLICY_DATA, "policies"),
    *_item_operations("consumer", items.handlers(items.CONSUMER), _CONSUMER_DATA),
    Operation(
        "POST",
        "/api/consumers/{id}/keys",
        api_keys.create_key,
        Permission.WRITE,
        "createApiKey",
        "Make an API key (answered once, stored hashed), optionally rotating another",
        "api keys",
        body="ApiKeyCreate",
        data=_ref("ApiKey"),
        status=201,
        errors=(*_WRITE, 404),
        parameters=(_CONSUMER_ID,),
    ),
    Operation(
        "GET",
        "/api/consumers/{id}/keys",
        api_keys.list_keys,
        Permission.READ,
        "listApiKeys",
        "A consumer's API keys (ids, prefixes and times; never the keys)",
        "api keys",
        data={"type": "array", "items": _ref("ApiKey")},
        errors=(*_READ, 404),
        parameters=(_CONSUMER_ID,),
    ),
    Operation(
        "DELETE",
        "/api/consumers/{id}/keys/{key_id}",
        api_keys.delete_key,
        Permission.WRITE,
        "revokeApiKey",
        "Revoke an API key (refused by every worker within a second)",
        "api keys",
        data=_ref("ApiKey"),
        errors=(*_READ, 404, 409, 422),
        parameters=(_CONSUMER_ID, _KEY_ID),
    ),
    Operation(
        "GET",
        "/api/consumers/{id}/usage",
        api_keys.usage,
        Permission.READ,
        "apiKeyUsage",
        "Requests and last use per API key, summed over the workers",
        "api keys",
        data=_ref("ApiKeyUsage"),
        errors=(*_READ, 404, 503),
        parameters=(_CONSUMER_ID,),
    ),
    Operation(
        "GET",
        "/api/users",
        auth.list_users,
        Permission.USERS,
        "listUsers",
        "Every admin API user (never a password hash)",
        "users",
        data={"type": "array", "items": _ref("User")},
        errors=_READ,
    ),
    Operation(
        "POST",
        "/api/users",
        auth.create_user,
        Permission.USERS,
        "createUser",
        "Add an admin API user",
        "users",
        body="UserCreate",
        data=_ref("User"),
        status=201,
        errors=_WRITE,
    ),
    Operation(
        "GET",
        "/api/users/{username}",
        auth.get_user,
        Permission.USERS,
        "getUser",
        "Read a user (never its password hash)",
        "users",
        data=_ref("User"),
        errors=(*_READ, 404),
        parameters=(_USERNAME,),
    ),
    Operation(
        "PUT",
        "/api/users/{username}",
        auth.update_user,
        Permission.USERS,
        "updateUser",
        "Change a user's password and/or role (or add the user, given both)",
        "users",
        body="UserUpdate",
        data=_ref("User"),
        also=(201,),
        errors=(*_WRITE, 404),
        parameters=(_USERNAME,),
    ),
    Operation(
        "DELETE",
        "/api/users/{username}",
        auth.delete_user,
        Permission.USERS,
        "deleteUser",
        "Delete a user (its tokens stop working); never the last admin (409)",
        "users",
        errors=(*_READ, 404, 409),
        parameters=(_USERNAME,),
    ),
    Operation(
        "GET",
        "/api/load-balancer/status",
        status.load_balancer,
        Permission.READ,
        "loadBalancerStatus",
        "Upstream targets: health, weight, load, latency, ejection and breaker state",
        "status",
        data=_LOAD_BALANCER_STATUS,
        errors=_READ,
    ),
    Operation(
        "GET",
        "/api/circuit-breaker/status",
        status.circuit_breakers,
        Permission.READ,
        "circuitBreakerStatus",
        "Circuit breakers per upstream target: state, counts, next probe time",
        "status",
        data=_CIRCUIT_BREAKER_STATUS,
        errors=_READ,
    ),
    Operation(
        "GET",
        "/api/websocket/stats",
        status.websockets,
        Permission.READ,
        "websocketStats",
        "WebSocket tunnel counts",
        "status",
        data=_STATS,
        errors=_READ,
    ),
    Operation(
        "GET",
        "/api/logs",
        logs.query_logs,
        Permission.READ,
        "requestLogs",
        "Request logs, newest first",
        "logs",
        data=_ref("LogPage"),
        errors=(400, *_READ),
        parameters=_LOG_PARAMETERS,
    ),
    *_OAUTH_OPERATIONS,
    Operation(
        "GET",
        "/api/audit",
        audit.query_audit,
        Permission.USERS,
        "auditLog",
        "The audit trail of admin writes, newest first",
        "audit",
        data=_ref("AuditPage"),
        errors=(400, *_READ),
        parameters=_AUDIT_PARAMETERS,
    ),
]


# -- rate limits (GET /api/rate-limits) ---------------------------------------------------------

_NULLABLE_STRING = {"type": ["string", "null"]}
_RATE_LIMIT_POLICY = {
    "type": "object",
    "required": ["name", "algorithm", "key", "backend", "used_by"],
    "properties": {
        "name": {"type": "string", "description": "Its key under `policies`, or where inline."},
        "algorithm": {"type": "string"},
        "rate": {**_NULLABLE_STRING, "description": "Like `100/s`; null: only tiers limit."},
        "burst": {"type": ["integer", "null"]},
        "key": {"type": "array", "items": {"type": "string"}},
        "cost": _INT,
        "tiers": {"type": "object", "additionalProperties": {"type": "object"}},
        "backend": {"type": "string", "enum": ["local", "redis"]},
        "redis_url": {**_NULLABLE_STRING, "description": "Without its password."},
        "on_backend_error": {"type": "string", "enum": ["allow", "deny"]},
        "headers": {"type": "boolean"},
        "legacy_headers": {"type": "boolean"},
        "used_by": {"type": "array", "items": {"type": "string"}},
    },
}
_RATE_LIMIT_STATE = {
    "type": "object",
    "description": "What a request with this key would meet now (nothing is taken).",
    "properties": {
        "backend": {"type": "string"},
        "tier": {"type": "string"},
        "key": {"type": "array", "items": {"type": "string"}},
        "allowed": {"type": "boolean", "description": "A request of cost 0 passes."},
        "limit": {"type": "number"},
        "remaining": {"type": "number"},
        "reset": {"type": "number", "description": "Seconds until whole again."},
        "retry_after": {"type": "number"},
    },
}
_RATE_LIMIT_PARAMETERS = (
    {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "The policy: its key under `policies`, or where it is written inline "
        "(`routes.api.policies[0]`).",
        "schema": {"type": "string", "pattern": rate_limits.POLICY_NAME_PATTERN},
    },
    {
        "name": "key",
        "in": "query",
        "description": "The key's values, one parameter per part of the policy's `key` in "
        "order (or one client address): the answer then has the key's `state`.",
        "schema": {
            "type": "array",
            "maxItems": rate_limits.MAX_KEY_VALUES,
            "items": {"type": "string", "maxLength": rate_limits.MAX_VALUE},
        },
        "style": "form",
        "explode": True,
    },
    {
        "name": "tier",
        "in": "query",
        "description": "With `key`: the consumer tier whose limit to look at (default: the "
        "policy's rate).",
        "schema": {"type": "string", "pattern": NAME_PATTERN},
    },
)
OPERATIONS.extend(
    (
        Operation(
            "GET",
            "/api/rate-limits",
            rate_limits.rate_limits,
            Permission.READ,
            "rateLimits",
            "Every rate limit of the running config, its settings and users",
            "status",
            data={
                "type": "object",
                "properties": {"policies": {"type": "array", "items": _RATE_LIMIT_POLICY}},
            },
            errors=_READ,
        ),
        Operation(
            "GET",
            "/api/rate-limits/{name}",
            rate_limits.rate_limit,
            Permission.READ,
            "rateLimit",
            "One rate limit, and with `key` the live state of that key",
            "status",
            data={
                "type": "object",
                "properties": {"policy": _RATE_LIMIT_POLICY, "state": _RATE_LIMIT_STATE},
            },
            errors=(400, *_READ, 404, 409, 503),
            parameters=_RATE_LIMIT_PARAMETERS,
        ),
    )
)


# -- the document ------------------------------------------------------------------------------

_ERROR_DESCRIPTIONS = {
    400: "Malformed request (bad JSON, bad query parameter)",
    401: "No valid token",
    403: "The token's role may not do this",
    404: "No such item",
    409: "The item is defined in the config file, the name is taken, the route would shadow "
    "a file route, or the change would leave no admin",
    412: "If-Match does not match the item's version",
    413: "The body is too large",
    415: "The body is not JSON",
    422: "The document is not a valid config item; error.path says where",
    429: "Too many login attempts: wait Retry-After seconds",
    503: "The store is not reachable",
}


def _envelope(data: dict[str, Any] | None) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "success": {"type": "boolean", "enum": [True]},
        "message": {"type": "string"},
    }
    if data is not None:
        properties["data"] = data
    return {"type": "object", "required": ["success"], "properties": properties}


def _operation(op: Operation) -> dict[str, Any]:
    success: dict[str, Any] = {
        "description": "Success",
        "content": {"application/json": {"schema": _envelope(op.data)}},
    }
    if op.text is not None:
        success["content"] = {op.text: {"schema": {"type": "string"}}}
    if op.raw is not None:
        success["content"] = {"application/json": {"schema": op.raw}}
    headers: dict[str, Any] = {}
    if op.etag:
        headers["ETag"] = {
            "description": 'The item\'s version as an entity tag ("3"); absent for file items.',
            "schema": {"type": "string"},
        }
    if op.status == 201:
        headers["Location"] = {"description": "The new item's URL", "schema": {"type": "string"}}
    if headers:
        success["headers"] = headers
    if op.links:
        success["links"] = op.links
    responses: dict[str, Any] = {str(op.status): success}
    for code in op.also:
        responses[str(code)] = {**success, "description": "Success (created)"}
    for code in sorted(set(op.errors)):
        responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    for code in op.oauth_errors:
        responses[str(code)] = {"$ref": f"#/components/responses/OAuthE{code}"}
    responses["default"] = {"$ref": "#/components/responses/Error"}
    result: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    parameters = list(op.parameters)
    if op.if_match:
        parameters.append(
            {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "description": 'Apply only if the item is at this version ("3"); else 412.',
                "schema": {"type": "string", "pattern": IF_MATCH_PATTERN},
            }
        )
    if parameters:
        result["parameters"] = parameters
    if op.body is not None:
        content = {"application/json": {"schema": _ref(op.body)}}
        if op.method == "PATCH":
            content = {MERGE_PATCH_TYPE: {"schema": _ref(op.body)}, **content}
        result["requestBody"] = {"required": True, "content": content}
    if op.form is not None:
        form = {"application/x-www-form-urlencoded": {"schema": _ref(op.form)}}
        result["requestBody"] = {"required": True, "content": form}
    if op.security is not None:
        result["security"] = list(op.security)
    elif op.permission is Permission.PUBLIC:
        result["security"] = []
    else:
        result["description"] = f"Needs the role {op.permission!r} or higher."
    return result


def document(version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the admin API (cached; treat it as read-only). The policy
    schemas cover the families known when it is made (the builtin ones and the plugins)."""
    return _document(version, schemas.refresh())


@functools.cache
def _document(version: str, families: int) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    error = {"application/json": {"schema": _ref("Error")}}
    responses = {
        f"E{code}": {"description": text, "content": error}
        for code, text in _ERROR_DESCRIPTIONS.items()
    }
    responses["Error"] = {"description": "An error, as the envelope", "content": error}
    oauth_error = {"application/json": {"schema": _ref("OAuthError")}}
    responses["OAuthE400"] = {
        "description": "An OAuth2 error (RFC 6749 section 5.2): invalid_request, invalid_grant, "
        "unauthorized_client, unsupported_grant_type, invalid_scope",
        "content": oauth_error,
    }
    responses["OAuthE401"] = {
        "description": "invalid_client: unknown client or wrong secret (WWW-Authenticate: Basic)",
        "content": oauth_error,
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Isekai admin API",
            "version": version,
            "description": "Routes, upstreams, policies, users, status and request logs of an "
            "Isekai gateway. Every body is the envelope {success, message?, data?, error?}. "
            "See docs/admin-api.md.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": name}
            for name in (
                "auth",
                "routes",
                "upstreams",
                "policies",
                "users",
                "status",
                "logs",
                "oauth",
            )
        ],
        "paths": paths,
        "components": {
            "schemas": copy.deepcopy(COMPONENTS),
            "responses": responses,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "oauthClient": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "OAuth2 client_secret_basic: client_id and client_secret.",
                },
            },
        },
    }


def to_openapi_30(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` (3.1) rewritten for OpenAPI 3.0 readers such as Swagger UI 4.

    Type lists become one type plus ``nullable`` (or ``anyOf``), ``{"type": "null"}``
    alternatives become ``nullable``, and 3.1-only keywords are dropped. For display only.
    """

    def schema(node: Any) -> Any:
        if isinstance(node, list):
            return [schema(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {key: schema(value) for key, value in node.items()}
        kind = out.get("type")
        if isinstance(kind, list):
            rest = [t for t in kind if t != "null"]
            if len(rest) < len(kind):
                out["nullable"] = True
            if len(rest) == 1:
                out["type"] = rest[0]
            else:
                del out["type"]
                out["anyOf"] = [{"type": t} for t in rest]
        for key in ("anyOf", "oneOf"):
            if key in out:
                options = [o for o in out[key] if o != {"type": "null"}]
                if len(options) < len(out[key]):
                    out["nullable"] = True
                out[key] = options
                if len(options) == 1 and set(out) <= {key, "nullable", "description"}:
                    only = options[0]
                    del out[key]
                    out = {**only, **out} if "$ref" not in only else {"allOf": [only], **out}
        if "const" in out:
            out["enum"] = [out.pop("const")]
        if out.get("type") == "null":
            del out["type"]
            out.update(enum=[None], nullable=True)
        if isinstance(out.get("exclusiveMinimum"), (int, float)):
            out["minimum"] = out.pop("exclusiveMinimum")
            out["exclusiveMinimum"] = True
        if isinstance(out.get("examples"), list):
            examples = out.pop("examples")
            if examples:
                out["example"] = examples[0]
        for key in ("$schema", "$id", "propertyNames", "unevaluatedProperties", "if", "then"):
            out.pop(key, None)
        return out

    result = copy.deepcopy(doc)
    result["openapi"] = "3.0.3"
    result.pop("jsonSchemaDialect", None)
    result["info"].get("license", {}).pop("identifier", None)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: schema(value) if key == "schema" else walk(value)
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    result["paths"] = walk(result["paths"])
    result["components"]["responses"] = walk(result["components"]["responses"])
    result["components"]["schemas"] = {
        name: schema(value) for name, value in result["components"]["schemas"].items()
    }
    return result


# -- handlers ----------------------------------------------------------------------------------


def _json(body: Any) -> web.Response:
    return web.Response(text=dumps(body), content_type="application/json")


async def openapi_json(request: web.Request) -> web.Response:
    return _json(document(_version()))


async def openapi_30_json(request: web.Request) -> web.Response:
    return _json(_document_30(_version()))


def _document_30(version: str) -> dict[str, Any]:
    return _document_30_for(version, schemas.refresh())


@functools.cache
def _document_30_for(version: str, families: int) -> dict[str, Any]:
    return to_openapi_30(document(version))


def _version() -> str:
    import isekai

    return getattr(isekai, "__version__", "0.0.0")


def swagger_ui_dir() -> Path:
    """The directory of the Swagger UI files shipped by the ``swagger-ui-bundle`` package."""
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


DOCS_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Isekai admin API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/swagger-ui-standalone-preset.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""

DOCS_INIT = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/docs/openapi-3.0.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "BaseLayout",
    persistAuthorization: false
  });
};
"""

_DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self'",
    "X-Content-Type-Options": "nosniff",
}


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_HTML, content_type="text/html", headers=_DOCS_HEADERS)


async def docs_init(request: web.Request) -> web.Response:
    return web.Response(
        text=DOCS_INIT, content_type="application/javascript", headers=_DOCS_HEADERS
    )
