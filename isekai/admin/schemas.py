"""JSON Schemas (draft 2020-12) of what the admin API accepts and answers.

The handlers validate request bodies with these, and ``openapi.py`` publishes the same objects
under ``components.schemas``. The route and upstream schemas follow the YAML rules of
docs/configuration.md as far as JSON Schema can say them, and are never stricter than the
loader: a document they refuse, the loader refuses too. What they cannot say (an upstream that
exists, two routes that tie, a rewrite naming a parameter of the path) the loader still judges,
so a document valid here can still be answered with 422.

As in YAML, ``null`` for an optional key is the same as leaving the key out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

__all__ = ["COMPONENTS", "ROLES", "first_error", "validator"]

ROLES = ("admin", "editor", "viewer")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$"
_DURATION_PATTERN = r"^\s*(\d+(\.\d+)?|(\d+(\.\d+)?(ms|s|m|h|d))+)\s*$"
_SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*[A-Za-z]*\s*$"
_TOKEN_PATTERN = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"

_NULL = {"type": "null"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    # null is the same as absent, as in YAML
    return {"anyOf": [schema, _NULL]}


_DURATION = {
    "description": "A duration: 250ms, 10s, 5m, 1h, 7d, 1m30s, or a number of seconds.",
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": _DURATION_PATTERN},
    ],
}
_SIZE = {
    "description": "A size: a number of bytes, or 8KiB, 1MiB, 10KB ...",
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": _SIZE_PATTERN},
    ],
}
_NAME = {"type": "string", "pattern": NAME_PATTERN, "maxLength": 128}

_MATCH = {
    "type": "object",
    "description": "What a request must look like to take the route.",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        "path": {
            "type": "string",
            "pattern": r"^/[^\s?#]*$",
            "description": "A path pattern: /users/{id}, /static/* ...",
        },
        "host": _optional(
            {
                "type": "string",
                "pattern": r"^(\*\.)?[A-Za-z0-9_.\-]+$",
                "description": "api.example.com or *.example.com; absent: any host.",
            }
        ),
        "methods": _optional(
            {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "pattern": _TOKEN_PATTERN},
                "description": "Methods like [GET, POST]; absent: any method.",
            }
        ),
    },
}

_RESPOND = {
    "type": "object",
    "description": "A fixed response sent by the gateway itself.",
    "additionalProperties": False,
    "properties": {
        "status": _optional({"type": "integer", "minimum": 200, "maximum": 599}),
        "headers": _optional(
            {
                "type": "object",
                "additionalProperties": _optional({"type": ["string", "number"]}),
            }
        ),
        "body": _optional({"type": "string"}),
        "json": {"description": "Any JSON value, sent as the body (not with body)."},
    },
}

_ROUTE_LIMITS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "max_body_size": _optional(_SIZE),
        "body_idle_timeout": _optional(_DURATION),
        "websocket_idle_timeout": _optional(_DURATION),
    },
}

_ROUTE_PROPERTIES: dict[str, Any] = {
    "name": _NAME,
    "match": _ref("RouteMatch"),
    "upstream": _optional(_NAME),
    "strip_prefix": _optional({"type": ["string", "boolean"]}),
    "rewrite": _optional({"type": "string", "pattern": r"^/[^?#]*$"}),
    "timeout": _optional(_DURATION),
    "respond": _optional(_ref("Respond")),
    "websocket": _optional({"type": "boolean"}),
    "limits": _optional(_ref("RouteLimits")),
}

ROUTE = {
    "type": "object",
    "description": "A route, exactly as in the YAML `routes` list (docs/configuration.md).",
    "examples": [
        {
            "name": "user",
            "match": {"path": "/api/users/{id}", "methods": ["GET"]},
            "upstream": "users",
            "rewrite": "/users/{id}",
            "timeout": "10s",
        }
    ],
    "additionalProperties": False,
    "required": ["name", "match"],
    "properties": _ROUTE_PROPERTIES,
    "oneOf": [
        {"required": ["upstream"], "properties": {"upstream": {"type": "string"}}},
        {"required": ["respond"], "properties": {"respond": {"type": "object"}}},
    ],
}

# PUT: the name comes from the URL (a body name must be the same)
ROUTE_REPLACE = {
    **ROUTE,
    "description": "A route; `name` may be left out (it is the one in the URL).",
    "examples": [{"match": {"path": "/api/users/{id}"}, "upstream": "users", "timeout": "5s"}],
    "required": ["match"],
}

_UPSTREAM_PROPERTIES: dict[str, Any] = {
    "targets": {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "pattern": r"^.+:[0-9]+$"},
        "description": "host:port of each server; IPv6 in brackets.",
    },
    "scheme": _optional({"type": "string", "pattern": "^[Hh][Tt][Tt][Pp]$"}),
    "connect_timeout": _optional(_DURATION),
    "read_timeout": _optional(_DURATION),
    "max_connections": _optional({"type": "integer", "minimum": 1}),
    "max_keepalive_connections": _optional({"type": "integer", "minimum": 0}),
    "keepalive_expiry": _optional(_DURATION),
}

UPSTREAM = {
    "type": "object",
    "description": "An upstream as in YAML `upstreams`, with its `name` (the YAML key).",
    "examples": [{"name": "payments", "targets": ["10.0.0.7:9000"], "connect_timeout": "2s"}],
    "additionalProperties": False,
    "required": ["name", "targets"],
    "properties": {"name": _NAME, **_UPSTREAM_PROPERTIES},
}

UPSTREAM_REPLACE = {
    **UPSTREAM,
    "description": "An upstream; `name` may be left out (it is the one in the URL).",
    "examples": [{"targets": ["10.0.0.7:9000", "10.0.0.8:9000"], "read_timeout": "20s"}],
    "required": ["targets"],
}

MERGE_PATCH = {
    "type": "object",
    "examples": [{"timeout": "30s", "websocket": None}],
    "description": "A JSON merge patch (RFC 7396): keys set to null are removed.",
}

LOGIN = {
    "type": "object",
    "additionalProperties": False,
    "required": ["username", "password"],
    "properties": {
        "username": {"type": "string", "minLength": 1, "maxLength": 256},
        "password": {"type": "string", "minLength": 1, "maxLength": 1024},
    },
}

_PASSWORD = {"type": "string", "minLength": 8, "maxLength": 72}

USER_CREATE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["username", "password", "role"],
    "properties": {
        "username": {"type": "string", "pattern": USERNAME_PATTERN, "maxLength": 64},
        "password": _PASSWORD,
        "role": {"type": "string", "enum": list(ROLES)},
    },
}

USER_UPDATE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "password": _PASSWORD,
        "role": {"type": "string", "enum": list(ROLES)},
    },
}

# -- responses ---------------------------------------------------------------------------------

_TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}

RESOURCE_META = {
    "name": _NAME,
    "source": {
        "type": "string",
        "enum": ["file", "api"],
        "description": "file: from the YAML file, read-only; api: stored through this API.",
    },
    "version": {"type": ["integer", "null"], "description": "The ETag; null for file items."},
    "created_at": _TIMESTAMP,
    "updated_at": _TIMESTAMP,
}

ROUTE_RESOURCE = {
    "type": "object",
    "required": ["name", "source", "version", "spec"],
    "properties": {**RESOURCE_META, "spec": {"type": "object", "description": "The route."}},
}

UPSTREAM_RESOURCE = {
    "type": "object",
    "required": ["name", "source", "version", "spec"],
    "properties": {
        **RESOURCE_META,
        "spec": {"type": "object", "description": "The upstream, without its name."},
    },
}

USER = {
    "type": "object",
    "required": ["username", "role"],
    "properties": {
        "username": {"type": "string"},
        "role": {"type": "string", "enum": list(ROLES)},
        "created_at": _TIMESTAMP,
    },
}

TOKEN = {
    "type": "object",
    "required": ["token", "token_type", "expires_in", "expires_at", "user"],
    "properties": {
        "token": {"type": "string"},
        "token_type": {"type": "string", "enum": ["Bearer"]},
        "expires_in": {"type": "integer"},
        "expires_at": {"type": "string", "format": "date-time"},
        "user": _ref("User"),
    },
}

ERROR = {
    "type": "object",
    "required": ["success", "message", "error"],
    "properties": {
        "success": {"type": "boolean", "enum": [False]},
        "message": {"type": "string"},
        "error": {
            "type": "object",
            "required": ["code"],
            "properties": {
                "code": {"type": "string"},
                "path": {"type": "string", "description": "Where a 422 points."},
                "config_path": {"type": "string"},
                "item": {"type": ["object", "null"]},
                "request_id": {"type": "string"},
            },
        },
    },
}

STATUS = {
    "type": "object",
    "required": ["version", "uptime", "workers", "config_version", "routes", "upstreams"],
    "properties": {
        "version": {"type": "string"},
        "started_at": {"type": "string", "format": "date-time"},
        "uptime": {"type": "number", "description": "Seconds since the gateway started."},
        "workers": {"type": "integer"},
        "config_version": {"type": "integer"},
        "routes": {"type": "integer"},
        "upstreams": {"type": "integer"},
    },
}

LOG_PAGE = {
    "type": "object",
    "required": ["items", "total", "limit", "offset"],
    "properties": {
        "items": {"type": "array", "items": {"type": "object"}},
        "total": {"type": "integer"},
        "limit": {"type": "integer"},
        "offset": {"type": "integer"},
        "next_offset": {"type": ["integer", "null"]},
    },
}

COMPONENTS: dict[str, dict[str, Any]] = {
    "Route": ROUTE,
    "RouteReplace": ROUTE_REPLACE,
    "RouteMatch": _MATCH,
    "Respond": _RESPOND,
    "RouteLimits": _ROUTE_LIMITS,
    "Upstream": UPSTREAM,
    "UpstreamReplace": UPSTREAM_REPLACE,
    "MergePatch": MERGE_PATCH,
    "Login": LOGIN,
    "UserCreate": USER_CREATE,
    "UserUpdate": USER_UPDATE,
    "RouteResource": ROUTE_RESOURCE,
    "UpstreamResource": UPSTREAM_RESOURCE,
    "User": USER,
    "Token": TOKEN,
    "Error": ERROR,
    "Status": STATUS,
    "LogPage": LOG_PAGE,
}

_VALIDATORS: dict[str, Draft202012Validator] = {}


def validator(name: str) -> Draft202012Validator:
    """A validator for ``COMPONENTS[name]`` that resolves ``#/components/schemas/...``."""
    found = _VALIDATORS.get(name)
    if found is None:
        schema = {**COMPONENTS[name], "components": {"schemas": COMPONENTS}}
        found = _VALIDATORS[name] = Draft202012Validator(schema)
    return found


def _json_path(prefix: str, parts: Iterator[Any]) -> str:
    path = prefix
    for part in parts:
        path = f"{path}[{part}]" if isinstance(part, int) else f"{path}.{part}"
    return path


def first_error(name: str, document: Any, prefix: str) -> tuple[str, str] | None:
    """``(path, message)`` of the most relevant violation of schema ``name``, or None.

    ``path`` starts with ``prefix`` (``route.match.path``); for a missing or unknown key it
    names that key, as the loader does.
    """
    errors = list(validator(name).iter_errors(document))
    if not errors:
        return None
    error: ValidationError = best_match(errors)
    path = _json_path(prefix, iter(error.absolute_path))
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [key for key in error.validator_value if key not in error.instance]
        if missing:
            return f"{path}.{missing[0]}", f"missing required key {missing[0]!r}"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {})
        extra = [key for key in error.instance if key not in allowed]
        if extra:
            return f"{path}.{extra[0]}", f"unknown key {extra[0]!r}; allowed keys: " + ", ".join(
                allowed
            )
    return path, error.message


DEFAULT_LOG_LIMIT = 50
MAX_LOG_LIMIT = 1000
