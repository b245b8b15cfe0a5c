"""Bearer tokens on a request: where they are read from, how a refusal reads, and the cache of
tokens already judged.

- `TokenReader` takes the token from the configured sources (``Authorization: Bearer``, another
  header, a cookie, a query parameter; `isekai.config.access.TokenSources`) and can take it off
  the request before it goes upstream (``hide_credentials``).
- `Challenges` makes the answers (RFC 6750 §3): 401 with ``WWW-Authenticate: Bearer
  realm="..."`` and no error when no token came, ``error="invalid_token"`` when it is not
  valid; 403 ``error="insufficient_scope"`` when it is valid but lacks what the route requires.
  Bodies are the gateway's JSON error envelope.
- `Verdict`: what a valid token resolved to (claims, consumer name, roles, scopes, key id)
  and, when it does not meet the route's ``require``, the 403 to answer.
- `TokenCache`: judged tokens by the SHA-256 of the token (the token itself is never kept),
  each until its own expiry, at most ``size`` of them (least recently used go first).
"""

from __future__ import annotations

import hashlib
import inspect
import time
import urllib.parse
from collections import OrderedDict
from typing import Any

from isekai._core.policy import Answer
from isekai.policies.identity import identify

__all__ = ["Challenges", "TokenCache", "TokenReader", "Verdict", "field_count"]

_sha256 = hashlib.sha256


def field_count(req: Any, lname: bytes) -> int:
    """How many fields named ``lname`` (lower-case) the request carries."""
    parts = req.headers
    size = len(lname)
    count = 0
    for i in range(0, len(parts) - 3, 4):
        name = parts[i]
        if len(name) == size and name.lower() == lname:
            count += 1
    return count


def _cookies(req: Any) -> str | None:
    """The cookies of every Cookie field of ``req``, as one ``a=1; b=2`` text (None: none)."""
    parts = req.headers
    values = [
        parts[i + 2].decode("latin-1")
        for i in range(0, len(parts) - 3, 4)
        if len(parts[i]) == 6 and parts[i].lower() == b"cookie"
    ]
    if not values:
        return None
    return values[0] if len(values) == 1 else "; ".join(values)


class TokenReader:
    """Reads a token from a request per `TokenSources` (header, cookie, query, in that order)."""

    __slots__ = ("bearer", "cookie", "header", "lheader", "query")

    def __init__(self, sources: Any) -> None:
        self.header: str | None = sources.header
        self.lheader = (self.header or "").lower().encode("latin-1")
        self.bearer = self.header is not None and self.header.lower() == "authorization"
        self.cookie: str | None = sources.cookie
        self.query: str | None = sources.query

    def read(self, req: Any) -> tuple[str | None, str | None]:
        """``(token, source)``; source is "header", "cookie" or "query"; (None, None) when no
        source holds one; (None, "several") when the token header is sent more than once (the
        gateway would judge one copy while the upstream may read another)."""
        if self.header is not None:
            value = req.header(self.header)
            if value is not None:
                if field_count(req, self.lheader) > 1:
                    return None, "several"
                if self.bearer and value[:7] == "Bearer " and " " not in value[7:]:
                    return value[7:], "header"  # the usual shape, without copies
                if self.bearer:
                    scheme, _, rest = value.strip().partition(" ")
                    if scheme.lower() == "bearer" and rest.strip():
                        return rest.strip(), "header"
                elif value.strip():
                    return value.strip(), "header"
        if self.cookie is not None:
            found = self._cookie(_cookies(req))
            if found:
                return found, "cookie"
        if self.query is not None and req.query:
            found = self._query(req.query)
            if found:
                return found, "query"
        return None, None

    def _cookie(self, header: str | None) -> str | None:
        if not header:
            return None
        for part in header.split(";"):
            name, eq, value = part.strip().partition("=")
            if eq and name == self.cookie:
                return value.strip().strip('"') or None
        return None

    def _query(self, query: bytes) -> str | None:
        text = query[1:].decode("latin-1")
        for name, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
            if name == self.query:
                return value or None
        return None

    def off_query_when_refused(self, req: Any, answer: Any) -> Any:
        """``answer`` (a refusal, or an awaitable of the answer) for a token read from the
        query, with the token's parameter taken out of the query when it is refused: the
        access log, which shows the request target, then never holds a token (an expired
        one, one for another audience)."""
        if inspect.isawaitable(answer):
            return self._off_query_after(req, answer)
        self.hide(req, "query")
        return answer

    async def _off_query_after(self, req: Any, pending: Any) -> Any:
        answer = await pending
        if answer is not None:
            self.hide(req, "query")
        return answer

    def hide(self, req: Any, source: str | None) -> None:
        """Take the token off the request (``hide_credentials``): the header, the cookie (the
        others stay), the query parameter (the others stay, as the client wrote them)."""
        if source == "header" and self.header is not None:
            req.remove_header(self.header)
        elif source == "cookie":
            # every Cookie field (a client may send several): every copy of the token goes
            header = _cookies(req) or ""
            rest = [
                p.strip()
                for p in header.split(";")
                if p.strip() and p.strip().partition("=")[0] != self.cookie
            ]
            if rest:
                req.set_header("Cookie", "; ".join(rest))
            else:
                req.remove_header("Cookie")
        elif source == "query":
            parts = req.query[1:].split(b"&")
            name = (self.query or "").encode()
            kept = [
                p
                for p in parts
                if p
                and urllib.parse.unquote_to_bytes(p.partition(b"=")[0].replace(b"+", b" ")) != name
            ]
            req.query = (b"?" + b"&".join(kept)) if kept else b""


