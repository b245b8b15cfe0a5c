"""The ``api_key`` family: requests must carry an API key of a consumer (`ApiKeyConfig`).

A synchronous Python family: the key is read from the configured header (or, when named, a
query parameter), hashed (``HMAC-SHA256(pepper, key)``, `isekai.config.api_key_policy.key_hash`)
and looked up in the worker's `KeyIndex`, a dict from hash to (consumer, key) built from the
worker's consumer directory. A request costs one HMAC and one dict lookup; the store is never
asked. The index is rebuilt whenever the directory changes (every snapshot that changed the
consumers: a key made, rotated or revoked through the admin API reaches every worker with the
snapshot that carries it), and when the pepper changes.

Every refusal is 401 with a ``WWW-Authenticate: ApiKey realm="...", header="..."`` challenge.
A missing key says so; an unknown, expired or revoked key gets one and the same answer (a
client cannot tell them apart, so keys cannot be probed), while the index counts each reason
apart (``refused``). Accepted requests are counted per key (requests and last use, in this
worker); both are shipped with the worker's statistics as ``extra["api_keys"]``
(`KeyIndex.stats`), which the admin API sums over the workers (``GET
/api/consumers/{name}/usage``) and ``/metrics`` exposes (refusals by reason).
"""

from __future__ import annotations

import hmac
import logging
import time
import weakref
from typing import Any
from urllib.parse import unquote_plus, unquote_to_bytes

from isekai._core.policy import Answer
from isekai.config.api_key_policy import ApiKeyConfig, key_hash
from isekai.policies.bearer import field_count
from isekai.policies.identity import identify

__all__ = ["REFUSALS", "ApiKeyPolicy", "KeyIndex", "build", "index_of"]

log = logging.getLogger("isekai.policies")

REFUSALS = ("missing", "unknown", "expired")  # the reasons a key is refused, as counted
FAMILY = "api_key"


class KeyIndex:
    """One worker's API keys: hash -> ``(consumer, key, usage)``, following the consumers.

    ``usage`` is a two-item list ``[requests, last_used_at]`` per key, kept across rebuilds
    while the key exists (by consumer name and key id). ``refused`` counts refusals by reason.
    """

    def __init__(self, env: Any) -> None:
        self.env = env
        self.by_hash: dict[str, tuple[Any, Any, list[float]]] = {}
        self.by_key: dict[str, tuple[Any, Any, list[float]]] = {}
        self.pepper: bytes = b""
        self.refused = dict.fromkeys(REFUSALS, 0)
        self._security: Any = object()  # the `Security` the index was built with
        self._items: tuple[Any, ...] = ()
        self._usage: dict[tuple[str, str], list[float]] = {}
        self._warned = False
        env.consumers.on_update(self._rebuild)
        env.stats_providers["api_keys"] = self.stats

    def _rebuild(self, items: tuple[Any, ...]) -> None:
        self._items = items
        security = self.env.security
        self._security = security
        pepper = getattr(security, "api_key_pepper", None)
        if pepper is None and security is not None and not self._warned:
            self._warned = True
            log.warning(
                "security.api_key_pepper is not set: API keys are hashed without a pepper "
                "(the admin API makes no keys until one is set)"
            )
        self.pepper = pepper.encode() if pepper else b""
        by_hash: dict[str, tuple[Any, Any, list[float]]] = {}
        usage: dict[tuple[str, str], list[float]] = {}
        for consumer in items:
            for key in getattr(consumer, "keys", ()):
                digest = key.hash if key.hash is not None else key_hash(self.pepper, key.key)
                slot = (consumer.name, key.id)
                record = usage[slot] = self._usage.get(slot) or [0, 0.0]
                if digest in by_hash:
                    other, other_key, _ = by_hash[digest]
                    log.warning(
                        "API key %s of consumer %r is the same key as %s of %r: only the "
                        "latter is used",
                        key.id,
                        consumer.name,
                        other_key.id,
                        other.name,
                    )
                    continue
                by_hash[digest] = (consumer, key, record)
        self.by_hash = by_hash
        # keys seen and accepted since the last rebuild -> their entry: a repeat skips the
        # HMAC. Only keys of the index get in (at most one per entry), so a client sending
        # random keys cannot grow it.
        self.by_key = {}
        self._usage = usage

    def lookup(self, key: str) -> tuple[Any, Any, list[float]] | None:
        """The ``(consumer, key, usage)`` that ``key`` (as the client sent it) belongs to."""
        if self.env.security is not self._security:  # a new snapshot changed the pepper
            self._rebuild(self._items)
        found = self.by_key.get(key)
        if found is not None:
            return found
        digest = hmac.digest(self.pepper, key.encode("utf-8", "surrogateescape"), "sha256")
        found = self.by_hash.get(digest.hex())
        if found is not None and len(self.by_key) < len(self.by_hash):
            self.by_key[key] = found
        return found

    def stats(self) -> dict[str, Any]:
        """JSON-compatible: ``{"usage": {consumer: {key id: [requests, last_used_at]}},
        "refused": {reason: count}}`` (keys used at least once)."""
        usage: dict[str, dict[str, list[float]]] = {}
        for (consumer, key_id), (requests, last_used) in self._usage.items():
            if requests:
                usage.setdefault(consumer, {})[key_id] = [requests, last_used]
        return {"usage": usage, "refused": dict(self.refused)}


