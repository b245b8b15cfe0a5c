"""Structured field values (RFC 8941) as the ``hmac`` family reads and writes them.

`parse_dictionary` reads a Dictionary (``Signature-Input``, ``Signature``, ``Content-Digest``);
`parse_parameters` reads a bare parameter list (a component identifier's ``;name="id"``);
`serialize_inner_list` and `serialize_item` write them back in the canonical form (the
``@signature-params`` line of a signature base is the serialization of what was parsed).

The parser follows RFC 8941 §4.2 strictly and refuses instead of guessing: no characters
outside visible ASCII and space, no trailing comma, no duplicate dictionary keys (RFC 8941
lets the last one win; two signatures under one label is a request we would rather refuse
than resolve), integers of at most 15 digits, byte sequences of strict base64. It is bounded:
at most `MAX_FIELD` characters, `MAX_MEMBERS` members, `MAX_INNER` items per inner list and
`MAX_PARAMETERS` parameters per item. Every refusal is a `FieldError` (a ``ValueError``) whose
message says what was wrong and where; nothing else escapes, whatever the input.

Values: ``int``, `decimal.Decimal`, ``str`` (a String), `Token` (a ``str`` subclass),
``bytes`` (a Byte Sequence), ``bool``. An item is ``(value, params)``; an inner list is
``(list of items, params)``; params is a ``dict`` in order. A dictionary member whose value is
an inner list has a ``list`` as its first element.
"""

from __future__ import annotations

import base64
import binascii
import decimal
import string
from typing import Any

__all__ = [
    "MAX_FIELD",
    "FieldError",
    "Token",
    "parse_dictionary",
    "parse_parameters",
    "serialize_inner_list",
    "serialize_item",
    "serialize_parameters",
]

MAX_FIELD = 8192  # characters of one (combined) field value
MAX_MEMBERS = 16  # members of a dictionary
MAX_INNER = 64  # items of an inner list
MAX_PARAMETERS = 16  # parameters of an item or inner list

_LCALPHA = frozenset(string.ascii_lowercase)
_DIGITS = frozenset(string.digits)
_KEY_FIRST = _LCALPHA | {"*"}
_KEY_REST = _LCALPHA | _DIGITS | frozenset("_-.*")
_TCHAR = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
_TOKEN_FIRST = frozenset(string.ascii_letters + "*")
_TOKEN_REST = _TCHAR | frozenset(":/")
_BASE64 = frozenset(string.ascii_letters + string.digits + "+/=")


class FieldError(ValueError):
    """A structured field value that does not follow RFC 8941 (or our bounds)."""


class Token(str):
    """A Token item (RFC 8941 §3.3.4), told apart from a String."""

    __slots__ = ()


Item = tuple[Any, dict[str, Any]]


