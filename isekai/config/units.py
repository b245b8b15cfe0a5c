"""The grammar of single config values: units, addresses and route patterns.

Durations become float seconds, sizes int bytes, rates float events per second; addresses,
host patterns, path patterns, methods and rewrite templates are checked and normalised.
Each parser takes one value as YAML produced it and raises ``ValueError`` with a message
meant for humans; the loader adds the file, line and path. Nothing here knows about YAML.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import math
import re
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

__all__ = [
    "DURATION_PATTERN",
    "HEADER_VALUE_PATTERN",
    "HOST_PATTERN",
    "KNOWN_METHODS",
    "MAX_PARAMS",
    "NAME_PATTERN",
    "PATH_PATTERN",
    "RATE_PATTERN",
    "SIZE_PATTERN",
    "TOKEN_PATTERN",
    "PathPattern",
    "HEADER_PLACEHOLDER",
    "PLACEHOLDERS",
    "HASH_ON_PATTERN",
    "HOST_PORT_PATTERN",
    "REQUEST_TARGET_PATTERN",
    "check_hash_on",
    "check_header_name",
    "check_host_port",
    "check_request_target",
    "check_header_template",
    "check_header_value",
    "parse_origin",
    "check_path_prefix",
    "check_rewrite",
    "check_rewrite_template",
    "parse_name",
    "parse_address",
    "parse_cidr",
    "parse_duration",
    "parse_host_pattern",
    "parse_method",
    "parse_path_pattern",
    "Rate",
    "parse_rate",
    "parse_rate_spec",
    "parse_size",
    "parse_strip_prefix",
]

_DURATION_UNITS = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")

_NUMBER = re.compile(r"\d+(?:\.\d+)?")

# The grammars as regular expressions (ECMA-262 compatible: the published JSON Schema uses
# them as they are). The parsers below are the judges; these never accept less than they do.
DURATION_PATTERN = r"^\s*(\d+(\.\d+)?|(\d+(\.\d+)?(ms|s|m|h|d))+)\s*$"
SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*([Bb]|[KkMmGgTt][Ii]?[Bb])?\s*$"
NONZERO_PATTERN = r"[1-9]"
RATE_PATTERN = r"^\s*\d+(\.\d+)?\s*/\s*(ms|s|m|h|d|(\d+(\.\d+)?(ms|s|m|h|d))+|\d+(\.\d+)?)\s*$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
TOKEN_PATTERN = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"  # RFC 9110 token: methods, header names
HEADER_VALUE_PATTERN = r"^[\t\u0020-\u007e\u0080-\u00ff]*$"  # VCHAR, obs-text, SP, HTAB
_PCHAR = r"[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2}"  # RFC 3986 pchar
PATH_PATTERN = r"^/(" + _PCHAR + r"|[/{}])*$"  # paths, patterns, prefixes and templates
_HOST_LABEL = r"[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
HOST_PATTERN = r"^(\*\.)?" + _HOST_LABEL + r"(\." + _HOST_LABEL + r")*$"  # RFC 1123
_TOKEN_CLASS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
HASH_ON_PATTERN = r"^(client_ip|path|header:" + _TOKEN_CLASS + r"|cookie:" + _TOKEN_CLASS + r")$"
REQUEST_TARGET_PATTERN = r"^/[\x21\x22\x24-\x7e]*$"  # origin-form: visible ASCII, no '#'
HOST_PORT_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(:[0-9]{1,5})?$"  # check_host_port
_NAME = re.compile(NAME_PATTERN[1:-1])
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_PATH_CHARS = re.compile(r"/(?:" + _PCHAR + r"|[/{}])*")
_RFC1123_LABEL = re.compile(_HOST_LABEL)


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _finite_number(value: object) -> Decimal | None:
    """The value as a Decimal when it is an int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def parse_duration(value: object) -> float:
    """Parse ``250ms``, ``10s``, ``5m``, ``1h``, ``7d``, ``1m30s`` or a plain number of seconds.

    Returns float seconds; raises ``ValueError`` for anything else, including negatives.
    """
    number = _finite_number(value)
    if number is None:
        if not isinstance(value, str):
            raise ValueError(
                f"expected a duration like 250ms, 10s, 5m or 1h, got {_describe(value)}"
            )
        text = value.strip()
        if _NUMBER.fullmatch(text):
            number = Decimal(text)
        elif _DURATION.fullmatch(text):
            number = sum(
                (Decimal(amount) * _DURATION_UNITS[unit])
                for amount, unit in _DURATION_PART.findall(text)
            )
        else:
            raise ValueError(
                f"bad duration {value!r}: use a number with a unit (ms, s, m, h, d) like 250ms, "
                "10s, 5m, 1h or 1m30s, or a plain number of seconds"
            )
    if number < 0:
        raise ValueError(f"duration {value!r} must not be negative")
    return float(number)