def _quoted(text: str) -> str:
    # a quoted-string parameter value: printable ASCII, no quotes or backslashes
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)


class Challenges:
    """The refusals of one bearer policy (``family`` names it in the JSON body)."""

    __slots__ = ("_missing", "family", "realm")

    def __init__(self, family: str, realm: str) -> None:
        self.family = family
        self.realm = _quoted(realm)
        self._missing = Answer.error(
            401,
            "missing bearer token",
            family,
            ((b"www-authenticate", f'Bearer realm="{self.realm}"'.encode()),),
        )

    def missing(self) -> Answer:
        """401: no token at all (RFC 6750 §3.1: no error code)."""
        return self._missing

    def invalid(self, reason: str) -> Answer:
        """401 ``invalid_token`` with ``reason`` (never the token itself)."""
        value = (
            f'Bearer realm="{self.realm}", error="invalid_token", '
            f'error_description="{_quoted(reason)}"'
        )
        return Answer.error(
            401, f"invalid token: {reason}", self.family, ((b"www-authenticate", value.encode()),)
        )

    def forbidden(self, reason: str) -> Answer:
        """403 ``insufficient_scope``: a valid token without what the route requires."""
        value = (
            f'Bearer realm="{self.realm}", error="insufficient_scope", '
            f'error_description="{_quoted(reason)}"'
        )
        return Answer.error(403, reason, self.family, ((b"www-authenticate", value.encode()),))

    def unavailable(self, reason: str) -> Answer:
        """503: the token cannot be judged now (keys or the introspection endpoint down)."""
        return Answer.error(503, reason, self.family, ((b"retry-after", b"5"),))


class Verdict:
    """What a verified token resolved to (what `TokenCache` keeps)."""

    __slots__ = ("claims", "consumer_name", "kid", "refusal", "roles", "scopes")

    def __init__(
        self,
        claims: dict[str, Any],
        consumer_name: str | None,
        roles: list[str],
        scopes: list[str],
        kid: str | None,
        refusal: Any,
    ) -> None:
        self.claims = claims
        self.consumer_name = consumer_name
        self.roles = roles
        self.scopes = scopes
        self.kid = kid
        self.refusal = refusal


class TokenCache:
    """Judged tokens by SHA-256, each until its ``until`` (a `time.time()` value), at most
    ``size`` entries; ``size`` 0 keeps nothing. Counts ``hits`` and ``misses``."""

    __slots__ = ("_entries", "hits", "misses", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, tuple[float, Any]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(token: str) -> bytes:
        return _sha256(token.encode("latin-1", "replace")).digest()

    def get(self, key: bytes) -> Any | None:
        found = self._entries.get(key)
        if found is not None:
            if found[0] > time.time():
                self._entries.move_to_end(key)
                self.hits += 1
                return found[1]
            del self._entries[key]
        self.misses += 1
        return None

    def put(self, key: bytes, until: float, value: Any) -> None:
        if self.size <= 0:
            return
        entries = self._entries
        entries[key] = (until, value)
        entries.move_to_end(key)
        while len(entries) > self.size:
            entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class BearerAdmission:
    """The accepting end shared by the bearer-token families (``jwt``,
    ``oauth2_introspection``): a `Verdict` becomes a refusal (403 from `require`, or no
    consumer when one is required) or an identified request, the token hidden if asked.
    The class sets ``credential``; an instance has ``refused``, ``consumers``,
    ``consumer_required``, ``no_consumer``, ``headers``, ``hide_credentials`` and ``reader``."""

    credential = ""

    def _admit(self, req: Any, verdict: Verdict, source: str | None) -> Any:
        if verdict.refusal is not None:
            self.refused += 1  # type: ignore[attr-defined]
            return verdict.refusal
        name = verdict.consumer_name
        consumers = self.consumers  # type: ignore[attr-defined]
        consumer = consumers.get(name) if name is not None else None
        if consumer is None and self.consumer_required:  # type: ignore[attr-defined]
            self.refused += 1  # type: ignore[attr-defined]
            return self.no_consumer  # type: ignore[attr-defined]
        identify(
            req,
            consumer,
            credential=self.credential,
            credential_id=verdict.kid,
            claims=verdict.claims,
            roles=verdict.roles,
            scopes=verdict.scopes,
            headers=self.headers,  # type: ignore[attr-defined]
        )
        if self.hide_credentials:  # type: ignore[attr-defined]
            self.reader.hide(req, source)  # type: ignore[attr-defined]
        return None
