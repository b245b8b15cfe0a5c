"""The ``jwt`` policy family's config: `JwtConfig` and its keys (`JwtKey`).

A key is one of: an HMAC ``secret`` (HS256/384/512), a PEM public key written inline
(``public_key``) or in a file (``public_key_file``, relative to the config file's folder), or
a ``jwks_url``. Each key pins the algorithms it verifies (``algorithms``; required for secrets
and PEM keys, read from each JWK for JWKS), so a token cannot choose how it is checked: an HMAC
secret never verifies an RSA/EC token and a public key is never an HMAC secret. PEM keys are
read and checked against their algorithms here, so a wrong key is a config error with its
line, not a failing request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

from isekai.config.access import (
    REALM_PATTERN,
    STRINGS_SCHEMA,
    AccessRequirement,
    TokenSources,
    bearer_header,
    check_realm,
    check_url,
    strings,
)
from isekai.config.consumers import IdentityHeaders
from isekai.config.meta import item, setting

Where = Any  # isekai.config.rules.Where

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "JWT_ALGORITHMS",
    "JwtConfig",
    "JwtKey",
    "check_public_key",
]

JWKS_REFRESH = 300.0  # background refetch of a JWKS key set
JWKS_MIN_REFRESH = 30.0  # an unknown kid refetches at most this often
JWKS_WAIT = 5.0  # a request waits this long for a key set being fetched, then 503
TOKEN_CACHE_SIZE = 10_000  # verified tokens kept per policy
MAX_TOKEN_SIZE = 8 * 1024

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = ("ES256", "ES384", "ES512", "ES256K")
ASYMMETRIC_ALGORITHMS = (*RSA_ALGORITHMS, *EC_ALGORITHMS, "EdDSA")
JWT_ALGORITHMS = (*HMAC_ALGORITHMS, *ASYMMETRIC_ALGORITHMS)
# the curve each ES algorithm signs with (RFC 7518 §3.4; ES256K: RFC 8812)
EC_CURVES = {
    "ES256": "secp256r1",
    "ES384": "secp384r1",
    "ES512": "secp521r1",
    "ES256K": "secp256k1",
}
# RFC 7518 §3.2: an HMAC key at least as long as the hash
_HMAC_MIN = {"HS256": 32, "HS384": 48, "HS512": 64}
_SOURCES = ("secret", "public_key", "public_key_file", "jwks_url")


def check_public_key(pem: str, algorithms: tuple[str, ...]) -> str | None:
    """None when ``pem`` is a public key (or certificate) fit for every one of ``algorithms``;
    else what is wrong."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = pem.encode()
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except Exception:
        return "not a PEM public key (-----BEGIN PUBLIC KEY----- or a certificate)"
    for alg in algorithms:
        if alg in RSA_ALGORITHMS:
            if not isinstance(key, rsa.RSAPublicKey):
                return f"{alg} needs an RSA key, this is {type(key).__name__}"
            if key.key_size < 2048:
                return f"RSA keys shorter than 2048 bits are refused ({key.key_size})"
        elif alg in EC_CURVES:
            if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != EC_CURVES[alg]:
                return f"{alg} needs an EC key on {EC_CURVES[alg]}"
        elif alg == "EdDSA":
            if not isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
                return "EdDSA needs an Ed25519 or Ed448 key"
    return None


def _read_key_file(values: dict[str, Any], where: Where) -> str:
    """The PEM text of ``public_key_file`` (made absolute in ``values``)."""
    path = values["public_key_file"]
    if not os.path.isabs(path):
        source = getattr(where.builder, "source", "")
        base = os.path.dirname(os.path.abspath(source)) if os.path.isfile(source) else os.getcwd()
        path = os.path.join(base, path)
    try:
        with open(path, encoding="ascii") as f:
            values["public_key_file"] = os.path.normpath(path)
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise where.error("public_key_file", f"cannot read {path}: {reason}") from None


