"""Policies in the config: `PolicySpec`, the builtin families' config classes, the family table.

A policy item (a value of the top-level ``policies:`` mapping, or an inline item of a route's
or listener's ``policies`` list) is a mapping with ``type`` (the family), an optional
``deadline``, and the family's own keys. The family's config class (a frozen dataclass whose
fields are declared with ``meta.setting``, as in ``schema.py``) is the one description of those
keys: the loader reads them with its generic reader, the JSON Schema and the docs tables are
made from it. The result is a `PolicySpec`: the type, the family's config instance
(``options``), the name (None when inline) and the deadline.

Families: the builtin ones below (``headers``, ``cors``, ``ip_filter``, ``fault``; ``metrics`` is
in ``metrics_policy.py``, ``hmac`` in ``hmac_policy.py``), those
registered in-process with `register_family`, and third-party ones found through the
``isekai.policies`` entry-point group (loaded once, on the first lookup). A family object has
``type`` (its name), ``config`` (its config class) and ``policy`` (what builds the runtime
policy from a config; this module never calls it). Nothing here imports the runtime
(``isekai.policy``, ``isekai.policies``, ``isekai._core``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

from yaml.nodes import MappingNode, SequenceNode

from isekai.config import defaults
from isekai.config.api_key_policy import ApiKeyConfig
from isekai.config.concurrency_policy import AdaptiveConcurrencyConfig, ConcurrencyLimitConfig
from isekai.config.geo_policy import GeoFilterConfig
from isekai.config.hmac_policy import HmacConfig
from isekai.config.introspection_policy import IntrospectionConfig
from isekai.config.jwt_policy import JwtConfig
from isekai.config.meta import item, setting
from isekai.config.metrics_policy import MetricsConfig
from isekai.config.rate_limit_policy import RateLimitConfig
from isekai.config.rules import Where
from isekai.config.security_headers_policy import SecurityHeadersConfig
from isekai.errors import ConfigError

__all__ = [
    "ENTRY_POINT_GROUP",
    "REQUEST_MANAGED_HEADERS",
    "RESPONSE_MANAGED_HEADERS",
    "ApiKeyConfig",
    "CorsConfig",
    "FaultAbort",
    "FaultConfig",
    "FaultDelay",
    "HeaderEdits",
    "HeadersConfig",
    "HmacConfig",
    "IpFilterConfig",
    "MetricsConfig",
    "PolicySpec",
    "RateLimitConfig",
    "config_class",
    "families_version",
    "family_classes",
    "family_type",
    "known_types",
    "plugin_family",
    "register_family",
    "unknown_type",
    "unregister_family",
]

log = logging.getLogger("isekai.config")

ENTRY_POINT_GROUP = "isekai.policies"


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """One policy: its family (``type``), the family's config (``options``), its name under
    ``policies:`` (None when written inline in a list) and its ``deadline``."""

    entity: ClassVar[str] = "policy"

    type: str = setting(
        "string",
        "The policy family: `headers`, `cors`, `ip_filter`, `fault`, `metrics`, `geo_filter`, "
        "`security_headers`, `jwt`, `oauth2_introspection`, `api_key`, `hmac`, `rate_limit`, "
        "`concurrency_limit`, `adaptive_concurrency`, or a plugin's.",
        what="a policy type",
    )
    options: Any = setting("json", "The family's settings.", yaml=False)
    name: str | None = setting(
        "name", "Its key under `policies`; none when inline.", default=None, yaml=False
    )
    deadline: float = setting(
        "duration",
        "The time an asynchronous request phase of the policy may take; then the request is "
        "answered 503.",
        default=defaults.POLICY_DEADLINE,
    )


# -- headers --------------------------------------------------------------------------------------

# what the gateway writes itself (the runtime refuses the same: `_core` editable fields)
RESPONSE_MANAGED_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "x-request-id",
    }
)
REQUEST_MANAGED_HEADERS = RESPONSE_MANAGED_HEADERS | {
    "host",
    "expect",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
}
_TEMPLATE_DOC = (
    "Values may hold `${client_ip}`, `${request_id}`, `${route}` and `${param.NAME}` (a path "
    "parameter), filled in per request."
)


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """Edits of one direction's header fields, applied in the order remove, rename, set, add."""

    add: tuple[tuple[str, str], ...] = setting(
        "header_map",
        "Header name → value: added (another field even if one is there). " + _TEMPLATE_DOC,
        default=(),
        item=item("header_template"),
    )
    set: tuple[tuple[str, str], ...] = setting(
        "header_map",
        "Header name → value: replaces every field of that name. " + _TEMPLATE_DOC,
        default=(),
        item=item("header_template"),
    )
    remove: tuple[str, ...] = setting(
        "list",
        "Header names to remove.",
        default=(),
        item=item("header_name"),
        what="a list of header names",
    )
    rename: tuple[tuple[str, str], ...] = setting(
        "header_map",
        "Old header name → new name.",
        default=(),
        item=item("header_name"),
    )

    def __bool__(self) -> bool:
        return bool(self.add or self.set or self.remove or self.rename)


