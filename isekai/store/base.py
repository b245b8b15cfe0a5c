"""The control-plane store contract: what every backend offers, and the values it trades in.

A store keeps what the admin API changes at run time (routes, upstreams, policies, consumers),
the admin accounts and the request logs. Items are versioned documents: each create, replace
or delete bumps the item's ``version`` (optimistic concurrency through ``if_version``) and a
store-wide ``revision`` counter that gateways watch with ``wait_for_change`` to know when to
rebuild their snapshot.

Backends: ``sqlite.SQLiteStore`` (the embedded default) and ``postgres.PostgresStore`` (for
several gateways sharing one database). ``isekai.store.backends.open_store(url)`` picks one
from a URL.
"""

from __future__ import annotations

import abc
import json
import math
import time
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from isekai.errors import ConfigError, IsekaiError
from isekai.store.oauth import OAuthStore

__all__ = [
    "KINDS",
    "LOG_COLUMNS",
    "AlreadyExists",
    "AuditQuery",
    "AuditRecord",
    "LastAdmin",
    "InvalidStoreURL",
    "NotFound",
    "RequestLogQuery",
    "Store",
    "StoreError",
    "StoredItem",
    "VersionMismatch",
]

KINDS = ("route", "upstream", "policy", "consumer")

# request-log columns in table order, with the Python type each value is coerced to
LOG_COLUMNS: tuple[tuple[str, type], ...] = (
    ("ts", float),
    ("route", str),
    ("method", str),
    ("path", str),
    ("status", int),
    ("upstream", str),
    ("latency_ms", float),
    ("bytes_in", int),
    ("bytes_out", int),
    ("client_ip", str),
    ("user_agent", str),
    ("request_id", str),
    ("consumer", str),  # the consumer a credential policy resolved the request to
)
LOG_KEYS = tuple(name for name, _ in LOG_COLUMNS)
# longest text kept per request-log column; longer values are cut (logs must stay bounded)
LOG_TEXT_LIMITS = {
    "path": 2048,
    "user_agent": 512,
    "route": 256,
    "upstream": 256,
    "consumer": 128,
}
LOG_TEXT_DEFAULT_LIMIT = 128
MAX_QUERY_LIMIT = 1000
EXCLUSIVE_TIMEOUT = 10.0  # seconds a writer waits for the store's writer lock
EXCLUSIVE_POLL = 0.005  # seconds between two tries for a lock held elsewhere


class StoreError(IsekaiError):
    """The store failed: it is unreachable, not open, or a backend call went wrong."""


class NotFound(StoreError):
    """No item of that kind has that name."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"no {kind} named {name!r}")


class AlreadyExists(StoreError):
    """An item (or user) with that name exists already."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"a {kind} named {name!r} already exists")


class VersionMismatch(StoreError):
    """``if_version`` did not match: someone changed the item meanwhile."""

    def __init__(self, kind: str, name: str, current_version: int, expected: int) -> None:
        self.kind = kind
        self.name = name
        self.current_version = current_version
        self.expected = expected
        super().__init__(f"{kind} {name!r} is at version {current_version}, not {expected}")


class LastAdmin(StoreError):
    """The change would leave the admin API without a user of role ``admin``."""

    def __init__(self, username: str) -> None:
        self.username = username
        super().__init__(f"{username!r} is the last admin: make another user admin first")


class InvalidStoreURL(ConfigError, ValueError):
    """``store.url`` is not a URL any backend understands (also a ``ValueError``)."""