def _key(values: dict[str, Any], where: Where) -> None:
    given = [name for name in _SOURCES if values.get(name) is not None]
    if len(given) != 1:
        raise where.error(
            None, "needs exactly one of 'secret', 'public_key', 'public_key_file' or 'jwks_url'"
        )
    source = given[0]
    algorithms = values.get("algorithms") or ()
    if "none" in (a.lower() for a in algorithms):  # the enum refuses it; said plainly here
        raise where.error("algorithms", "'none' is never accepted")
    if source == "jwks_url":
        problem = check_url(values["jwks_url"], "jwks_url")
        if problem:
            raise where.error("jwks_url", problem)
        bad = [a for a in algorithms if a in HMAC_ALGORITHMS]
        if bad:
            raise where.error("algorithms", f"a JWKS key set is public keys: {bad[0]} is refused")
        return
    if not algorithms:
        raise where.error(None, f"a '{source}' key needs 'algorithms' (the ones it verifies)")
    if source == "secret":
        wrong = [a for a in algorithms if a not in HMAC_ALGORITHMS]
        if wrong:
            raise where.error("algorithms", f"a secret verifies HS256/384/512 only, not {wrong[0]}")
        size = len(values["secret"].encode())
        longest = max(_HMAC_MIN[a] for a in algorithms)
        if size < longest:
            raise where.error(
                "secret", f"an HMAC secret must be at least {longest} bytes for {algorithms}"
            )
        return
    wrong = [a for a in algorithms if a in HMAC_ALGORITHMS]
    if wrong:
        raise where.error(
            "algorithms", f"a public key never verifies {wrong[0]} (an HMAC algorithm)"
        )
    pem = values["public_key"] if source == "public_key" else _read_key_file(values, where)
    problem = check_public_key(pem, tuple(algorithms))
    if problem:
        raise where.error(source, problem)
    if source == "public_key_file":
        # the key as read now is part of the config: a reload after the file changed makes a
        # new policy instance (one kept across reloads would go on trusting the old key)
        values["public_key_file_pem"] = pem


@dataclass(frozen=True, slots=True)
class JwtKey:
    """One verification key, or one JWKS key set."""

    secret: str | None = setting(
        "string",
        'An HMAC secret (HS256/384/512), at least as many bytes as the hash; write `"${ENV_VAR}"`.',
        default=None,
        repr=False,
        default_doc="—",
    )
    public_key: str | None = setting(
        "string",
        "A PEM public key or certificate (RSA, EC or Ed25519/Ed448), inline.",
        default=None,
        default_doc="—",
    )
    public_key_file: str | None = setting(
        "string",
        "A PEM public key or certificate file; relative to the config file's folder.",
        default=None,
        default_doc="—",
    )
    public_key_file_pem: str | None = setting(
        "string",
        "The PEM text of `public_key_file` as read with the config.",
        default=None,
        repr=False,
        yaml=False,
    )
    jwks_url: str | None = setting(
        "string",
        "A JWKS URL (`https://…/jwks.json`): keys fetched in the background and cached.",
        default=None,
        default_doc="—",
    )
    kid: str | None = setting(
        "string",
        "The key id a token names in its `kid` header to pick this key.",
        default=None,
        schema={"minLength": 1, "maxLength": 256},
        default_doc="any token",
    )
    algorithms: tuple[str, ...] = setting(
        "list",
        "The algorithms this key verifies (required for secrets and PEM keys; for JWKS, limits "
        "what each JWK's `alg`/`kty`/`crv` allows).",
        default=(),
        item=item("enum", choices=JWT_ALGORITHMS, unsupported="unsupported algorithm {value!r}"),
        what="a list of algorithms like [RS256]",
        unique="algorithm {text!r} is listed twice",
        default_doc="secret/PEM: required; JWKS: from each key",
    )

    validate = staticmethod(_key)


def _jwt(values: dict[str, Any], where: Where) -> None:
    check_realm(values, where)
    for name in ("issuer", "audience"):
        value = values.get(name)
        if value is not None:
            found = strings(value)
            if found is None:
                raise where.error(name, "expected a string or a non-empty list of strings")
            values[name] = found
    keys = values.get("keys") or ()
    discovery = values.get("discovery", False) or not keys
    if discovery:
        issuers = values.get("issuer")
        if not issuers:
            raise where.error(None, "needs 'keys', or an 'issuer' for OIDC discovery")
        if len(issuers) != 1:
            raise where.error("issuer", "OIDC discovery needs exactly one issuer")
        problem = check_url(issuers[0], "issuer (for OIDC discovery)")
        if problem:
            raise where.error("issuer", problem)
    kids = [key.kid for key in keys if key.kid is not None]
    repeated = {kid for kid in kids if kids.count(kid) > 1}
    if repeated:
        raise where.error("keys", f"kid {sorted(repeated)[0]!r} is given to two keys")
    if values.get("jwks_min_refresh", JWKS_MIN_REFRESH) > values.get("jwks_refresh", JWKS_REFRESH):
        raise where.error("jwks_min_refresh", "must not be longer than jwks_refresh")


_TOKEN_DOC = (
    "Where the token comes from: `{header: Authorization, cookie: NAME, query: NAME}`, tried "
    "in that order."
)


