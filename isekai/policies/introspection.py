"""The ``oauth2_introspection`` family: opaque tokens judged by the authorization server
(RFC 7662), answers cached.

The request phase is synchronous: a token whose answer is cached (active or not) is judged
inline. Otherwise it returns an awaitable (the slow path, this request only): a ``POST`` of
``token=...&token_type_hint=access_token`` to ``introspection_url`` with HTTP Basic client
authentication (``client_secret_basic``), through the worker's shared HTTP client. Requests
carrying the same token while that call is in flight share it.

``active: true`` (and not past its ``exp`` or before its ``nbf``) passes on to the same
``require`` checks and `identify` as the ``jwt`` family; ``active: false`` is 401
``invalid_token``; an endpoint that cannot be asked (refused, timed out, non-200, not JSON) is
503, never 500, and nothing is cached for it. An answer is kept ``cache_ttl``, never past the
token's ``exp``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import time
import urllib.parse
import weakref
from typing import Any

from isekai.policies.access import Requirement, claim_words
from isekai.policies.bearer import (
    BearerAdmission,
    Challenges,
    TokenCache,
    TokenReader,
    Verdict,
)
from isekai.policies.environment import PolicyEnvironment

__all__ = ["IntrospectionPolicy", "build"]

log = logging.getLogger("isekai.policies")

MAX_ANSWER = 64 * 1024
LOG_EVERY = 60.0


class IntrospectionPolicy(BearerAdmission):
    """One ``oauth2_introspection`` policy. Counters: ``calls`` (introspection requests
    made), ``failures`` (endpoint unavailable), ``cache.hits``, ``refused``."""

    credential = "oauth2_introspection"

    def __init__(self, config: Any, env: Any) -> None:
        self.env = env
        self.consumers = env.consumers
        self.url = config.introspection_url
        self.client_id = config.client_id
        # client_secret_basic (RFC 6749 §2.3.1: each part form-urlencoded, then Basic)
        user = urllib.parse.quote_plus(config.client_id)
        password = urllib.parse.quote_plus(config.client_secret)
        self._authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.cache_ttl = config.cache_ttl
        self.timeout = config.timeout
        self.reader = TokenReader(config.token)
        self.challenges = Challenges("oauth2_introspection", config.realm)
        self.cache = TokenCache(config.cache_size if config.cache_ttl > 0 else 0)
        self.requirement = Requirement(config.require) if config.require is not None else None
        self.consumer_claims = (
            (config.consumer_claim,) if config.consumer_claim else ("client_id", "sub")
        )
        self.consumer_required = config.consumer_required
        self.roles_claim = config.roles_claim
        self.scopes_claim = config.scopes_claim
        self.max_token_size = config.max_token_size
        self.hide_credentials = config.hide_credentials
        self.headers = config.upstream_headers
        self.inactive = self.challenges.invalid("token not active")
        self.down = self.challenges.unavailable("introspection endpoint unavailable")
        self.no_consumer = self.challenges.forbidden("no consumer for this token")
        self.calls = 0
        self.failures = 0
        self.refused = 0
        self._inflight: dict[bytes, asyncio.Task[Any]] = {}
        self._last_logged = -1e18
        self._closed = False
        _live(env).add(self)

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
        key = TokenCache.key(token)
        verdict = self.cache.get(key)
        if verdict is None:
            return self._slow(req, token, key, source)
        return self._admit(req, verdict, source)

    async def _slow(self, req: Any, token: str, key: bytes, source: str | None) -> Any:
        task = self._inflight.get(key)
        if task is None:
            task = self._inflight[key] = asyncio.get_running_loop().create_task(
                self._introspect(token, key)
            )
            task.add_done_callback(functools.partial(self._done, key))
        verdict = await asyncio.shield(task)
        return self._admit(req, verdict, source)

    def _done(self, key: bytes, _task: Any) -> None:
        self._inflight.pop(key, None)

    def _admit(self, req: Any, verdict: Any, source: str | None) -> Any:
        if not isinstance(verdict, Verdict):
            self.refused += 1
            return verdict
        return BearerAdmission._admit(self, req, verdict, source)

    async def _ask(self, token: str) -> Any:
        import aiohttp

        self.calls += 1
        session = self.env.http()
        async with session.post(
            self.url,
            data={"token": token, "token_type_hint": "access_token"},
            headers={"Accept": "application/json", "Authorization": self._authorization},
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            allow_redirects=False,
        ) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            data = await resp.content.read(MAX_ANSWER + 1)
        if len(data) > MAX_ANSWER:
            raise ValueError("answer too large")
        answer = json.loads(data)
        if not isinstance(answer, dict) or not isinstance(answer.get("active"), bool):
            raise ValueError("not an introspection answer (no boolean 'active')")
        return answer

    async def _introspect(self, token: str, key: bytes) -> Any:
        """A `Verdict` or an answer (401 inactive, 503 down); cached unless the endpoint was
        down."""
        try:
            answer = await self._ask(token)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures += 1
            now = time.monotonic()
            if now - self._last_logged >= LOG_EVERY:
                self._last_logged = now
                log.warning("token introspection at %s failed: %s", self.url, str(exc)[:200])
            return self.down
        now = time.time()
        until = now + self.cache_ttl
        exp = answer.get("exp")
        nbf = answer.get("nbf")
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            try:
                until = min(until, float(exp))
            except OverflowError:  # beyond any date: cache_ttl bounds it
                pass
        active = answer["active"] is True and until > now
        if active and isinstance(nbf, (int, float)) and not isinstance(nbf, bool) and nbf > now:
            active = False
        if not active:
            self.cache.put(key, now + self.cache_ttl, self.inactive)
            return self.inactive
        verdict = self._verdict(answer)
        self.cache.put(key, until, verdict)
        return verdict

    def _verdict(self, claims: dict[str, Any]) -> Verdict:
        roles = claim_words(claims.get(self.roles_claim))
        scopes = claim_words(claims.get(self.scopes_claim))
        name = None
        for claim in self.consumer_claims:
            value = claims.get(claim)
            if isinstance(value, str) and value:
                name = value
                break
        refusal = None
        if self.requirement is not None:
            missing = self.requirement.missing(roles, scopes, claims)
            if missing is not None:
                refusal = self.challenges.forbidden(missing)
        client = claims.get("client_id")
        return Verdict(
            claims, name, roles, scopes, client if isinstance(client, str) else None, refusal
        )

    def stats(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "failures": self.failures,
            "cache_hits": self.cache.hits,
            "refused": self.refused,
        }

    def close(self) -> None:
        self._closed = True
        for task in self._inflight.values():
            task.cancel()
        self._inflight.clear()
        self.cache.clear()


_LIVE: weakref.WeakKeyDictionary[Any, weakref.WeakSet[IntrospectionPolicy]] = (
    weakref.WeakKeyDictionary()
)


def _live(env: Any) -> weakref.WeakSet[IntrospectionPolicy]:
    """The worker's live policies of this family; its ``oauth2_introspection`` statistics
    (calls, failures, cache hits, refusals, summed) are reported with the worker's."""
    found = _LIVE.get(env)
    if found is None:
        found = _LIVE[env] = weakref.WeakSet()
        stats = getattr(env, "stats_providers", None)
        if stats is not None:
            stats["oauth2_introspection"] = functools.partial(_totals, found)
    return found


def _totals(policies: Any) -> dict[str, int]:
    totals = {"policies": 0, "calls": 0, "failures": 0, "cache_hits": 0, "refused": 0}
    for policy in list(policies):
        if policy._closed:
            continue
        totals["policies"] += 1
        for name, value in policy.stats().items():
            totals[name] += value
    return totals


def build(config: Any, env: Any = None) -> IntrospectionPolicy:
    return IntrospectionPolicy(config, env if env is not None else PolicyEnvironment())
