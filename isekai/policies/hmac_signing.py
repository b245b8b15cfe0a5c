"""HTTP Message Signatures (RFC 9421) with HMAC: the signature base, body digests, a signer.

Both sides use this module: the ``hmac`` policy (`isekai.policies.hmac`) builds the signature
base of the request it received and compares MACs; clients (and the tests) sign requests
with `sign_request`. Only the standard library is used, so a client can copy it.

- `Component`: a component identifier, ``"@method"``, ``"content-type"`` or
  ``"@query-param";name="id"``; `parse_component` reads the config's spelling
  (``@query-param;name=id``).
- `Message`: what a signature covers, seen the same way on both sides (method, scheme,
  authority, path, query, and the field values by lower-case name).
- `component_value` (RFC 9421 §2.1, §2.2), `signature_base` (§2.5).
- `content_digest` / `digest_matches` (RFC 9530 ``Content-Digest``, ``sha-256`` and
  ``sha-512``).
- `sign_request(method, url, headers, body, keyid, secret, ...)`: the headers to add
  (``Signature-Input``, ``Signature`` and, with a body, ``Content-Digest``).

Algorithms: ``hmac-sha256`` (RFC 9421 §3.3.3) and ``hmac-sha512``, an Isekai extension name
(not in the IANA registry) for HMAC with SHA-512, built the same way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from isekai.policies.hmac_fields import (
    FieldError,
    parse_dictionary,
    parse_parameters,
    serialize_inner_list,
    serialize_item,
)

__all__ = [
    "ALGORITHMS",
    "DERIVED",
    "DIGESTS",
    "Component",
    "ComponentError",
    "Message",
    "component_value",
    "content_digest",
    "digest_matches",
    "form_encode",
    "mac",
    "message_from_url",
    "parse_component",
    "sign_request",
    "signature_base",
    "signature_params",
]

ALGORITHMS: Mapping[str, Callable[..., Any]] = {
    "hmac-sha256": hashlib.sha256,
    "hmac-sha512": hashlib.sha512,
}
DIGESTS: Mapping[str, Callable[..., Any]] = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
# the derived components of a request (RFC 9421 §2.2; @status is a response's)
DERIVED = frozenset(
    {
        "@method",
        "@target-uri",
        "@authority",
        "@scheme",
        "@request-target",
        "@path",
        "@query",
        "@query-param",
    }
)
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
_FORM_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789*-._")
_FIELD_NAME = frozenset("abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~")
MAX_QUERY_PARAMS = 256
_LABEL = re.compile(r"[a-z*][a-z0-9_\-.*]{0,63}")


class ComponentError(ValueError):
    """A component that cannot be part of a signature base (unknown, unsupported, absent)."""


@dataclass(frozen=True, slots=True)
class Component:
    """A component identifier: its name and parameters (only ``name``, of ``@query-param``)."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    def serialize(self) -> str:
        return serialize_item(self.name, dict(self.params))

    def __str__(self) -> str:
        return self.serialize()


def check_component(name: str, params: Mapping[str, Any]) -> Component:
    """A `Component` from a name and its parameters, or `ComponentError` saying why not."""
    if name.startswith("@"):
        if name == "@signature-params":
            raise ComponentError("@signature-params cannot be a covered component")
        if name not in DERIVED:
            raise ComponentError(f"unsupported derived component {name!r}")
        if name == "@query-param":
            if set(params) != {"name"} or not isinstance(params["name"], str):
                raise ComponentError('@query-param needs exactly one parameter: name="..."')
            return Component(name, (("name", str(params["name"])),))
        if params:
            raise ComponentError(f"{name} takes no parameters")
        return Component(name)
    if not name or any(c not in _FIELD_NAME for c in name):
        raise ComponentError(f"not a lower-case field name: {name!r}")
    if params:
        listed = ", ".join(";" + key for key in params)
        raise ComponentError(
            f"component parameters {listed} of {name!r} are not supported (sign the field as is)"
        )
    return Component(name)


def parse_component(text: str) -> Component:
    """The config's spelling of a component: ``@method``, ``content-digest``,
    ``@query-param;name=id`` (or ``name="id"``). `ComponentError` when it is not one."""
    name, semicolon, rest = text.partition(";")
    params: dict[str, Any] = {}
    if semicolon:
        if rest.startswith("name=") and not rest.startswith('name="'):
            rest = f'name="{rest[5:]}"'
        try:
            params = parse_parameters(";" + rest)
        except FieldError as exc:
            raise ComponentError(f"{text!r}: {exc}") from None
    return check_component(name, params)


@dataclass(frozen=True, slots=True)
class Message:
    """A request as a signature sees it. ``query`` is ``""`` or starts with ``?``;
    ``fields(name)`` gives the values of field ``name`` (lower-case), one per field line, or
    None when there is none."""

    method: str
    scheme: str
    authority: str | None
    path: str
    query: str
    fields: Callable[[str], list[str] | None]