@dataclass(frozen=True, slots=True)
class JwtConfig:
    """Verify a JSON Web Token (signature, algorithm pinned per key, time and audience claims),
    resolve its consumer and check roles, scopes and claims: 401 without a valid token, 403 when
    it lacks what ``require`` asks."""

    family: ClassVar[str] = "jwt"

    keys: tuple[JwtKey, ...] = setting(
        "list",
        "The verification keys: secrets, PEM keys and JWKS URLs.",
        default=(),
        item=item("object", cls=JwtKey),
        default_doc="from OIDC discovery",
    )
    issuer: Any = setting(
        "json",
        "The accepted `iss`: a string or a list. With `discovery` the (one) issuer's "
        "`/.well-known/openid-configuration` gives the JWKS URL.",
        default=None,
        schema=STRINGS_SCHEMA,
        default_doc="not checked",
    )
    discovery: bool = setting(
        "bool",
        "Read the JWKS URL from the issuer's OIDC discovery document (also when no keys are "
        "given).",
        default=False,
    )
    audience: Any = setting(
        "json",
        "The accepted `aud`: a string or a list (the token's `aud` may be a list; one match "
        "is enough).",
        default=None,
        schema=STRINGS_SCHEMA,
        default_doc="not checked",
    )
    leeway: float = setting(
        "duration",
        "Clock skew allowed for `exp`, `nbf` and `iat`.",
        default=0.0,
        minimum=0,
        maximum=600,
        default_doc="`0s`",
    )
    require_exp: bool = setting("bool", "Refuse tokens without `exp`.", default=True)
    required_claims: tuple[str, ...] = setting(
        "list",
        "Claims every token must carry.",
        default=(),
        item=item("string", schema={"minLength": 1, "maxLength": 256}),
        what="a list of claim names",
        unique="claim {text!r} is listed twice",
        default_doc="none",
    )
    max_token_size: int = setting(
        "size",
        "Longer tokens are refused (401) before any parsing.",
        default=MAX_TOKEN_SIZE,
        maximum=1 << 20,
        default_doc="`8KiB`",
    )
    token: TokenSources = setting(
        "object",
        _TOKEN_DOC,
        default_factory=bearer_header,
        cls=TokenSources,
        default_doc="`Authorization: Bearer`",
    )
    hide_credentials: bool = setting(
        "bool",
        "Remove the token (header, cookie or query parameter) before upstream.",
        default=False,
    )
    consumer_claim: str = setting(
        "string",
        "The claim naming the consumer (looked up among `consumers`).",
        default="sub",
        schema={"minLength": 1, "maxLength": 256},
    )
    consumer_required: bool = setting(
        "bool",
        "Refuse (403) a valid token whose consumer claim names no configured consumer.",
        default=False,
    )
    roles_claim: str = setting(
        "string",
        "The claim holding the roles (a list, or a space-separated string).",
        default="roles",
        schema={"minLength": 1, "maxLength": 256},
    )
    scopes_claim: str = setting(
        "string",
        "The claim holding the scopes (a space-separated string, or a list).",
        default="scope",
        schema={"minLength": 1, "maxLength": 256},
    )
    require: AccessRequirement | None = setting(
        "object",
        "Roles, scopes and claims a token needs on these routes (else 403).",
        default=None,
        cls=AccessRequirement,
        default_doc="none",
    )
    realm: str = setting(
        "string",
        "The realm named in `WWW-Authenticate`.",
        default="isekai",
        schema={"pattern": REALM_PATTERN},
    )
    jwks_refresh: float = setting(
        "duration",
        "How often JWKS key sets are fetched again in the background.",
        default=JWKS_REFRESH,
        minimum=1,
        default_doc="`5m`",
    )
    jwks_min_refresh: float = setting(
        "duration",
        "An unknown `kid` fetches the key set again at most this often.",
        default=JWKS_MIN_REFRESH,
        default_doc="`30s`",
    )
    keys_wait: float = setting(
        "duration",
        "How long a request waits for a key set that is being fetched; then 503.",
        default=JWKS_WAIT,
        maximum=60,
        default_doc="`5s`",
    )
    cache_size: int = setting(
        "int",
        "Verified tokens kept (by SHA-256), each until its `exp`; 0 turns the cache off.",
        default=TOKEN_CACHE_SIZE,
        minimum=0,
        maximum=10_000_000,
        default_doc="`10000`",
    )
    upstream_headers: IdentityHeaders = setting(
        "object",
        "Headers carrying the consumer and selected claims upstream.",
        default_factory=IdentityHeaders,
        cls=IdentityHeaders,
        default_doc="`X-Consumer-ID`",
    )

    validate = staticmethod(_jwt)
