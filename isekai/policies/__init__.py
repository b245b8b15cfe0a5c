"""The built-in policy families: type name -> builder (config instance -> policy instance).

`isekai.policy.PolicySet` calls ``BUILDERS[type](config)`` once per (type, config), names the
instance and keeps it across snapshots. The hot families (headers, cors, ip_filter) build
`isekai._core.policy.CorePolicy` subclasses (isekai/_core/families.pyx); fault and metrics
build Python objects that the `PythonPolicy` adapter wraps. docs/policies.md describes them
for users.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from isekai.policies import (
    adaptive_concurrency,
    api_key,
    concurrency,
    cors,
    fault,
    geo_filter,
    headers,
    hmac,
    introspection,
    ip_filter,
    jwt,
    metrics,
    rate_limit,
    security_headers,
)

BUILDERS: Mapping[str, Callable[[Any], Any]] = MappingProxyType(
    {
        "headers": headers.build,
        "cors": cors.build,
        "ip_filter": ip_filter.build,
        "fault": fault.build,
        "metrics": metrics.build,
        "geo_filter": geo_filter.build,
        "security_headers": security_headers.build,
        "jwt": jwt.build,
        "oauth2_introspection": introspection.build,
        "api_key": api_key.build,
        "hmac": hmac.build,
        "rate_limit": rate_limit.build,
        "concurrency_limit": concurrency.build,
        "adaptive_concurrency": adaptive_concurrency.build,
    }
)

__all__ = ["BUILDERS"]