class _Reader:
    __slots__ = ("at", "text")

    def __init__(self, text: str) -> None:
        if len(text) > MAX_FIELD:
            raise FieldError(f"longer than {MAX_FIELD} characters")
        for i, c in enumerate(text):
            if not (" " <= c <= "~" or c == "\t"):
                raise FieldError(f"character {c!r} at {i} is not visible ASCII")
        self.text = text
        self.at = 0

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def done(self) -> bool:
        return self.at >= len(self.text)

    def fail(self, message: str) -> FieldError:
        return FieldError(f"{message} at character {self.at}")

    def skip_sp(self) -> None:
        while self.peek() == " ":
            self.at += 1

    def skip_ows(self) -> None:
        while self.peek() in (" ", "\t") and not self.done():
            self.at += 1

    # -- RFC 8941 §4.2 ------------------------------------------------------------------------

    def dictionary(self) -> dict[str, Any]:
        members: dict[str, Any] = {}
        while not self.done():
            key = self.key()
            if key in members:
                raise self.fail(f"dictionary key {key!r} repeated")
            if self.peek() == "=":
                self.at += 1
                members[key] = self.item_or_inner_list()
            else:
                members[key] = (True, self.parameters())
            if len(members) > MAX_MEMBERS:
                raise self.fail(f"more than {MAX_MEMBERS} members")
            self.skip_ows()
            if self.done():
                return members
            if self.peek() != ",":
                raise self.fail("expected ',' after a dictionary member")
            self.at += 1
            self.skip_ows()
            if self.done():
                raise self.fail("trailing ','")
        return members

    def item_or_inner_list(self) -> Item:
        if self.peek() == "(":
            return self.inner_list()
        return self.item()

    def inner_list(self) -> Item:
        self.at += 1  # "("
        items: list[Item] = []
        while not self.done():
            self.skip_sp()
            if self.peek() == ")":
                self.at += 1
                return items, self.parameters()
            items.append(self.item())
            if len(items) > MAX_INNER:
                raise self.fail(f"more than {MAX_INNER} items in an inner list")
            if self.peek() not in (" ", ")"):
                raise self.fail("expected ' ' or ')' in an inner list")
        raise self.fail("inner list not closed")

    def item(self) -> Item:
        value = self.bare_item()
        return value, self.parameters()

    def parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        while self.peek() == ";":
            self.at += 1
            self.skip_sp()
            key = self.key()
            value: Any = True
            if self.peek() == "=":
                self.at += 1
                value = self.bare_item()
            if key in params:
                raise self.fail(f"parameter {key!r} repeated")
            params[key] = value
            if len(params) > MAX_PARAMETERS:
                raise self.fail(f"more than {MAX_PARAMETERS} parameters")
        return params

    def key(self) -> str:
        start = self.at
        if self.peek() not in _KEY_FIRST or self.done():
            raise self.fail("expected a key (lower-case letter or '*')")
        self.at += 1
        while not self.done() and self.peek() in _KEY_REST:
            self.at += 1
        return self.text[start : self.at]

    def bare_item(self) -> Any:
        c = self.peek()
        if c == "-" or (c in _DIGITS and c):
            return self.number()
        if c == '"':
            return self.string()
        if c == ":":
            return self.byte_sequence()
        if c == "?":
            return self.boolean()
        if c and c in _TOKEN_FIRST:
            return self.token()
        raise self.fail("expected an item")

    def number(self) -> int | decimal.Decimal:
        start = self.at
        if self.peek() == "-":
            self.at += 1
        if not (self.peek() and self.peek() in _DIGITS):
            raise self.fail("expected a digit")
        decimal_point = -1
        while not self.done():
            c = self.peek()
            if c in _DIGITS:
                self.at += 1
            elif c == "." and decimal_point < 0:
                if self.at - start > 12 + (self.text[start] == "-"):
                    raise self.fail("decimal with more than 12 integer digits")
                decimal_point = self.at
                self.at += 1
            else:
                break
            digits = self.at - start - (self.text[start] == "-")
            if decimal_point < 0 and digits > 15:
                raise self.fail("integer with more than 15 digits")
            if decimal_point >= 0 and digits > 16:
                raise self.fail("decimal with more than 16 characters")
        text = self.text[start : self.at]
        if decimal_point < 0:
            return int(text)
        fraction = self.at - decimal_point - 1
        if fraction == 0:
            raise self.fail("decimal ending in '.'")
        if fraction > 3:
            raise self.fail("decimal with more than 3 fractional digits")
        return decimal.Decimal(text)

    def string(self) -> str:
        self.at += 1  # '"'
        out: list[str] = []
        while not self.done():
            c = self.peek()
            self.at += 1
            if c == "\\":
                if self.done():
                    raise self.fail("string ends in '\\'")
                escaped = self.peek()
                if escaped not in ('"', "\\"):
                    raise self.fail("only '\\\"' and '\\\\' are escapes in a string")
                self.at += 1
                out.append(escaped)
            elif c == '"':
                return "".join(out)
            elif c == "\t":
                raise self.fail("tab in a string")
            else:
                out.append(c)
        raise self.fail("string not closed")

    def token(self) -> Token:
        start = self.at
        self.at += 1
        while not self.done() and self.peek() in _TOKEN_REST:
            self.at += 1
        return Token(self.text[start : self.at])

    def byte_sequence(self) -> bytes:
        self.at += 1  # ":"
        end = self.text.find(":", self.at)
        if end < 0:
            raise self.fail("byte sequence not closed")
        encoded = self.text[self.at : end]
        if any(c not in _BASE64 for c in encoded):
            raise self.fail("byte sequence is not base64")
        self.at = end + 1
        try:
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise self.fail("byte sequence is not valid base64") from None

    def boolean(self) -> bool:
        self.at += 1  # "?"
        c = self.peek()
        if c not in ("0", "1") or not c:
            raise self.fail("boolean must be ?0 or ?1")
        self.at += 1
        return c == "1"


def parse_dictionary(text: str) -> dict[str, Item]:
    """A Dictionary field value: key -> ``(value, params)`` (value a ``list`` of items for an
    inner list). An empty value is an empty dictionary. `FieldError` when malformed."""
    reader = _Reader(text)
    reader.skip_sp()
    members = reader.dictionary()
    return members


def parse_parameters(text: str) -> dict[str, Any]:
    """Parameters alone (``;name="id";key``): what follows a component name. `FieldError`."""
    reader = _Reader(text)
    params = reader.parameters()
    if not reader.done():
        raise reader.fail("expected ';'")
    return params


# -- serialization (RFC 8941 §4.1) ----------------------------------------------------------------


def _serialize_bare(value: Any) -> str:
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        if abs(value) > 999_999_999_999_999:
            raise FieldError(f"integer out of range: {value}")
        return str(value)
    if isinstance(value, decimal.Decimal):
        rounded = value.quantize(decimal.Decimal("0.001"), rounding=decimal.ROUND_HALF_EVEN)
        text = format(rounded, "f").rstrip("0")
        return text + "0" if text.endswith(".") else text
    if isinstance(value, Token):
        if not value or value[0] not in _TOKEN_FIRST or any(c not in _TOKEN_REST for c in value):
            raise FieldError(f"not a token: {value!r}")
        return str(value)
    if isinstance(value, str):
        if any(not " " <= c <= "~" for c in value):
            raise FieldError(f"a string holds visible ASCII and spaces only: {value!r}")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bytes):
        return ":" + base64.b64encode(value).decode("ascii") + ":"
    raise FieldError(f"not a structured field item: {value!r}")


def serialize_parameters(params: dict[str, Any]) -> str:
    out = []
    for key, value in params.items():
        out.append(";" + key if value is True else f";{key}={_serialize_bare(value)}")
    return "".join(out)


def serialize_item(value: Any, params: dict[str, Any] | None = None) -> str:
    """An item with its parameters, canonically."""
    return _serialize_bare(value) + serialize_parameters(params or {})


def serialize_inner_list(items: list[Item], params: dict[str, Any] | None = None) -> str:
    """An inner list ``(a b);p=1``, canonically (RFC 8941 §4.1.1.1)."""
    inner = " ".join(serialize_item(value, item_params) for value, item_params in items)
    return f"({inner}){serialize_parameters(params or {})}"
