"""The Redis URL grammar: which URLs name a Redis, checked before anything connects.

Five forms (``[...]`` is optional; a password with ``@ : / ? #`` or ``%`` is percent-encoded):

- ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``: one server (port 6379 by default).
- ``rediss://...``: the same over TLS.
- ``unix://[[USER]:PASSWORD@]/PATH.sock[?db=DB]``: a server on a Unix socket.
- ``redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]``: the master that
  the Sentinels name ``SERVICE`` (Sentinel port 26379 by default). The user and password are the
  master's; the Sentinels themselves are asked without one.
- ``redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]``: a Redis Cluster, found from
  any of these nodes (port 6379 by default). A cluster has only database 0, so no ``/DB``.

HOST is a host name, an IPv4 address or an ``[IPv6]`` address; PORT is 1-65535; DB is 0-15.
No query options (a unix URL takes ``db`` only) and no fragment: an option this module does not
know would otherwise be silently ignored by one client and honoured by another.

`parse_redis_url` gives a `RedisURL` (what `isekai.policies.environment` connects with),
`check_redis_url` the URL itself for config fields, both raising ``ValueError`` with a message
that names what is wrong and never shows the password; `describe_redis_url` is the URL with
the password hidden, for logs and admin output (it never raises).

This module is pure: it imports neither ``redis`` nor ``_core``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["RedisURL", "check_redis_url", "describe_redis_url", "parse_redis_url"]

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "redis+sentinel": 26379, "redis+cluster": 6379}
MAX_DB = 15
FORMS = (
    "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://..., unix:///PATH[?db=DB], "
    "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB] or "
    "redis+cluster://HOST:PORT[,HOST:PORT...]"
)
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_SERVICE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)([^/?#]*)@", re.ASCII)


@dataclass(frozen=True, slots=True)
class RedisURL:
    """A checked Redis URL. ``scheme`` is one of `SCHEMES`; ``hosts`` the (host, port) pairs
    (one for redis/rediss, none for unix; IPv6 without brackets); ``path`` the socket of a
    unix URL; ``service`` the Sentinel service name; ``db`` the database (0 for a cluster);
    ``username``/``password`` decoded, or None."""

    scheme: str
    hosts: tuple[tuple[str, int], ...] = ()
    path: str | None = None
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"


def check_redis_url(text: str) -> str:
    """``text`` when it is a Redis URL of a known form; otherwise ``ValueError``."""
    parse_redis_url(text)
    return text


def describe_redis_url(text: str) -> str:
    """``text`` with the password (anything between the first ``:`` of the user information
    and the ``@``) replaced by ``***``; safe on any string."""
    if not isinstance(text, str):
        return repr(text)
    match = _USERINFO.match(text)
    if match is None:
        return text
    userinfo = match.group(2)
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return match.group(1) + shown + "@" + text[match.end() :]


def parse_redis_url(text: str) -> RedisURL:
    """Check ``text`` against the forms of the module text and split it."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a Redis URL: {FORMS}")
    shown = describe_redis_url(text)
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError(f"Redis URL {shown!r} contains spaces or control characters")
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        named = f"scheme {scheme + '://'!r}" if sep else "no scheme"
        raise ValueError(f"Redis URL {shown!r} has {named}: use {FORMS}")
    if "#" in rest:
        raise ValueError(f"Redis URL {shown!r} has a fragment ('#...'); remove it")
    rest, qmark, query = rest.partition("?")
    end = rest.find("/")
    netloc, path = (rest, "") if end < 0 else (rest[:end], rest[end:])
    userinfo, at, hostpart = netloc.rpartition("@")
    username, password = _credentials(shown, userinfo) if at else (None, None)
    if scheme == "unix":
        return _unix(shown, hostpart, path, query if qmark else None, username, password)
    if qmark:
        raise ValueError(
            f"Redis URL {shown!r} has query options ('?{'...' if query else ''}'); "
            f"{scheme}:// URLs take none"
        )
    if not hostpart:
        raise ValueError(f"Redis URL {shown!r} names no host")
    hosts = _hosts(shown, scheme, hostpart)
    if scheme in ("redis", "rediss"):
        if len(hosts) > 1:
            raise ValueError(
                f"Redis URL {shown!r} names {len(hosts)} hosts; one server is one host "
                "(several hosts: redis+sentinel:// or redis+cluster://)"
            )
        db = _db_path(shown, path)
        return RedisURL(scheme, hosts, db=db, username=username, password=password)
    if scheme == "redis+cluster":
        if path not in ("", "/"):
            raise ValueError(
                f"Redis URL {shown!r} has a path {path!r}; a cluster has only database 0, "
                "write redis+cluster://HOST:PORT[,HOST:PORT...]"
            )
        return RedisURL(scheme, hosts, username=username, password=password)
    # redis+sentinel: /SERVICE[/DB]
    parts = path.split("/")[1:] if path else []
    if not parts or not parts[0]:
        raise ValueError(
            f"Redis URL {shown!r} names no service: write "
            "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]"
        )
    service = unquote(parts[0])
    if not _SERVICE.fullmatch(service):
        raise ValueError(
            f"Redis URL {shown!r}: service name {service!r} is not 1-128 letters, digits, "
            "'_', '.' or '-'"
        )
    if len(parts) > 2 or (len(parts) == 2 and not parts[1]):
        raise ValueError(f"Redis URL {shown!r}: after /SERVICE comes at most /DB")
    db = _db(shown, parts[1]) if len(parts) == 2 else 0
    return RedisURL(scheme, hosts, service=service, db=db, username=username, password=password)


