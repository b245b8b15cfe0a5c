"""The ``geo_filter`` policy family's config: allow or deny clients by country (`GeoFilterConfig`).

The country of a client address comes from a MaxMind-format database (GeoLite2-Country,
GeoIP2-Country or any ``.mmdb`` whose records have ``country.iso_code``). The ``database``
path is resolved here, once, against the folder of the config file (the working directory
when the config has no file; a policy given through the admin API must name an absolute
path, there being no file to be relative to), and the file is opened and its metadata read,
so a missing or damaged database is a config error with the file, line and config path.

The resolved path and the file's identity (inode, size, modification time) are part of the
config (``database_path``, ``database_stamp``; not YAML keys): a reload after the file was
replaced makes a config that differs, so the worker opens the new file in a new policy
instance, while a reload that leaves the file alone keeps the instance and its cache.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from isekai.config.meta import item, setting
from isekai.config.nodes import API_SOURCE
from isekai.config.rules import Where

__all__ = [
    "COUNTRY_PATTERN",
    "GATEWAY_REQUEST_FIELDS",
    "GEO_CACHE_SIZE",
    "GEO_HEADER",
    "GeoFilterConfig",
    "check_database",
    "database_stamp",
    "resolve_database",
]

GEO_HEADER = "X-Country-Code"  # the country sent upstream (default)
GEO_CACHE_SIZE = 10_000  # addresses per worker whose country is remembered (default)
COUNTRY_PATTERN = r"^[A-Za-z]{2}$"
"""An ISO 3166-1 alpha-2 code as written in the config (any case; kept upper-case)."""
_COUNTRY = re.compile(r"[A-Za-z]{2}")

GATEWAY_REQUEST_FIELDS = frozenset(
    {
        *("content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection"),
        *("te", "trailer", "upgrade", "x-request-id", "host", "expect", "x-forwarded-for"),
        *("x-forwarded-host", "x-forwarded-proto"),
    }
)
"""The request fields the gateway writes itself: `isekai.config.policies.REQUEST_MANAGED_HEADERS`
(which imports this module; a test keeps the two equal)."""

_CODES_SCHEMA = {"type": "string", "pattern": COUNTRY_PATTERN}


def resolve_database(path: str, source: str) -> str:
    """``path`` as an absolute path: a relative one is taken from the folder of the config
    file ``source`` (the working directory when ``source`` is not a file, like ``<string>``)."""
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return os.path.normpath(path)
    base = os.getcwd() if source.startswith("<") else os.path.dirname(os.path.abspath(source))
    return os.path.normpath(os.path.join(base, path))


def database_stamp(path: str) -> tuple[int, int, int]:
    """``(inode, size, mtime_ns)`` of the file at ``path`` (``OSError`` when it cannot be
    read): a file replaced or rewritten gets another stamp."""
    info = os.stat(path)
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def check_database(path: str) -> None:
    """Open the MaxMind database at ``path`` and read its metadata; ``ValueError`` saying
    what is wrong when it cannot be used."""
    import maxminddb  # only where a geo_filter is configured

    if os.path.isdir(path):
        raise ValueError(f"cannot open the GeoIP database {path}: a folder, not a file")
    try:
        reader = maxminddb.open_database(path, maxminddb.MODE_AUTO)
    except FileNotFoundError:
        raise ValueError(f"cannot open the GeoIP database {path}: no such file") from None
    except OSError as exc:
        raise ValueError(f"cannot open the GeoIP database {path}: {exc.strerror or exc}") from None
    except (ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise ValueError(
            f"{path} is not a MaxMind DB file (GeoLite2/GeoIP2 .mmdb): {exc}"
        ) from None
    try:
        metadata = reader.metadata()
        if metadata.ip_version not in (4, 6) or metadata.node_count < 1:
            raise ValueError(f"{path}: a MaxMind DB without a usable search tree")
    finally:
        reader.close()


def _codes(values: dict[str, Any], where: Where, key: str) -> tuple[str, ...]:
    codes: list[str] = []
    for i, code in enumerate(values.get(key, ())):
        if not _COUNTRY.fullmatch(code):
            message = f"{code!r} is not an ISO 3166-1 alpha-2 country code (two letters, like DE)"
            raise where.item_error(key, i, message)
        code = code.upper()
        if code in codes:
            raise where.item_error(key, i, f"country {code} is listed twice")
        codes.append(code)
    return tuple(codes)


def _geo_filter(values: dict[str, Any], where: Where) -> None:
    values["allow"] = allow = _codes(values, where, "allow")
    values["deny"] = deny = _codes(values, where, "deny")
    both = sorted(set(allow) & set(deny))
    if both:
        raise where.error("deny", f"{', '.join(both)} both allowed and denied")
    if values.get("unknown") is None:
        values["unknown"] = "deny" if allow else "allow"
    header = values.get("header", GEO_HEADER)
    if header.lower() in GATEWAY_REQUEST_FIELDS:
        raise where.error("header", f"{header} is managed by the gateway: pick another name")
    database = values["database"]
    _, node = where.fields["database"]
    from_api = where.builder.source == API_SOURCE or node.start_mark.name == API_SOURCE
    if from_api and not os.path.isabs(os.path.expanduser(database)):
        message = (
            "must be an absolute path in a policy given through the admin API "
            "(there is no config file for it to be relative to)"
        )
        raise where.error("database", message)
    path = resolve_database(database, where.builder.source)
    try:
        check_database(path)
        values["database_stamp"] = database_stamp(path)
    except (OSError, ValueError) as exc:
        raise where.error("database", str(exc)) from None
    values["database_path"] = path


@dataclass(frozen=True, slots=True)
class GeoFilterConfig:
    """Allow or deny clients by the country of their address (after `trusted_proxies`), looked
    up in a MaxMind-format database; the country goes upstream in a header."""

    family: ClassVar[str] = "geo_filter"

    database: str = setting(
        "string",
        "The MaxMind DB file (`.mmdb`, e.g. GeoLite2-Country); a relative path is taken from "
        "the config file's folder.",
        what="a file path",
    )
    allow: tuple[str, ...] = setting(
        "list",
        "Only clients from these countries may pass: ISO 3166-1 alpha-2 codes like `[DE, FR]`.",
        default=(),
        item=item("string", what="a country code like DE", schema=_CODES_SCHEMA),
        what="a list of country codes like [DE, FR]",
        default_doc="any",
    )
    deny: tuple[str, ...] = setting(
        "list",
        "Clients from these countries are refused (checked first).",
        default=(),
        item=item("string", what="a country code like DE", schema=_CODES_SCHEMA),
        what="a list of country codes like [DE, FR]",
        default_doc="none",
    )
    unknown: str | None = setting(
        "enum",
        "Clients whose address the database has no country for (private, loopback, "
        "unassigned): `allow` or `deny`.",
        default=None,
        choices=("allow", "deny"),
        case="lower",
        default_doc="`deny` with an `allow` list, else `allow`",
    )
    header: str = setting(
        "header_name",
        "The request header the client's country goes upstream in; a client's own copy of it "
        "is removed from every request.",
        default=GEO_HEADER,
        default_doc=f"`{GEO_HEADER}`",
    )
    cache_size: int = setting(
        "int",
        "How many client addresses' countries each worker remembers (0: look every one up).",
        default=GEO_CACHE_SIZE,
        minimum=0,
        maximum=1_000_000,
    )
    database_path: str = setting(
        "string", "The database's absolute path (resolved).", default="", yaml=False
    )
    database_stamp: tuple[int, ...] = setting(
        "json",
        "The database file's (inode, size, mtime_ns) when the config was read.",
        default=(),
        yaml=False,
    )

    validate = staticmethod(_geo_filter)