def parse_size(value: object) -> int:
    """Parse ``512``, ``10KB`` (10*1000), ``8KiB`` (8*1024), ``1MiB``, ``1GiB`` ... into int bytes.

    Decimal units are B, KB, MB, GB, TB; binary ones KiB, MiB, GiB, TiB (case does not matter).
    Raises ``ValueError`` for negatives, unknown units and fractions of a byte.
    """
    number = _finite_number(value)
    if number is not None:
        if number < 0:
            raise ValueError(f"size {value!r} must not be negative")
        if number != number.to_integral_value():
            raise ValueError(f"size {value!r} is not a whole number of bytes")
        return int(number)
    if not isinstance(value, str):
        raise ValueError(f"expected a size like 512, 8KiB or 1MiB, got {_describe(value)}")
    match = _SIZE.fullmatch(value.strip().lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ValueError(
            f"bad size {value!r}: use a number of bytes or a number with a unit "
            "(KB, MB, GB = powers of 1000; KiB, MiB, GiB = powers of 1024) like 8KiB or 10MB"
        )
    try:
        total = Decimal(match.group(1)) * _SIZE_UNITS[match.group(2)]
    except InvalidOperation as exc:  # pragma: no cover - the regex only lets digits through
        raise ValueError(f"bad size {value!r}") from exc
    if total != total.to_integral_value():
        raise ValueError(f"size {value!r} is not a whole number of bytes")
    return int(total)


@dataclasses.dataclass(frozen=True, slots=True)
class Rate:
    """A rate as written: ``count`` events per ``period`` seconds (``100/s`` -> 100, 1.0)."""

    count: float
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h", 86400.0: "d"}.get(self.period)
        return f"{self.count:g}/{unit or f'{self.period:g}s'}"


def parse_rate(value: object) -> float:
    """Parse ``100/s``, ``10/m``, ``5000/h`` or ``30/10s`` into float events per second."""
    return parse_rate_spec(value).per_second


def parse_rate_spec(value: object) -> Rate:
    """Parse ``100/s``, ``10/m``, ``5000/h`` or ``30/10s`` into a `Rate` (count, period).

    The part after ``/`` is a unit (ms, s, m, h, d) or any duration. Raises ``ValueError``
    for plain numbers (the period must be explicit), zero or negative rates and bad periods.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected a rate like 100/s or 10/m, got {_describe(value)}")
    if "/" not in value:
        raise ValueError(f"bad rate {value!r}: write a count per period like 100/s, 10/m or 30/10s")
    count_text, _, period_text = value.strip().partition("/")
    count_text, period_text = count_text.strip(), period_text.strip()
    if not _NUMBER.fullmatch(count_text):
        raise ValueError(f"bad rate {value!r}: {count_text!r} is not a count")
    if period_text in _DURATION_UNITS:
        period = float(_DURATION_UNITS[period_text])
    else:
        try:
            period = parse_duration(period_text)
        except ValueError:
            raise ValueError(
                f"bad rate {value!r}: the period {period_text!r} must be a unit "
                "(ms, s, m, h, d) or a duration like 10s"
            ) from None
    count = float(Decimal(count_text))
    if count <= 0:
        raise ValueError(f"rate {value!r} must be positive")
    if period <= 0:
        raise ValueError(f"rate {value!r} has a zero period")
    return Rate(count, period)


# -- addresses --------------------------------------------------------------------------------

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?")


def _is_host_name(host: str) -> bool:
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return False
    if all(label.isdigit() for label in labels):  # looks like IPv4, so must be one
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
    return True


def _is_ipv6(text: str) -> bool:
    """An IPv6 address without a zone ID: what goes on the wire (Host, authority) must be
    visible ASCII, and a zone (``%eth0``) means nothing to another host anyway."""
    if "%" in text:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_address(text: str, *, bind: bool = False) -> tuple[str, int]:
    """Split ``host:port`` into ``(host, port)``; IPv6 goes in brackets (``[::1]:8080``).

    With ``bind=True`` (listeners) the host may be empty (``:8080`` = ``0.0.0.0``) and the port
    may be 0; otherwise (upstream targets) both are required and the port is 1..65535.
    The returned host is lower-case, and without brackets for IPv6.
    """
    example = "0.0.0.0:8080, [::1]:8080 or :8080" if bind else "10.0.0.5:9000 or users.internal:80"
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"bad address {text!r}: missing ']' after the IPv6 address")
        if not _is_ipv6(host):
            raise ValueError(f"bad address {text!r}: {host!r} is not an IPv6 address")
        if not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}: missing ':port' (write like {example})")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"bad address {text!r}: missing ':port' (write like {example})")
        if ":" in host:
            raise ValueError(
                f"bad address {text!r}: put an IPv6 address in brackets, like [::1]:80"
            )
        if not host:
            if not bind:
                raise ValueError(f"bad address {text!r}: missing host (write like {example})")
            host = "0.0.0.0"  # all IPv4 addresses, as defaults.LISTENER_HOST
        elif not _is_host_name(host.lower()):
            raise ValueError(f"bad address {text!r}: {host!r} is not a host name or IP address")
    lowest = 0 if bind else 1
    if not (port_text.isascii() and port_text.isdigit()) or not lowest <= int(port_text) <= 65535:
        raise ValueError(f"bad address {text!r}: the port must be a number from {lowest} to 65535")
    return host.lower(), int(port_text)


def check_host_port(text: str) -> str:
    """A ``Host`` header value: a host name, IPv4 or ``[IPv6]`` address, with an optional
    ``:port`` (1..65535); returned as written."""
    if text.startswith("[") and text.endswith("]"):
        if not _is_ipv6(text[1:-1]):
            raise ValueError(f"bad host {text!r}: {text[1:-1]!r} is not an IPv6 address")
        return text
    if ":" not in text:
        if not _is_host_name(text.lower()):
            raise ValueError(f"bad host {text!r}: not a host name or IP address")
        return text
    try:
        parse_address(text)
    except ValueError as exc:
        raise ValueError(str(exc).replace("bad address", "bad host", 1)) from None
    return text


def parse_cidr(text: str) -> str:
    """Validate an IPv4/IPv6 network (``10.0.0.0/8``; a bare address is a /32 or /128).

    Returns its normal form; host bits set (``10.0.0.1/8``) are an error.
    """
    try:
        return str(ipaddress.ip_network(text))
    except ValueError as exc:
        hint = ""
        try:
            hint = f"; did you mean {ipaddress.ip_network(text, strict=False)}?"
        except ValueError:
            pass
        raise ValueError(f"bad CIDR {text!r}: {exc}{hint}") from None


# -- route matching -----------------------------------------------------------------------------

KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEGMENT = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()+,;=:@]|%[0-9A-Fa-f]{2})*")  # pchar minus '*'
_TEMPLATE_REF = re.compile(r"\{([^{}]*)\}")


def parse_host_pattern(text: str) -> str:
    """Validate a route host: exact (``api.example.com``) or ``*.example.com``; lower-cased."""
    host = text.lower()
    if host == "*":
        raise ValueError("leave 'host' out to match any host")
    if ":" in host:
        raise ValueError(f"host {text!r} must not include a port")
    name = host[2:] if host.startswith("*.") else host
    if "*" in name:
        raise ValueError(
            f"bad host {text!r}: a wildcard is only allowed as the whole first label, "
            "as in *.example.com"
        )
    labels = name.split(".")
    if len(name) > 253 or not all(_RFC1123_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"bad host {text!r}: not a valid host name (RFC 1123: labels of letters, digits "
            "and '-', not starting or ending with '-')"
        )
    return host


def parse_method(text: str) -> str:
    """A standard method in any case (returned upper-cased) or an upper-case RFC 9110 token."""
    if text.upper() in KNOWN_METHODS:
        return text.upper()
    if _TOKEN.fullmatch(text) and text.isupper():
        return text
    raise ValueError(
        f"unknown method {text!r}: use {', '.join(KNOWN_METHODS)} "
        "or an extension method token in upper case"
    )


MAX_PARAMS = 32  # {param} segments in one pattern (the router keeps their places in a C array)


class PathPattern(NamedTuple):
    """A checked ``match.path`` pattern, as ``parse_path_pattern`` sees it.

    The router is given this (``Router.add``), so the grammar lives only here.
    """

    literal: str  # the text before the first '{' or '*'
    params: tuple[str, ...]  # {param} names in order
    wildcard: bool  # ends in '/*'
    shape: str  # the pattern with every {param} written '{}': equal shapes match equal paths
    segments: tuple[str | None, ...] = ()  # static text; None for a {param}; '*' last: wildcard
    text: str = ""  # the pattern as written


@functools.lru_cache(maxsize=1024)  # a route's path is parsed by its kind, then by RouteMatch
def parse_path_pattern(path: str) -> PathPattern:
    """Check a route path: starts with '/', ``{name}`` and ``*`` only as whole segments,
    ``*`` only last, identifier parameter names used once, no empty segments."""
    if not path.startswith("/"):
        raise ValueError(f"the path pattern must start with '/', got {path!r}")
    segments = path[1:].split("/")
    params: list[str] = []
    shape: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "*":
            if not last:
                raise ValueError("'*' must be the last segment, as in /static/*")
            shape.append("*")
        elif segment.startswith("{") and segment.endswith("}"):
            name = segment[1:-1]
            if not _IDENT.fullmatch(name):
                raise ValueError(
                    f"bad parameter {segment!r}: the name must be letters, digits and '_', "
                    "not starting with a digit"
                )
            if name in params:
                raise ValueError(f"parameter {{{name}}} appears twice")
            params.append(name)
            shape.append("{}")
        elif "{" in segment or "}" in segment:
            raise ValueError(
                f"segment {segment!r}: a parameter must be a whole segment, as in /users/{{id}}"
            )
        elif "*" in segment:
            raise ValueError(f"segment {segment!r}: '*' must be a whole segment, as in /static/*")
        elif not segment and not last:
            raise ValueError(f"empty segment ('//') in {path!r}")
        elif not _SEGMENT.fullmatch(segment):
            raise ValueError(
                f"segment {segment!r} has characters not allowed in a URL path "
                "(no spaces, '?' or '#'; percent-encode others)"
            )
        else:
            shape.append(segment)
    if len(params) > MAX_PARAMS:
        raise ValueError(f"more than {MAX_PARAMS} parameters in {path!r}")
    cut = min((i for i in (path.find("{"), path.find("*")) if i >= 0), default=len(path))
    segs = tuple(None if part == "{}" else part for part in shape)
    return PathPattern(
        path[:cut], tuple(params), shape[-1] == "*", "/" + "/".join(shape), segs, path
    )


def parse_strip_prefix(value: str | bool, pattern: PathPattern) -> str | None:
    """``true`` -> the pattern's literal part without its trailing '/'; ``false`` -> None;
    a string must start with '/' and be a prefix of the literal part."""
    if value is False:
        return None
    if value is True:
        prefix = pattern.literal.rstrip("/")
        if not prefix:
            raise ValueError("true strips nothing here: match.path has no literal prefix")
        return prefix
    check_path_prefix(value)
    if not pattern.literal.startswith(value):
        raise ValueError(
            f"{value!r} is not a prefix of the literal part of match.path ({pattern.literal!r})"
        )
    return value


def check_path_prefix(value: str) -> str:
    """A ``strip_prefix`` string: starts with '/', RFC 3986 path characters only."""
    if not value.startswith("/"):
        raise ValueError(f"strip_prefix {value!r} must start with '/'")
    if "{" in value or "}" in value or not _PATH_CHARS.fullmatch(value):
        raise ValueError(
            f"strip_prefix {value!r} has characters not allowed in a URL path "
            "(no spaces, control characters, '?' or '#'; percent-encode others)"
        )
    return value


def check_rewrite_template(template: str) -> str:
    """The grammar of a rewrite template alone: a path with ``{name}``/``{*}`` references."""
    if not template.startswith("/"):
        raise ValueError(f"rewrite {template!r} must start with '/'")
    if "?" in template or "#" in template:
        raise ValueError("rewrite is a path: no '?' or '#' (the query string is passed on as is)")
    rest = _TEMPLATE_REF.sub("", template)
    if "{" in rest or "}" in rest:
        raise ValueError(f"unbalanced braces in rewrite {template!r}")
    if not _PATH_CHARS.fullmatch(template):
        raise ValueError(
            f"rewrite {template!r} has characters not allowed in a URL path "
            "(no spaces or control characters; percent-encode others)"
        )
    return template


def check_rewrite(template: str, pattern: PathPattern) -> str:
    """Check a rewrite path template against the route's path pattern; return it unchanged.

    ``{name}`` must be a parameter of the pattern, ``{*}`` needs a pattern ending in ``/*``.
    """
    check_rewrite_template(template)
    for ref in _TEMPLATE_REF.findall(template):
        if ref == "*":
            if not pattern.wildcard:
                raise ValueError("{*} needs a match.path ending in '/*'")
        elif ref not in pattern.params:
            known = ", ".join(pattern.params) or "none"
            raise ValueError(f"{{{ref}}} is not a parameter of match.path (parameters: {known})")
    return template


# -- names and headers --------------------------------------------------------------------------


def parse_name(text: str, what: str) -> str:
    """A route/listener/upstream name: up to 128 letters, digits, '_', '-', '.'."""
    if not _NAME.fullmatch(text):
        raise ValueError(
            f"bad {what} name {text!r}: use up to 128 letters, digits, '_', "
            "'-' and '.', starting with a letter or digit"
        )
    return text


def check_header_name(name: str) -> str:
    """An RFC 9110 field name (a token)."""
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"bad header name {name!r}")
    return name


def check_header_value(text: str) -> str:
    """An RFC 9110 field value: VCHAR, obs-text, SP and HTAB only (so Latin-1 encodable)."""
    if any(c in text for c in "\r\n\0"):
        raise ValueError("header values must not contain CR, LF or NUL")
    if not _HEADER_VALUE.fullmatch(text):
        bad = next(c for c in text if not _HEADER_VALUE.fullmatch(c))
        raise ValueError(
            f"header values may only hold visible ASCII, Latin-1, spaces and tabs; "
            f"{bad!r} is not allowed (percent-encode or drop it)"
        )
    return text


def check_hash_on(text: str) -> str:
    """What consistent hashing keys on: ``client_ip``, ``path``, ``header:NAME`` or
    ``cookie:NAME`` (NAME a token: a header or cookie name, matched in any case); as written."""
    if text in ("client_ip", "path"):
        return text
    source, colon, name = text.partition(":")
    if colon and source in ("header", "cookie"):
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"bad {source} name {name!r} in {text!r}")
        return text
    raise ValueError(f"expected client_ip, path, header:NAME or cookie:NAME, got {text!r}")


def check_request_target(text: str) -> str:
    """An origin-form request target (``/healthz``, ``/status?full=1``): starts with '/',
    visible ASCII only (no spaces, control characters or '#')."""
    if not text.startswith("/"):
        raise ValueError(f"the path must start with '/', got {text!r}")
    bad = next((c for c in text if not "\x21" <= c <= "\x7e" or c == "#"), None)
    if bad is not None:
        raise ValueError(
            f"path {text!r} may only hold visible ASCII; {bad!r} is not allowed "
            "(no spaces, control characters or '#'; percent-encode others)"
        )
    return text


# -- header-value templates (the headers policy) -------------------------------------------------

HEADER_PLACEHOLDER = re.compile(r"client_ip|request_id|route|param\.[A-Za-z_][A-Za-z0-9_]*")
"""What may stand between ``${`` and ``}`` in a header-value template (``${param.id}``)."""
PLACEHOLDERS = "${client_ip}, ${request_id}, ${route}, ${param.NAME}"
_TEMPLATE_REF_ANY = re.compile(r"\$\{([^}]*)\}")


def check_header_template(text: str) -> str:
    """A header-value template: a header value (see `check_header_value`) in which
    ``${client_ip}``, ``${request_id}``, ``${route}`` and ``${param.NAME}`` are filled in per
    request. Any other ``${x.y}`` (a dotted name) is a mistake; other ``${...}`` are literal."""
    check_header_value(text)
    for inner in _TEMPLATE_REF_ANY.findall(text):
        if "." in inner and not HEADER_PLACEHOLDER.fullmatch(inner):
            raise ValueError(f"unknown placeholder '${{{inner}}}' (placeholders: {PLACEHOLDERS})")
    return text


# -- CORS origins ---------------------------------------------------------------------------------

_ORIGIN = re.compile(
    r"(?:([a-z][a-z0-9+.\-]*)://)?(\*\.)?(\[[0-9a-f:.]+\]|[^/:?#\[\]]+)(?::([^/]*))?"
)


def parse_origin(text: str) -> str:
    """A CORS origin: ``*``, ``scheme://host[:port]`` or a subdomain pattern
    (``*.example.org``, ``https://*.example.org``); returned lower-cased."""
    if text == "*":
        return text
    origin = text.lower()
    example = "like https://app.example.com, https://*.example.org or *"
    if not origin or any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in origin):
        raise ValueError(f"bad origin {text!r}: no spaces or control characters ({example})")
    found = _ORIGIN.fullmatch(origin)
    if found is None:
        rest = origin.split("://", 1)[-1]
        if "/" in rest or "?" in rest or "#" in rest:
            raise ValueError(f"bad origin {text!r}: an origin has no path, query or fragment")
        raise ValueError(f"bad origin {text!r}: write it {example}")
    scheme, wildcard, host, port = found.groups()
    if scheme is None and wildcard is None:
        raise ValueError(f"bad origin {text!r}: missing the scheme ({example})")
    if host.startswith("["):
        if wildcard:
            raise ValueError(f"bad origin {text!r}: '*.' cannot precede an IPv6 address")
        if not _is_ipv6(host[1:-1]):
            raise ValueError(f"bad origin {text!r}: {host!r} is not an IPv6 address")
    elif "*" in host or not _is_host_name(host):
        raise ValueError(
            f"bad origin {text!r}: {host!r} is not a host name (a wildcard is only allowed as "
            "'*.' before the domain)"
        )
    if port is not None and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"bad origin {text!r}: the port must be a number from 1 to 65535")
    return origin
