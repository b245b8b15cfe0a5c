"""The ``geo_filter`` family: allow or deny clients by country (`GeoFilterConfig`).

One `GeoFilter` per configured instance opens its MaxMind database once (memory-mapped, with
the C reader when it is installed) and closes it in `close`. Per request: the client address
(``req.client_ip``, after ``trusted_proxies``) is looked up in a bounded dict of recent
addresses first, the database only on a miss; the country goes upstream in the configured
header (the gateway strips client copies of that header from every request, see
`isekai.gateway.stripped_headers`) and into ``req.ctx["country"]`` for later policies (a
``metrics`` label ``ctx:country``); a refused client gets a 403 answer made once.

A database replaced on disk is picked up by a reload: the file's stamp is part of the config
(`isekai.config.geo_policy`), so the reload builds a new instance on the new file and closes
the old one.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import maxminddb

from isekai._core.policy import Answer
from isekai.errors import ConfigError

__all__ = ["GeoFilter", "build", "country_of"]

_ISO_CODE = re.compile(r"[A-Z]{2}")
_MISSING = object()


def country_of(record: Any) -> str | None:
    """The ISO 3166-1 alpha-2 code of a database record: ``country.iso_code`` (where the
    address is used), else ``registered_country.iso_code`` (who holds it); None when the
    record has neither or a value that is not two upper-case letters (what reaches a header
    is checked, whatever the file holds)."""
    if not isinstance(record, dict):
        return None
    for key in ("country", "registered_country"):
        part = record.get(key)
        if isinstance(part, dict):
            code = part.get("iso_code")
            if isinstance(code, str) and _ISO_CODE.fullmatch(code):
                return code
    return None


def open_reader(path: str) -> Any:
    """The database at ``path``, opened memory-mapped; ConfigError naming it otherwise."""
    try:
        return maxminddb.open_database(path, maxminddb.MODE_AUTO)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"geo_filter: cannot open the GeoIP database {path}: {reason}") from None


class GeoFilter:
    """The policy object (wrapped by the Python adapter): a synchronous request phase."""

    def __init__(self, config: Any) -> None:
        self.path = config.database_path or config.database
        self.reader = open_reader(self.path)
        self.allow = frozenset(config.allow) if config.allow else None
        self.deny = frozenset(config.deny)
        self.unknown_allowed = config.unknown != "deny"
        self.header = config.header
        self.cache: dict[str, str | None] = {}
        self.cache_size = config.cache_size
        self.refused = Answer.error(403, "client country not allowed", "geo_filter")
        self.unknown_refused = Answer.error(403, "client country unknown", "geo_filter")
        self.unavailable = Answer.error(503, "country database not available", "geo_filter")
        self.lookups = 0  # database reads (cache misses)
        self.closed = False

    def country(self, address: str) -> str | None:
        """The country of client ``address`` (None: not in the database, or not an IP)."""
        found = self.cache.get(address, _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        self.lookups += 1
        try:
            ip = ipaddress.ip_address(address)
            if ip.version == 6 and ip.ipv4_mapped is not None:  # a dual-stack listener's IPv4
                ip = ip.ipv4_mapped
        except ValueError:  # not an address
            ip = None
        code = None
        if ip is not None:
            try:
                code = country_of(self.reader.get(ip))
            except ValueError:  # an IPv6 address in an IPv4-only database
                code = None
        if self.cache_size:
            if len(self.cache) >= self.cache_size:
                self.cache.clear()  # bounded: start over rather than track recency
            self.cache[address] = code
        return code

    def on_request(self, req: Any) -> Any:
        if self.closed:
            # a request that held the chain while a reload replaced this instance (it waited
            # on an earlier policy's slow path): its reader is gone, and no guess is made
            return self.unavailable
        code = self.country(req.client_ip)
        if code is None:
            return None if self.unknown_allowed else self.unknown_refused
        if code in self.deny or (self.allow is not None and code not in self.allow):
            return self.refused
        req.set_header(self.header, code)
        req.ctx["country"] = code
        return None

    def close(self) -> None:
        self.closed = True
        self.cache.clear()
        self.reader.close()


def build(config: Any, env: Any = None) -> GeoFilter:
    """A `GeoFilter` from a `GeoFilterConfig` (ConfigError when the database cannot be
    opened)."""
    return GeoFilter(config)