def form_encode(text: str) -> str:
    """Percent-encoding of a query parameter name or value as RFC 9421 §2.2.8 wants it (the
    application/x-www-form-urlencoded set, space as ``%20``)."""
    return "".join(
        chr(b) if b in _FORM_SAFE else f"%{b:02X}" for b in text.encode("utf-8", "surrogatepass")
    )


def _query_param(message: Message, wanted: str) -> str:
    try:
        pairs = parse_qsl(
            message.query[1:], keep_blank_values=True, max_num_fields=MAX_QUERY_PARAMS
        )
    except ValueError:
        raise ComponentError(f"more than {MAX_QUERY_PARAMS} query parameters") from None
    found = [value for name, value in pairs if form_encode(name) == wanted]
    if not found:
        raise ComponentError(f'query parameter "{wanted}" is not in the request')
    if len(found) > 1:
        raise ComponentError(f'query parameter "{wanted}" occurs more than once')
    return form_encode(found[0])


def authority_of(host: str | None, scheme: str) -> str | None:
    """``Host`` as ``@authority``: lower-case, without the scheme's default port."""
    if host is None:
        return None
    host = host.strip().lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default and host.endswith(default):
        host = host[: -len(default)]
    return host


def component_value(message: Message, component: Component) -> str:
    """The value of ``component`` in ``message`` (RFC 9421 §2.1, §2.2); `ComponentError`
    when the message has none."""
    name = component.name
    path = message.path or "/"
    if name == "@method":
        return message.method
    if name == "@path":
        return path
    if name == "@query":
        return message.query or "?"
    if name == "@request-target":
        return path + message.query
    if name == "@scheme":
        return message.scheme.lower()
    if name in ("@authority", "@target-uri"):
        if message.authority is None:
            raise ComponentError("the request has no authority (Host)")
        if name == "@authority":
            return message.authority
        return f"{message.scheme.lower()}://{message.authority}{path}{message.query}"
    if name == "@query-param":
        return _query_param(message, dict(component.params)["name"])
    values = message.fields(name)
    if values is None:
        raise ComponentError(f"covered field {name!r} is not in the request")
    return ", ".join(value.strip(" \t") for value in values)


def signature_params(
    components: Iterable[Component], params: Mapping[str, Any]
) -> tuple[list[tuple[Any, dict[str, Any]]], str]:
    """The inner list of a signature's components and parameters, and its serialization (the
    value of ``@signature-params`` and of the ``Signature-Input`` member)."""
    items = [(c.name, dict(c.params)) for c in components]
    return items, serialize_inner_list(items, dict(params))


def signature_base(message: Message, components: Iterable[Component], params_text: str) -> str:
    """The signature base (RFC 9421 §2.5): one line per component, then
    ``"@signature-params": <params_text>``. `ComponentError` for a component the message
    lacks or a value that holds a line break."""
    lines = []
    for component in components:
        value = component_value(message, component)
        if "\n" in value or "\r" in value:
            raise ComponentError(f"the value of {component} holds a line break")
        lines.append(f"{component.serialize()}: {value}")
    lines.append(f'"@signature-params": {params_text}')
    return "\n".join(lines)


def mac(algorithm: str, secret: bytes, base: str) -> bytes:
    """The HMAC of signature base ``base`` (bytes as they were received: latin-1)."""
    return hmac.new(secret, base.encode("latin-1"), ALGORITHMS[algorithm]).digest()


def content_digest(body: bytes, algorithms: Iterable[str] = ("sha-256",)) -> str:
    """A ``Content-Digest`` value (RFC 9530) of ``body``: ``sha-256=:...:``."""
    return ", ".join(
        f"{name}={serialize_item(DIGESTS[name](body).digest())}" for name in algorithms
    )


def digest_matches(field: str, body: bytes) -> bool | None:
    """Whether ``Content-Digest`` value ``field`` matches ``body``: every ``sha-256`` and
    ``sha-512`` member must match, at least one must be there. None when none is (only
    algorithms we do not know); `FieldError` when the value is malformed."""
    members = parse_dictionary(field)
    checked = None
    for name, (value, _) in members.items():
        hasher = DIGESTS.get(name)
        if hasher is None:
            continue
        if not isinstance(value, bytes):
            raise FieldError(f"Content-Digest member {name} is not a byte sequence")
        if not hmac.compare_digest(hasher(body).digest(), value):
            return False
        checked = True
    return checked


# -- the signer -------------------------------------------------------------------------------


