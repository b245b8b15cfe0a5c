"""Every default value of the config, in one place.

``schema`` uses these as dataclass defaults and ``loader`` fills omitted keys from them;
``docs/configuration.md`` lists the same numbers. Durations are float seconds, sizes int bytes.
"""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB

# limits: (DESIGN.md section 11)
MAX_REQUEST_LINE = 8 * KiB
MAX_HEADER_BYTES = 32 * KiB
MAX_HEADER_COUNT = 100
HEADER_READ_TIMEOUT = 10.0
BODY_IDLE_TIMEOUT = 30.0
MAX_BODY_SIZE = 10 * MiB
KEEPALIVE_TIMEOUT = 75.0
MAX_REQUESTS_PER_CONNECTION = 10_000
MAX_CONNECTIONS = 10_000  # client connections per worker
RATE_LIMIT_MEMORY = 4 * 1024 * 1024  # the host's local rate-limit table (shared by the workers)
WEBSOCKET_IDLE_TIMEOUT = 300.0  # an upgraded tunnel with no traffic either way is closed
MAX_LOOP_LAG = 0.0  # worker load shedding: event-loop lag that turns it on; 0 = off
SHED_RETRY_AFTER = 1.0  # the Retry-After of a shed request's 503

# upstreams:
UPSTREAM_SCHEME = "http"
UPSTREAM_SCHEMES = ("http",)  # the schemes accepted so far
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
UPSTREAM_MAX_CONNECTIONS = 1024  # per target
UPSTREAM_MAX_KEEPALIVE_CONNECTIONS = 128  # per target, idle ones kept
KEEPALIVE_EXPIRY = 60.0
POOL_TIMEOUT = 5.0  # waiting for a free connection slot, then 503
BALANCER = "round_robin"
BALANCERS = ("round_robin", "least_conn", "p2c", "consistent_hash", "ewma", "random")
HASH_ON = "client_ip"  # consistent_hash's key when hash_on is left out
HASH_ALGORITHM = "ring"
HASH_ALGORITHMS = ("ring", "maglev")
PANIC_THRESHOLD = 0.0  # percent of healthy targets; 0 = never panic
TARGET_WEIGHT = 1
TARGET_MAX_WEIGHT = 1000

# upstreams: active health checks (`health`)
HEALTH_INTERVAL = 5.0
HEALTH_TIMEOUT = 1.0
HEALTH_HEALTHY_THRESHOLD = 2
HEALTH_UNHEALTHY_THRESHOLD = 3
HEALTH_EXPECTED_STATUS: tuple[int, ...] = ()  # empty: any 2xx or 3xx

# upstreams: passive checks, outlier ejection (`outlier`)
OUTLIER_CONSECUTIVE_FAILURES = 5
OUTLIER_BASE_EJECTION = 30.0
OUTLIER_MAX_EJECTION = 300.0
OUTLIER_MAX_EJECTION_PERCENT = 100

# upstreams: circuit breaker per target (`breaker`)
BREAKER_FAILURE_RATIO = 0.5
BREAKER_WINDOW = 10.0
BREAKER_MIN_REQUESTS = 20
BREAKER_OPEN_FOR = 30.0
BREAKER_HALF_OPEN_REQUESTS = 3
BREAKER_FAILURE_STATUSES = (500, 502, 503, 504)

# upstreams: retries (`retry`)
RETRY_ATTEMPTS = 2  # total tries, the first included
RETRY_MAX_ATTEMPTS = 10
RETRY_ON: tuple[str | int, ...] = ("connect_failure", "reset", 502, 503, 504)
RETRY_CONDITIONS = ("connect_failure", "reset", "timeout")  # besides 5xx statuses
RETRY_BACKOFF = 0.025
RETRY_MAX_BACKOFF = 0.25
RETRY_BUDGET = 0.2
RETRY_MIN_CONCURRENCY = 3
RETRY_NON_IDEMPOTENT = False
RETRY_MAX_BODY = 64 * KiB

# policies:
POLICY_DEADLINE = 10.0  # an async request phase taking longer is answered 503