def _located(where: Where, field: str, name: str, message: str) -> ConfigError:
    # the error at the header `name` inside the mapping or list `field` of `where`
    _, value_node = where.fields[field]
    at = f"{where.path}.{field}"
    if isinstance(value_node, MappingNode):
        for key_node, _ in value_node.value:
            if getattr(key_node, "value", None) == name:
                return where.builder.error(key_node, f"{at}.{name}", message)
    elif isinstance(value_node, SequenceNode):
        for i, node in enumerate(value_node.value):
            if getattr(node, "value", None) == name:
                return where.builder.error(node, f"{at}[{i}]", message)
    return where.error(field, message)


def _check_managed(edits: HeaderEdits, where: Where, managed: frozenset[str], side: str) -> None:
    names: list[tuple[str, str, str]] = []  # (field, name as written in the field, checked)
    for field in ("add", "set", "rename"):
        for old, new in getattr(edits, field):
            names.append((field, old, old))
            if field == "rename":
                names.append((field, old, new))
    names.extend(("remove", name, name) for name in edits.remove)
    for field, written, name in names:
        if name.lower() in managed:
            hint = ""
            if name.lower() == "host":
                hint = " (a route's preserve_host sends the client's Host)"
            message = f"{name} is managed by the gateway: {side} edits cannot change it{hint}"
            raise _located(where, field, written, message)


def _headers(values: dict[str, Any], where: Where) -> None:
    request = values.get("request")
    response = values.get("response")
    if not request and not response:
        raise where.error(None, "needs at least one header edit in 'request' or 'response'")
    if request:
        _check_managed(request, where.of(request), REQUEST_MANAGED_HEADERS, "request")
    if response:
        _check_managed(response, where.of(response), RESPONSE_MANAGED_HEADERS, "response")


@dataclass(frozen=True, slots=True)
class HeadersConfig:
    """Add, set, remove and rename header fields of requests (before they go upstream) and of
    responses (before they go to the client)."""

    family: ClassVar[str] = "headers"

    request: HeaderEdits = setting(
        "object",
        "Edits of the request sent upstream.",
        default_factory=HeaderEdits,
        cls=HeaderEdits,
        default_doc="none",
    )
    response: HeaderEdits = setting(
        "object",
        "Edits of the response sent to the client.",
        default_factory=HeaderEdits,
        cls=HeaderEdits,
        default_doc="none",
    )

    validate = staticmethod(_headers)


# -- cors -----------------------------------------------------------------------------------------


def _cors(values: dict[str, Any], where: Where) -> None:
    if values.get("credentials") and "*" in values["origins"]:
        message = "'*' cannot be used with credentials: true (browsers refuse it); list the origins"
        raise where.error("origins", message)