@dataclass(frozen=True, slots=True)
class StoredItem:
    """One stored route, upstream, policy or consumer.

    ``doc`` is the YAML mapping of the item: a route's and a consumer's include its ``name``
    (in YAML they are list items); an upstream's or a policy's does not (in YAML the name is
    the mapping key). ``version`` starts at 1 and
    grows by one per change; ``created_at``/``updated_at`` are unix seconds.
    """

    kind: str
    name: str
    doc: dict[str, Any]
    version: int
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class RequestLogQuery:
    """Which request logs to return: every given filter must hold.

    ``status`` is exact; ``status_class`` 2 means 200-299; ``consumer`` is exact (``""``:
    requests no consumer was resolved for); ``since``/``until`` bound ``ts``
    (``since <= ts < until``); ``limit`` (1-1000) and ``offset`` page through the rows.
    """

    route: str | None = None
    status: int | None = None
    status_class: int | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 50
    offset: int = 0
    consumer: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be from 1 to {MAX_QUERY_LIMIT}, got {self.limit}")
        if self.offset < 0:
            raise ValueError(f"offset must not be negative, got {self.offset}")
        if self.status_class is not None and not 1 <= self.status_class <= 5:
            raise ValueError(f"status_class must be from 1 to 5, got {self.status_class}")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status must be from 100 to 599, got {self.status}")

    def conditions(self) -> list[tuple[str, Any]]:
        """``(column op, value)`` pairs, e.g. ``("ts >=", 12.5)``; backends add placeholders."""
        where: list[tuple[str, Any]] = []
        if self.route is not None:
            where.append(("route =", self.route))
        if self.consumer == "":
            where.append(("coalesce(consumer, '') =", ""))
        elif self.consumer is not None:
            where.append(("consumer =", self.consumer))
        if self.status is not None:
            where.append(("status =", self.status))
        if self.status_class is not None:
            where.append(("status >=", self.status_class * 100))
            where.append(("status <", self.status_class * 100 + 100))
        if self.since is not None:
            where.append(("ts >=", float(self.since)))
        if self.until is not None:
            where.append(("ts <", float(self.until)))
        return where


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One admin write: who (``actor``, a username or None when auth is off) did what
    (``action``: ``created``, ``replaced``, ``patched``, ``deleted``, ``logout``, ``login``,
    ``login_failed``...) to which item (``kind``, ``name``), with the item before and after
    (JSON-compatible, secrets already redacted), from which client and request. ``time`` is
    unix seconds; ``id`` is given by the store."""

    time: float
    actor: str | None
    action: str
    kind: str
    name: str | None
    before: Any = None
    after: Any = None
    client_ip: str | None = None
    request_id: str | None = None
    id: int | None = None

    def encoded(self) -> tuple[Any, ...]:
        """The row as stored: ``AUDIT_COLUMNS`` order, before/after as JSON text."""
        return (
            float(self.time),
            _bounded(self.actor),
            _bounded(self.action),
            _bounded(self.kind),
            _bounded(self.name, 256),
            _json_or_none(self.before),
            _json_or_none(self.after),
            _bounded(self.client_ip),
            _bounded(self.request_id),
        )


AUDIT_COLUMNS = (
    "ts",
    "actor",
    "action",
    "kind",
    "name",
    "before",
    "after",
    "client_ip",
    "request_id",
)


def _bounded(value: str | None, limit: int = 128) -> str | None:
    return None if value is None else str(value)[:limit]


def _json_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def audit_from_row(row: Any) -> AuditRecord:
    """An `AuditRecord` from ``id`` + `AUDIT_COLUMNS` (before/after as JSON text)."""
    id_, ts, actor, action, kind, name, before, after, client_ip, request_id = tuple(row)
    return AuditRecord(
        time=ts,
        actor=actor,
        action=action,
        kind=kind,
        name=name,
        before=None if before is None else json.loads(before),
        after=None if after is None else json.loads(after),
        client_ip=client_ip,
        request_id=request_id,
        id=id_,
    )


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which audit records to return, newest first: every given filter must hold
    (``since`` bounds ``time`` from below, inclusive); ``limit`` (1-1000) and ``offset``."""

    actor: str | None = None
    kind: str | None = None
    name: str | None = None
    since: float | None = None
    limit: int = 50
    offset: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be from 1 to {MAX_QUERY_LIMIT}, got {self.limit}")
        if self.offset < 0:
            raise ValueError(f"offset must not be negative, got {self.offset}")

    def conditions(self) -> list[tuple[str, Any]]:
        """``(column op, value)`` pairs; backends add placeholders."""
        where: list[tuple[str, Any]] = []
        for column in ("actor", "kind", "name"):
            value = getattr(self, column)
            if value is not None:
                where.append((f"{column} =", value))
        if self.since is not None:
            where.append(("ts >=", float(self.since)))
        return where