def _credentials(shown: str, userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    if not colon:
        raise ValueError(
            f"Redis URL {shown!r}: write the credentials as [USER]:PASSWORD@ "
            "(a colon before the password)"
        )
    if not password:
        raise ValueError(f"Redis URL {shown!r} has an empty password before '@'")
    for name, value in (("user", user), ("password", password)):
        if re.search(r"%(?![0-9A-Fa-f]{2})", value):
            raise ValueError(
                f"Redis URL {shown!r}: the {name} has a '%' that is not a %XX escape "
                "(write % as %25)"
            )
    return (unquote(user) or None), unquote(password)


def _hosts(shown: str, scheme: str, hostpart: str) -> tuple[tuple[str, int], ...]:
    hosts = []
    for item in hostpart.split(","):
        if not item:
            raise ValueError(f"Redis URL {shown!r} has an empty host in its host list")
        hosts.append(_host_port(shown, item, DEFAULT_PORTS[scheme]))
    return tuple(hosts)


def _host_port(shown: str, item: str, default_port: int) -> tuple[str, int]:
    if item.startswith("["):
        close = item.find("]")
        if close < 0:
            raise ValueError(f"Redis URL {shown!r}: '[' of an IPv6 address is not closed")
        host, after = item[1:close], item[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"Redis URL {shown!r}: {host!r} is not an IPv6 address") from None
        if after and not after.startswith(":"):
            raise ValueError(f"Redis URL {shown!r}: expected ':PORT' after [{host}]")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text_ = item.partition(":")
        port_text = port_text_ if colon else None
        if ":" in port_text_:
            raise ValueError(
                f"Redis URL {shown!r}: {item!r} has several ':' (write an IPv6 address as "
                "[ADDRESS]:PORT)"
            )
        _check_host(shown, host)
    if port_text is None:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"Redis URL {shown!r}: port {port_text!r} is not 1-65535")
    return host, int(port_text)


def _check_host(shown: str, host: str) -> None:
    if not host:
        raise ValueError(f"Redis URL {shown!r} names no host")
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"Redis URL {shown!r}: {host!r} is not an IPv4 address") from None
        return
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"Redis URL {shown!r}: {host!r} is not a host name (letters, digits, '-' and '_' "
            "in dot-separated labels of 1-63), an IPv4 address or an [IPv6] address"
        )


def _db_path(shown: str, path: str) -> int:
    if path in ("", "/"):
        return 0
    return _db(shown, path[1:])


def _db(shown: str, text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= MAX_DB:
        raise ValueError(f"Redis URL {shown!r}: database {text!r} is not an integer 0-{MAX_DB}")
    return int(text)


def _unix(
    shown: str,
    hostpart: str,
    path: str,
    query: str | None,
    username: str | None,
    password: str | None,
) -> RedisURL:
    if hostpart:
        raise ValueError(
            f"Redis URL {shown!r}: a unix URL has no host; write unix:///PATH (three slashes "
            "before an absolute path)"
        )
    if not path or path == "/":
        raise ValueError(f"Redis URL {shown!r} names no socket path: write unix:///PATH.sock")
    socket = unquote(path)
    if "\0" in socket:
        raise ValueError(f"Redis URL {shown!r}: the socket path contains NUL")
    db = 0
    if query is not None:
        name, eq, value = query.partition("=")
        if name != "db" or not eq or "&" in value:
            raise ValueError(
                f"Redis URL {shown!r}: the only query option of a unix URL is ?db=DB (got ?{query})"
            )
        db = _db(shown, value)
    return RedisURL("unix", path=socket, db=db, username=username, password=password)
