"""The ``jwt`` family: verify a JSON Web Token, resolve its consumer, check per-route access.

The request phase is synchronous. A token seen before is answered from the verified-token
cache (`TokenCache`, by SHA-256: one hash and one dict lookup, then `identify`). A new token
is verified inline when its key is at hand: the header is read only for ``alg`` and ``kid``,
the key is chosen by ``kid`` (or every key pinned to that ``alg`` when the token names none),
and the token's ``alg`` must be one its key is pinned to — ``none`` never is, and an HMAC
secret and a public key never verify each other's algorithms. Only when the key is not at hand
(a JWKS not fetched yet, an unknown ``kid`` that may be a rotated-in key) does the request
phase return an awaitable: that request alone waits (``keys_wait``, then 503) for the fetch
that every such request shares.

Answers: 401 ``WWW-Authenticate: Bearer`` (no error code without a token; ``invalid_token``
otherwise), 403 ``insufficient_scope`` when ``require`` is not met, 503 when keys are not
available; JSON bodies. No token of any shape makes a 500: everything the parser or verifier
raises is an invalid token.

A valid token whose consumer claim names no configured consumer passes without a consumer
(its claims, roles and scopes are still in ``req.ctx``), unless ``consumer_required`` (403).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
import weakref
from typing import Any

import jwt as pyjwt

from isekai.config.jwt_policy import JWT_ALGORITHMS
from isekai.policies.access import Requirement, claim_words
from isekai.policies.bearer import (
    BearerAdmission,
    Challenges,
    TokenCache,
    TokenReader,
    Verdict,
)
from isekai.policies.environment import PolicyEnvironment
from isekai.policies.jwks import (
    KeySet,
    VerifyKey,
    release_key_set,
    shared_key_set,
    static_key,
)

__all__ = ["JwtPolicy", "build"]

_sha256 = hashlib.sha256
MAX_CANDIDATES = 8  # keys tried for a token without kid
NO_EXP_TTL = 300.0  # a token without exp (require_exp: false) is cached this long
_ALGORITHMS = frozenset(JWT_ALGORITHMS)
_IGNORED_HEADERS = ("jku", "x5u", "x5c", "jwk")  # never read: keys come from the config only


class _Wait:
    """The key is not at hand: these fetches may bring it."""

    __slots__ = ("fetches",)

    def __init__(self, fetches: list[asyncio.Task[bool]]) -> None:
        self.fetches = fetches


def _reason(exc: Exception) -> str:
    """A client-safe description of why PyJWT refused a token (never the token's text)."""
    if isinstance(exc, pyjwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, pyjwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(exc, pyjwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, pyjwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, pyjwt.MissingRequiredClaimError):
        return f"missing claim {exc.claim}"
    if isinstance(exc, pyjwt.InvalidSignatureError):
        return "signature verification failed"
    if isinstance(exc, pyjwt.InvalidIssuedAtError):
        return "malformed iat"
    return "malformed token"


class JwtPolicy(BearerAdmission):
    """One ``jwt`` policy (see the module's text). Counters: ``verified`` (signatures
    checked), ``cache.hits``, ``refused``."""

    credential = "jwt"

    def __init__(self, config: Any, env: Any) -> None:
        self.env = env
        self.consumers = env.consumers
        self.reader = TokenReader(config.token)
        self.challenges = Challenges("jwt", config.realm)
        self.cache = TokenCache(config.cache_size)
        self.requirement = Requirement(config.require) if config.require is not None else None
        self.max_token_size = config.max_token_size
        self.hide_credentials = config.hide_credentials
        self.consumer_claim = config.consumer_claim
        self.consumer_required = config.consumer_required
        self.roles_claim = config.roles_claim
        self.scopes_claim = config.scopes_claim
        self.headers = config.upstream_headers
        self.keys_wait = config.keys_wait
        self.leeway = config.leeway
        self.issuer = config.issuer
        self.audience = config.audience
        self.require_exp = config.require_exp
        required = list(config.required_claims)
        if config.require_exp and "exp" not in required:
            required.append("exp")
        self.options = {
            "verify_signature": True,
            "verify_exp": True,
            "verify_nbf": True,
            "verify_iat": True,
            "verify_aud": config.audience is not None,
            "verify_iss": config.issuer is not None,
            "require": required,
        }
        self.no_consumer = self.challenges.forbidden("no consumer for this token")
        self.static: list[VerifyKey] = []
        self.static_by_kid: dict[str, VerifyKey] = {}
        # (the shared key set, the algorithms this policy allows from it or None)
        self.key_sets: list[tuple[KeySet, frozenset[str] | None]] = []
        self.verified = 0
        self.refused = 0
        self._closed = False
        for key in config.keys:
            if key.jwks_url is not None:
                make = functools.partial(
                    KeySet,
                    env,
                    key.jwks_url,
                    refresh=config.jwks_refresh,
                    min_refresh=config.jwks_min_refresh,
                )
                key_set = shared_key_set(env, "jwks", key.jwks_url, make)
                self._use(key_set, frozenset(key.algorithms) or None, config)
            else:
                found = static_key(key)
                self.static.append(found)
                if found.kid is not None:
                    self.static_by_kid[found.kid] = found
        if config.discovery or not config.keys:
            issuer = config.issuer[0]
            url = issuer.rstrip("/") + "/.well-known/openid-configuration"
            make = functools.partial(
                KeySet,
                env,
                url,
                discovery_issuer=issuer,
                refresh=config.jwks_refresh,
                min_refresh=config.jwks_min_refresh,
            )
            key_set = shared_key_set(env, "oidc", url, make)
            self._use(key_set, None, config)
        _live(env).add(self)

    def _use(self, key_set: KeySet, allowed: frozenset[str] | None, config: Any) -> None:
        # the shortest intervals any user asks for
        key_set.refresh = min(key_set.refresh, config.jwks_refresh)
        key_set.min_refresh = min(key_set.min_refresh, config.jwks_min_refresh)
        key_set.listen(self)
        self.key_sets.append((key_set, allowed))
        try:
            asyncio.get_running_loop()
            key_set.start()
        except RuntimeError:
            loop = getattr(self.env, "loop", None)
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(key_set.start)

    def keys_changed(self, key_set: KeySet) -> None:
        """A key set changed: nothing verified with the old keys is trusted any more."""
        self.cache.clear()

    # -- the request phase -------------------------------------------------------------------

    def on_request(self, req: Any) -> Any:
        token, source = self.reader.read(req)
        answer = self._check(req, token, source)
        if answer is not None and source == "query":
            return self.reader.off_query_when_refused(req, answer)
        return answer

    def _check(self, req: Any, token: str | None, source: str | None) -> Any:
        if token is None:
            self.refused += 1
            if source == "several":
                return self.challenges.invalid("more than one token header")
            return self.challenges.missing()
        if len(token) > self.max_token_size:
            self.refused += 1
            return self.challenges.invalid("token too large")
        key = _sha256(token.encode("latin-1", "replace")).digest()
        verdict = self.cache.get(key)
        if verdict is None:
            verdict = self._judge(token, key, wait=True)
            if isinstance(verdict, _Wait):
                return self._after_keys(req, token, key, source, verdict)
            if not isinstance(verdict, Verdict):
                self.refused += 1
                return verdict  # an answer: invalid token, keys unavailable
        return self._admit(req, verdict, source)

    async def _after_keys(self, req: Any, token: str, key: bytes, source: Any, wait: _Wait) -> Any:
        for key_set, _ in self.key_sets:
            key_set.start()
        await asyncio.wait(wait.fetches, timeout=self.keys_wait)
        verdict = self._judge(token, key, wait=False)
        if not isinstance(verdict, Verdict):
            self.refused += 1
            return verdict
        return self._admit(req, verdict, source)

    # -- verification ------------------------------------------------------------------------

    def _judge(self, token: str, key: bytes, *, wait: bool) -> Any:
        """A `Verdict` (and cached), an answer (refused), or `_Wait` (``wait`` only)."""
        invalid = self.challenges.invalid
        try:
            header = pyjwt.get_unverified_header(token)
        except Exception:
            return invalid("malformed token")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in _ALGORITHMS:
            return invalid("algorithm not accepted")
        if "crit" in header:
            return invalid("unsupported critical header")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            return invalid("malformed kid")
        found = self._candidates(kid, alg)
        if isinstance(found, str):
            return invalid(found)
        candidates, named = found
        for candidate in candidates[:MAX_CANDIDATES]:
            try:
                claims = pyjwt.decode(
                    token,
                    candidate.key,
                    algorithms=[alg],
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway,
                    options=self.options,  # type: ignore[arg-type]
                )
            except pyjwt.InvalidSignatureError:
                continue
            except pyjwt.PyJWTError as exc:
                # the claims are checked after the signature: this key was the right one
                return invalid(_reason(exc))
            except Exception:
                return invalid("malformed token")
            self.verified += 1
            return self._verdict(claims, key, candidate.kid if candidate.kid else kid)
        if candidates and (named or kid is None):
            return invalid("signature verification failed")
        # the key is not at hand: a key set not fetched yet, or a kid it may have rotated in
        fetches = self._fetches(unknown_kid=kid is not None) if wait else []
        if fetches:
            return _Wait(fetches)
        if any(not key_set.ready for key_set, _ in self.key_sets):
            return self.challenges.unavailable("keys not available")
        if kid is None:
            return invalid("no key for this algorithm")
        return invalid("signature verification failed" if candidates else "unknown key id")

    def _candidates(self, kid: str | None, alg: str) -> tuple[list[VerifyKey], bool] | str:
        """The keys that may verify a token and whether its kid named one of them (empty:
        not at hand); a str: refused."""
        if kid is not None:
            found = self.static_by_kid.get(kid)
            allowed: frozenset[str] | None = None
            if found is None:
                for key_set, set_allows in self.key_sets:
                    found = key_set.by_kid.get(kid)
                    if found is not None:
                        allowed = set_allows
                        break
            if found is None:
                # keys configured without a kid verify tokens naming any kid
                return (
                    [k for k in self.static if k.kid is None and alg in k.algorithms]
                    + [
                        k
                        for key_set, allowed in self.key_sets
                        for k in key_set.unnamed
                        if alg in k.algorithms and (allowed is None or alg in allowed)
                    ],
                    False,
                )
            if alg not in found.algorithms or (allowed is not None and alg not in allowed):
                return "algorithm not allowed for this key"
            return [found], True
        keys = [k for k in self.static if alg in k.algorithms]
        for key_set, allowed in self.key_sets:
            keys.extend(
                k
                for k in key_set.keys()
                if alg in k.algorithms and (allowed is None or alg in allowed)
            )
        return keys, False

    def _fetches(self, *, unknown_kid: bool) -> list[asyncio.Task[bool]]:
        # at most one fetch per ``min_refresh`` either way (the one in flight is shared): a
        # key set that cannot be fetched must not make every request ask its server again
        fetches = []
        for key_set, _ in self.key_sets:
            if not key_set.ready or unknown_kid:
                found = key_set.fetch_for_unknown()
                if found is not None:
                    fetches.append(found)
        return fetches

    def _verdict(self, claims: dict[str, Any], key: bytes, kid: str | None) -> Verdict:
        roles = claim_words(claims.get(self.roles_claim))
        scopes = claim_words(claims.get(self.scopes_claim))
        name = claims.get(self.consumer_claim)
        refusal = None
        if self.requirement is not None:
            missing = self.requirement.missing(roles, scopes, claims)
            if missing is not None:
                refusal = self.challenges.forbidden(missing)
        verdict = Verdict(
            claims, name if isinstance(name, str) else None, roles, scopes, kid, refusal
        )
        exp = claims.get("exp")
        now = time.time()
        until = now + NO_EXP_TTL
        if isinstance(exp, (int, float)):
            try:
                until = float(exp) + self.leeway
            except OverflowError:  # a signed exp beyond any date: valid, kept the default time
                pass
        if until > now:
            self.cache.put(key, until, verdict)
        return verdict

    # -- life --------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "cache_hits": self.cache.hits,
            "cache_misses": self.cache.misses,
            "cached": len(self.cache),
            "refused": self.refused,
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for key_set, _ in self.key_sets:
            release_key_set(self.env, key_set)
        self.key_sets = []
        self.cache.clear()


_LIVE: weakref.WeakKeyDictionary[Any, weakref.WeakSet[JwtPolicy]] = weakref.WeakKeyDictionary()


def _live(env: Any) -> weakref.WeakSet[JwtPolicy]:
    found = _LIVE.get(env)
    if found is None:
        found = _LIVE[env] = weakref.WeakSet()
        stats = getattr(env, "stats_providers", None)
        if stats is not None:
            stats["jwt"] = lambda: _totals(found)
    return found


def _totals(policies: Any) -> dict[str, int]:
    totals = {"policies": 0, "verified": 0, "cache_hits": 0, "cache_misses": 0, "refused": 0}
    for policy in list(policies):
        if policy._closed:
            continue
        totals["policies"] += 1
        for name, value in policy.stats().items():
            if name in totals:
                totals[name] += value
    return totals


def build(config: Any, env: Any = None) -> JwtPolicy:
    return JwtPolicy(config, env if env is not None else PolicyEnvironment())