class Store(OAuthStore, abc.ABC):
    """A control-plane store. Call ``open()`` first (or use ``async with``), ``close()`` last.

    Every failure of the backend itself is raised as ``StoreError``; ``NotFound``,
    ``AlreadyExists`` and ``VersionMismatch`` are its subclasses. ``kind`` is one of
    `KINDS` (anything else is a ``ValueError``).
    """

    url: str

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date (idempotent, safe to race)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; a closed store can be opened again."""

    # -- routes and upstreams ---------------------------------------------------------------

    @abc.abstractmethod
    async def list_items(self, kind: str) -> list[StoredItem]:
        """Every item of ``kind``, sorted by name."""

    @abc.abstractmethod
    async def list_versions(self, kind: str) -> dict[str, int]:
        """Every item of ``kind`` as name -> version, without the documents (cheap: what a
        gateway compares to know which items changed)."""

    @abc.abstractmethod
    async def get_item(self, kind: str, name: str) -> StoredItem | None:
        """The item, or ``None``."""

    @abc.abstractmethod
    async def create_item(self, kind: str, name: str, doc: Mapping[str, Any]) -> StoredItem:
        """Store a new item at version 1; ``AlreadyExists`` if the name is taken."""

    @abc.abstractmethod
    async def replace_item(
        self, kind: str, name: str, doc: Mapping[str, Any], if_version: int | None = None
    ) -> StoredItem:
        """Replace the item's doc; ``NotFound``, or ``VersionMismatch`` if ``if_version``
        is given and differs from the current version."""

    @abc.abstractmethod
    async def delete_item(self, kind: str, name: str, if_version: int | None = None) -> None:
        """Delete the item; ``NotFound``, or ``VersionMismatch`` as for ``replace_item``."""

    @abc.abstractmethod
    def exclusive(self, timeout: float = EXCLUSIVE_TIMEOUT) -> AbstractAsyncContextManager[None]:
        """Hold the store's writer lock: one holder at a time across every process and host
        using this store. A change is read, validated and written under it, so the second of
        two concurrent writers sees the first's change. ``StoreError`` if the lock is not had
        within ``timeout`` seconds. Not re-entrant."""

    @abc.abstractmethod
    async def revision(self) -> int:
        """The store-wide change counter: +1 per successful create, replace or delete."""

    @abc.abstractmethod
    async def wait_for_change(self, since: int, timeout: float) -> int:
        """The revision as soon as it is greater than ``since``, or after ``timeout`` seconds.

        Changes made through other ``Store`` instances (other processes, other hosts on the
        same database) count too.
        """

    # -- users ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def get_user(self, username: str) -> dict[str, Any] | None:
        """``{"username", "password_hash", "role", "created_at", "token_version"}`` or
        ``None``."""

    @abc.abstractmethod
    async def list_users(self) -> list[dict[str, Any]]:
        """Every user as ``{"username", "role", "created_at", "token_version"}`` (no password
        hashes), sorted by username."""

    @abc.abstractmethod
    async def create_user(
        self, username: str, password_hash: str, role: str, *, audit: AuditRecord | None = None
    ) -> None:
        """Add a user; ``AlreadyExists`` if the username is taken. ``audit``, if given, is
        recorded in the same transaction."""

    @abc.abstractmethod
    async def set_user(
        self,
        username: str,
        password_hash: str | None,
        role: str | None,
        *,
        audit: AuditRecord | None = None,
    ) -> None:
        """Add or update a user (an update keeps ``created_at``). ``password_hash`` or
        ``role`` None keeps the stored one, read in the update's own transaction (a new user
        needs both: ``ValueError``), so an update never writes back a value another writer
        changed meanwhile. An update that changes the
        password hash or the role bumps ``token_version`` (older tokens stop working);
        ``LastAdmin`` (and no change) if it would take the role ``admin`` from the last user
        having it: counted and changed in one transaction, so two concurrent demotions
        cannot leave none."""

    @abc.abstractmethod
    async def delete_user(self, username: str, *, audit: AuditRecord | None = None) -> None:
        """Delete a user; ``NotFound``, or ``LastAdmin`` for the last admin (atomic, as for
        ``set_user``)."""

    @abc.abstractmethod
    async def bump_token_version(self, username: str, *, audit: AuditRecord | None = None) -> int:
        """Add one to the user's ``token_version`` (every token issued before stops working)
        and return it; ``NotFound``."""

    # -- admin audit log and login attempts -------------------------------------------------

    @abc.abstractmethod
    async def record_audit(self, record: AuditRecord) -> None:
        """Append one audit record."""

    @abc.abstractmethod
    async def query_audit(self, q: AuditQuery) -> tuple[list[AuditRecord], int]:
        """One page of matching audit records, newest first, and how many match in all."""

    @abc.abstractmethod
    async def take_login_attempt(
        self, limits: list[tuple[str, int]], window: float
    ) -> float | None:
        """Count one login attempt against every ``(key, limit)`` (e.g. ``user:alice``,
        ``ip:10.0.0.1``), each in a fixed window of ``window`` seconds from its first attempt.

        Atomic across processes: when some key has already used its ``limit`` in its
        current window nothing is counted and the seconds until that window ends are
        returned (the caller answers 429); otherwise every key is counted and None is
        returned."""

    @abc.abstractmethod
    async def login_succeeded(self, reset: list[str], refund: list[str]) -> None:
        """A counted attempt succeeded: forget the ``reset`` keys' counts (the username) and
        take the attempt back from the ``refund`` keys (the client address)."""

    @abc.abstractmethod
    async def count_users(self) -> int:
        """How many users there are."""

    # -- request logs -----------------------------------------------------------------------

    @abc.abstractmethod
    async def insert_request_logs(self, rows: list[dict[str, Any]]) -> None:
        """Append request-log rows (keys: ``LOG_KEYS``; a missing key is stored as null)."""

    @abc.abstractmethod
    async def query_request_logs(self, q: RequestLogQuery) -> tuple[list[dict[str, Any]], int]:
        """One page of matching rows, newest first, and how many rows match in all."""

    @abc.abstractmethod
    async def purge_request_logs(self, older_than: float) -> int:
        """Delete rows with ``ts < older_than``; return how many were deleted."""

    def request_log_sink(self) -> Any:
        """A `log_sinks.RequestLogSink` for a writer thread: its own connection, opened on
        first use (the store must be open: its tables exist); None if this store has none
        (the writer then goes through `insert_request_logs` on the loop)."""
        return None


# -- helpers shared by the backends ----------------------------------------------------------


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")


def check_user(
    username: str, password_hash: str | None, role: str | None, *, keep: bool = False
) -> None:
    """``ValueError`` unless each is a non-empty string (with ``keep``, the password hash and
    the role may also be None: the stored one is kept)."""
    for key, value in (("username", username), ("password_hash", password_hash), ("role", role)):
        if keep and key != "username" and value is None:
            continue
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key} must be a non-empty string, got {value!r}")


def check_version(if_version: int | None) -> None:
    if if_version is not None and (isinstance(if_version, bool) or not isinstance(if_version, int)):
        raise ValueError(f"if_version must be an integer, got {if_version!r}")


def encode_doc(kind: str, name: str, doc: Mapping[str, Any]) -> str:
    """Check a doc against its kind and name, and return it as compact JSON."""
    check_kind(kind)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
    if not isinstance(doc, Mapping):
        raise ValueError(f"{kind} doc must be a mapping, got {type(doc).__name__}")
    if kind == "route" and "name" in doc and doc["name"] != name:
        raise ValueError(f"route doc names {doc['name']!r}, but it is stored as {name!r}")
    if kind == "consumer" and "name" in doc and doc["name"] != name:
        raise ValueError(f"consumer doc names {doc['name']!r}, but it is stored as {name!r}")
    if kind == "upstream" and "name" in doc:
        raise ValueError("an upstream doc has no 'name' key: the name is given separately")
    try:
        return json.dumps(dict(doc), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{kind} {name!r}: doc is not JSON-compatible: {exc}") from None


def _coerce(value: Any, to: type, key: str) -> Any:
    if value is None:
        return None
    if to is str:
        text = value if isinstance(value, str) else str(value)
        limit = LOG_TEXT_LIMITS.get(key, LOG_TEXT_DEFAULT_LIMIT)
        return text[:limit] if len(text) > limit else text
    if to is float:
        number = float(value)
        return number if math.isfinite(number) else None
    return int(value)


def normalize_log_row(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """A request-log dict as a tuple in ``LOG_COLUMNS`` order, values coerced and bounded.

    ``ts`` defaults to now; other missing keys become null; unknown keys are ignored.
    """
    values = []
    for key, to in LOG_COLUMNS:
        try:
            value = _coerce(row.get(key), to, key)
        except (TypeError, ValueError):
            raise ValueError(f"request log {key!r}: cannot use {row.get(key)!r}") from None
        values.append(value)
    if values[0] is None:
        values[0] = time.time()
    return tuple(values)
