"""The typed, immutable form of a config file: one frozen dataclass per YAML object.

Field names are the YAML keys. Durations are float seconds, sizes int bytes. Instances are
built by ``isekai.config.loader`` (which validates everything); the classes themselves do not
re-validate, so code that builds them by hand is trusted to pass sane values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from isekai.config import defaults

__all__ = [
    "Admin",
    "AdminAuth",
    "Config",
    "Limits",
    "Listener",
    "RequestLogs",
    "Respond",
    "Route",
    "RouteLimits",
    "RouteMatch",
    "Store",
    "Target",
    "Upstream",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """Protocol limits applied to every client connection (DESIGN.md section 11)."""

    max_request_line: int = defaults.MAX_REQUEST_LINE
    max_header_bytes: int = defaults.MAX_HEADER_BYTES
    max_header_count: int = defaults.MAX_HEADER_COUNT
    header_read_timeout: float = defaults.HEADER_READ_TIMEOUT
    body_idle_timeout: float = defaults.BODY_IDLE_TIMEOUT
    max_body_size: int = defaults.MAX_BODY_SIZE
    keepalive_timeout: float = defaults.KEEPALIVE_TIMEOUT
    max_requests_per_connection: int = defaults.MAX_REQUESTS_PER_CONNECTION
    max_connections: int = defaults.MAX_CONNECTIONS
    websocket_idle_timeout: float = defaults.WEBSOCKET_IDLE_TIMEOUT


@dataclass(frozen=True, slots=True)
class Listener:
    """A socket clients connect to. ``bind`` is as written; ``host``/``port`` are parsed from it.

    ``host`` has no brackets for IPv6 (``::1``); ``port`` 0 asks the OS for a free port.
    """

    name: str
    bind: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream server address."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Upstream:
    """A named group of targets the gateway proxies to, with its connection settings."""

    name: str
    targets: tuple[Target, ...]
    scheme: str = defaults.UPSTREAM_SCHEME
    connect_timeout: float = defaults.CONNECT_TIMEOUT
    read_timeout: float = defaults.READ_TIMEOUT
    max_connections: int = defaults.UPSTREAM_MAX_CONNECTIONS
    max_keepalive_connections: int = defaults.UPSTREAM_MAX_KEEPALIVE_CONNECTIONS
    keepalive_expiry: float = defaults.KEEPALIVE_EXPIRY
    pool_timeout: float = defaults.POOL_TIMEOUT


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """What a request must look like to take a route.

    ``path`` is a pattern (``/users/{id}``, ``/static/*``); ``host`` is exact or ``*.suffix``,
    lower-case, ``None`` for any host; ``methods`` are upper-case, ``None`` for any method.
    """

    path: str
    host: str | None = None
    methods: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Respond:
    """A fixed response the gateway sends itself, without an upstream."""

    status: int = defaults.RESPOND_STATUS
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class RouteLimits:
    """Per-route overrides of the global limits that apply once a route is known.

    ``None`` keeps the global value. Limits on the request head (line, header block, header
    read timeout) are global only: they are enforced before any route is matched.
    """

    max_body_size: int | None = None
    body_idle_timeout: float | None = None
    websocket_idle_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """A match plus what to do with matching requests: proxy to ``upstream`` or ``respond``.

    ``strip_prefix`` is removed from the start of the path before proxying; ``rewrite`` is a
    template (``{param}`` names from the path, ``{*}`` for the wildcard tail) producing the new
    path; ``timeout`` overrides the upstream's ``read_timeout``; ``index`` is the position in
    the ``routes`` list.
    """

    name: str
    match: RouteMatch
    upstream: str | None = None
    strip_prefix: str | None = None
    rewrite: str | None = None
    timeout: float | None = None
    respond: Respond | None = None
    websocket: bool = False
    limits: RouteLimits = field(default_factory=RouteLimits)
    index: int = 0


@dataclass(frozen=True, slots=True)
class AdminAuth:
    """How the admin API authenticates: JWTs signed with ``jwt_secret``.

    ``jwt_secret`` ``None`` means one random secret per process, made at startup (tokens then
    do not survive a restart). ``enabled`` false is only accepted on a loopback ``admin.bind``.
    """

    enabled: bool = defaults.ADMIN_AUTH_ENABLED
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_expiry: float = defaults.JWT_EXPIRY
    jwt_algorithm: str = defaults.JWT_ALGORITHM


@dataclass(frozen=True, slots=True)
class RequestLogs:
    """The per-request log kept in the store and served by ``GET /api/logs``."""

    enabled: bool = defaults.REQUEST_LOGS_ENABLED
    retention: float = defaults.REQUEST_LOGS_RETENTION
    queue_size: int = defaults.REQUEST_LOGS_QUEUE_SIZE


@dataclass(frozen=True, slots=True)
class Admin:
    """The admin API listener. ``host``/``port`` are parsed from ``bind``, as for listeners."""

    enabled: bool = defaults.ADMIN_ENABLED
    bind: str = defaults.ADMIN_BIND
    host: str = defaults.ADMIN_HOST
    port: int = defaults.ADMIN_PORT
    auth: AdminAuth = field(default_factory=AdminAuth)
    request_logs: RequestLogs = field(default_factory=RequestLogs)


@dataclass(frozen=True, slots=True)
class Store:
    """Where API-made routes and upstreams, users and request logs are kept."""

    url: str = defaults.STORE_URL


def _default_listeners() -> tuple[Listener, ...]:
    return (
        Listener(
            name=defaults.LISTENER_NAME,
            bind=defaults.LISTENER_BIND,
            host=defaults.LISTENER_HOST,
            port=defaults.LISTENER_PORT,
        ),
    )


def _no_upstreams() -> Mapping[str, Upstream]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, validated gateway configuration.

    ``upstreams`` is a read-only mapping from name to ``Upstream``; ``source`` names the file
    it came from (``<string>`` when loaded from text).
    """

    listeners: tuple[Listener, ...] = field(default_factory=_default_listeners)
    upstreams: Mapping[str, Upstream] = field(default_factory=_no_upstreams)
    routes: tuple[Route, ...] = ()
    limits: Limits = field(default_factory=Limits)
    workers: int = defaults.WORKERS
    shutdown_timeout: float = defaults.SHUTDOWN_TIMEOUT
    trusted_proxies: tuple[str, ...] = defaults.TRUSTED_PROXIES
    pid_file: str | None = defaults.PID_FILE
    admin: Admin = field(default_factory=Admin)
    store: Store = field(default_factory=Store)
    source: str = "<string>"
