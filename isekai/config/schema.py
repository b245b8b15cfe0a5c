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
from typing import ClassVar

from isekai.config import defaults, rules, units
from isekai.config.admin_oauth import AdminOAuth
from isekai.config.consumers import Consumer
from isekai.config.meta import Setting, item, setting
from isekai.config.observability import Observability, RouteAccessLog
from isekai.config.policies import PolicySpec
from isekai.config.upstream import Breaker, HealthCheck, Outlier, Retry

__all__ = [
    "Admin",
    "AdminApiRoutes",
    "AdminAuth",
    "Breaker",
    "Config",
    "HealthCheck",
    "Limits",
    "Listener",
    "LoginLimits",
    "Outlier",
    "RequestLogs",
    "Respond",
    "Retry",
    "Route",
    "RouteLimits",
    "RouteMatch",
    "Security",
    "Store",
    "Target",
    "Upstream",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """Protocol limits applied to every client connection (DESIGN.md section 11)."""

    max_request_line: int = setting(
        "size",
        "Longest request line; longer: 414.",
        default=defaults.MAX_REQUEST_LINE,
    )
    max_header_bytes: int = setting(
        "size", "Largest request header block; larger: 431.", default=defaults.MAX_HEADER_BYTES
    )
    max_header_count: int = setting(
        "int",
        "Most request header fields; more: 431.",
        default=defaults.MAX_HEADER_COUNT,
        minimum=1,
    )
    header_read_timeout: float = setting(
        "duration",
        "Time to receive the whole request head; then 408, connection closed.",
        default=defaults.HEADER_READ_TIMEOUT,
    )
    body_idle_timeout: float = setting(
        "duration",
        "Longest pause between two pieces of a request body; then 408.",
        default=defaults.BODY_IDLE_TIMEOUT,
    )
    max_body_size: int = setting(
        "size", "Largest request body; larger: 413.", default=defaults.MAX_BODY_SIZE
    )
    keepalive_timeout: float = setting(
        "duration",
        "An idle client connection is closed after this long.",
        default=defaults.KEEPALIVE_TIMEOUT,
    )
    max_requests_per_connection: int = setting(
        "int",
        "The connection is closed after the response to this many requests.",
        default=defaults.MAX_REQUESTS_PER_CONNECTION,
        minimum=1,
    )
    max_connections: int = setting(
        "int",
        "Client connections per worker; accepting pauses at the limit.",
        default=defaults.MAX_CONNECTIONS,
        minimum=1,
    )
    websocket_idle_timeout: float = setting(
        "duration",
        "An upgraded (WebSocket) tunnel idle both ways is closed.",
        default=defaults.WEBSOCKET_IDLE_TIMEOUT,
    )
    rate_limit_memory: int = setting(
        "size",
        "Memory of the local rate-limit table, shared by the host's workers (~72 bytes per "
        "key; idle keys are evicted first, then the least recently used). Read at start.",
        default=defaults.RATE_LIMIT_MEMORY,
        minimum=65536,
    )
    max_loop_lag: float = setting(
        "duration",
        "Load shedding: when a worker's event loop runs this late, every new request on that "
        "worker is answered 503 until it catches up; `0` turns it off.",
        default=defaults.MAX_LOOP_LAG,
        minimum=0,
        default_doc="`0` (off)",
    )
    shed_retry_after: float = setting(
        "duration",
        "The `Retry-After` of the 503 answered while shedding load (whole seconds, rounded up).",
        default=defaults.SHED_RETRY_AFTER,
    )


@dataclass(frozen=True, slots=True)
class Listener:
    """A socket clients connect to. ``bind`` is as written; ``host``/``port`` are parsed from it.

    ``host`` has no brackets for IPv6 (``::1``); ``port`` 0 asks the OS for a free port.
    """

    name: str = setting("name", "Unique among listeners.", what="listener")
    bind: str = setting(
        "bind",
        "`0.0.0.0:8080`, `127.0.0.1:8080`, `[::1]:8080` (IPv6 in brackets), `:8080` (= "
        "`0.0.0.0:8080`); port `0` picks a free port.",
    )
    host: str = setting("string", "Parsed from bind.", yaml=False)
    port: int = setting("int", "Parsed from bind.", yaml=False)
    policies: tuple[str | PolicySpec, ...] = setting(
        "list",
        "Policies applied to every request on this listener, before the route's; names of "
        "`policies` or inline policies.",
        default=(),
        item=item("policy", cls=PolicySpec),
        what="a list of policy names or policies",
        default_doc="none",
    )

    validate = staticmethod(rules.listener)


@dataclass(frozen=True, slots=True)
class Target:
    """One server of an upstream: ``"host:port"``, or a mapping with its address and weight.

    ``host`` is lower-case, without brackets for IPv6; ``address`` gives ``host:port`` back
    (``[v6]:port``), as status and metrics name the target.
    """

    host: str = setting("string", "Parsed from address.", yaml=False)
    port: int = setting("int", "Parsed from address.", yaml=False)
    weight: int = setting(
        "int",
        "Relative share of the upstream's requests this target gets (by the weighted balancers).",
        default=defaults.TARGET_WEIGHT,
        minimum=1,
        maximum=defaults.TARGET_MAX_WEIGHT,
    )

    extra_keys: ClassVar[dict[str, Setting]] = {
        "address": Setting(
            "address",
            "`host:port`, as a target is written alone; host is a name, IPv4 or `[IPv6]`.",
            required=True,
        )
    }
    extra_keys_first = True
    entity = "target"
    validate = staticmethod(rules.target)

    @property
    def address(self) -> str:
        """``host:port`` (``[host]:port`` for IPv6)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Upstream:
    """A named group of targets the gateway proxies to, with its connection settings."""

    name: str = setting("name", "The upstream's name (its key in upstreams).", yaml=False)
    targets: tuple[Target, ...] = setting(
        "list",
        "Servers of this upstream: `host:port` (host a name, IPv4 or `[IPv6]`; port 1–65535) or "
        "`{address: host:port, weight: 3}`; no address twice.",
        item=item("target", cls=Target, inline=True),
        what="a list of targets ('host:port' or {address, weight})",
        empty="needs at least one target",
        unique="duplicate target {text!r}",
        unique_by="address",
        default_doc="required, at least one",
    )
    scheme: str = setting(
        "enum",
        "Only `http` is supported so far.",
        default=defaults.UPSTREAM_SCHEME,
        choices=defaults.UPSTREAM_SCHEMES,
        case="lower",
        unsupported="scheme {value!r} is not supported yet (supported: {choices})",
    )
    connect_timeout: float = setting(
        "duration",
        "Time to open a connection to a target (then 502).",
        default=defaults.CONNECT_TIMEOUT,
    )
    read_timeout: float = setting(
        "duration",
        "Time to wait for the response (then 504); a route's `timeout` overrides it.",
        default=defaults.READ_TIMEOUT,
    )
    max_connections: int = setting(
        "int",
        "Open connections per target.",
        default=defaults.UPSTREAM_MAX_CONNECTIONS,
        minimum=1,
    )
    max_keepalive_connections: int = setting(
        "int",
        "Idle connections kept per target for reuse; `0` keeps none.",
        default=defaults.UPSTREAM_MAX_KEEPALIVE_CONNECTIONS,
        minimum=0,
        default_doc="`128` (at most `max_connections`)",
    )
    keepalive_expiry: float = setting(
        "duration",
        "How long an idle connection is kept.",
        default=defaults.KEEPALIVE_EXPIRY,
    )
    pool_timeout: float = setting(
        "duration",
        "How long a request waits for a free connection slot (all `max_connections` busy) before "
        "a 503.",
        default=defaults.POOL_TIMEOUT,
    )
    balancer: str = setting(
        "enum",
        "How each request picks a target: `round_robin` (in turn, by weight), `least_conn` "
        "(fewest requests in flight), `p2c` (the less busy of two random targets), "
        "`consistent_hash` (by `hash_on`), `ewma` (lowest recent latency), `random`.",
        default=defaults.BALANCER,
        choices=defaults.BALANCERS,
        case="lower",
        unsupported="unknown balancer {value!r} (balancers: {choices})",
    )
    hash_on: str | None = setting(
        "hash_on",
        "`consistent_hash` only: the request's key, `client_ip`, `path`, `header:NAME` or "
        "`cookie:NAME`; the same key goes to the same target while it is selectable.",
        default=None,
        what="client_ip, path, header:NAME or cookie:NAME",
        default_doc="`client_ip` with `consistent_hash`",
    )
    hash_algorithm: str = setting(
        "enum",
        "`consistent_hash` only: `ring` (a hash ring) or `maglev` (a Maglev table); either moves "
        "few keys when a target comes or goes.",
        default=defaults.HASH_ALGORITHM,
        choices=defaults.HASH_ALGORITHMS,
        case="lower",
        unsupported="unknown hash_algorithm {value!r} (supported: {choices})",
    )
    panic_threshold: float = setting(
        "number",
        "Percent of healthy, not ejected targets below which requests go to all targets, "
        "ignoring health and ejection (not open breakers); `0` never.",
        default=defaults.PANIC_THRESHOLD,
        minimum=0,
        maximum=100,
    )
    max_requests: int | None = setting(
        "int",
        "Requests in flight to this upstream per worker; more are answered 503 at once.",
        default=None,
        minimum=1,
        default_doc="no limit",
    )
    max_pending: int | None = setting(
        "int",
        "Requests per worker waiting for a connection (every `max_connections` busy); more are "
        "answered 503 at once.",
        default=None,
        minimum=1,
        default_doc="no limit",
    )
    max_retries: int | None = setting(
        "int",
        "Retries in flight to this upstream per worker; a failure beyond it is not retried.",
        default=None,
        minimum=1,
        default_doc="no limit",
    )
    allow_internal: bool = setting(
        "bool",
        "Allow targets at link-local and cloud metadata addresses (`169.254.0.0/16`, "
        "`fe80::/10`, `fd00:ec2::254`), refused otherwise.",
        default=False,
    )
    health: HealthCheck | None = setting(
        "object",
        "Active health checks: probe every target, once for the whole gateway.",
        default=None,
        cls=HealthCheck,
        inline=True,
        default_doc="off: every target is healthy",
    )
    outlier: Outlier | None = setting(
        "object",
        "Passive checks: eject a target whose requests keep failing.",
        default=None,
        cls=Outlier,
        inline=True,
        default_doc="off",
    )
    breaker: Breaker | None = setting(
        "object",
        "A circuit breaker per target.",
        default=None,
        cls=Breaker,
        inline=True,
        default_doc="off",
    )
    retry: Retry | None = setting(
        "object",
        "Retry failed attempts, on another target when there is one.",
        default=None,
        cls=Retry,
        inline=True,
        default_doc="off: never retried",
    )

    validate = staticmethod(rules.upstream)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """What a request must look like to take a route.

    ``path`` is a pattern (``/users/{id}``, ``/static/*``); ``host`` is exact or ``*.suffix``,
    lower-case, ``None`` for any host; ``methods`` are upper-case, ``None`` for any method.
    ``pattern`` is ``path`` parsed (what the router is given); made from ``path`` if not given.
    """

    path: str = setting("path_pattern", "See below.")
    host: str | None = setting(
        "host_pattern",
        "`api.example.com` (exact), or `*.example.com` (any subdomain).",
        default=None,
        default_doc="any host",
    )
    methods: tuple[str, ...] | None = setting(
        "list",
        "E.g. `[GET, POST]`.",
        default=None,
        item=item("method", what="a method name"),
        what="a list of methods like [GET, POST]",
        empty="must not be empty; leave 'methods' out to match any method",
        unique="method {value} is listed twice",
        default_doc="any method",
    )
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
        "int",
        "1xx statuses are interim and cannot be a fixed response.",
        default=defaults.RESPOND_STATUS,
        minimum=100,
        maximum=599,
        schema={"minimum": 200},
    )
    headers: tuple[tuple[str, str], ...] = setting(
        "headers",
        "Values are strings or numbers: visible ASCII, Latin-1, spaces and tabs (no CR, LF or "
        "NUL).",
        default=(),
    )
    body: bytes = setting(
        "string", "Sent as UTF-8; adds `content-type: text/plain; charset=utf-8`.", default=b""
    )

    # YAML-only: another way to give the body
    extra_keys: ClassVar[dict[str, Setting]] = {
        "json": Setting(
            "json",
            "Serialised as compact JSON; adds `content-type: application/json`; not with `body`.",
            nullable=True,
            default_doc="—",
        )
    }
    validate = staticmethod(rules.respond)


@dataclass(frozen=True, slots=True)
class RouteLimits:
    """Per-route overrides of the global limits that apply once a route is known.

    ``None`` keeps the global value. Limits on the request head (line, header block, header
    read timeout) are global only: they are enforced before any route is matched.
    """

    max_body_size: int | None = setting(
        "size",
        "413 when a body (declared or streamed chunked) is larger.",
        default=None,
        default_doc="`limits.max_body_size`",
    )
    body_idle_timeout: float | None = setting(
        "duration",
        "408 when the client sends no body bytes for this long.",
        default=None,
        default_doc="`limits.body_idle_timeout`",
    )
    websocket_idle_timeout: float | None = setting(
        "duration",
        "A tunnel with no traffic either way for this long is closed.",
        default=None,
        default_doc="`limits.websocket_idle_timeout`",
    )


@dataclass(frozen=True, slots=True)
class Route:
    """A match plus what to do with matching requests: proxy to ``upstream`` or ``respond``.

    ``strip_prefix`` is removed from the start of the path before proxying; ``rewrite`` is a
    template (``{param}`` names from the path, ``{*}`` for the wildcard tail) producing the new
    path; ``timeout`` overrides the upstream's ``read_timeout``; ``index`` is the position in
    the ``routes`` list.
    """

    name: str = setting("name", "Unique among routes; used in logs and metrics.", what="route")
    match: RouteMatch = setting(
        "object", "What a request must look like to take this route.", cls=RouteMatch
    )
    upstream: str | None = setting(
        "ref",
        "Proxy matching requests to this upstream; it must exist in `upstreams`.",
        default=None,
        what="an upstream name",
        default_doc="—",
    )
    strip_prefix: str | None = setting(
        "strip_prefix",
        "Remove this prefix from the path before proxying.",
        default=None,
    )
    rewrite: str | None = setting(
        "rewrite",
        "Replace the path before proxying.",
        default=None,
    )
    timeout: float | None = setting(
        "duration",
        "Time to wait for this route's responses.",
        default=None,
        default_doc="the upstream's `read_timeout`",
    )
    respond: Respond | None = setting(
        "object",
        "Answer with a fixed response, no upstream involved.",
        default=None,
        cls=Respond,
        default_doc="—",
    )
    websocket: bool = setting(
        "bool",
        "Relay `Upgrade` requests (WebSocket); after `101` the connection becomes a tunnel.",
        default=False,
    )
    policies: tuple[str | PolicySpec, ...] = setting(
        "list",
        "Policies applied to this route's requests, in order (after the listener's); names of "
        "`policies` or inline policies.",
        default=(),
        item=item("policy", cls=PolicySpec),
        what="a list of policy names or policies",
        default_doc="none",
    )
    preserve_host: bool = setting(
        "bool",
        "Send the client's Host upstream instead of the target's authority.",
        default=False,
    )
    access_log: RouteAccessLog = setting(
        "object",
        "This route's access-log lines: on/off and sampling.",
        default_factory=RouteAccessLog,
        cls=RouteAccessLog,
        default_doc="as `observability.access_log`",
    )
    limits: RouteLimits = setting(
        "object",
        "Per-route overrides.",
        default_factory=RouteLimits,
        cls=RouteLimits,
        default_doc="the global [limits](#limits)",
    )
    index: int = setting("int", "The position in the routes list.", default=0, yaml=False)

    validate = staticmethod(rules.route)


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """How many ``POST /api/auth/login`` attempts are allowed before 429.

    Counted in the store (every admin process and every gateway sharing it count together),
    in a fixed window that starts at a key's first attempt; a successful login clears the
    username's count.
    """

    per_user: int = setting(
        "int",
        "Attempts per username (known or not) per window; then 429 with `Retry-After`, "
        "even for the right password, until the window ends.",
        default=defaults.LOGIN_LIMIT_PER_USER,
        minimum=1,
    )
    per_ip: int = setting(
        "int",
        "Attempts per client address (the connection's peer) per window; then 429.",
        default=defaults.LOGIN_LIMIT_PER_IP,
        minimum=1,
    )
    window: float = setting(
        "duration",
        "How long a count lasts from the first attempt it counts.",
        default=defaults.LOGIN_LIMIT_WINDOW,
    )


@dataclass(frozen=True, slots=True)
class AdminApiRoutes:
    """What routes made through the admin API may do to the routes of the config file."""

    may_shadow_yaml: bool = setting(
        "bool",
        "`false`: an API route that would take requests a file route now gets (a more "
        "specific path, a more specific host, or HEAD beside its GET) is refused with 409 "
        "naming that route.",
        default=defaults.API_ROUTES_MAY_SHADOW_YAML,
    )


@dataclass(frozen=True, slots=True)
class AdminAuth:
    """How the admin API authenticates: JWTs signed with ``jwt_secret``.

    ``jwt_secret`` ``None`` means one random secret per process, made at startup (tokens then
    do not survive a restart). ``enabled`` false is only accepted on a loopback ``admin.bind``.
    """

    enabled: bool = setting(
        "bool",
        "`false` opens every endpoint to anyone who can connect; only accepted when `admin.bind` "
        "is a loopback address (`127.0.0.0/8`, `::1`, `localhost`).",
        default=defaults.ADMIN_AUTH_ENABLED,
    )
    jwt_secret: str | None = setting(
        "string",
        "Signs the login tokens; at least 32 characters for HS256 (48 for HS384, 64 for HS512).",
        default=None,
        repr=False,
        what="a secret string",
        default_doc="a random secret per process",
    )
    jwt_expiry: float = setting(
        "duration", "How long a login token is valid.", default=defaults.JWT_EXPIRY
    )
    jwt_algorithm: str = setting(
        "enum",
        "HMAC algorithm of the tokens (case is ignored).",
        default=defaults.JWT_ALGORITHM,
        choices=defaults.JWT_ALGORITHMS,
        case="upper",
        unsupported="algorithm {value!r} is not supported (supported: {choices})",
    )
    login_limits: LoginLimits = setting(
        "object",
        "Login attempts allowed per username and per client address.",
        default_factory=LoginLimits,
        cls=LoginLimits,
        default_doc="5 per user, 20 per address, per 15m",
    )

    validate = staticmethod(rules.admin_auth)


@dataclass(frozen=True, slots=True)
class RequestLogs:
    """The per-request log kept in the store and served by ``GET /api/logs``."""

    enabled: bool = setting(
        "bool",
        "Record one row per request in the store.",
        default=defaults.REQUEST_LOGS_ENABLED,
    )
    retention: float = setting(
        "duration", "Rows older than this are deleted.", default=defaults.REQUEST_LOGS_RETENTION
    )
    queue_size: int = setting(
        "int",
        "Rows waiting to be written; when full, new rows are dropped and counted, requests are "
        "never slowed.",
        default=defaults.REQUEST_LOGS_QUEUE_SIZE,
        minimum=1,
    )


@dataclass(frozen=True, slots=True)
class Admin:
    """The admin API listener. ``host``/``port`` are parsed from ``bind``, as for listeners."""

    enabled: bool = setting(
        "bool", "`false`: no admin listener at all.", default=defaults.ADMIN_ENABLED
    )
    bind: str = setting(
        "bind", "As a listener's `bind`; port `0` picks a free port.", default=defaults.ADMIN_BIND
    )
    host: str = setting("string", "Parsed from bind.", default=defaults.ADMIN_HOST, yaml=False)
    port: int = setting("int", "Parsed from bind.", default=defaults.ADMIN_PORT, yaml=False)
    auth: AdminAuth = setting(
        "object",
        "How callers authenticate.",
        default_factory=AdminAuth,
        cls=AdminAuth,
        default_doc="enabled",
    )
    request_logs: RequestLogs = setting(
        "object",
        "The per-request log served by `GET /api/logs`.",
        default_factory=RequestLogs,
        cls=RequestLogs,
        default_doc="off",
    )
    oauth: AdminOAuth = setting(
        "object",
        "The OAuth2 authorization server (docs/oauth2.md).",
        default_factory=AdminOAuth,
        cls=AdminOAuth,
        default_doc="off",
    )
    api_routes: AdminApiRoutes = setting(
        "object",
        "What routes made through the API may do to the file's routes.",
        default_factory=AdminApiRoutes,
        cls=AdminApiRoutes,
        default_doc="may not shadow them",
    )

    validate = staticmethod(rules.admin)


@dataclass(frozen=True, slots=True)
class Store:
    """Where API-made routes and upstreams, users and request logs are kept."""

    url: str = setting(
        "store_url",
        "`sqlite:///isekai.db` is `isekai.db` in the directory the gateway is started from; the "
        "forms are in the table below.",
        default=defaults.STORE_URL,
        what="a store URL",
    )


@dataclass(frozen=True, slots=True)
class Security:
    """Secrets of the gateway's own security features (credential policies)."""

    api_key_pepper: str | None = setting(
        "string",
        "The server-side secret API keys are hashed with (HMAC-SHA256), at least 16 characters; "
        "give it from the environment (`${API_KEY_PEPPER}`). Every gateway sharing a store "
        "needs the same one. Unset: keys in the file still work (with a warning) but the admin "
        "API makes no keys.",
        default=None,
        repr=False,
        what="a secret string",
        default_doc="none",
    )

    validate = staticmethod(rules.security)


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


def _no_policies() -> Mapping[str, PolicySpec]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, validated gateway configuration.

    ``upstreams`` is a read-only mapping from name to ``Upstream``, ``policies`` from name to
    ``PolicySpec`` (routes and listeners hold such names, or inline specs); ``source`` names
    the file it came from (``<string>`` when loaded from text).
    """

    listeners: tuple[Listener, ...] = setting(
        "list",
        "Where clients connect.",
        default_factory=_default_listeners,
        item=item("object", cls=Listener),
        unique_name="listener",
        empty=f"needs at least one listener (leave 'listeners' out for the default "
        f"{defaults.LISTENER_BIND})",
        default_doc="one listener `public` on `0.0.0.0:8080`",
    )
    upstreams: Mapping[str, Upstream] = setting(
        "map",
        "Services to proxy to.",
        default_factory=_no_upstreams,
        item=item("object", cls=Upstream),
        key_field="name",
        default_doc="none",
    )
    policies: Mapping[str, PolicySpec] = setting(
        "map",
        "Named policies, for routes and listeners to use by name.",
        default_factory=_no_policies,
        item=item("object", cls=PolicySpec),
        key_field="name",
        default_doc="none",
    )
    consumers: tuple[Consumer, ...] = setting(
        "list",
        "Who requests belong to, once a credential policy (`jwt`, `api_key`, `hmac`, ...) "
        "identified them.",
        default=(),
        item=item("object", cls=Consumer),
        unique_name="consumer",
        default_doc="none",
    )
    routes: tuple[Route, ...] = setting(
        "list",
        "Which requests go where.",
        default=(),
        item=item("object", cls=Route),
        unique_name="route",
        index_field="index",
        default_doc="none",
    )
    limits: Limits = setting(
        "object",
        "Protocol limits per client connection.",
        default_factory=Limits,
        cls=Limits,
    )
    workers: int = setting(
        "workers",
        "Worker processes; `auto` = number of CPUs.",
        default=defaults.WORKERS,
        minimum=1,
    )
    shutdown_timeout: float = setting(
        "duration",
        "On SIGTERM/SIGINT, how long in-flight requests may take to finish.",
        default=defaults.SHUTDOWN_TIMEOUT,
        minimum=0,
    )
    trusted_proxies: tuple[str, ...] = setting(
        "list",
        'Peers whose `X-Forwarded-For` is believed, e.g. `[10.0.0.0/8, "::1"]`.',
        default=defaults.TRUSTED_PROXIES,
        item=item("cidr", what="a CIDR"),
        what="a list of CIDRs like 10.0.0.0/8",
        default_doc="none",
    )
    pid_file: str | None = setting(
        "string",
        "The master writes its process id here; `isekai reload` reads it.",
        default=defaults.PID_FILE,
        what="a file path",
    )
    admin: Admin = setting(
        "object",
        "The admin REST API.",
        default_factory=Admin,
        cls=Admin,
        default_doc="on `127.0.0.1:9080`, authenticated",
    )
    store: Store = setting(
        "object",
        "Where API-made routes and upstreams, users and request logs are kept.",
        default_factory=Store,
        cls=Store,
        default_doc="`sqlite:///isekai.db`",
    )
    security: Security = setting(
        "object",
        "Secrets of the credential policies (the API key pepper).",
        default_factory=Security,
        cls=Security,
        default_doc="no pepper",
    )
    observability: Observability = setting(
        "object",
        "Metrics, tracing and access logs.",
        default_factory=Observability,
        cls=Observability,
        default_doc="metrics on; tracing and access log off",
    )
    source: str = setting("string", "The file it came from.", default="<string>", yaml=False)

    validate = staticmethod(rules.config)

    def resolve_policies(self, items: tuple[str | PolicySpec, ...]) -> tuple[PolicySpec, ...]:
        """A route's or listener's ``policies`` as specs: names looked up in `policies`
        (a validated config names only existing ones), inline specs as they are."""
        named = self.policies
        return tuple(named[entry] if isinstance(entry, str) else entry for entry in items)

    def route_policies(
        self, route: Route, listener: Listener | None = None
    ) -> tuple[PolicySpec, ...]:
        """Every policy a request on ``listener`` taking ``route`` goes through, in order:
        the listener's, then the route's."""
        before = () if listener is None else listener.policies
        return self.resolve_policies((*before, *route.policies))