@dataclass(frozen=True, slots=True)
class CorsConfig:
    """Cross-origin resource sharing: answers preflight requests and adds the CORS response
    headers for the allowed origins."""

    family: ClassVar[str] = "cors"

    origins: tuple[str, ...] = setting(
        "list",
        "Allowed origins: `*` (any), `https://app.example.com` (exact: scheme, host, port), "
        "`*.example.org` or `https://*.example.org` (subdomains).",
        item=item("origin"),
        what="a list of origins",
        empty="needs at least one origin",
        unique="origin {text!r} is listed twice",
        default_doc="required, at least one",
    )
    methods: tuple[str, ...] = setting(
        "list",
        "Methods allowed in cross-origin requests.",
        default=defaults.CORS_METHODS,
        item=item("method", what="a method name"),
        what="a list of methods like [GET, POST]",
        empty="needs at least one method",
        unique="method {value} is listed twice",
        default_doc="`[GET, HEAD, POST]`",
    )
    headers: tuple[str, ...] = setting(
        "list",
        "Request header names allowed in cross-origin requests.",
        default=(),
        item=item("header_name"),
        what="a list of header names",
    )
    expose_headers: tuple[str, ...] = setting(
        "list",
        "Response header names the browser may show to the page.",
        default=(),
        item=item("header_name"),
        what="a list of header names",
    )
    credentials: bool = setting(
        "bool", "Allow cookies and credentials (not with origin `*`).", default=False
    )
    max_age: float | None = setting(
        "duration",
        "How long a browser may cache a preflight answer (at most a year).",
        default=None,
        minimum=0,
        maximum=defaults.CORS_MAX_AGE_LIMIT,
        default_doc="not sent",
    )

    validate = staticmethod(_cors)


# -- ip_filter ------------------------------------------------------------------------------------


def _ip_filter(values: dict[str, Any], where: Where) -> None:
    if not values.get("allow") and not values.get("deny"):
        raise where.error(None, "needs 'allow' or 'deny' (a list of CIDRs or addresses)")


@dataclass(frozen=True, slots=True)
class IpFilterConfig:
    """Allow or deny clients by address (after `trusted_proxies`): a denied client gets 403.

    A client in ``deny`` is refused; when ``allow`` is given, a client not in it is refused.
    """

    family: ClassVar[str] = "ip_filter"

    allow: tuple[str, ...] = setting(
        "list",
        'Only these networks may pass, e.g. `[10.0.0.0/8, "2001:db8::/32"]`.',
        default=(),
        item=item("cidr", what="a CIDR or an IP address"),
        what="a list of CIDRs like 10.0.0.0/8",
        default_doc="any",
    )
    deny: tuple[str, ...] = setting(
        "list",
        "These networks are refused (checked first).",
        default=(),
        item=item("cidr", what="a CIDR or an IP address"),
        what="a list of CIDRs like 10.0.0.0/8",
        default_doc="none",
    )

    validate = staticmethod(_ip_filter)


# -- fault ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultAbort:
    """Answer some requests with a status instead of proxying them."""

    status: int = setting("int", "The status answered.", minimum=200, maximum=599)
    percent: float = setting(
        "number",
        "Share of requests aborted, 0–100.",
        default=defaults.FAULT_PERCENT,
        minimum=0,
        maximum=100,
        default_doc="`100`",
    )


@dataclass(frozen=True, slots=True)
class FaultDelay:
    """Hold some requests for a while before they go on."""

    duration: float = setting("duration", "How long a delayed request waits.")
    percent: float = setting(
        "number",
        "Share of requests delayed, 0–100.",
        default=defaults.FAULT_PERCENT,
        minimum=0,
        maximum=100,
        default_doc="`100`",
    )


