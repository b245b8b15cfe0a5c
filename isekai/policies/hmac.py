"""The ``hmac`` family: requests signed with RFC 9421 HTTP Message Signatures (`HmacConfig`).

`HmacPolicy.on_request`, in order, each failure a 401 JSON answer (``WWW-Authenticate:
Signature realm="isekai"`` and ``Accept-Signature`` naming the required components):

1. ``Signature-Input`` and ``Signature`` are parsed as RFC 8941 dictionaries (strictly:
   `isekai.policies.hmac_fields`). The signature considered is the first member of
   ``Signature-Input`` (with the configured ``tag``, when one is set); ``Signature`` must
   have a byte sequence under the same label.
2. Its parameters: ``keyid`` (selects the key), ``created`` (an integer within ``skew`` of
   now, either way), ``expires`` (when present, not past), ``nonce`` (required unless
   ``require_nonce: false``), ``alg`` (when present, the key's algorithm; the key's
   algorithm is used either way).
3. Its components: supported ones only, no duplicates, covering ``required_components`` and,
   when the request has a body, ``content-digest``.
4. The MAC of the signature base (`isekai.policies.hmac_signing.signature_base`) equals the
   signature (`hmac.compare_digest`).
5. ``Content-Digest``, when present (and it must be with a body), matches the body: the
   policy has ``body_limit`` (``max_body``), so its routes read the whole body first (413
   past it) and ``req.body`` holds it.
6. The nonce was not seen inside ``nonce_ttl``: `MemoryNonces` answers inline; with
   `RedisNonces` the request phase returns a coroutine (the slow path, for this request only).
   A store failure answers 503 (``on_store_error: deny``) or lets the request pass unchecked
   (``allow``).

Then `isekai.policies.identity.identify` records the consumer of the key (``credential:
hmac``, ``credential_id``: the keyid, claims ``{"keyid": ...}``). Secrets and signatures are
never logged; key ids are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from hmac import compare_digest
from typing import Any

from isekai._core.policy import Answer
from isekai.config.hmac_policy import secret_bytes
from isekai.policies.hmac_fields import FieldError, Token, parse_dictionary, serialize_inner_list
from isekai.policies.hmac_nonces import MemoryNonces, RedisNonces, nonce_key
from isekai.policies.hmac_signing import (
    Component,
    ComponentError,
    Message,
    authority_of,
    check_component,
    digest_matches,
    mac,
    parse_component,
    signature_base,
)
from isekai.policies.identity import identify

__all__ = ["HmacPolicy", "Key", "build"]

log = logging.getLogger("isekai.policies.hmac")

FAMILY = "hmac"
STORE_LOG_INTERVAL = 10.0  # seconds between two "nonce store failed" warnings
# what a covered component implies: covering the whole URI binds each of its parts
_IMPLIES = {
    "@target-uri": ("@request-target", "@path", "@query", "@scheme", "@authority"),
    "@request-target": ("@path", "@query"),
}
# fields `req.header` answers from the parsed request rather than the header list
_KEPT_APART = frozenset(
    {"host", "content-length", "transfer-encoding", "x-forwarded-for", "x-request-id", "upgrade"}
)


@dataclass(frozen=True, slots=True)
class Key:
    """A shared secret as the policy uses it."""

    id: str | None  # None: the one `secret` without a `keyid`: any keyid selects it
    secret: bytes
    algorithm: str
    consumer: str | None


class Refused(Exception):
    """A request that is not correctly signed: the message of its 401."""


def request_fields(req: Any) -> Callable[[str], list[str] | None]:
    """``name -> values`` of the request's fields, one per field line (lower-case names)."""

    def values(name: str) -> list[str] | None:
        if name in _KEPT_APART:
            value = req.header(name)
            return None if value is None else [value]
        parts = req.headers
        found = [
            parts[i + 2].decode("latin-1")
            for i in range(0, len(parts) - 3, 4)
            if parts[i].lower() == name.encode("latin-1")
        ]
        return found or None

    return values


