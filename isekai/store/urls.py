"""The store URL grammar: the one place that says which URLs name a store.

``sqlite:///relative/path.db`` (relative to the working directory),
``sqlite:////absolute/path.db``, ``sqlite:///:memory:``, and ``postgresql://...`` or
``postgres://...`` (a libpq-style URL; ``?schema=name`` keeps the tables in that schema).
The config loader checks ``store.url`` with `parse_store_url` and ``open_store`` opens what it
returns, so ``isekai validate`` and ``isekai run`` accept exactly the same URLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["SCHEMES", "StoreURL", "parse_store_url", "redact_url"]

SCHEMES = ("sqlite", "postgresql", "postgres")
_FORMS = "sqlite:///path.db, sqlite:///:memory: or postgresql://user@host:5432/database"


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store URL. ``scheme`` is ``sqlite`` or ``postgresql`` (``postgres`` folded in).

    SQLite: ``path`` is the file path (or ``:memory:``). PostgreSQL: ``dsn`` is the URL for the
    driver without the ``schema`` option, ``schema`` that option or None.
    """

    scheme: str
    path: str | None = None
    dsn: str | None = None
    schema: str | None = None


def parse_store_url(url: str) -> StoreURL:
    """Parse ``url``; raise ``ValueError`` with a message for the user (password hidden)."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"expected a store URL such as {_FORMS}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "sqlite":
        return StoreURL("sqlite", path=_sqlite_path(url, rest))
    if sep and scheme in ("postgresql", "postgres"):
        dsn, schema = _postgres_dsn(url)
        return StoreURL("postgresql", dsn=dsn, schema=schema)
    shown = f"{scheme}://" if sep else repr(redact_url(url))
    raise ValueError(f"unsupported store URL {shown}: use {_FORMS}")


def _sqlite_path(url: str, rest: str) -> str:
    if not rest.startswith("/") or len(rest) < 2:
        raise ValueError(
            f"bad SQLite URL {url!r}: write sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db or sqlite:///:memory:"
        )
    if "?" in rest or "#" in rest:
        raise ValueError(f"SQLite URL {url!r} takes no query or fragment")
    if "\0" in rest:
        raise ValueError("a SQLite path must not contain NUL")
    return rest[1:]


def _postgres_dsn(url: str) -> tuple[str, str | None]:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"bad PostgreSQL URL {redact_url(url)!r}: {exc}") from None
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
