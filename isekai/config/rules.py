"""The rules that tie several fields of a config class together: its ``validate`` hook.

The loader reads every field by its kind (``meta.Setting``), then calls the class's hook with
the values read (a dict it may complete: ``host``/``port`` from ``bind``, a default that
depends on another field) and a `Where` that turns a message into a located ``ConfigError``.
Everything a single value must satisfy is its kind's business, not a rule's.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

from yaml.nodes import SequenceNode

from isekai.config import defaults, metrics_policy, units
from isekai.errors import ConfigError, RouteConflictError

__all__ = ["Where", "is_loopback"]

_UPSTREAM_ONLY = ("strip_prefix", "rewrite", "timeout", "websocket", "preserve_host")


class Where:
    """Where one object's values were written: turns a rule's message into a located error.

    Made by the loader for every object it builds (``builder`` is its reader: ``error(node,
    path, message, cls)`` and ``wheres``, id of a built object -> its Where).
    """

    __slots__ = ("builder", "fields", "node", "path")

    def __init__(self, builder: Any, path: str, node: Any, fields: dict[str, Any]) -> None:
        self.builder = builder
        self.path = path
        self.node = node
        self.fields = fields

    def has(self, key: str) -> bool:
        return key in self.fields

    def keys(self) -> list[str]:
        return list(self.fields)

    def of(self, value: Any) -> Where:
        return self.builder.wheres[id(value)]

    def error(
        self,
        key: str | None,
        message: str,
        *,
        on: str = "value",
        path: str | None = None,
        cls: type[ConfigError] = ConfigError,
    ) -> ConfigError:
        if key is None:
            return self.builder.error(self.node, path or self.path, message, cls)
        key_node, value_node = self.fields[key]
        node = key_node if on == "key" else value_node
        at = f"{self.path}.{key}" if self.path else key
        return self.builder.error(node, path or at, message, cls)

    def item_error(self, key: str, index: int, message: str) -> ConfigError:
        """An error at element ``index`` of the list under ``key`` (its own line)."""
        _, value_node = self.fields[key]
        node = value_node
        if isinstance(value_node, SequenceNode) and index < len(value_node.value):
            node = value_node.value[index]
        at = f"{self.path}.{key}[{index}]" if self.path else f"{key}[{index}]"
        return self.builder.error(node, at, message)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as parsed from a bind address) only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_METADATA = (ipaddress.ip_address("fd00:ec2::254"),)  # (169.254.169.254 is link-local)


def is_internal(host: str) -> bool:
    """Whether ``host`` (a target's host, as parsed) is a link-local or cloud metadata address:
    what a target must not be unless its upstream says ``allow_internal``."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: what it resolves to is not known here
    return address.is_link_local or address in _METADATA


def admin_target(upstream: Any, admin: Any) -> tuple[int, str] | None:
    """(index, message) of a target of ``upstream`` that is the admin listener's own address
    (the admin API would be reachable through the data plane), or None."""
    if admin is None:  # not in the file: the defaults
        enabled, host, port, bind = (
            defaults.ADMIN_ENABLED,
            defaults.ADMIN_HOST,
            defaults.ADMIN_PORT,
            defaults.ADMIN_BIND,
        )
    else:
        enabled, host, port, bind = admin.enabled, admin.host, admin.port, admin.bind
    if not enabled:
        return None
    any_host = host in ("0.0.0.0", "::", "")
    local = any_host or is_loopback(host)
    for i, target in enumerate(upstream.targets):
        if target.port == port and (target.host == host or (local and is_loopback(target.host))):
            return i, f"{target.address} is the admin listener ({bind}): not a target"
    return None


def listener(values: dict[str, Any], where: Where) -> None:
    values["host"], values["port"] = units.parse_address(values["bind"], bind=True)
    _unique_policies(values, where)


def _unique_policies(values: dict[str, Any], where: Where) -> None:
    # the same named policy twice in one list is a mistake (inline ones are not compared)
    seen: dict[str, int] = {}
    for i, name in policy_refs(values.get("policies", ())):
        if name in seen:
            message = f"policy {name!r} is listed twice (also policies[{seen[name]}])"
            raise where.item_error("policies", i, message)
        seen[name] = i


def upstream(values: dict[str, Any], where: Where) -> None:
    most = values.get("max_connections", defaults.UPSTREAM_MAX_CONNECTIONS)
    idle = values.setdefault(
        "max_keepalive_connections", min(most, defaults.UPSTREAM_MAX_KEEPALIVE_CONNECTIONS)
    )
    if idle > most:
        message = f"cannot be more than max_connections ({most})"
        raise where.error("max_keepalive_connections", message)
    if not values.get("allow_internal", False):
        for i, target in enumerate(values.get("targets", ())):
            if is_internal(target.host):
                message = (
                    f"{target.host} is a link-local or cloud metadata address; set "
                    "allow_internal: true if this upstream really is there"
                )
                raise where.item_error("targets", i, message)
    balancer = values.get("balancer", defaults.BALANCER)
    if balancer == "consistent_hash":
        values.setdefault("hash_on", defaults.HASH_ON)
        return
    for key in _HASH_ONLY:
        if key in values:
            message = f"'{key}' only applies to balancer: consistent_hash (this one is {balancer})"
            raise where.error(key, message, on="key")


_HASH_ONLY = ("hash_on", "hash_algorithm")


def target(values: dict[str, Any], where: Where) -> None:
    # the mapping form {address, weight}: address is checked by its kind
    values["host"], values["port"] = units.parse_address(values.pop("address"))


def health_check(values: dict[str, Any], where: Where) -> None:
    interval = values.get("interval", defaults.HEALTH_INTERVAL)
    timeout = values.get("timeout", defaults.HEALTH_TIMEOUT)
    if timeout < interval:
        return
    if where.has("timeout"):
        which = "interval" if where.has("interval") else "the default interval"
        raise where.error("timeout", f"must be shorter than {which} ({interval:g}s)")
    raise where.error("interval", f"must be longer than the default timeout ({timeout:g}s)")


def breaker(values: dict[str, Any], where: Where) -> None:
    if values.get("failure_ratio", defaults.BREAKER_FAILURE_RATIO) <= 0:
        raise where.error("failure_ratio", "must be more than 0 (and at most 1), got 0")


def route_match(values: dict[str, Any], where: Where) -> None:
    values["pattern"] = units.parse_path_pattern(values["path"])  # checked by its kind


def route(values: dict[str, Any], where: Where) -> None:
    if where.has("upstream") and where.has("respond"):
        message = "a route has 'upstream' or 'respond', not both"
        raise where.error("respond", message, on="key", path=where.path)
    if not where.has("upstream") and not where.has("respond"):
        message = "needs 'upstream' (proxy to a service) or 'respond' (a fixed response)"
        raise where.error(None, message)
    _unique_policies(values, where)
    pattern = values["match"].pattern
    for key in where.keys():
        if key in _UPSTREAM_ONLY and "respond" in values:
            message = f"'{key}' only applies to routes with an 'upstream'"
            raise where.error(key, message, on="key")
        if key == "strip_prefix" and "rewrite" in values:
            raise where.error(key, "use 'strip_prefix' or 'rewrite', not both", on="key")
        try:
            if key == "rewrite":
                units.check_rewrite(values[key], pattern)
            elif key == "strip_prefix":
                values[key] = units.parse_strip_prefix(values[key], pattern)
        except ValueError as exc:
            raise where.error(key, str(exc)) from None


def respond(values: dict[str, Any], where: Where) -> None:
    status = values.get("status", defaults.RESPOND_STATUS)
    if status < 200:
        message = (
            f"{status} is an interim (1xx) status; a fixed response needs a final "
            "status from 200 to 599"
        )
        raise where.error("status", message)
    headers = list(values.get("headers", ()))
    if "body" in values and "json" in values:
        raise where.error("json", "use 'body' or 'json', not both", on="key")
    body = b""
    if "json" in values or "body" in values:
        key = "json" if "json" in values else "body"
        if status in (204, 304):
            raise where.error(key, f"a {status} response has no body", on="key")
        if key == "json":
            text = json.dumps(
                values.pop("json"), separators=(",", ":"), ensure_ascii=False, allow_nan=False
            )
            content_type = defaults.JSON_CONTENT_TYPE
        else:
            text = values["body"]
            content_type = defaults.TEXT_CONTENT_TYPE
        body = text.encode()
        if not any(name.lower() == "content-type" for name, _ in headers):
            headers.append(("content-type", content_type))
    values["headers"] = tuple(headers)
    values["body"] = body


def admin_auth(values: dict[str, Any], where: Where) -> None:
    if "jwt_secret" not in values:
        return
    # at least as long as the hash: 32 characters for HS256, 48 for HS384, 64 for HS512
    algorithm = values.get("jwt_algorithm", defaults.JWT_ALGORITHM)
    shortest = max(defaults.JWT_SECRET_MIN_LENGTH, int(algorithm[2:]) // 8)
    secret = values["jwt_secret"]
    if len(secret.encode()) < shortest:
        message = (
            f"must be at least {shortest} characters long for {algorithm}, got "
            f"{len(secret)} (leave it out for a random secret per process)"
        )
        raise where.error("jwt_secret", message)


def security(values: dict[str, Any], where: Where) -> None:
    pepper = values.get("api_key_pepper")
    if pepper is not None and len(pepper) < defaults.API_KEY_PEPPER_MIN_LENGTH:
        message = (
            f"must be at least {defaults.API_KEY_PEPPER_MIN_LENGTH} characters long, got "
            f"{len(pepper)} (a long random secret, e.g. from `openssl rand -hex 32`)"
        )
        raise where.error("api_key_pepper", message)


def admin(values: dict[str, Any], where: Where) -> None:
    if "bind" in values:
        values["host"], values["port"] = units.parse_address(values["bind"], bind=True)
    auth = values.get("auth")
    if auth is not None and not auth.enabled:
        host = values.get("host", defaults.ADMIN_HOST)
        if not is_loopback(host):
            bind = values.get("bind", defaults.ADMIN_BIND)
            message = (
                f"auth can only be turned off when {where.path}.bind is a loopback address "
                f"(127.0.0.1, [::1] or localhost), not {bind!r}"
            )
            raise where.of(auth).error("enabled", message)


def _check_url(values: dict[str, Any], where: Where, key: str) -> None:
    url = values.get(key)
    if url is None:
        return
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise where.error(key, f"expected an http:// or https:// URL, got {url!r}")
    try:
        parsed.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise where.error(key, f"bad port in {url!r}") from None


def metrics(values: dict[str, Any], where: Where) -> None:
    if values.get("bind") is not None:
        values["host"], values["port"] = units.parse_address(values["bind"], bind=True)


def tracing(values: dict[str, Any], where: Where) -> None:
    _check_url(values, where, "endpoint")


def elasticsearch(values: dict[str, Any], where: Where) -> None:
    _check_url(values, where, "url")
    index = values.get("index")
    if index is not None and (
        not index or index != index.lower() or any(c in index for c in '\\/*?"<>| ,#:')
    ):
        raise where.error("index", f"not a valid Elasticsearch index name: {index!r}")


def access_log(values: dict[str, Any], where: Where) -> None:
    path = values.get("path")
    if path is not None and (not path.strip() or "\0" in path):
        raise where.error("path", "expected stdout or a file path")
    logstash = values.get("logstash")
    if logstash is not None:
        try:
            units.parse_address(logstash)
        except ValueError as exc:
            raise where.error("logstash", str(exc)) from None


def config(values: dict[str, Any], where: Where) -> None:
    binds: dict[tuple[str, int], str] = {}
    for item in values.get("listeners", ()):
        at = where.of(item)
        if item.port and (item.host, item.port) in binds:
            message = f"{item.bind!r} is already bound by {binds[item.host, item.port]}"
            raise at.error("bind", message)
        binds[item.host, item.port] = at.path
    policies = values.get("policies", {})
    for item in values.get("listeners", ()):
        for i, name in policy_refs(item.policies):
            if name not in policies:
                raise where.of(item).item_error("policies", i, missing_policy(name, policies))
    routes = values.get("routes", ())
    by_shape: dict[tuple[str | None, str], list[Any]] = {}
    for item in routes:
        same_shape = by_shape.setdefault((item.match.host, item.match.pattern.shape), [])
        for other in same_shape:
            if routes_overlap(item, other):
                message = route_conflict(other, other.index)
                raise where.of(item).error("match", message, cls=RouteConflictError)
        same_shape.append(item)
    upstreams = values.get("upstreams", {})
    for item in upstreams.values():
        found = admin_target(item, values.get("admin"))
        if found is not None:
            raise where.of(item).item_error("targets", found[0], found[1])
    for item in routes:
        if item.upstream is not None and item.upstream not in upstreams:
            raise where.of(item).error("upstream", missing_upstream(item.upstream, upstreams))
        for i, name in policy_refs(item.policies):
            if name not in policies:
                raise where.of(item).item_error("policies", i, missing_policy(name, policies))
    found = metrics_policy.first_duplicate(
        declared_policies(policies, values.get("listeners", ()), routes)
    )
    if found is not None:
        _, metric, message = found
        raise where.of(metric).error("name", message)


# -- cross-item rules, shared by the whole-config hook above and by config.changes --------------


def routes_overlap(route: Any, other: Any) -> bool:
    """Two routes of the same host and path shape tie unless their methods are disjoint."""
    mine, theirs = route.match.methods, other.match.methods
    return mine is None or theirs is None or bool(set(mine) & set(theirs))


# -- shadowing: would a new route take requests another one gets now? -------------------------
#
# The router (isekai._core.router) tries host groups in order (the exact host, then wildcard
# hosts longest suffix first, then routes for any host); the first group holding a route that
# matches the path and accepts the method wins. Within a group the path is matched segment by
# segment, a static segment before a {param} before a trailing '*', so of two patterns matching
# one path the one that is static (or a param against a '*') where they first differ wins.
# Routes of the same host and path shape share one leaf, where a route naming the method beats
# one for any method, and GET answers HEAD unless HEAD is named by another route.

_STATIC, _PARAM, _WILD = 0, 1, 2
_ANY_HOST, _EXACT_HOST, _WILD_HOST = 0, 1, 2


def _host_group(host: str | None) -> tuple[int, str]:
    if host is None:
        return _ANY_HOST, ""
    text = host.lower()
    text = text[:-1] if text.endswith(".") else text
    if text.startswith("*."):
        return _WILD_HOST, text[1:]  # the suffix, with its leading dot
    return _EXACT_HOST, text


def _host_first(new: str | None, old: str | None) -> bool | None:
    # None: the same group; True: some Host reaches both and new's group is tried first
    (new_kind, new_key), (old_kind, old_key) = _host_group(new), _host_group(old)
    if (new_kind, new_key) == (old_kind, old_key):
        return None
    if old_kind == _ANY_HOST:
        return True
    if new_kind == _EXACT_HOST and old_kind == _WILD_HOST:
        return new_key.endswith(old_key)
    if new_kind == _WILD_HOST and old_kind == _WILD_HOST:
        return len(new_key) > len(old_key) and new_key.endswith(old_key)
    return False  # old's group comes first, or no Host reaches both


def _segments(pattern: Any) -> list[tuple[int, str | None]]:
    last = len(pattern.segments) - 1
    return [
        (_WILD, None)
        if pattern.wildcard and i == last
        else (_PARAM, None)
        if part is None
        else (_STATIC, part)
        for i, part in enumerate(pattern.segments)
    ]


def _segment_meets(a: tuple[int, str | None], b: tuple[int, str | None]) -> bool:
    # two non-wildcard segments can match one path segment ({param} needs a non-empty one)
    (a_kind, a_text), (b_kind, b_text) = a, b
    if a_kind == _STATIC and b_kind == _STATIC:
        return a_text == b_text
    if a_kind == _STATIC:
        return a_text != ""
    if b_kind == _STATIC:
        return b_text != ""
    return True


def _paths_meet(a: list[tuple[int, str | None]], b: list[tuple[int, str | None]]) -> bool:
    """Whether some request path matches both segment lists."""
    for i in range(max(len(a), len(b))):
        if i >= len(a) or i >= len(b):
            return False  # different lengths (a '*' needs one more segment, maybe empty)
        if a[i][0] == _WILD or b[i][0] == _WILD:
            return True  # the other's segments from here on make a path the '*' matches
        if not _segment_meets(a[i], b[i]):
            return False
    return True


def _path_first(new: Any, old: Any) -> bool | None:
    # None: the same shape (one leaf); True: some path both match goes to new first
    a, b = _segments(new), _segments(old)
    for i in range(max(len(a), len(b))):
        if i >= len(a) or i >= len(b):
            return False
        (a_kind, _), (b_kind, _) = a[i], b[i]
        if a_kind == _WILD and b_kind == _WILD:
            return None
        if a_kind != b_kind:
            if a_kind > b_kind:
                return False  # old is more specific where they first differ
            if b_kind == _WILD:
                return True  # old's '*' matches every path new's segments from here make
            return _segment_meets(a[i], b[i]) and _paths_meet(a[i + 1 :], b[i + 1 :])
        if not _segment_meets(a[i], b[i]):
            return False
    return None


def _accepted(methods: Any) -> frozenset[str] | None:
    # the methods a route answers in a leaf of its own (None: any); GET answers HEAD too
    if methods is None:
        return None
    named = {method.upper() for method in methods}
    return frozenset(named | {"HEAD"}) if "GET" in named else frozenset(named)


def _methods_meet(new: Any, old: Any) -> bool:
    a, b = _accepted(new), _accepted(old)
    return a is None or b is None or bool(a & b)


def _leaf_takes(new: Any, old: Any) -> bool:
    # both in one leaf: does new get a method old answered alone?
    if old is None:
        return True  # new names methods (or ties: a conflict), and those go to it
    if new is None:
        return False  # old keeps the methods it names (and HEAD with its GET)
    new_named = {method.upper() for method in new}
    old_named = {method.upper() for method in old}
    if new_named & old_named:
        return True  # a tie: refused as a conflict anyway
    return "GET" in old_named and "HEAD" not in old_named and "HEAD" in new_named


def route_shadows(new: Any, old: Any) -> bool:
    """Whether a router holding the routes matched by ``new`` and ``old`` (two `RouteMatch`
    values) would send to ``new`` some request that ``old`` gets when ``new`` is not there:
    a more specific path or host over requests ``old`` matches, or HEAD beside ``old``'s GET.
    Method sets that cannot meet never shadow. Pure: the router's rules, not the router."""
    host = _host_first(new.host, old.host)
    if host is False:
        return False
    if host is True:
        return _paths_meet(_segments(new.pattern), _segments(old.pattern)) and _methods_meet(
            new.methods, old.methods
        )
    path = _path_first(new.pattern, old.pattern)
    if path is None:
        return _leaf_takes(new.methods, old.methods)
    return path and _methods_meet(new.methods, old.methods)


def route_shadowed(route: Any, other: Any) -> str:
    return (
        f"would take requests that file route {other.name!r} (path {other.match.path!r}"
        f"{', host ' + repr(other.match.host) if other.match.host else ''}) gets now; "
        "set admin.api_routes.may_shadow_yaml: true to allow it"
    )


def route_conflict(other: Any, position: int) -> str:
    return f"same host, path and methods as routes[{position}] ({other.name!r})"


def missing_upstream(name: str, upstreams: Any) -> str:
    known = ", ".join(upstreams) if upstreams else "none defined"
    return f"no upstream named {name!r} (upstreams: {known})"


def missing_policy(name: str, policies: Any) -> str:
    known = ", ".join(policies) if policies else "none defined"
    return f"no policy named {name!r} (policies: {known})"


def declared_policies(
    policies: Any, listeners: Iterable[Any], routes: Iterable[Any]
) -> Iterator[tuple[str, Any]]:
    """``(config path, PolicySpec)`` of every policy written in the config, in its order: the
    named ones, then those inline in listeners' and routes' lists."""
    for name, spec in policies.items():
        yield f"policies.{name}", spec
    for kind, items in (("listeners", listeners), ("routes", routes)):
        for position, owner in enumerate(items):
            for i, entry in enumerate(owner.policies):
                if not isinstance(entry, str):
                    yield f"{kind}[{position}].policies[{i}]", entry


def policy_refs(items: Any) -> list[tuple[int, str]]:
    """``(position, name)`` of the named policies in a route's or listener's list."""
    return [(i, entry) for i, entry in enumerate(items) if isinstance(entry, str)]


# -- the same rules, where JSON Schema can say them (jsonschema.class_schema adds these) ------

_SET = {"not": {"type": "null"}}  # given, not null


def _both(a: str, b: str) -> dict[str, Any]:
    return {"not": {"required": [a, b], "properties": {a: _SET, b: _SET}}}


def _given(key: str, kind: str) -> dict[str, Any]:
    # `key` is there, not null and not empty
    least = {"minItems": 1} if kind == "array" else {"minProperties": 1}
    return {"required": [key], "properties": {key: {"type": kind, **least}}}


def _nocase(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


# an upstream whose balancer is not consistent_hash (absent: round_robin; a ${VAR} could be)
_NOT_HASHING = "|".join(_nocase(b) for b in defaults.BALANCERS if b != "consistent_hash")

JSON_RULES: dict[str, dict[str, Any]] = {
    "Upstream": {
        "if": {
            "properties": {
                "balancer": {
                    "anyOf": [
                        {"type": "null"},
                        {"type": "string", "pattern": f"^({_NOT_HASHING})$"},
                    ]
                }
            }
        },
        "then": {"properties": {key: {"type": "null"} for key in _HASH_ONLY}},
    },
    "Route": {
        "oneOf": [
            {"required": ["upstream"], "properties": {"upstream": {"type": "string"}}},
            {"required": ["respond"], "properties": {"respond": {"type": "object"}}},
        ],
        "allOf": [
            _both("strip_prefix", "rewrite"),
            {
                "if": {"required": ["respond"], "properties": {"respond": {"type": "object"}}},
                "then": {"properties": {key: {"type": "null"} for key in _UPSTREAM_ONLY}},
            },
        ],
    },
    "Respond": {"allOf": [_both("body", "json")]},
    "HeadersConfig": {"anyOf": [_given("request", "object"), _given("response", "object")]},
    "IpFilterConfig": {"anyOf": [_given("allow", "array"), _given("deny", "array")]},
    "FaultConfig": {"anyOf": [_given("abort", "object"), _given("delay", "object")]},
    "MetricsConfig": {"anyOf": [_given("counters", "array"), _given("histograms", "array")]},
}
