"""JSON Schemas (draft 2020-12) of what the admin API accepts and answers.

The handlers validate request bodies with these, and ``openapi.py`` publishes the same objects
under ``components.schemas``. The route and upstream schemas (and RouteMatch, Respond,
RouteLimits) are not written here: ``isekai.config.jsonschema`` makes them from the config
schema's field metadata, the one description the YAML loader reads by, so they say what the
loader checks as far as JSON Schema can, and are never stricter than the loader. What they
cannot say (an upstream that exists, two routes that tie, a rewrite naming a parameter of the
path) the loader still judges, so a document valid here can still be answered with 422.

As in YAML, ``null`` for an optional key is the same as leaving the key out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from isekai.admin.oauth_schemas import OAUTH_COMPONENTS
from isekai.admin.roles import MAX_PASSWORD_BYTES, MIN_PASSWORD, ROLES
from isekai.config import policies, units
from isekai.config.consumers import Consumer
from isekai.config.jsonschema import class_schema, classes
from isekai.config.observability import RouteAccessLog
from isekai.config.policies import PolicySpec
from isekai.config.schema import Respond, Route, RouteLimits, RouteMatch, Upstream

__all__ = ["COMPONENTS", "first_error", "refresh", "validator"]

NAME_PATTERN = units.NAME_PATTERN
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$"

_NULL = {"type": "null"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _config_ref(cls: type) -> str:
    return f"#/components/schemas/{cls.__name__}"


_NAME = {"type": "string", "pattern": NAME_PATTERN, "maxLength": 128}
_NO_NUL = "^[^\\u0000]*$"  # http.read_json answers 400 to a NUL in any JSON string


def _api(schema: Any) -> Any:
    # a config schema as the API takes it: free-form strings say they hold no NUL
    if isinstance(schema, list):
        return [_api(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _api(value) for key, value in schema.items()}
    if out.get("type") == "string" and "pattern" not in out and "allOf" not in out:
        out["pattern"] = _NO_NUL
    return out


def _config_schema(cls: type) -> dict[str, Any]:
    return _api(class_schema(cls, _config_ref))


# The config objects the API takes, made from the config schema's metadata (one description)
CONFIG_COMPONENTS = {
    cls.__name__: _config_schema(cls) for cls in (RouteMatch, Respond, RouteLimits, RouteAccessLog)
}

ROUTE = {
    **_config_schema(Route),
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
}

# PUT: the name comes from the URL (a body name must be the same)
ROUTE_REPLACE = {
    **ROUTE,
    "description": "A route; `name` may be left out (it is the one in the URL).",
    "examples": [{"match": {"path": "/api/users/{id}"}, "upstream": "users", "timeout": "5s"}],
    "required": [key for key in ROUTE["required"] if key != "name"],
}

_UPSTREAM = _config_schema(Upstream)
UPSTREAM = {
    **_UPSTREAM,
    "description": "An upstream as in YAML `upstreams`, with its `name` (the YAML key).",
    "examples": [{"name": "payments", "targets": ["10.0.0.7:9000"], "connect_timeout": "2s"}],
    "required": ["name", *_UPSTREAM["required"]],
    "properties": {
        "name": {**_NAME, "description": "The upstream's name."},
        **_UPSTREAM["properties"],
    },
}

UPSTREAM_REPLACE = {
    **UPSTREAM,
    "description": "An upstream; `name` may be left out (it is the one in the URL).",
    "examples": [{"targets": ["10.0.0.7:9000", "10.0.0.8:9000"], "read_timeout": "20s"}],
    "required": _UPSTREAM["required"],
}

# -- consumers: their keys are made and revoked at /api/consumers/{name}/keys, never set here --

_CONSUMER = _config_schema(Consumer)
_CONSUMER_FIELDS = {k: v for k, v in _CONSUMER["properties"].items() if k != "keys"}
CONSUMER = {
    **_CONSUMER,
    "description": "A consumer as in the YAML `consumers` list, without `keys` (made and "
    "revoked at `/api/consumers/{name}/keys`).",
    "examples": [{"name": "acme", "tier": "premium", "tags": ["partner"]}],
    "properties": _CONSUMER_FIELDS,
}
CONSUMER_REPLACE = {
    **{key: value for key, value in CONSUMER.items() if key != "required"},
    "description": "A consumer; `name` may be left out (it is the one in the URL). Its keys "
    "are kept.",
    "examples": [{"tier": "free", "tags": ["trial"]}],
}
CONSUMER_KEY_VIEW = {
    "type": "object",
    "description": "An API key as shown: never the key or its hash.",
    "required": ["id"],
    "properties": {
        "id": {"type": "string"},
        "prefix": {"type": ["string", "null"]},
        "created_at": {"type": ["number", "null"], "description": "Unix seconds."},
        "expires_at": {"type": ["number", "null"], "description": "Unix seconds; null: never."},
    },
}

# -- policies: a union over the families (made again when a family is registered, `refresh`) --


def _named(branch: dict[str, Any], required: bool) -> dict[str, Any]:
    # a family's object with the policy's `name` (the YAML key) added
    return {
        **branch,
        "properties": {
            "name": {**_NAME, "description": "The policy's name."},
            **branch["properties"],
        },
        "required": ["name", *branch["required"]] if required else branch["required"],
    }


def _policy_components() -> dict[str, dict[str, Any]]:
    found = {name: _config_schema(cls) for name, cls in classes(PolicySpec).items()}
    families = [found[cls.__name__] for _, cls in policies.family_classes()]
    example = {"name": "web_cors", "type": "cors", "origins": ["https://app.example.com"]}
    found["Policy"] = {
        "description": "A policy as in YAML `policies`, with its `name` (the YAML key); "
        "`type` names the family, whose keys follow.",
        "oneOf": [_named(branch, True) for branch in families],
        "examples": [example],
    }
    found["PolicyReplace"] = {
        "description": "A policy; `name` may be left out (it is the one in the URL).",
        "oneOf": [_named(branch, False) for branch in families],
        "examples": [{"type": "fault", "abort": {"status": 503, "percent": 5}}],
    }
    return found


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
        "username": {"type": "string", "pattern": USERNAME_PATTERN, "maxLength": 64},
        "password": {"type": "string", "minLength": 1, "maxLength": 1024, "pattern": _NO_NUL},
    },
}

_PASSWORD = {
    "type": "string",
    "minLength": MIN_PASSWORD,
    "maxLength": MAX_PASSWORD_BYTES,
    "pattern": _NO_NUL,
}

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

POLICY_RESOURCE = {
    "type": "object",
    "required": ["name", "source", "version", "spec"],
    "properties": {
        **RESOURCE_META,
        "spec": {"type": "object", "description": "The policy, without its name."},
    },
}

CONSUMER_RESOURCE = {
    "type": "object",
    "required": ["name", "source", "version", "spec"],
    "properties": {
        **RESOURCE_META,
        "spec": {
            "type": "object",
            "description": "The consumer, with its name; its keys without key or hash.",
            "properties": {
                **_CONSUMER_FIELDS,
                "keys": {"type": "array", "items": _ref("ConsumerKeyView")},
            },
        },
    },
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
        "policies": {"type": "integer", "description": "Named policies."},
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
    **CONFIG_COMPONENTS,
    "Upstream": UPSTREAM,
    "UpstreamReplace": UPSTREAM_REPLACE,
    **_policy_components(),
    "Consumer": CONSUMER,
    "ConsumerReplace": CONSUMER_REPLACE,
    "ConsumerKeyView": CONSUMER_KEY_VIEW,
    "MergePatch": MERGE_PATCH,
    "Login": LOGIN,
    "UserCreate": USER_CREATE,
    "UserUpdate": USER_UPDATE,
    "RouteResource": ROUTE_RESOURCE,
    "UpstreamResource": UPSTREAM_RESOURCE,
    "PolicyResource": POLICY_RESOURCE,
    "ConsumerResource": CONSUMER_RESOURCE,
    "User": USER,
    "Token": TOKEN,
    "Error": ERROR,
    "Status": STATUS,
    "LogPage": LOG_PAGE,
    **OAUTH_COMPONENTS,
}

_POLICY_NAMES = set(_policy_components())
_VALIDATORS: dict[str, Draft202012Validator] = {}
_FAMILIES = [policies.families_version()]  # the family set COMPONENTS was made for


def refresh() -> int:
    """Make the policy schemas in `COMPONENTS` again if a family was registered since;
    return the families' version they are made for."""
    version = policies.families_version()
    if version != _FAMILIES[0]:
        stale = [name for name in COMPONENTS if name in _POLICY_NAMES]
        for name in stale:
            del COMPONENTS[name]
        made = _policy_components()
        _POLICY_NAMES.clear()
        _POLICY_NAMES.update(made)
        COMPONENTS.update(made)
        _VALIDATORS.clear()
        _FAMILIES[0] = version
    return version


