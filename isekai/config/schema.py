"""The typed, immutable form of a config file: one frozen dataclass per YAML object.

Field names are the YAML keys. Durations are float seconds, sizes int bytes. Each field is
declared with ``meta.setting`` (kind, bounds, one doc line): that metadata is the one
description the YAML loader, the published JSON Schema (and so the admin API's validation)
and the reference tables of docs/configuration.md are all made from. Rules that tie several
fields together are the ``validate`` hooks (``rules.py``), run by the loader after a class's
fields are read. Instances are built by ``isekai.config.loader`` (which validates
everything); the classes themselves do not re-validate, so code that builds them by hand is
trusted to pass sane values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from isekai.config import defaults, rules, units
from isekai.config.meta import Setting, item, setting

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

    max_request_line: int = setting(
        "size", "Longest request line (method, target, version); longer: 414.",
        default=defaults.MAX_REQUEST_LINE,
    )  # fmt: skip
    max_header_bytes: int = setting(
        "size", "Largest request header block; larger: 431.", default=defaults.MAX_HEADER_BYTES
    )
    max_header_count: int = setting(
        "int", "Most request header fields; more: 431.",
        default=defaults.MAX_HEADER_COUNT, minimum=1,
    )  # fmt: skip
    header_read_timeout: float = setting(
        "duration", "Time allowed to receive the whole request head; then 408 and close.",
        default=defaults.HEADER_READ_TIMEOUT,
    )  # fmt: skip
    body_idle_timeout: float = setting(
        "duration", "Longest pause between two pieces of a request body; then 408.",
        default=defaults.BODY_IDLE_TIMEOUT,
    )  # fmt: skip
    max_body_size: int = setting(
        "size", "Largest request body; larger: 413.", default=defaults.MAX_BODY_SIZE
    )
    keepalive_timeout: float = setting(
        "duration", "How long an idle client connection is kept open between requests.",
        default=defaults.KEEPALIVE_TIMEOUT,
    )  # fmt: skip
    max_requests_per_connection: int = setting(
        "int", "Requests served on one client connection before it is closed.",
        default=defaults.MAX_REQUESTS_PER_CONNECTION, minimum=1,
    )  # fmt: skip
    max_connections: int = setting(
        "int", "Client connections one worker accepts at once; more wait in the backlog.",
        default=defaults.MAX_CONNECTIONS, minimum=1,
    )  # fmt: skip
    websocket_idle_timeout: float = setting(
        "duration", "An upgraded (WebSocket) tunnel with no traffic either way is closed.",
        default=defaults.WEBSOCKET_IDLE_TIMEOUT,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Listener:
    """A socket clients connect to. ``bind`` is as written; ``host``/``port`` are parsed from it.

    ``host`` has no brackets for IPv6 (``::1``); ``port`` 0 asks the OS for a free port.
    """

    name: str = setting("name", "The listener's name, unique among listeners.", what="listener")
    bind: str = setting("bind", "host:port to listen on: 0.0.0.0:8080, [::1]:8080, :8080.")
    host: str = setting("string", "Parsed from bind.", yaml=False)
    port: int = setting("int", "Parsed from bind.", yaml=False)

    validate = staticmethod(rules.listener)


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream server address."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Upstream:
    """A named group of targets the gateway proxies to, with its connection settings."""

    name: str = setting("name", "The upstream's name (its key in upstreams).", yaml=False)
    targets: tuple[Target, ...] = setting(
        "list", "host:port of each server; IPv6 in brackets ([::1]:9000).",
        item=item("target"), what="a list of 'host:port' strings",
        empty="needs at least one target", unique="duplicate target {text!r}",
    )  # fmt: skip
    scheme: str = setting(
        "enum", "How the gateway talks to the targets.", default=defaults.UPSTREAM_SCHEME,
        choices=defaults.UPSTREAM_SCHEMES, case="lower",
        unsupported="scheme {value!r} is not supported yet (supported: {choices})",
    )  # fmt: skip
    connect_timeout: float = setting(
        "duration", "Time allowed to open a connection to a target; then 502.",
        default=defaults.CONNECT_TIMEOUT,
    )  # fmt: skip
    read_timeout: float = setting(
        "duration", "Time allowed for the response head to come back; then 504.",
        default=defaults.READ_TIMEOUT,
    )  # fmt: skip
    max_connections: int = setting(
        "int", "Connections open at once to each target.",
        default=defaults.UPSTREAM_MAX_CONNECTIONS, minimum=1,
    )  # fmt: skip
    max_keepalive_connections: int = setting(
        "int", "Idle connections kept per target for reuse; at most max_connections.",
        default=defaults.UPSTREAM_MAX_KEEPALIVE_CONNECTIONS, minimum=0,
        default_doc="128, or max_connections if lower",
    )  # fmt: skip
    keepalive_expiry: float = setting(
        "duration", "An idle kept connection is closed after this long.",
        default=defaults.KEEPALIVE_EXPIRY,
    )  # fmt: skip
    pool_timeout: float = setting(
        "duration", "How long a request waits for a free connection slot before a 503.",
        default=defaults.POOL_TIMEOUT,
    )  # fmt: skip

    validate = staticmethod(rules.upstream)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """What a request must look like to take a route.

    ``path`` is a pattern (``/users/{id}``, ``/static/*``); ``host`` is exact or ``*.suffix``,
    lower-case, ``None`` for any host; ``methods`` are upper-case, ``None`` for any method.
    ``pattern`` is ``path`` parsed (what the router is given); made from ``path`` if not given.
    """

    path: str = setting("path_pattern", "A path pattern: /users/{id}, /static/* ...")
    host: str | None = setting(
        "host_pattern", "api.example.com or *.example.com; absent: any host.", default=None
    )
    methods: tuple[str, ...] | None = setting(
        "list", "Methods like [GET, POST]; absent: any method.", default=None,
        item=item("method", what="a method name"), what="a list of methods like [GET, POST]",
        empty="must not be empty; leave 'methods' out to match any method",
        unique="method {value} is listed twice",
    )  # fmt: skip
    pattern: units.PathPattern | None = setting(
        "json", "Parsed from path.", default=None, yaml=False, compare=False, repr=False
    )

    validate = staticmethod(rules.route_match)

    def __post_init__(self) -> None:
        if self.pattern is None:
            object.__setattr__(self, "pattern", units.parse_path_pattern(self.path))


@dataclass(frozen=True, slots=True)
class Respond:
    """A fixed response the gateway sends itself, without an upstream."""

    status: int = setting(
        "int", "The status code, 200 to 599.", default=defaults.RESPOND_STATUS,
        minimum=100, maximum=599, schema={"minimum": 200},
    )  # fmt: skip
    headers: tuple[tuple[str, str], ...] = setting(
        "headers", "Header name -> value; content-type is set from body or json if absent.",
        default=(),
    )  # fmt: skip
    body: bytes = setting("string", "The body, as text (content-type text/plain).", default=b"")

    # YAML-only: another way to give the body
    extra_keys = {
        "json": Setting(
            "json",
            "Any JSON value, sent as the body (application/json); not with body.",
            nullable=True,
        )  # fmt: skip
    }
    validate = staticmethod(rules.respond)


@dataclass(frozen=True, slots=True)
class RouteLimits:
    """Per-route overrides of the global limits that apply once a route is known.

    ``None`` keeps the global value. Limits on the request head (line, header block, header
    read timeout) are global only: they are enforced before any route is matched.
    """

    max_body_size: int | None = setting(
        "size", "Overrides limits.max_body_size for this route.", default=None
    )
    body_idle_timeout: float | None = setting(
        "duration", "Overrides limits.body_idle_timeout for this route.", default=None
    )
    websocket_idle_timeout: float | None = setting(
        "duration", "Overrides limits.websocket_idle_timeout for this route.", default=None
    )


@dataclass(frozen=True, slots=True)
class Route:
    """A match plus what to do with matching requests: proxy to ``upstream`` or ``respond``.

    ``strip_prefix`` is removed from the start of the path before proxying; ``rewrite`` is a
    template (``{param}`` names from the path, ``{*}`` for the wildcard tail) producing the new
    path; ``timeout`` overrides the upstream's ``read_timeout``; ``index`` is the position in
    the ``routes`` list.
    """

    name: str = setting("name", "The route's name, unique among routes.", what="route")
    match: RouteMatch = setting(
        "object", "What a request must look like to take the route.", cls=RouteMatch
    )
    upstream: str | None = setting(
        "ref", "The upstream to proxy to (a name in upstreams); or respond.", default=None,
        what="an upstream name",
    )  # fmt: skip
    strip_prefix: str | None = setting(
        "strip_prefix", "Removed from the path before proxying; true: the literal part "
        "of match.path (up to the first { or *).", default=None,
    )  # fmt: skip
    rewrite: str | None = setting(
        "rewrite", "The path sent upstream: a template with {param} and {*} from match.path.",
        default=None,
    )  # fmt: skip
    timeout: float | None = setting(
        "duration", "Overrides the upstream's read_timeout for this route.", default=None
    )
    respond: Respond | None = setting(
        "object", "A fixed response sent by the gateway itself; or upstream.", default=None,
        cls=Respond,
    )  # fmt: skip
    websocket: bool = setting(
        "bool", "Let clients upgrade to WebSocket on this route.", default=False
    )
    limits: RouteLimits = setting(
        "object", "Per-route overrides of limits.", default_factory=RouteLimits, cls=RouteLimits
    )
    index: int = setting("int", "The position in the routes list.", default=0, yaml=False)

    validate = staticmethod(rules.route)


@dataclass(frozen=True, slots=True)
class AdminAuth:
    """How the admin API authenticates: JWTs signed with ``jwt_secret``.

    ``jwt_secret`` ``None`` means one random secret per process, made at startup (tokens then
    do not survive a restart). ``enabled`` false is only accepted on a loopback ``admin.bind``.
    """

    enabled: bool = setting(
        "bool", "Require a login; false only when admin.bind is a loopback address.",
        default=defaults.ADMIN_AUTH_ENABLED,
    )  # fmt: skip
    jwt_secret: str | None = setting(
        "string", "Signs the tokens; at least as many bytes as the hash (32 for HS256). "
        "Absent: a random secret per process.", default=None, repr=False,
        what="a secret string",
    )  # fmt: skip
    jwt_expiry: float = setting(
        "duration", "How long a login token is valid.", default=defaults.JWT_EXPIRY
    )
    jwt_algorithm: str = setting(
        "enum", "The token signature algorithm.", default=defaults.JWT_ALGORITHM,
        choices=defaults.JWT_ALGORITHMS, case="upper",
        unsupported="algorithm {value!r} is not supported (supported: {choices})",
    )  # fmt: skip

    validate = staticmethod(rules.admin_auth)


@dataclass(frozen=True, slots=True)
class RequestLogs:
    """The per-request log kept in the store and served by ``GET /api/logs``."""

    enabled: bool = setting(
        "bool", "Keep a row per request in the store (costs CPU per request).",
        default=defaults.REQUEST_LOGS_ENABLED,
    )  # fmt: skip
    retention: float = setting(
        "duration", "Rows older than this are deleted.", default=defaults.REQUEST_LOGS_RETENTION
    )
    queue_size: int = setting(
        "int", "Rows waiting to be written; when full, new rows are dropped and counted.",
        default=defaults.REQUEST_LOGS_QUEUE_SIZE, minimum=1,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Admin:
    """The admin API listener. ``host``/``port`` are parsed from ``bind``, as for listeners."""

    enabled: bool = setting("bool", "Serve the admin API.", default=defaults.ADMIN_ENABLED)
    bind: str = setting(
        "bind", "host:port of the admin API; keep it private.", default=defaults.ADMIN_BIND
    )
    host: str = setting("string", "Parsed from bind.", default=defaults.ADMIN_HOST, yaml=False)
    port: int = setting("int", "Parsed from bind.", default=defaults.ADMIN_PORT, yaml=False)
    auth: AdminAuth = setting(
        "object", "How the admin API authenticates.", default_factory=AdminAuth, cls=AdminAuth
    )
    request_logs: RequestLogs = setting(
        "object", "The request log served by GET /api/logs.",
        default_factory=RequestLogs, cls=RequestLogs,
    )  # fmt: skip

    validate = staticmethod(rules.admin)


@dataclass(frozen=True, slots=True)
class Store:
    """Where API-made routes and upstreams, users and request logs are kept."""

    url: str = setting(
        "store_url", "sqlite:///isekai.db (relative), sqlite:////abs/path.db, "
        "sqlite:///:memory: or postgresql://user@host/db[?schema=name].",
        default=defaults.STORE_URL, what="a store URL",
    )  # fmt: skip


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

    listeners: tuple[Listener, ...] = setting(
        "list", "Sockets clients connect to.", default_factory=_default_listeners,
        item=item("object", cls=Listener), unique_name="listener",
        empty=f"needs at least one listener (leave 'listeners' out for the default "
        f"{defaults.LISTENER_BIND})", default_doc=f"one, public on {defaults.LISTENER_BIND}",
    )  # fmt: skip
    upstreams: Mapping[str, Upstream] = setting(
        "map", "Named groups of servers routes proxy to.", default_factory=_no_upstreams,
        item=item("object", cls=Upstream), key_field="name", default_doc="none",
    )  # fmt: skip
    routes: tuple[Route, ...] = setting(
        "list", "What to do with requests, tried most specific first.", default=(),
        item=item("object", cls=Route), unique_name="route", index_field="index",
        default_doc="none",
    )  # fmt: skip
    limits: Limits = setting(
        "object", "Protocol limits for every client connection.", default_factory=Limits,
        cls=Limits,
    )  # fmt: skip
    workers: int = setting(
        "workers", "Worker processes; auto: one per CPU.", default=defaults.WORKERS,
        minimum=1,
    )  # fmt: skip
    shutdown_timeout: float = setting(
        "duration", "On stop, how long requests in flight may take to finish; 0: close now.",
        default=defaults.SHUTDOWN_TIMEOUT, minimum=0,
    )  # fmt: skip
    trusted_proxies: tuple[str, ...] = setting(
        "list", "Networks whose X-Forwarded-For is believed (CIDRs).",
        default=defaults.TRUSTED_PROXIES, item=item("cidr", what="a CIDR"),
        what="a list of CIDRs like 10.0.0.0/8", default_doc="none",
    )  # fmt: skip
    pid_file: str | None = setting(
        "string", "Where the master writes its process id.", default=defaults.PID_FILE,
        what="a file path",
    )  # fmt: skip
    admin: Admin = setting("object", "The admin API.", default_factory=Admin, cls=Admin)
    store: Store = setting(
        "object", "Where API-made items, users and request logs are kept.",
        default_factory=Store, cls=Store,
    )  # fmt: skip
    source: str = setting("string", "The file it came from.", default="<string>", yaml=False)

    validate = staticmethod(rules.config)
