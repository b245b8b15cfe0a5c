"""Verification keys for the ``jwt`` family: `VerifyKey` (one key and the algorithms it is
pinned to), `static_key` (a secret or PEM key from the config) and `KeySet` (a JWKS URL, or an
OIDC issuer whose discovery document names it).

A `KeySet` is fetched off the request path: a background task every ``refresh`` seconds, and
on demand when a token names an unknown ``kid`` — at most once per ``min_refresh``, every
waiting request sharing the one fetch in flight. A failed fetch keeps the keys it had (and is
logged at most once a minute). One `KeySet` per URL per worker (`shared_key_set`), however
many policies use it, so two policies on one identity provider never fetch twice. Only the
configured URL is ever fetched: a token's ``jku``, ``x5u``, ``x5c`` and ``jwk`` headers are
never read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from isekai.config.access import check_url
from isekai.config.jwt_policy import EC_CURVES, RSA_ALGORITHMS

__all__ = ["KeySet", "VerifyKey", "jwk_key", "release_key_set", "shared_key_set", "static_key"]

log = logging.getLogger("isekai.policies")

MAX_DOCUMENT = 1 << 20  # a JWKS or discovery document larger than this is refused
MAX_KEYS = 100  # keys kept from one JWKS
FETCH_TIMEOUT = 10.0
LOG_EVERY = 60.0  # seconds between two logged fetch failures of one key set
_JWK_CURVES = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}


class VerifyKey:
    """One verification key: ``key`` as PyJWT takes it (HMAC secret bytes, or a
    `cryptography` public key object), the ``algorithms`` it may verify, its ``kid``."""

    __slots__ = ("algorithms", "key", "kid", "origin")

    def __init__(self, key: Any, algorithms: Iterable[str], kid: str | None, origin: str) -> None:
        self.key = key
        self.algorithms = frozenset(algorithms)
        self.kid = kid
        self.origin = origin  # "secret", "pem", or the JWKS URL (for logs; never the key)

    def __repr__(self) -> str:
        return f"<VerifyKey kid={self.kid!r} {sorted(self.algorithms)} from {self.origin}>"


def static_key(config: Any) -> VerifyKey:
    """The `VerifyKey` of a ``secret``/``public_key``/``public_key_file`` key (checked by the
    config already: the algorithms fit the key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if config.secret is not None:
        return VerifyKey(config.secret.encode(), config.algorithms, config.kid, "secret")
    if config.public_key is not None:
        pem = config.public_key.encode()
    elif getattr(config, "public_key_file_pem", None) is not None:
        pem = config.public_key_file_pem.encode()  # as read (and checked) with the config
    else:
        with open(config.public_key_file, "rb") as f:
            pem = f.read()
    key: Any
    if b"-----BEGIN CERTIFICATE-----" in pem:
        key = x509.load_pem_x509_certificate(pem).public_key()
    else:
        key = load_pem_public_key(pem)
    return VerifyKey(key, config.algorithms, config.kid, "pem")


def jwk_algorithms(jwk: dict[str, Any]) -> tuple[str, ...]:
    """The algorithms a JWK may verify, from its ``alg``, ``kty`` and ``crv`` (none for
    symmetric, private or unknown keys)."""
    kty, alg = jwk.get("kty"), jwk.get("alg")
    if kty == "RSA":
        possible: tuple[str, ...] = RSA_ALGORITHMS
    elif kty == "EC":
        curve_alg = _JWK_CURVES.get(jwk.get("crv"))  # type: ignore[arg-type]
        possible = (curve_alg,) if curve_alg else ()
    elif kty == "OKP" and jwk.get("crv") in ("Ed25519", "Ed448"):
        possible = ("EdDSA",)
    else:
        return ()  # "oct" (a shared secret has no place in a published set), X25519, unknown
    if alg is not None:
        return (alg,) if alg in possible else ()
    return possible


def jwk_key(jwk: Any, allowed: frozenset[str] | None, origin: str) -> VerifyKey | None:
    """A `VerifyKey` from one JWK of a set, or None when it is not a usable public
    signature key (wrong ``use``, private parts, symmetric, too small, malformed)."""
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or "d" in jwk:
        return None
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None
    algorithms = [a for a in jwk_algorithms(jwk) if allowed is None or a in allowed]
    if not algorithms:
        return None
    maker: Any = {"RSA": RSAAlgorithm, "EC": ECAlgorithm, "OKP": OKPAlgorithm}[jwk["kty"]]
    try:
        key = maker.from_jwk(jwk)
    except Exception:
        return None
    if jwk["kty"] == "RSA" and key.key_size < 2048:
        return None
    if jwk["kty"] == "EC":
        wanted = {EC_CURVES[a] for a in algorithms}
        if key.curve.name not in wanted:
            return None
    return VerifyKey(key, algorithms, kid, origin)


class KeySet:
    """The keys of one JWKS URL (or of an OIDC issuer's ``jwks_uri``), kept fresh.

    ``by_kid``: kid -> `VerifyKey`; ``unnamed``: keys without a kid; ``ready`` once a fetch
    succeeded; ``generation`` grows when the keys change (listeners are told: they drop what
    they verified with the old keys).
    """

    def __init__(
        self,
        env: Any,
        url: str,
        *,
        discovery_issuer: str | None = None,
        refresh: float = 300.0,
        min_refresh: float = 30.0,
    ) -> None:
        self.env = env
        self.url = url  # the JWKS URL, or the discovery document's
        self.discovery_issuer = discovery_issuer
        self.jwks_url: str | None = None if discovery_issuer else url
        self.refresh = refresh
        self.min_refresh = min_refresh
        self.by_kid: dict[str, VerifyKey] = {}
        self.unnamed: list[VerifyKey] = []
        self.ready = False
        self.generation = 0
        self.fetches = 0
        self.failures = 0
        self.users = 0
        self.last_error: str | None = None
        self._fingerprint: str | None = None
        self._last_attempt = -1e18
        self._last_logged = -1e18
        self._inflight: asyncio.Task[bool] | None = None
        self._task: asyncio.Task[None] | None = None
        self._listeners: weakref.WeakSet[Any] = weakref.WeakSet()

    # -- users -------------------------------------------------------------------------------

    def listen(self, listener: Any) -> None:
        """``listener.keys_changed(key_set)`` is called whenever the keys change."""
        self._listeners.add(listener)

    def start(self) -> None:
        """Start the background refresh (on the running loop; nothing if it runs)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop())

    def stop(self) -> None:
        for task in (self._task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
        self._task = self._inflight = None

    # -- lookups -----------------------------------------------------------------------------

    def keys(self) -> list[VerifyKey]:
        return [*self.by_kid.values(), *self.unnamed]

    def fetch(self) -> asyncio.Task[bool]:
        """The fetch in flight, or a new one (its result: whether it succeeded)."""
        if self._inflight is None or self._inflight.done():
            self._last_attempt = time.monotonic()
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        return self._inflight

    def fetch_for_unknown(self) -> asyncio.Task[bool] | None:
        """A fetch a request asks for (a token named an unknown kid, or the set was never
        fetched): the one in flight, a new one when the last began at least ``min_refresh``
        ago, else None (the kid stays unknown; an unfetched set stays unavailable)."""
        if self._inflight is not None and not self._inflight.done():
            return self._inflight
        if time.monotonic() - self._last_attempt < self.min_refresh:
            return None
        return self.fetch()

    # -- fetching ----------------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        while True:
            ok = await asyncio.shield(self.fetch())
            if ok:
                pause = self.refresh
            else:  # try again sooner, still bounded by the two intervals
                pause = min(self.refresh, max(1.0, self.min_refresh / 2))
            await asyncio.sleep(pause)

    async def _get_json(self, url: str) -> Any:
        import aiohttp

        session = self.env.http()
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
        async with session.get(
            url, timeout=timeout, allow_redirects=False, headers={"Accept": "application/json"}
        ) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            data = await resp.content.read(MAX_DOCUMENT + 1)
            if len(data) > MAX_DOCUMENT:
                raise ValueError(f"document larger than {MAX_DOCUMENT} bytes")
        return json.loads(data)

    async def _discover(self) -> str:
        issuer = self.discovery_issuer or ""
        document = await self._get_json(self.url)
        if not isinstance(document, dict):
            raise ValueError("discovery document is not a JSON object")
        if document.get("issuer") != issuer:
            raise ValueError("discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or check_url(jwks_uri, "jwks_uri"):
            raise ValueError("discovery document has no valid jwks_uri")
        return jwks_uri

    async def _fetch(self) -> bool:
        self.fetches += 1
        try:
            if self.discovery_issuer is not None:
                self.jwks_url = await self._discover()
            assert self.jwks_url is not None
            document = await self._get_json(self.jwks_url)
            found = document.get("keys") if isinstance(document, dict) else None
            if not isinstance(found, list):
                raise ValueError("not a JWK Set (no 'keys' list)")
            keys = [
                k
                for k in (jwk_key(jwk, None, self.url) for jwk in found[:MAX_KEYS])
                if k is not None
            ]
            fingerprint = json.dumps(found[:MAX_KEYS], sort_keys=True, default=str)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures += 1
            self.last_error = _describe(exc)
            now = time.monotonic()
            if now - self._last_logged >= LOG_EVERY:
                self._last_logged = now
                log.warning(
                    "JWKS %s: fetch failed (%s); keeping %d keys",
                    self.url,
                    self.last_error,
                    len(self.keys()),
                )
            return False
        self.last_error = None
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            self.by_kid = {k.kid: k for k in keys if k.kid is not None}
            self.unnamed = [k for k in keys if k.kid is None]
            self.generation += 1
            log.info(
                "JWKS %s: %d keys (kids: %s)",
                self.url,
                len(keys),
                ", ".join(sorted(self.by_kid)) or "none",
            )
            for listener in list(self._listeners):
                listener.keys_changed(self)
        self.ready = True
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ready": self.ready,
            "keys": len(self.by_kid) + len(self.unnamed),
            "fetches": self.fetches,
            "failures": self.failures,
            "last_error": self.last_error,
        }


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]


# -- one key set per URL per worker ------------------------------------------------------------

_SHARED: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], KeySet]] = weakref.WeakKeyDictionary()


def shared_key_set(env: Any, kind: str, url: str, make: Callable[[], KeySet]) -> KeySet:
    """The worker's `KeySet` for (``kind``, ``url``) (``make()`` on first use); each call
    counts one user, given back with `release_key_set`."""
    sets = _SHARED.setdefault(env, {})
    found = sets.get((kind, url))
    if found is None:
        found = sets[kind, url] = make()
        stats = getattr(env, "stats_providers", None)
        if stats is not None and "jwks" not in stats:
            stats["jwks"] = lambda: [s.stats() for s in _SHARED.get(env, {}).values()]
    found.users += 1
    return found


def release_key_set(env: Any, key_set: KeySet) -> None:
    """One user less; the last one stops its refresh and forgets it."""
    key_set.users -= 1
    if key_set.users > 0:
        return
    key_set.stop()
    sets = _SHARED.get(env)
    if sets is not None:
        for name, value in list(sets.items()):
            if value is key_set:
                del sets[name]
