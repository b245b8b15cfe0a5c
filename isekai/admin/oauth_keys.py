"""The authorization server's signing keys: made on first use, kept in the store, rotated.

Keys are JOSE keys (joserfc, the JOSE library of authlib): RSA 2048 for ``RS256``, P-256 for
``ES256``; a key's ``kid`` is its RFC 7638 thumbprint. The private half is stored as PKCS#8
PEM, encrypted with ``admin.oauth.key_passphrase`` when it is set. Every gateway sharing the
store signs with the newest unretired key of the configured algorithm and publishes the same
JWKS: the first key is made with ``Store.ensure_signing_key``, which stores one key however
many processes start at once. A rotation retires the current key; its public half stays in
the JWKS until every token it signed has expired.

`KeyRing` caches what it read for `CACHE_SECONDS`, so a rotation made by another process is
seen within that time (`ROTATION_LEEWAY` covers it when a retired key's end is computed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

from isekai.store.oauth import SigningKey

__all__ = ["CACHE_SECONDS", "KeyRing", "KeyUnavailable", "make_key"]

log = logging.getLogger("isekai.admin")

CACHE_SECONDS = 10.0
ROTATION_LEEWAY = 60.0  # seconds added to a retired key's publication: caches, clock skew
UNKNOWN_KID_REFRESH = 1.0  # seconds between two store reads for a kid not in the cache

SigningJWK = RSAKey | ECKey


class KeyUnavailable(Exception):
    """A stored private key cannot be used (wrong or missing passphrase, damaged PEM)."""


def _generate(algorithm: str) -> SigningJWK:
    if algorithm == "RS256":
        return RSAKey.generate_key(2048, private=True)
    if algorithm == "ES256":
        return ECKey.generate_key("P-256", private=True)
    raise ValueError(f"unsupported signing algorithm {algorithm!r}")


def make_key(algorithm: str, passphrase: str | None, now: float | None = None) -> SigningKey:
    """A new key for ``algorithm`` as the store keeps it (slow for RSA: off the loop)."""
    key = _generate(algorithm)
    kid = key.thumbprint()
    public = dict(key.as_dict(private=False))
    public.update(kid=kid, alg=algorithm, use="sig")
    pem = key.as_pem(private=True, password=passphrase).decode("ascii")
    return SigningKey(kid, algorithm, pem, public, time.time() if now is None else now)


def _private(stored: SigningKey, passphrase: str | None) -> SigningJWK:
    encrypted = "ENCRYPTED" in stored.private_key.split("\n", 1)[0]
    if encrypted and passphrase is None:
        raise KeyUnavailable(
            f"signing key {stored.kid} is encrypted: set admin.oauth.key_passphrase"
        )
    cls = RSAKey if stored.algorithm == "RS256" else ECKey
    try:
        key = cls.import_key(
            stored.private_key,
            {"kid": stored.kid, "alg": stored.algorithm},
            password=passphrase if encrypted else None,
        )
    except (JoseError, ValueError, TypeError) as exc:
        raise KeyUnavailable(
            f"signing key {stored.kid} cannot be read (wrong admin.oauth.key_passphrase?): "
            f"{type(exc).__name__}"
        ) from None
    if not encrypted and passphrase is not None:
        log.warning(
            "OAuth signing key %s is stored unencrypted although admin.oauth.key_passphrase "
            "is set (it was made without one); rotate the key to store an encrypted one",
            stored.kid,
        )
    return key


@dataclass(frozen=True, slots=True)
class ActiveKey:
    """The key that signs: its ``kid``, algorithm and private JOSE key."""

    kid: str
    algorithm: str
    key: SigningJWK


class KeyRing:
    """The store's signing keys as this process sees them (see the module docstring)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._active: dict[str, tuple[float, ActiveKey]] = {}
        self._published: tuple[float, list[SigningKey]] | None = None
        self._lock = asyncio.Lock()
        self.pruned_at = 0.0  # when expired tokens were last pruned (`oauth` does it)

    async def active(self, algorithm: str, passphrase: str | None) -> ActiveKey:
        """The key to sign with, made and stored first when there is none."""
        now = time.monotonic()
        cached = self._active.get(algorithm)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        async with self._lock:
            cached = self._active.get(algorithm)
            if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
                return cached[1]
            stored = await self._current(algorithm, passphrase)
            active = ActiveKey(stored.kid, stored.algorithm, _private(stored, passphrase))
            self._active[algorithm] = (time.monotonic(), active)
            return active

    async def _current(self, algorithm: str, passphrase: str | None) -> SigningKey:
        for stored in await self.store.list_signing_keys():  # newest first
            if stored.algorithm == algorithm and stored.retired_at is None:
                return stored
        loop = asyncio.get_running_loop()
        candidate = await loop.run_in_executor(None, make_key, algorithm, passphrase)
        stored = await self.store.ensure_signing_key(candidate)
        if stored.kid == candidate.kid:
            log.info("OAuth: made signing key %s (%s)", stored.kid, algorithm)
        self._published = None
        return stored

    async def rotate(self, algorithm: str, passphrase: str | None, verify_for: float) -> SigningKey:
        """Make a new signing key for ``algorithm``; the ones it replaces stay published for
        ``verify_for`` seconds (the longest token lifetime) plus a leeway."""
        loop = asyncio.get_running_loop()
        candidate = await loop.run_in_executor(None, make_key, algorithm, passphrase)
        until = candidate.created_at + verify_for + CACHE_SECONDS + ROTATION_LEEWAY
        stored = await self.store.rotate_signing_key(candidate, until)
        self._active.pop(algorithm, None)
        self._published = None
        log.info("OAuth: rotated to signing key %s (%s)", stored.kid, algorithm)
        return stored

    async def published(self, *, fresh: bool = False) -> list[SigningKey]:
        """The keys whose public halves are in the JWKS: unretired, or retired but still
        verifying tokens."""
        now = time.monotonic()
        cached = self._published
        if not fresh and cached is not None and now - cached[0] < CACHE_SECONDS:
            keys = cached[1]
        else:
            keys = await self.store.list_signing_keys()
            self._published = (now, keys)
        wall = time.time()
        return [k for k in keys if k.verify_until is None or k.verify_until > wall]

    async def jwks(self) -> dict[str, Any]:
        """``{"keys": [...]}``: the public JWKs, newest first."""
        return {"keys": [dict(k.public_jwk) for k in await self.published()]}

    async def verification_keys(self, kid: str | None) -> KeySet:
        """The published public keys; read again from the store (at most once a second)
        when ``kid`` is not among them."""
        keys = await self.published()
        if kid is not None and all(k.kid != kid for k in keys):
            cached = self._published
            if cached is None or time.monotonic() - cached[0] >= UNKNOWN_KID_REFRESH:
                keys = await self.published(fresh=True)
        return KeySet.import_key_set({"keys": [dict(k.public_jwk) for k in keys]})