def message_from_url(
    method: str, url: str, headers: Mapping[str, str] | Iterable[tuple[str, str]]
) -> Message:
    """The `Message` of a request to absolute ``url`` with ``headers``."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"an absolute URL is needed: {url!r}")
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    by_name: dict[str, list[str]] = {}
    for name, value in pairs:
        by_name.setdefault(name.lower(), []).append(value)
    host = by_name.get("host", [parts.netloc])[0]
    scheme = parts.scheme.lower()
    query = "?" + parts.query if parts.query or url.endswith("?") else ""
    return Message(
        method.upper(), scheme, authority_of(host, scheme), parts.path, query, by_name.get
    )


def sign_request(
    method: str,
    url: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    body: bytes | None = None,
    *,
    keyid: str,
    secret: bytes | str,
    alg: str | None = "hmac-sha256",
    components: Iterable[str] | None = None,
    nonce: str | bool = True,
    created: int | None = None,
    expires: int | None = None,
    tag: str | None = None,
    label: str = "sig1",
    digest: str = "sha-256",
) -> dict[str, str]:
    """Sign a request: the header fields to add to it.

    ``components`` are identifiers as in the policy's config (default: ``@method``,
    ``@target-uri`` and, with a body, ``content-digest``). ``nonce`` is a random one by
    default (a string: that one; False: none); ``created`` is now by default. ``alg`` is sent
    as the ``alg`` parameter (None: not sent; the MAC is ``hmac-sha256`` then). With a
    non-empty ``body`` and no ``Content-Digest`` in ``headers``, one is made (``digest``
    algorithm) and returned too. ``secret`` is the key itself (bytes, or text as UTF-8).
    ``label`` names the signature in both fields.
    """
    algorithm = alg or "hmac-sha256"
    if not _LABEL.fullmatch(label):
        raise ValueError(f"a label is a structured-field key (lower case): {label!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
    added: dict[str, str] = {}
    if body and not any(name.lower() == "content-digest" for name, _ in pairs):
        added["Content-Digest"] = content_digest(body, (digest,))
        pairs.append(("Content-Digest", added["Content-Digest"]))
    if components is None:
        components = ["@method", "@target-uri"] + (["content-digest"] if body else [])
    covered = [parse_component(text) for text in components]
    params: dict[str, Any] = {"created": int(time.time()) if created is None else created}
    if expires is not None:
        params["expires"] = expires
    params["keyid"] = keyid
    if nonce is not False:
        params["nonce"] = secrets.token_urlsafe(16) if nonce is True else nonce
    if alg is not None:
        params["alg"] = alg
    if tag is not None:
        params["tag"] = tag
    _, params_text = signature_params(covered, params)
    message = message_from_url(method, url, pairs)
    base = signature_base(message, covered, params_text)
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    signature = mac(algorithm, key, base)
    added["Signature-Input"] = f"{label}={params_text}"
    added["Signature"] = f"{label}={serialize_item(signature)}"
    return added


# -- `isekai sign`: sign from a shell --------------------------------------------------------------


def main(argv: list[str] | None = None, prog: str = "isekai sign") -> int:
    """Print the header fields that sign a request (``Name: value`` lines), e.g.::

        HMAC_SECRET=... isekai sign POST https://gw/orders \\
            --keyid acme-2024 --data '{"sku": "A-1"}' -H 'Content-Type: application/json'

    The secret is read from an environment variable (``--secret-env``, default
    ``HMAC_SECRET``) or a file, never from the command line (other users can see it).
    """
    import argparse
    import os
    import sys

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Sign an HTTP request (RFC 9421, hmac-sha256/hmac-sha512): prints the "
        "header fields to add.",
    )
    parser.add_argument("method")
    parser.add_argument("url", help="the absolute URL, as the gateway sees it")
    parser.add_argument("--keyid", required=True)
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--secret-env", default="HMAC_SECRET", metavar="NAME")
    secret.add_argument("--secret-file", metavar="PATH")
    parser.add_argument("--encoding", choices=("text", "base64", "hex"), default="text")
    parser.add_argument("--alg", choices=tuple(ALGORITHMS), default="hmac-sha256")
    parser.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'")
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--data", help="the body, as text")
    body.add_argument("--data-file", metavar="PATH", help="the body, from a file")
    parser.add_argument(
        "--component", action="append", metavar="ID", help="a covered component (repeat)"
    )
    parser.add_argument("--tag")
    args = parser.parse_args(argv)
    if args.secret_file:
        with open(args.secret_file, encoding="utf-8") as f:
            text = f.read().strip()
    else:
        text = os.environ.get(args.secret_env, "")
        if not text:
            parser.error(f"the secret: set ${args.secret_env} (or use --secret-file)")
    try:
        if args.encoding == "base64":
            key = base64.b64decode(text, validate=True)
        elif args.encoding == "hex":
            key = bytes.fromhex(text)
        else:
            key = text.encode("utf-8")
    except ValueError:
        parser.error(f"the secret is not valid {args.encoding}")
    headers = []
    for line in args.header:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            parser.error(f"a header is 'Name: value', not {line!r}")
        headers.append((name.strip(), value.strip()))
    data = None
    if args.data is not None:
        data = args.data.encode("utf-8")
    elif args.data_file:
        with open(args.data_file, "rb") as f:
            data = f.read()
    try:
        added = sign_request(
            args.method,
            args.url,
            headers,
            data,
            keyid=args.keyid,
            secret=key,
            alg=args.alg,
            components=args.component,
            tag=args.tag,
        )
    except ValueError as exc:
        parser.error(str(exc))
    for name, value in added.items():
        sys.stdout.write(f"{name}: {value}\n")
    return 0