def _fault(values: dict[str, Any], where: Where) -> None:
    if values.get("abort") is None and values.get("delay") is None:
        raise where.error(None, "needs 'abort' or 'delay' (or both)")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Inject faults for testing: abort requests with a status, or delay them."""

    family: ClassVar[str] = "fault"

    abort: FaultAbort | None = setting(
        "object", "Abort requests.", default=None, cls=FaultAbort, default_doc="—"
    )
    delay: FaultDelay | None = setting(
        "object", "Delay requests (before an abort).", default=None, cls=FaultDelay, default_doc="—"
    )
    when_header: str | None = setting(
        "header_name",
        "Only requests carrying this header are affected.",
        default=None,
        default_doc="every request",
    )

    validate = staticmethod(_fault)


# -- the family table -----------------------------------------------------------------------------

_BUILTIN: dict[str, type] = {
    cls.family: cls
    for cls in (
        CorsConfig,
        FaultConfig,
        GeoFilterConfig,
        HeadersConfig,
        IntrospectionConfig,
        HmacConfig,
        IpFilterConfig,
        JwtConfig,
        MetricsConfig,
        SecurityHeadersConfig,
        ApiKeyConfig,
        RateLimitConfig,
        ConcurrencyLimitConfig,
        AdaptiveConcurrencyConfig,
    )
}
_TYPE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ENVELOPE = frozenset({"type", "deadline"})
_plugins: dict[str, Any] = {}
_lock = threading.Lock()
_loaded = False
_version = 0


def _load_entry_points() -> None:
    global _loaded, _version
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        _loaded = True
        try:
            found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        except Exception as exc:  # pragma: no cover - a broken installation
            log.error("policy plugins could not be listed: %s", exc)
            return
        for entry in found:
            try:
                family = entry.load()
                _check_family(family)
                if family.type in _plugins and _plugins[family.type] is not family:
                    raise ValueError(f"policy type {family.type!r} is registered twice")
            except Exception as exc:  # a plugin never stops the loader
                log.error("policy plugin %r (%s) skipped: %s", entry.name, entry.value, exc)
                continue
            _plugins[family.type] = family
        _version += 1


def _check_family(family: Any) -> None:
    kind = getattr(family, "type", None)
    if not isinstance(kind, str) or not _TYPE_NAME.fullmatch(kind):
        raise ValueError(
            f"a policy family's type must be lower-case letters, digits and '_', got {kind!r}"
        )
    if kind in _BUILTIN:
        raise ValueError(f"policy type {kind!r} is a builtin family and cannot be replaced")
    config = getattr(family, "config", None)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise ValueError(f"policy family {kind!r}: config must be a dataclass")
    for f in dataclasses.fields(config):
        if "isekai" not in f.metadata:
            raise ValueError(
                f"policy family {kind!r}: field {f.name!r} of {config.__name__} is not declared "
                "with isekai.config.meta.setting"
            )
        if f.name in _ENVELOPE and f.metadata["isekai"].yaml:
            raise ValueError(f"policy family {kind!r}: {f.name!r} is a key of every policy")
    if not callable(getattr(family, "policy", None)):
        raise ValueError(f"policy family {kind!r}: policy must be callable")


def register_family(family: Any) -> None:
    """Make a policy family known in this process: an object with ``type`` (a lower-case
    name), ``config`` (a frozen dataclass whose fields are ``meta.setting`` fields) and
    ``policy`` (callable). ``ValueError`` when it is malformed or its type is taken."""
    global _version
    _load_entry_points()
    _check_family(family)
    with _lock:
        if family.type in _plugins and _plugins[family.type] is not family:
            raise ValueError(f"policy type {family.type!r} is already registered")
        _plugins[family.type] = family
        _version += 1


def unregister_family(kind: str) -> None:
    """Forget a family registered with `register_family` (tests; nothing if unknown)."""
    global _version
    with _lock:
        if _plugins.pop(kind, None) is not None:
            _version += 1


def known_types() -> tuple[str, ...]:
    """Every policy type: the builtin families and the plugins', sorted."""
    _load_entry_points()
    return tuple(sorted({*_BUILTIN, *_plugins}))


def config_class(kind: str) -> type | None:
    """The config class of policy type ``kind``, or None when no family has that type."""
    found = _BUILTIN.get(kind)
    if found is not None:
        return found
    _load_entry_points()
    family = _plugins.get(kind)
    return None if family is None else family.config


def plugin_family(kind: str) -> Any:
    """The object registered for a non-builtin type ``kind``, or None."""
    if kind in _BUILTIN:
        return None
    _load_entry_points()
    return _plugins.get(kind)


def family_classes() -> tuple[tuple[str, type], ...]:
    """``(type, config class)`` of every family, sorted by type."""
    return tuple((kind, config_class(kind)) for kind in known_types())  # type: ignore[misc]


def family_type(cls: type) -> str | None:
    """The policy type whose config class is ``cls`` (None: not a family's config class)."""
    for kind, config in family_classes():
        if config is cls:
            return kind
    return None


def families_version() -> int:
    """Grows whenever the set of families changes (schemas made from it are then stale)."""
    _load_entry_points()
    return _version


def unknown_type(kind: str) -> str:
    return f"unknown policy type {kind!r} (known types: {', '.join(known_types())})"
