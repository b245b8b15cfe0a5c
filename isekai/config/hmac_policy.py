"""The ``hmac`` policy family's config: signed requests (RFC 9421 HTTP Message Signatures
with HMAC), `HmacConfig` and its keys (`HmacKey`).

A request carries ``Signature-Input`` and ``Signature``; the ``keyid`` parameter selects the
secret: the one ``secret`` (any ``keyid``, or only ``keyid`` when that is set), or one of
``keys``. The algorithm is pinned per key here; a request's ``alg`` parameter must agree with
it and never chooses it. docs/hmac.md is the user guide; the runtime is
``isekai.policies.hmac``.

Checked where the values enter (YAML and admin API alike): a secret decodes in its
``encoding`` and has at least `MIN_SECRET_BYTES` bytes; key ids are visible ASCII (they travel
as structured-field strings); ``nonce_ttl`` is at least twice ``skew`` (a signature is
accepted for up to ``2 × skew`` around its ``created`` time, so a nonce remembered for less
could be replayed after it is forgotten); ``nonce_store: redis`` needs a ``redis://``,
``rediss://`` or ``unix://`` ``redis_url``; every ``required_components`` entry is a
component identifier the policy supports (written in its canonical form afterwards).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from isekai.config.consumers import IdentityHeaders
from isekai.config.meta import item, setting

Where = Any  # isekai.config.rules.Where

__all__ = ["HMAC_ALGORITHMS", "MIN_SECRET_BYTES", "HmacConfig", "HmacKey", "secret_bytes"]

HMAC_ALGORITHMS = ("hmac-sha256", "hmac-sha512")
MIN_SECRET_BYTES = 16
KEYID_PATTERN = r"^[\x20-\x7e]{1,256}$"
_KEYID = re.compile(KEYID_PATTERN[1:-1])
DEFAULT_REQUIRED = ("@method", "@request-target")
DEFAULT_SKEW = 300.0  # seconds
DEFAULT_NONCE_TTL = 600.0
REDIS_SCHEMES = ("redis", "rediss", "unix")
# what a derived component may be (isekai.policies.hmac_signing.DERIVED: policies may not be
# imported from config/; the runtime checks the same again)
_DERIVED = frozenset(
    {
        "@method",
        "@target-uri",
        "@authority",
        "@scheme",
        "@request-target",
        "@path",
        "@query",
    }
)
_FIELD_NAME = re.compile(r"[a-z0-9!#$%&'*+\-.^_`|~]+")
_QUERY_PARAM = re.compile(r'@query-param;name=("?)([\x21\x23-\x5b\x5d-\x7e]+)\1')


def secret_bytes(secret: str, encoding: str) -> bytes:
    """The key a configured secret stands for: UTF-8 ``text``, ``base64`` or ``hex``
    (``ValueError`` when it does not decode)."""
    if encoding == "base64":
        try:
            return base64.b64decode(secret.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not valid base64") from None
    if encoding == "hex":
        try:
            return bytes.fromhex(secret.strip())
        except ValueError:
            raise ValueError("not valid hex") from None
    return secret.encode("utf-8")


def canonical_component(text: str) -> str:
    """A ``required_components`` entry in its one spelling (``ValueError`` if it is none)."""
    if text in _DERIVED:
        return text
    found = _QUERY_PARAM.fullmatch(text)
    if found:
        return f'@query-param;name="{found.group(2)}"'
    if text.startswith("@"):
        raise ValueError(
            f"{text!r} is not a supported derived component ({', '.join(sorted(_DERIVED))}, "
            '@query-param;name="...")'
        )
    if not _FIELD_NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not a lower-case header field name")
    return text


def _check_secret(values: dict[str, Any], where: Where, field: str) -> None:
    try:
        key = secret_bytes(values[field], values.get("encoding", "text"))
    except ValueError as exc:
        message = f"the secret is {exc} (encoding: {values.get('encoding')})"
        raise where.error(field, message) from None
    if len(key) < MIN_SECRET_BYTES:
        raise where.error(
            field, f"a secret needs at least {MIN_SECRET_BYTES} bytes, this one has {len(key)}"
        )


def _key(values: dict[str, Any], where: Where) -> None:
    if not _KEYID.fullmatch(values.get("id") or ""):
        raise where.error("id", "a key id is 1-256 visible ASCII characters or spaces")
    _check_secret(values, where, "secret")


@dataclass(frozen=True, slots=True)
class HmacKey:
    """One shared secret, found by the ``keyid`` signature parameter."""

    id: str = setting("string", "The `keyid` clients send (visible ASCII); shown in logs.")
    secret: str = setting(
        "string",
        'The shared secret, usually from the environment (`"${PARTNER_SECRET}"`); '
        "at least 16 bytes once decoded.",
        repr=False,
    )
    encoding: str = setting(
        "enum",
        "How `secret` is written: `text` (its UTF-8 bytes), `base64` or `hex`.",
        default="text",
        choices=("text", "base64", "hex"),
    )
    algorithm: str = setting(
        "enum",
        "The MAC algorithm of this key: `hmac-sha256` or `hmac-sha512`.",
        default="hmac-sha256",
        choices=HMAC_ALGORITHMS,
    )
    consumer: str | None = setting(
        "name",
        "The consumer (top-level `consumers`) a request signed with this key belongs to.",
        default=None,
        default_doc="none",
    )

    validate = staticmethod(_key)


def _hmac(values: dict[str, Any], where: Where) -> None:
    has_secret = values.get("secret") is not None
    if has_secret == bool(values.get("keys")):
        raise where.error(None, "needs exactly one of 'secret' (one key) or 'keys' (a list)")
    if has_secret:
        _check_secret(values, where, "secret")
    elif any(values.get(k) is not None for k in ("keyid", "consumer")):
        field = "keyid" if values.get("keyid") is not None else "consumer"
        raise where.error(field, f"'{field}' goes with 'secret'; each of 'keys' has its own")
    for field in ("keyid", "tag"):
        text = values.get(field)
        if text is not None and not _KEYID.fullmatch(text):
            raise where.error(field, f"a {field} is 1-256 visible ASCII characters or spaces")
    prefix = values.get("redis_prefix")
    if prefix is not None and not 1 <= len(prefix) <= 128:
        raise where.error("redis_prefix", "a key prefix has 1-128 characters")
    skew = values.get("skew", DEFAULT_SKEW)
    ttl = values.get("nonce_ttl", DEFAULT_NONCE_TTL)
    if values.get("require_nonce", True) and ttl < 2 * skew:
        field = "nonce_ttl" if where.has("nonce_ttl") else "skew"
        raise where.error(
            field,
            f"nonce_ttl ({ttl:g}s) must be at least twice skew ({2 * skew:g}s): a signature "
            "is accepted up to skew before and after its created time, and a nonce forgotten "
            "sooner could be replayed",
        )
    if values.get("nonce_store") == "redis":
        url = values.get("redis_url")
        if url is None:
            raise where.error("nonce_store", "nonce_store: redis needs redis_url")
        try:
            parts = urlsplit(url)
            scheme, host = parts.scheme, parts.hostname
        except ValueError:  # "redis://[" and the like
            scheme = host = None
        if scheme not in REDIS_SCHEMES or (scheme != "unix" and not host):
            raise where.error(
                "redis_url", "expected redis://HOST[:PORT][/DB], rediss://... or unix://PATH"
            )
    elif values.get("redis_url") is not None:
        raise where.error("redis_url", "redis_url is for nonce_store: redis")
    required = values.get("required_components")
    if required is not None:
        canonical = []
        for i, text in enumerate(required):
            try:
                canonical.append(canonical_component(text))
            except ValueError as exc:
                raise where.item_error("required_components", i, str(exc)) from None
        values["required_components"] = tuple(canonical)


@dataclass(frozen=True, slots=True)
class HmacConfig:
    """Signed requests: RFC 9421 HTTP Message Signatures with `hmac-sha256` (or
    `hmac-sha512`), a timestamp within a skew window and a nonce that cannot be used twice;
    the body is checked against its `Content-Digest`. A request without a valid signature gets
    401."""

    family: ClassVar[str] = "hmac"

    secret: str | None = setting(
        "string",
        'The shared secret when there is one key (`"${HMAC_SECRET}"`); at least 16 bytes.',
        default=None,
        repr=False,
        default_doc="— (or `keys`)",
    )
    encoding: str = setting(
        "enum",
        "How `secret` is written: `text` (its UTF-8 bytes), `base64` or `hex`.",
        default="text",
        choices=("text", "base64", "hex"),
    )
    keyid: str | None = setting(
        "string",
        "With `secret`: the only `keyid` accepted (by default any `keyid` selects `secret`).",
        default=None,
        default_doc="any",
    )
    algorithm: str = setting(
        "enum",
        "With `secret`: its MAC algorithm, `hmac-sha256` or `hmac-sha512`.",
        default="hmac-sha256",
        choices=HMAC_ALGORITHMS,
    )
    consumer: str | None = setting(
        "name",
        "With `secret`: the consumer the signed requests belong to.",
        default=None,
        default_doc="none",
    )
    keys: tuple[HmacKey, ...] = setting(
        "list",
        "Several secrets, each found by its `id` (the request's `keyid`).",
        default=(),
        item=item("object", cls=HmacKey),
        unique="key id {text!r} is listed twice",
        unique_by="id",
        default_doc="— (or `secret`)",
    )
    skew: float = setting(
        "duration",
        "How far a signature's `created` time may be from the gateway's clock, either way.",
        default=DEFAULT_SKEW,
        minimum=1,
        maximum=3600,
        default_doc="`5m`",
    )
    nonce_ttl: float = setting(
        "duration",
        "How long a nonce is remembered (refused when seen again); at least twice `skew`.",
        default=DEFAULT_NONCE_TTL,
        minimum=1,
        maximum=86400,
        default_doc="`10m`",
    )
    require_nonce: bool = setting(
        "bool", "A signature without a `nonce` parameter is refused.", default=True
    )
    nonce_store: str = setting(
        "enum",
        "Where nonces are remembered: `memory` (each worker its own) or `redis` (shared by "
        "every worker and gateway: use it with more than one worker).",
        default="memory",
        choices=("memory", "redis"),
    )
    redis_url: str | None = setting(
        "string",
        "The Redis of `nonce_store: redis` (`redis://host:6379/0`).",
        default=None,
        default_doc="—",
    )
    redis_prefix: str = setting(
        "string",
        "Prefix of the Redis keys of nonces.",
        default="isekai:hmac:nonce:",
        schema={"minLength": 1, "maxLength": 128},
    )
    max_nonces: int = setting(
        "int",
        "`nonce_store: memory`: nonces kept per worker; when full, new signatures are "
        "treated as a store failure (`on_store_error`).",
        default=100_000,
        minimum=100,
    )
    on_store_error: str = setting(
        "enum",
        "When the nonce store fails (Redis down, memory full): `deny` (503) or `allow` (accept "
        "the request without the replay check).",
        default="deny",
        choices=("deny", "allow"),
    )
    store_timeout: float = setting(
        "duration",
        "How long a Redis nonce check may take before it counts as a store failure.",
        default=1.0,
        minimum=0.01,
        maximum=30,
        default_doc="`1s`",
    )
    required_components: tuple[str, ...] = setting(
        "list",
        "Components every signature must cover: `@method`, `@target-uri`, `@authority`, "
        '`@scheme`, `@request-target`, `@path`, `@query`, `@query-param;name="..."`, header '
        "names (lower case). `@target-uri` covers `@request-target`, `@path`, `@query`, "
        "`@scheme` and `@authority`; `@request-target` covers `@path` and `@query`.",
        default=DEFAULT_REQUIRED,
        item=item("string", what="a component identifier"),
        what="a list of component identifiers",
        unique="component {text!r} is listed twice",
        default_doc='`["@method", "@request-target"]`',
    )
    require_digest: bool = setting(
        "bool",
        "A request with a body must carry `Content-Digest` (sha-256 or sha-512) and the "
        "signature must cover it.",
        default=True,
    )
    max_body: int = setting(
        "size",
        "The largest body read to check its digest; larger requests get 413.",
        default=1024 * 1024,
        minimum=1,
        default_doc="`1MiB`",
    )
    scheme: str = setting(
        "enum",
        "The scheme of `@scheme` and `@target-uri`: `https` when clients reach the gateway "
        "through a TLS terminator.",
        default="http",
        choices=("http", "https"),
    )
    tag: str | None = setting(
        "string",
        "Only signatures with this `tag` parameter are considered.",
        default=None,
        default_doc="any",
    )
    upstream_headers: IdentityHeaders = setting(
        "object",
        "Headers that carry the consumer upstream (and the claim `keyid`, the key id, when "
        "mapped in `claims`).",
        default_factory=IdentityHeaders,
        cls=IdentityHeaders,
    )

    validate = staticmethod(_hmac)
