"""Keys and tokens for the JWT tests: real RSA, EC, Ed25519 keys (made once per run), their
JWKs and PEMs, tokens signed with PyJWT, and hand-made tokens for the attacks PyJWT refuses to
make (``alg: none``, HMAC keyed with a public key's PEM)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from functools import cache
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

SECRET = "s" * 16 + "-local-hmac-secret-0123456789"  # 45 bytes: enough for HS256


@cache
def private_key(kind: str) -> Any:
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind.startswith("ec"):
        return ec.generate_private_key(ec.SECP256R1())
    if kind.startswith("ed"):
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def public_pem(kind: str) -> str:
    return (
        private_key(kind)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def jwk(kind: str, kid: str | None, alg: str | None = None) -> dict[str, Any]:
    """The public JWK of key ``kind`` with ``kid`` (and ``alg`` when given)."""
    maker: Any = {"rs": RSAAlgorithm, "ec": ECAlgorithm, "ed": OKPAlgorithm}[kind[:2]]
    found = json.loads(maker.to_jwk(private_key(kind).public_key()))
    if kid is not None:
        found["kid"] = kid
    if alg is not None:
        found["alg"] = alg
    return found


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"sub": "acme", "iss": ISSUER, "aud": "api", "iat": now, "exp": now + 600}
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


ISSUER = "https://idp.example.com/"


def sign(kind: str, payload: dict[str, Any], alg: str, kid: str | None, **headers: Any) -> str:
    """A token signed by PyJWT with key ``kind`` (``secret`` for the HMAC secret)."""
    key: Any = SECRET if kind == "secret" else private_key(kind)
    fields = dict(headers)
    if kid is not None:
        fields["kid"] = kid
    return jwt.encode(payload, key, algorithm=alg, headers=fields or None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """header.payload.signature, HMAC-SHA256 with ``key`` (empty signature when None)."""
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    if key is None:
        return signing + "."
    digest = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(digest)
