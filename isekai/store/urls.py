"""The one grammar of store URLs: what ``store.url`` may say, for ``validate`` and ``run`` alike.

``sqlite:///relative/path.db`` (relative to the working directory), ``sqlite:////abs/path.db``,
``sqlite:///:memory:``, and ``postgresql://...`` or ``postgres://...`` (a libpq-style URL;
``?schema=name`` keeps the tables in that schema). A leaf module: it imports nothing of isekai.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["SCHEMES", "StoreURL", "parse_store_url", "redact_url"]

SCHEMES = ("sqlite", "postgresql", "postgres")
_URL = re.compile(r"([a-z][a-z0-9+.\-]*):(.*)", re.S | re.I)


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A checked store URL: ``scheme`` is ``sqlite`` or ``postgresql`` (``postgres`` too)."""

    scheme: str
    path: str | None = None  # sqlite: the file path, or ':memory:'
    dsn: str | None = None  # postgresql: the URL for the driver, without ?schema=
    schema: str | None = None  # postgresql: the ?schema= option


def parse_store_url(url: str) -> StoreURL:
    """Check ``url`` and split it; raises ``ValueError`` with a message meant for humans."""
    if not isinstance(url, str) or not url:
        raise ValueError("expected a store URL such as sqlite:///isekai.db")
    found = _URL.fullmatch(url)
    if found is None or not found.group(2):
        raise ValueError(
            f"bad store URL {redact_url(url)!r}: write it like sqlite:///isekai.db or "
            "postgresql://user@host/isekai"
        )
    scheme = found.group(1).lower()
    if scheme not in SCHEMES:
        supported = ", ".join(f"{name}://" for name in SCHEMES)
        raise ValueError(f"unsupported store URL {scheme}:// (supported: {supported})")
    if not found.group(2).startswith("//"):
        raise ValueError(
            f"bad store URL {redact_url(url)!r}: {scheme}: needs '//' after it, as in "
            + ("sqlite:///isekai.db" if scheme == "sqlite" else "postgresql://user@host/isekai")
        )
    if scheme == "sqlite":
        return StoreURL("sqlite", path=_sqlite_path(url))
    dsn, schema = _postgres_dsn(url)
    return StoreURL("postgresql", dsn=dsn, schema=schema)


def _sqlite_path(url: str) -> str:
    rest = url.partition("://")[2]
    if not rest.startswith("/") or len(rest) < 2:
        raise ValueError(
            f"bad SQLite URL {url!r}: write sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db or sqlite:///:memory:"
        )
    if "?" in rest or "#" in rest:
        raise ValueError(f"SQLite URL {url!r} takes no query or fragment")
    return rest[1:]


def _postgres_dsn(url: str) -> tuple[str, str | None]:
    parts = urlsplit(url)
    schema = None
    kept = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "schema":
            schema = value
        else:
            kept.append((key, value))
    if schema is not None and not _is_schema_name(schema):
        raise ValueError(
            f"bad schema {schema!r} in the store URL: use lower-case letters, digits and '_' "
            "(at most 63, not starting with a digit)"
        )
    if schema is None:
        return url, None
    return parts._replace(query=urlencode(kept)).geturl(), schema


def _is_schema_name(name: str) -> bool:
    return (
        0 < len(name) <= 63
        and not name[0].isdigit()
        and all(c == "_" or c.isdigit() or ("a" <= c <= "z") for c in name)
    )


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
