"""JSON Schemas of the OAuth2 admin endpoints and token endpoints (part of ``COMPONENTS``).

Request schemas are what the handlers validate with (``schemas.first_error``); response
schemas describe the answers in the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

from isekai.config import units

__all__ = ["OAUTH_COMPONENTS", "SCOPE_PATTERN"]

SCOPE_PATTERN = r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$"  # an RFC 6749 scope-token, bounded
CLIENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_GRANT = {"type": "string", "enum": ["client_credentials", "refresh_token"]}
_TTL = {
    "description": "Seconds (1-86400) or a duration like 15m.",
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": 86400},
        {"type": "string", "pattern": units.DURATION_PATTERN, "maxLength": 32},
    ],
}
_TIME = {"type": "string", "format": "date-time"}
# a form parameter: no control characters (refused with invalid_request)
_TEXT = {"type": "string", "pattern": r"^[^\x00-\x1f\x7f]*$", "maxLength": 8192}


def _text(description: str) -> dict[str, Any]:
    return {**_TEXT, "description": description}


CLIENT_CREATE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "pattern": r"^[^\x00-\x1f\x7f]+$",
            "description": "What the client is, for people.",
        },
        "scopes": {
            "type": "array",
            "maxItems": 64,
            "uniqueItems": True,
            "items": {"type": "string", "pattern": SCOPE_PATTERN},
            "description": "The scopes the client may ask for (default: none).",
        },
        "grant_types": {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": _GRANT,
            "description": "Default: [client_credentials].",
        },
        "consumer": {
            "type": ["string", "null"],
            "pattern": units.NAME_PATTERN,
            "description": "The consumer the client's tokens name in the `consumer` claim.",
        },
        "access_token_ttl": _TTL,
    },
}

CLIENT: dict[str, Any] = {
    "type": "object",
    "required": ["client_id", "name", "scopes", "grant_types", "version"],
    "properties": {
        "client_id": {"type": "string", "pattern": CLIENT_ID_PATTERN},
        "client_secret": {
            "type": "string",
            "description": "Only in the answer that made it: it is stored hashed.",
        },
        "name": {"type": "string"},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "grant_types": {"type": "array", "items": _GRANT},
        "consumer": {"type": ["string", "null"]},
        "access_token_ttl": {"type": ["number", "null"], "description": "Seconds."},
        "version": {"type": "integer", "minimum": 1},
        "created_at": _TIME,
        "updated_at": _TIME,
    },
}

SIGNING_KEY: dict[str, Any] = {
    "type": "object",
    "required": ["kid", "algorithm", "state"],
    "properties": {
        "kid": {"type": "string"},
        "algorithm": {"type": "string", "enum": ["RS256", "ES256"]},
        "state": {"type": "string", "enum": ["active", "retired"]},
        "created_at": _TIME,
        "retired_at": {"type": ["string", "null"], "format": "date-time"},
        "published_until": {"type": ["string", "null"], "format": "date-time"},
    },
}

TOKEN_REQUEST: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["grant_type"],
    "properties": {
        "grant_type": _GRANT,
        "scope": _text("Space-separated scopes."),
        "refresh_token": _text("For grant_type=refresh_token."),
        "client_id": _text("client_secret_post only."),
        "client_secret": _text("client_secret_post only."),
    },
}

TOKEN_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in"],
    "properties": {
        "access_token": {"type": "string", "description": "A JWT (typ at+jwt)."},
        "token_type": {"type": "string", "enum": ["Bearer"]},
        "expires_in": {"type": "integer"},
        "scope": {"type": "string"},
        "refresh_token": {"type": "string"},
    },
}

TOKEN_FORM: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["token"],
    "properties": {
        "token": _text("The token."),
        "token_type_hint": {"type": "string", "enum": ["access_token", "refresh_token"]},
        "client_id": _text("client_secret_post only."),
        "client_secret": _text("client_secret_post only."),
    },
}

INTROSPECTION: dict[str, Any] = {
    "type": "object",
    "required": ["active"],
    "properties": {
        "active": {"type": "boolean"},
        "token_type": {"type": "string", "enum": ["Bearer", "refresh_token"]},
        "scope": {"type": "string"},
        "client_id": {"type": "string"},
        "sub": {"type": "string"},
        "exp": {"type": "integer"},
        "iat": {"type": "integer"},
        "iss": {"type": "string"},
        "aud": {"type": "string"},
        "jti": {"type": "string"},
        "consumer": {"type": "string"},
    },
}

OAUTH_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "string",
            "description": "RFC 6749 section 5.2: invalid_request, invalid_client, "
            "invalid_grant, unauthorized_client, unsupported_grant_type, invalid_scope.",
        },
        "error_description": {"type": "string"},
    },
}

JWKS: dict[str, Any] = {
    "type": "object",
    "required": ["keys"],
    "properties": {"keys": {"type": "array", "items": {"type": "object"}}},
}

SERVER_METADATA: dict[str, Any] = {
    "type": "object",
    "required": ["issuer", "token_endpoint", "jwks_uri"],
    "properties": {
        "issuer": {"type": "string"},
        "token_endpoint": {"type": "string"},
        "jwks_uri": {"type": "string"},
        "revocation_endpoint": {"type": "string"},
        "introspection_endpoint": {"type": "string"},
        "grant_types_supported": {"type": "array", "items": {"type": "string"}},
    },
}

OAUTH_COMPONENTS: dict[str, dict[str, Any]] = {
    "OAuthClientCreate": CLIENT_CREATE,
    "OAuthClient": CLIENT,
    "OAuthSigningKey": SIGNING_KEY,
    "OAuthTokenRequest": TOKEN_REQUEST,
    "OAuthTokenResponse": TOKEN_RESPONSE,
    "OAuthTokenForm": TOKEN_FORM,
    "OAuthIntrospection": INTROSPECTION,
    "OAuthError": OAUTH_ERROR,
    "OAuthJWKS": JWKS,
    "OAuthServerMetadata": SERVER_METADATA,
}
