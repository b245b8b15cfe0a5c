"""Isekai config variants: the `small_get` gateway with one feature switched on or off.

`isekai_conf` (targets.py) writes the plain gateway: one listener, one upstream, `admin:
{enabled: false}`, observability at its defaults (metrics on, tracing and access log off). A
variant edits that text so the scenario measures exactly one feature's cost against the plain
`small_get` of the same run:

    policies        headers + cors + ip_filter on every route (small_get_policies)
    metrics_off     observability.metrics.enabled: false
    tracing_0       tracing on, sample_ratio 0 (context still parsed and propagated)
    tracing_1pct    tracing on, sample_ratio 0.01
    tracing_100pct  tracing on, every request sampled and exported
    access_log      a JSON access-log line per request, to a file in the run's work directory
    request_log     the admin process with a SQLite store in the work directory and
                    admin.request_logs.enabled: true (one row per request)
    jwt             a jwt policy (RS256, an inline PEM key; harness/jwt_tokens.py) on every route
    api_key         an api_key policy on every route; wrk sends a consumer's key (one HMAC
                    and one dict lookup per request, the key header removed, X-Consumer-ID set)
    rate_limit      a rate_limit policy (local table, key client_ip, a rate never reached) on
                    every route: one take from the table the workers share, per request
    rate_limit_headers  the same with `headers: true` (RateLimit fields on every response)
    rate_limit_redis    the same counted in Redis (ISEKAI_BENCH_REDIS_URL, default
                    redis://127.0.0.1:6379/0): one round trip per request on the slow path

Tracing variants export to the OTLP sink (otlp_sink.py) the harness starts, never to a real
collector.
"""

from __future__ import annotations

import os
from pathlib import Path

# small_get_policies: the hot families on the one route, each doing its work per request
# (a header set with a placeholder, the CORS response fields for an allowed Origin, an
# ip_filter allow-list lookup).
POLICIES_YAML = """\
policies:
  tag: {type: headers, request: {set: {X-Gateway: isekai, X-Client-IP: "${client_ip}"}},
        response: {set: {X-Served-By: isekai}}}
  web_cors: {type: cors, origins: ["https://app.example.com", "*.example.org"],
             expose_headers: [X-Served-By]}
  office: {type: ip_filter, allow: [127.0.0.0/8, 10.0.0.0/8, "::1"]}
"""
POLICY_CHAIN = "[office, web_cors, tag]"

# small_get_api_key: the key wrk sends, and the consumer it belongs to (one of 1,000, so the
# index is not trivially small)
API_KEY = "isk_bench-key-0123456789abcdefghijklmnopqrstuvw"
API_KEY_CONSUMERS = 1000
API_KEY_YAML = (
    'security: {api_key_pepper: "bench-pepper-0123456789abcdef"}\n'
    "policies:\n"
    "  keys: {type: api_key, header: X-API-Key}\n"
)

# small_get_rate_limit*: every request is counted (all from 127.0.0.1: one hot key, the
# worst case for the bucket lock the workers share) and none is refused
RATE_LIMIT_YAML = (
    "policies:\n  limit: {{type: rate_limit, rate: 1000000000/s, key: client_ip{extra}}}\n"
)
RATE_LIMIT_VARIANTS = {
    "rate_limit": "",
    "rate_limit_headers": ", headers: true",
    "rate_limit_redis": ", backend: redis, redis_url: '{redis}', key_prefix: 'bench:rl:'",
}
REDIS_URL_ENV = "ISEKAI_BENCH_REDIS_URL"

TRACING_RATIOS = {"tracing_0": 0, "tracing_1pct": 0.01, "tracing_100pct": 1}
NAMES = (
    "policies",
    "metrics_off",
    *TRACING_RATIOS,
    "access_log",
    "request_log",
    "jwt",
    "api_key",
    *RATE_LIMIT_VARIANTS,
)
ADMIN_OFF = "admin: {enabled: false}"


# request_log: the admin process creates this user at its first start (it warns without one);
# nobody logs in, auth is off on its loopback listener
ADMIN_USER = {"ISEKAI_ADMIN_USERNAME": "bench", "ISEKAI_ADMIN_PASSWORD": "gateway-secret-unused"}


def environment(variant: str | None) -> dict[str, str]:
    """Environment variables the gateway of `variant` is started with (beyond the harness's)."""
    return dict(ADMIN_USER) if variant == "request_log" else {}


def with_policies(conf: str, policies: str = POLICIES_YAML, chain: str = POLICY_CHAIN) -> str:
    """An Isekai config from `targets.isekai_conf` with ``chain`` (default POLICY_CHAIN) on
    every route, ``policies`` (a top-level ``policies:`` block) before it."""
    lines = []
    for line in conf.splitlines():
        if line.startswith("  - {name:") and line.endswith("}"):
            line = line[:-1] + f", policies: {chain}}}"
        lines.append(line)
    return policies + "\n".join(lines) + "\n"


def api_key_conf(conf: str) -> str:
    """`conf` with the `api_key` policy on every route and `API_KEY_CONSUMERS` consumers, the
    last of which owns `API_KEY`."""
    consumers = ["consumers:"]
    for i in range(API_KEY_CONSUMERS - 1):
        consumers.append(f'  - {{name: c{i}, keys: [{{id: k, key: "isk_other-{i:06d}-key-xyz"}}]}}')
    consumers.append(f'  - {{name: bench, keys: [{{id: k, key: "{API_KEY}"}}]}}')
    return with_policies(conf, API_KEY_YAML, "[keys]") + "\n".join(consumers) + "\n"


def apply(conf: str, variant: str | None, work: Path, tag: str, sink_port: int | None) -> str:
    """`conf` (from `targets.isekai_conf`) changed as `variant` says; files go in `work`,
    named after `tag`; tracing exports to the OTLP sink on `sink_port`."""
    if variant is None:
        return conf
    if variant == "policies":
        return with_policies(conf)
    if variant == "jwt":
        from harness import jwt_tokens

        return with_policies(conf, jwt_tokens.policy_yaml(), "[bench_jwt]")
    if variant == "api_key":
        return api_key_conf(conf)
    if variant in RATE_LIMIT_VARIANTS:
        redis = os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:6379/0")
        extra = RATE_LIMIT_VARIANTS[variant].format(redis=redis)
        return with_policies(conf, RATE_LIMIT_YAML.format(extra=extra), "[limit]")
    if variant == "metrics_off":
        return conf + "observability: {metrics: {enabled: false}}\n"
    if variant in TRACING_RATIOS:
        if sink_port is None:
            raise ValueError(f"{variant} needs the OTLP sink's port")
        return conf + (
            "observability:\n"
            "  tracing:\n"
            "    enabled: true\n"
            f'    endpoint: "http://127.0.0.1:{sink_port}"\n'
            f"    sample_ratio: {TRACING_RATIOS[variant]}\n"
        )
    if variant == "access_log":
        path = work / f"{tag}-access.log"
        return conf + (
            f'observability: {{access_log: {{enabled: true, path: "{path}", format: json}}}}\n'
        )
    if variant == "request_log":
        if ADMIN_OFF not in conf:
            raise ValueError("expected the plain config's admin line")
        admin = (
            'admin: {bind: "127.0.0.1:0", auth: {enabled: false}, '
            "request_logs: {enabled: true}}\n"
            f'store: {{url: "sqlite:///{work / (tag + ".db")}"}}'
        )
        return conf.replace(ADMIN_OFF, admin)
    raise ValueError(f"unknown Isekai variant {variant!r} (known: {', '.join(NAMES)})")