_INDEXES: weakref.WeakKeyDictionary[Any, KeyIndex] = weakref.WeakKeyDictionary()


def index_of(env: Any) -> KeyIndex:
    """The `KeyIndex` of the worker whose environment is ``env`` (made on first use)."""
    index = _INDEXES.get(env)
    if index is None:
        index = _INDEXES[env] = KeyIndex(env)
    return index


def _challenge(config: ApiKeyConfig, error: str | None) -> tuple[tuple[bytes, bytes], ...]:
    value = f'ApiKey realm="{config.realm}", header="{config.header}"'
    if config.query is not None:
        value += f', query="{config.query}"'
    if error is not None:
        value += f', error="{error}"'
    return ((b"www-authenticate", value.encode("latin-1")),)


def _param_name(raw: bytes) -> bytes:
    return unquote_to_bytes(raw.replace(b"+", b" ")) if b"%" in raw or b"+" in raw else raw


def query_value(query: bytes, name: bytes) -> str | None:
    """The first value of parameter ``name`` in ``query`` (``?a=1&b=2``, or b""), decoded."""
    if len(query) < 2:
        return None
    for pair in query[1:].split(b"&"):
        raw_name, _, raw_value = pair.partition(b"=")
        if _param_name(raw_name) == name:
            return unquote_plus(raw_value.decode("latin-1"), encoding="utf-8", errors="replace")
    return None


def query_without(query: bytes, name: bytes) -> bytes:
    """``query`` without any ``name`` parameter (b"" when none is left)."""
    kept = [pair for pair in query[1:].split(b"&") if _param_name(pair.partition(b"=")[0]) != name]
    kept = [pair for pair in kept if pair]
    return b"?" + b"&".join(kept) if kept else b""


class ApiKeyPolicy:
    """Accepts a request whose key is a consumer's current key (see the module's text)."""

    def __init__(self, config: ApiKeyConfig, index: KeyIndex) -> None:
        self.config = config
        self.index = index
        self.header = config.header
        self.query = config.query.encode() if config.query is not None else None
        self.hide = config.hide_credentials
        self.upstream_headers = config.upstream_headers
        where = f"the {config.header} header"
        if config.query is not None:
            where += f" or the {config.query} query parameter"
        self.missing = Answer.error(
            401, f"an API key is required: send it in {where}", FAMILY, _challenge(config, None)
        )
        self.lheader = config.header.lower().encode("latin-1")
        self.several = Answer.error(
            401,
            f"the API key is not valid: the {config.header} header is sent more than once",
            FAMILY,
            _challenge(config, "invalid_key"),
        )
        self.invalid = Answer.error(
            401,
            "the API key is not valid (unknown, expired or revoked)",
            FAMILY,
            _challenge(config, "invalid_key"),
        )

    def on_request(self, req: Any) -> Answer | None:
        index = self.index
        key = req.header(self.header)
        in_header = bool(key)
        if in_header and field_count(req, self.lheader) > 1:
            # one copy would be judged while the upstream may read another: refused
            index.refused["unknown"] += 1
            return self.several
        if not in_header and self.query is not None:
            key = query_value(req.query, self.query)
        if not key:
            index.refused["missing"] += 1
            return self.missing
        found = index.lookup(key)
        if found is None:
            index.refused["unknown"] += 1
            return self._refuse(req, in_header)
        consumer, entry, usage = found
        now = time.time()
        if entry.expires_at is not None and entry.expires_at <= now:
            index.refused["expired"] += 1
            return self._refuse(req, in_header)
        usage[0] += 1
        usage[1] = now
        if self.hide:
            if in_header:
                req.remove_header(self.header)
            # every copy of the parameter, however its name is encoded (`api%5Fkey` is
            # `api_key`): not only the one the key was read from
            if self.query is not None and req.query:
                if not in_header or query_value(req.query, self.query) is not None:
                    req.query = query_without(req.query, self.query)
        identify(
            req,
            consumer,
            credential=FAMILY,
            credential_id=entry.id,
            headers=self.upstream_headers,
        )
        return None

    def _refuse(self, req: Any, in_header: bool) -> Answer:
        # a refused key read from the query leaves it, so that the access log, which shows the
        # request target, never holds one (a revoked or expired key, a mistyped one)
        if not in_header and self.query is not None:
            req.query = query_without(req.query, self.query)
        return self.invalid

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<ApiKeyPolicy header={self.header!r} query={self.config.query!r}>"


def build(config: ApiKeyConfig, env: Any = None) -> ApiKeyPolicy:
    """An `ApiKeyPolicy` looking keys up in the worker's shared `KeyIndex`."""
    if env is None:
        from isekai.policies.environment import PolicyEnvironment

        env = PolicyEnvironment()
    return ApiKeyPolicy(config, index_of(env))