def _joined(req: Any, name: str) -> str | None:
    values = request_fields(req)(name)
    return None if values is None else ", ".join(v.strip(" \t") for v in values)


def covered_closure(components: list[Component]) -> set[str]:
    """The identifiers ``components`` bind, with what the covered ones imply (`_IMPLIES`;
    ``@path`` and ``@query`` together bind ``@request-target``)."""
    covered = {c.serialize() for c in components}
    for component in components:
        covered.update(f'"{name}"' for name in _IMPLIES.get(component.name, ()))
    if '"@path"' in covered and '"@query"' in covered:
        covered.add('"@request-target"')
    return covered


class HmacPolicy:
    """Verifies RFC 9421 HMAC signatures (see the module's text)."""

    def __init__(
        self,
        config: Any,
        env: Any = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.env = env
        self.clock = clock
        self.monotonic = monotonic
        self.body_limit = config.max_body
        self.skew = config.skew
        self.tag = config.tag
        self.keys: dict[str, Key] = {}
        self.any_keyid: Key | None = None
        if config.secret is not None:
            key = Key(
                config.keyid,
                secret_bytes(config.secret, config.encoding),
                config.algorithm,
                config.consumer,
            )
            if config.keyid is None:
                self.any_keyid = key
            else:
                self.keys[config.keyid] = key
        for item in config.keys:
            self.keys[item.id] = Key(
                item.id, secret_bytes(item.secret, item.encoding), item.algorithm, item.consumer
            )
        self.required = [parse_component(text) for text in config.required_components]
        self.required_ids = [c.serialize() for c in self.required]
        digest = Component("content-digest")
        self.unauthorized_headers = self._challenge(self.required)
        self.unauthorized_body_headers = self._challenge(
            self.required if digest in self.required else [*self.required, digest]
        )
        self.memory: MemoryNonces | None = None
        self.redis: RedisNonces | None = None
        if config.require_nonce:
            if config.nonce_store == "redis":
                url = config.redis_url
                self.redis = RedisNonces(
                    lambda: env.redis(url),
                    config.redis_prefix,
                    config.nonce_ttl,
                    config.store_timeout,
                )
            else:
                self.memory = MemoryNonces(config.nonce_ttl, config.max_nonces, monotonic)
                workers = getattr(env, "workers", 1)
                if workers > 1:
                    log.warning(
                        "hmac policy: nonce_store: memory with %d workers: each worker remembers "
                        "its own nonces, so a replay sent to another worker is not refused; "
                        "use nonce_store: redis",
                        workers,
                    )
        self.store_down = Answer.error(
            503, "the nonce store is unavailable; try again", FAMILY, (("retry-after", "1"),)
        )
        self._store_logged = -STORE_LOG_INTERVAL
        self.accepted = 0
        self.refused = 0
        self.replays = 0

    @staticmethod
    def _challenge(required: list[Component]) -> tuple[tuple[str, str], ...]:
        accept = serialize_inner_list([(c.name, dict(c.params)) for c in required], {})
        return (
            ("www-authenticate", 'Signature realm="isekai"'),
            ("accept-signature", f"sig1={accept};created"),
        )

    # -- the request phase ----------------------------------------------------------------------

    def on_request(self, req: Any) -> Any:
        body = req.body or b""
        try:
            key, keyid, nonce = self.verify(req, body)
        except Refused as refusal:
            self.refused += 1
            log.debug("request %s refused: %s", req.request_id, refusal)
            headers = self.unauthorized_body_headers if body else self.unauthorized_headers
            return Answer.error(401, str(refusal), FAMILY, headers)
        consumer = None
        if key.consumer is not None:
            consumer = self.env.consumers.get(key.consumer) if self.env is not None else None
            if consumer is None:
                self.refused += 1
                log.warning("hmac key %r: its consumer %r is not configured", keyid, key.consumer)
                return self._refuse(f"the consumer of key {keyid!r} is not known", body)
        if nonce is None:
            return self._accept(req, consumer, keyid)
        nonce_id = nonce_key(keyid, nonce)
        if self.redis is not None:
            return self._check_remote(req, consumer, keyid, nonce_id)
        assert self.memory is not None
        new = self.memory.add(nonce_id)
        if new is None:
            return self._store_failed(req, consumer, keyid, "memory store full")
        if not new:
            return self._replay(keyid, body)
        return self._accept(req, consumer, keyid)

    async def _check_remote(self, req: Any, consumer: Any, keyid: str, nonce_id: bytes) -> Any:
        assert self.redis is not None
        try:
            new = await self.redis.add(nonce_id)
        except Exception as exc:  # connection refused, timeout, protocol: the store failed
            return self._store_failed(req, consumer, keyid, f"{type(exc).__name__}: {exc}")
        if not new:
            return self._replay(keyid, req.body or b"")
        return self._accept(req, consumer, keyid)

    def _accept(self, req: Any, consumer: Any, keyid: str) -> None:
        self.accepted += 1
        identify(
            req,
            consumer,
            credential=FAMILY,
            credential_id=keyid,
            claims={"keyid": keyid},
            headers=self.config.upstream_headers,
        )
        return None

    def _refuse(self, message: str, body: bytes) -> Answer:
        headers = self.unauthorized_body_headers if body else self.unauthorized_headers
        return Answer.error(401, message, FAMILY, headers)

    def _replay(self, keyid: str, body: bytes) -> Answer:
        self.refused += 1
        self.replays += 1
        log.info("hmac key %r: nonce used before (a replay) refused", keyid)
        return self._refuse("the signature's nonce was used before (replay)", body)

    def _store_failed(self, req: Any, consumer: Any, keyid: str, why: str) -> Any:
        now = self.monotonic()
        if now - self._store_logged >= STORE_LOG_INTERVAL:
            self._store_logged = now
            log.warning(
                "hmac nonce store failed (%s): %s",
                why,
                self.config.on_store_error == "deny"
                and "answering 503"
                or "accepting without the replay check",
            )
        if self.config.on_store_error == "deny":
            self.refused += 1
            return self.store_down
        return self._accept(req, consumer, keyid)

    # -- verification -----------------------------------------------------------------------------

    def verify(self, req: Any, body: bytes) -> tuple[Key, str, str | None]:
        """(key, keyid, nonce) of a correctly signed request, else `Refused`."""
        inputs_text = _joined(req, "signature-input")
        signatures_text = _joined(req, "signature")
        if not inputs_text and not signatures_text:
            raise Refused("the request is not signed: Signature-Input and Signature are missing")
        if not inputs_text:
            raise Refused("Signature-Input is missing")
        if not signatures_text:
            raise Refused("Signature is missing")
        try:
            inputs = parse_dictionary(inputs_text)
        except FieldError as exc:
            raise Refused(f"Signature-Input is malformed: {exc}") from None
        try:
            signatures = parse_dictionary(signatures_text)
        except FieldError as exc:
            raise Refused(f"Signature is malformed: {exc}") from None
        label, items, params = self._choose(inputs)
        value = signatures.get(label)
        if value is None:
            raise Refused(f"Signature has no member {label!r} (the label in Signature-Input)")
        if not isinstance(value[0], bytes):
            raise Refused(f"Signature member {label!r} is not a byte sequence (:base64:)")
        provided = value[0]
        keyid = self._text_param(params, "keyid", required=True)
        assert keyid is not None
        key = self.keys.get(keyid) or self.any_keyid
        if key is None:
            raise Refused(f"unknown keyid {keyid!r}")
        alg = self._text_param(params, "alg")
        if alg is not None and alg != key.algorithm:
            raise Refused(f"alg {alg!r} is not the algorithm of key {keyid!r}")
        self._check_times(params)
        nonce = self._text_param(params, "nonce", required=self.config.require_nonce)
        components = self._components(items)
        self._check_coverage(components, body, req)
        message = Message(
            req.method.decode("latin-1"),
            self.config.scheme,
            authority_of(
                req.host.decode("latin-1") if req.host is not None else None, self.config.scheme
            ),
            req.path.decode("latin-1"),
            req.query.decode("latin-1"),
            request_fields(req),
        )
        try:
            params_text = serialize_inner_list(items, params)
            base = signature_base(message, components, params_text)
        except (ComponentError, FieldError) as exc:
            raise Refused(str(exc)) from None
        expected = mac(key.algorithm, key.secret, base)
        if not compare_digest(expected, provided):
            raise Refused("the signature does not match the request")
        digest_field = _joined(req, "content-digest")
        if digest_field is not None:
            try:
                matches = digest_matches(digest_field, body)
            except FieldError as exc:
                raise Refused(f"Content-Digest is malformed: {exc}") from None
            if matches is None:
                raise Refused("Content-Digest has neither sha-256 nor sha-512")
            if not matches:
                raise Refused("Content-Digest does not match the body")
        return key, keyid, nonce

    def _choose(self, inputs: dict[str, Any]) -> tuple[str, list[Any], dict[str, Any]]:
        for label, (value, params) in inputs.items():
            if not isinstance(value, list):
                raise Refused(f"Signature-Input member {label!r} is not an inner list")
            if self.tag is not None and params.get("tag") != self.tag:
                continue
            return label, value, params
        if self.tag is not None:
            raise Refused(f"no signature with tag {self.tag!r}")
        raise Refused("Signature-Input has no signature")

    @staticmethod
    def _text_param(params: dict[str, Any], name: str, required: bool = False) -> str | None:
        value = params.get(name)
        if value is None:
            if required:
                raise Refused(f"the signature has no {name} parameter")
            return None
        if not isinstance(value, str) or isinstance(value, Token):
            raise Refused(f"the {name} parameter must be a string")
        return value

    def _check_times(self, params: dict[str, Any]) -> None:
        created = params.get("created")
        if created is None:
            raise Refused("the signature has no created parameter")
        if not isinstance(created, int) or isinstance(created, bool):
            raise Refused("the created parameter must be an integer")
        now = self.clock()
        if created > now + self.skew:
            raise Refused("the signature's created time is in the future (check the clock)")
        if created < now - self.skew:
            raise Refused("the signature is too old (created more than skew ago)")
        expires = params.get("expires")
        if expires is not None:
            if not isinstance(expires, int) or isinstance(expires, bool):
                raise Refused("the expires parameter must be an integer")
            if expires < created:
                raise Refused("the signature expires before it was created")
            if expires < now:
                raise Refused("the signature has expired")

    @staticmethod
    def _components(items: list[Any]) -> list[Component]:
        components = []
        seen = set()
        for name, params in items:
            if not isinstance(name, str) or isinstance(name, Token):
                raise Refused("a covered component must be a string")
            try:
                component = check_component(name, params)
            except ComponentError as exc:
                raise Refused(str(exc)) from None
            identifier = component.serialize()
            if identifier in seen:
                raise Refused(f"component {identifier} is covered twice")
            seen.add(identifier)
            components.append(component)
        return components

    def _check_coverage(self, components: list[Component], body: bytes, req: Any) -> None:
        covered = covered_closure(components)
        missing = [text for text in self.required_ids if text not in covered]
        if self.config.require_digest and body:
            if '"content-digest"' not in covered:
                missing.append('"content-digest"')
        if missing:
            names = ", ".join(text.replace('"', "", 2) for text in missing)
            raise Refused(f"the signature must cover: {names}")
        if self.config.require_digest and body and req.header("content-digest") is None:
            raise Refused("a request with a body needs Content-Digest")

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<HmacPolicy keys={len(self.keys) + (self.any_keyid is not None)}>"


def build(config: Any, env: Any = None) -> HmacPolicy:
    """An `HmacPolicy` for ``config`` (`isekai.config.hmac_policy.HmacConfig`)."""
    return HmacPolicy(config, env)