def validator(name: str) -> Draft202012Validator:
    """A validator for ``COMPONENTS[name]`` that resolves ``#/components/schemas/...``."""
    refresh()
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
    secret = bool(error.absolute_path) and error.absolute_path[-1] in SECRET_KEYS
    return path, _message(error, secret)


SECRET_KEYS = frozenset({"password", "jwt_secret"})  # never echoed in an answer
_PREVIEW = 40  # characters of a refused value shown in a message


def _message(error: ValidationError, secret: bool) -> str:
    # jsonschema's own messages quote the whole value: a secret, or a megabyte, would come
    # back in the answer. Say what was expected and show at most a short preview.
    if secret:
        shown = "the value"
    else:
        text = repr(error.instance)
        shown = text if len(text) <= _PREVIEW else f"{text[:_PREVIEW]}... ({len(text)} chars)"
    template = _TEMPLATES.get(str(error.validator), "{shown} is not valid ({validator})")
    expected = error.validator_value
    if error.validator == "enum":
        expected = ", ".join(map(str, expected))
    return template.format(shown=shown, expected=expected, validator=error.validator)


_TEMPLATES = {
    "maxLength": "{shown} is longer than {expected} characters",
    "minLength": "{shown} is shorter than {expected} characters",
    "pattern": "{shown} does not have the expected form",
    "type": "{shown} is not of type {expected!r}",
    "enum": "{shown} is not one of: {expected}",
    "minimum": "{shown} is less than {expected}",
    "maximum": "{shown} is more than {expected}",
    "exclusiveMinimum": "{shown} must be more than {expected}",
    "exclusiveMaximum": "{shown} must be less than {expected}",
}


DEFAULT_LOG_LIMIT = 50
MAX_LOG_LIMIT = 1000