# throttling (concurrency_limit, adaptive_concurrency)
THROTTLE_QUEUE = 0  # requests that may wait for a slot, per counter
THROTTLE_QUEUE_TIMEOUT = 1.0
THROTTLE_PER = "route"
THROTTLE_RETRY_AFTER = 1.0
THROTTLE_PRIORITY = 0
ADAPTIVE_MIN_LIMIT = 3
ADAPTIVE_MAX_LIMIT = 1000
ADAPTIVE_SAMPLE_INTERVAL = 0.1
ADAPTIVE_PERCENTILE = 90.0
ADAPTIVE_MIN_RTT_INTERVAL = 30.0
ADAPTIVE_MIN_RTT_REQUESTS = 50
ADAPTIVE_BUFFER = 0.1
CORS_METHODS = ("GET", "HEAD", "POST")
CORS_MAX_AGE_LIMIT = 365 * 86400.0
FAULT_PERCENT = 100.0
API_KEY_PEPPER_MIN_LENGTH = 16  # characters of security.api_key_pepper, at least
CONSUMER_HEADER = "X-Consumer-ID"  # the consumer's name, sent upstream by credential policies
# the metrics policy (custom metrics): label sets kept per metric before "_other"; buckets
METRIC_MAX_SERIES = 1000
METRIC_DURATION_BUCKETS = (  # seconds: the built-in latency buckets (_core.counters)
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
METRIC_SIZE_BUCKETS = (  # bytes: 256 B to 16 MiB, by four
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
)

# listeners: used when the file has no `listeners` key
LISTENER_NAME = "public"
LISTENER_BIND = "0.0.0.0:8080"
LISTENER_HOST = "0.0.0.0"
LISTENER_PORT = 8080

# top level
WORKERS = 1
SHUTDOWN_TIMEOUT = 30.0
TRUSTED_PROXIES: tuple[str, ...] = ()
PID_FILE: str | None = None

# respond:
RESPOND_STATUS = 200
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"

# admin: the admin API listener (isekai.admin); never public by default
ADMIN_ENABLED = True
ADMIN_BIND = "127.0.0.1:9080"
ADMIN_HOST = "127.0.0.1"
ADMIN_PORT = 9080
ADMIN_AUTH_ENABLED = True
JWT_EXPIRY = 3600.0
LOGIN_LIMIT_PER_USER = 5  # login attempts per username per window
LOGIN_LIMIT_PER_IP = 20  # login attempts per client address per window
LOGIN_LIMIT_WINDOW = 900.0  # seconds
API_ROUTES_MAY_SHADOW_YAML = False
JWT_ALGORITHM = "HS256"
JWT_ALGORITHMS = ("HS256", "HS384", "HS512")  # shared-secret algorithms only, so far
JWT_SECRET_MIN_LENGTH = 32
REQUEST_LOGS_ENABLED = False  # opt-in: see docs/configuration.md (costs CPU per request)
REQUEST_LOGS_RETENTION = 7 * 86400.0
REQUEST_LOGS_QUEUE_SIZE = 10_000

# observability:
METRICS_ENABLED = True
METRICS_MAX_LABEL_VALUES = 1000  # per label; more distinct values are summed under "_other"
TRACING_ENABLED = False
TRACING_ENDPOINT = "http://127.0.0.1:4318"
TRACING_SAMPLE_RATIO = 0.01
TRACING_SERVICE_NAME = "isekai"
TRACING_EXPORT_INTERVAL = 5.0
TRACING_EXPORT_TIMEOUT = 10.0
TRACING_QUEUE_SIZE = 2048
TRACING_BATCH_SIZE = 512
ACCESS_LOG_ENABLED = False
ACCESS_LOG_PATH = "stdout"
ACCESS_LOG_FORMAT = "json"
ACCESS_LOG_FORMATS = ("json", "combined")
ACCESS_LOG_DEFAULT_FIELDS = (
    "ts",
    "request_id",
    "trace_id",
    "client_ip",
    "method",
    "path",
    "status",
    "route",
    "upstream",
    "consumer",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "user_agent",
)
ACCESS_LOG_QUEUE_SIZE = 10_000
ACCESS_LOG_ES_INDEX = "isekai-access"

# store: routes, upstreams, users and request logs written through the admin API
STORE_URL = "sqlite:///isekai.db"  # isekai.db in the working directory
