"""YAML text -> validated ``Config``, with every mistake located as ``file:line: path: message``.

Strategy: ``yaml.compose`` gives a node tree in which every node knows its line. We never let
PyYAML build Python objects for the document; typed converters walk the nodes carrying the
dotted path of where they are (``routes[2].match.path``), so an error names the exact line and
key. ``${VAR}`` / ``${VAR:-default}`` are substituted in scalar values before the scalar is
typed, so ``port: ${PORT:-8080}`` is an int. A key whose value is null counts as absent.
Checks that need the whole file (route -> upstream references, route conflicts) run last.
The first error found is raised.

Routes and upstreams written through the admin API are checked by the same code: their JSON
documents become nodes (``_document_node``) appended to the file's ``routes`` list and
``upstreams`` mapping, and the whole result is built as if it were one file
(``validate_dynamic``). Their scalars are literal: ``${VAR}`` is never substituted in them.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from isekai.config import defaults, units
from isekai.config.schema import (
    Admin,
    AdminAuth,
    Config,
    Limits,
    Listener,
    RequestLogs,
    Respond,
    Route,
    RouteLimits,
    RouteMatch,
    Store,
    Target,
    Upstream,
)
from isekai.errors import ConfigError, RouteConflictError

__all__ = [
    "API_SOURCE",
    "file_documents",
    "is_loopback",
    "load_config",
    "load_config_text",
    "validate_dynamic",
]


def _keys(cls: type, *, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    # YAML keys are the schema's field names
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in skip)


_parse_bind = functools.partial(units.parse_address, bind=True)
_TOP_KEYS = _keys(Config, skip=("source",))
_NOT_YET = frozenset({"policies", "observability"})
_ADMIN_KEYS = ("enabled", "bind", "auth", "request_logs")  # host and port are parsed from bind
_AUTH_KEYS = _keys(AdminAuth)
_REQUEST_LOG_KEYS = _keys(RequestLogs)
_STORE_KEYS = _keys(Store)
_STORE_URL = re.compile(r"([a-z][a-z0-9+.\-]*):(.*)", re.S)
_LISTENER_KEYS = ("name", "bind")  # host and port are parsed from bind
_UPSTREAM_KEYS = _keys(Upstream, skip=("name",))  # the name is the mapping key
_ROUTE_KEYS = _keys(Route, skip=("index",))
_MATCH_KEYS = _keys(RouteMatch)
_RESPOND_KEYS = ("status", "headers", "body", "json")  # json is another way to give the body
_LIMIT_KINDS = {
    "max_request_line": "size",
    "max_header_bytes": "size",
    "max_header_count": "count",
    "header_read_timeout": "duration",
    "body_idle_timeout": "duration",
    "max_body_size": "size",
    "keepalive_timeout": "duration",
    "max_requests_per_connection": "count",
    "max_connections": "count",
    "websocket_idle_timeout": "duration",
}
_ROUTE_LIMIT_KEYS = ("max_body_size", "body_idle_timeout", "websocket_idle_timeout")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_ENV_REF = re.compile(r"\$\$\{|\$\{([^}]*)(\})?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})

_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"
_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"

API_SOURCE = "<api>"  # ConfigError.file of a mistake inside a document given to validate_dynamic
_API_MARK = yaml.Mark(API_SOURCE, 0, 0, 0, None, None)
_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_JSON_NODE_BUDGET = 100_000

Fields = dict[str, tuple[Node, Node]]  # key -> (key node, value node), in document order
T = TypeVar("T")


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the YAML config file at ``path``.

    Raises ``ConfigError`` (``file:line: path: message``) for any mistake, including a missing
    or unreadable file; ``RouteConflictError`` when two routes match exactly the same requests.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", file=source) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("the file is not valid UTF-8", file=source, line=line) from None
    return load_config_text(text, source)


def _compose(text: str) -> Node | None:
    # libyaml composes a 10,000-route file ~4x faster; its nodes carry the same marks. On any
    # error the pure-Python composer runs again so that messages do not depend on libyaml.
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            return yaml.compose(text, Loader=fast)
        except yaml.YAMLError:
            pass
    return yaml.compose(text, Loader=yaml.SafeLoader)


def load_config_text(
    text: str, source: str = "<string>", *, env: Mapping[str, str] | None = None
) -> Config:
    """Validate YAML ``text`` into a ``Config``; ``source`` names it in errors.

    ``env`` is the mapping ``${VAR}`` references are looked up in (default ``os.environ``).
    """
    root = _parse(text, source)
    return _Builder(source, os.environ if env is None else env).config(root)


def validate_dynamic(
    text: str,
    source: str = "<string>",
    *,
    routes: Sequence[Mapping[str, Any]] = (),
    upstreams: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Validate the config file ``text`` plus routes and upstreams given as JSON documents.

    Each of ``routes`` is a route mapping as in YAML (with its ``name``); ``upstreams`` maps a
    name to an upstream mapping (without the name). They are appended, in order, after the
    file's own routes and upstreams, and the whole is validated exactly as one file would be:
    the result's ``routes`` are the file's followed by these. Raises ``ConfigError`` as
    `load_config_text` does; a mistake inside one of the documents has ``file`` `API_SOURCE`,
    no line, and a ``path`` into the whole config (``routes[5].upstream``,
    ``upstreams.users.targets[0]``).
    """
    root = _parse(text, source)
    if not isinstance(root, MappingNode) or (not routes and not upstreams):
        return _Builder(source, os.environ if env is None else env).config(root)
    reader = _Reader(source, os.environ if env is None else env)
    pairs = list(reader._pairs(root, "").values())  # merge keys resolved, as the builder would
    added: list[tuple[str, Node, list[Any]]] = [
        ("upstreams", MappingNode(_MAP_TAG, [], _API_MARK, _API_MARK), []),
        ("routes", SequenceNode(_SEQ_TAG, [], _API_MARK, _API_MARK), []),
    ]
    for name, doc in (upstreams or {}).items():
        key = _LiteralScalar(_STR_TAG, name, _API_MARK, _API_MARK)
        added[0][2].append((key, _document_node(doc)))
    added[1][2].extend(_document_node(doc) for doc in routes)
    for key, empty, extra in added:
        if not extra:
            continue
        at = next((i for i, (k, _) in enumerate(pairs) if k.value == key), None)
        if at is None:
            pairs.append((ScalarNode(_STR_TAG, key, _API_MARK, _API_MARK), empty))
            at = len(pairs) - 1
        key_node, node = pairs[at]
        if reader.is_null(node, key):
            node = empty
        if isinstance(node, MappingNode):
            node = MappingNode(node.tag, [*node.value, *extra], node.start_mark, node.end_mark)
        elif isinstance(node, SequenceNode):
            node = SequenceNode(node.tag, [*node.value, *extra], node.start_mark, node.end_mark)
        pairs[at] = (key_node, node)  # anything else: the builder reports the file's mistake
    root = MappingNode(root.tag, pairs, root.start_mark, root.end_mark)
    return _Builder(source, os.environ if env is None else env).config(root)


def file_documents(
    text: str, source: str = "<string>"
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The routes and upstreams of config file ``text`` as JSON-compatible documents.

    Values are as written: ``${VAR}`` references are kept, not substituted. The file is
    expected to be valid (see `load_config_text`); raises ``ConfigError`` otherwise.
    """
    root = _parse(text, source)
    reader = _Reader(source, {}, literal=True)
    routes: list[dict[str, Any]] = []
    upstreams: dict[str, dict[str, Any]] = {}
    if not isinstance(root, MappingNode):
        return routes, upstreams
    fields = reader._pairs(root, "")
    budget = [_JSON_NODE_BUDGET * 100]
    if "routes" in fields and isinstance(fields["routes"][1], SequenceNode):
        for i, node in enumerate(fields["routes"][1].value):
            routes.append(reader.plain(node, f"routes[{i}]", budget))
    if "upstreams" in fields and isinstance(fields["upstreams"][1], MappingNode):
        for name, (_, node) in reader._pairs(fields["upstreams"][1], "upstreams").items():
            upstreams[name] = reader.plain(node, _join("upstreams", name), budget)
    return routes, upstreams


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as parsed from a bind address) only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _LiteralScalar(ScalarNode):
    """A scalar from a JSON document: its text is never ``${VAR}``-substituted."""


def _document_node(value: Any) -> Node:
    # a JSON value as the node YAML would compose for it, every scalar explicitly tagged
    if isinstance(value, Mapping):
        pairs = [
            (_LiteralScalar(_STR_TAG, str(key), _API_MARK, _API_MARK), _document_node(item))
            for key, item in value.items()
        ]
        return MappingNode(_MAP_TAG, pairs, _API_MARK, _API_MARK)
    if isinstance(value, (list, tuple)):
        items = [_document_node(item) for item in value]
        return SequenceNode(_SEQ_TAG, items, _API_MARK, _API_MARK)
    if value is None:
        tag, text = _NULL_TAG, "null"
    elif isinstance(value, bool):
        tag, text = "tag:yaml.org,2002:bool", "true" if value else "false"
    elif isinstance(value, int):
        tag, text = "tag:yaml.org,2002:int", str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a JSON number")
        tag, text = "tag:yaml.org,2002:float", repr(value)
    elif isinstance(value, str):
        tag, text = _STR_TAG, value
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")
    return _LiteralScalar(tag, text, _API_MARK, _API_MARK)


def _parse(text: str, source: str) -> Node:
    # the composed document, or a located ConfigError
    try:
        root = _compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context
        if exc.context and exc.problem and exc.context_mark is not None:
            message = f"{exc.context} (from line {exc.context_mark.line + 1}), {exc.problem}"
        line = mark.line + 1 if mark is not None else None
        if exc.problem and "'\\t'" in exc.problem:
            message += " (indent with spaces, not tabs)"
        message = f"invalid YAML: {message}"
        raise ConfigError(message, file=source, line=line) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        message = f"invalid YAML: character {chr(exc.character)!r} is not allowed"
        raise ConfigError(message, file=source, line=line) from None
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error above carries a mark
        raise ConfigError(f"invalid YAML: {exc}", file=source) from None
    if root is None:
        message = "the file is empty; see docs/configuration.md for what goes in it"
        raise ConfigError(message, file=source)
    return root


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Reader:
    """Typed access to YAML nodes; every failure becomes a located ConfigError."""

    def __init__(self, source: str, env: Mapping[str, str], *, literal: bool = False) -> None:
        self.source = source
        self.env = env
        self.literal = literal  # True: no ${VAR} substitution anywhere

    def error(
        self, node: Node, path: str, message: str, cls: type[ConfigError] = ConfigError
    ) -> ConfigError:
        if node.start_mark is _API_MARK:
            return cls(message, path=path, file=API_SOURCE)
        return cls(message, path=path, file=self.source, line=node.start_mark.line + 1)

    # -- scalars ----------------------------------------------------------------------------

    def _substitute(self, node: ScalarNode, path: str) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            inner = match.group(1)
            if match.group(2) is None:
                raise self.error(node, path, f"unclosed '${{{inner}': write ${{NAME}}")
            name, has_default, default = inner.partition(":-")
            if not _ENV_NAME.fullmatch(name):
                raise self.error(
                    node,
                    path,
                    f"bad variable reference '${{{inner}}}': write ${{NAME}} or "
                    "${NAME:-default}, NAME being letters, digits and '_'",
                )
            value = self.env.get(name)
            if has_default and not value:
                return default
            if value is None:
                raise self.error(
                    node,
                    path,
                    f"environment variable {name} is not set "
                    f"(write ${{{name}:-default}} to give a default)",
                )
            return value

        return _ENV_REF.sub(replace, node.value)

    def scalar(self, node: Node, path: str, what: str) -> tuple[Any, str | None]:
        # the scalar's Python value, and its text after substitution if it had ${...}
        if not isinstance(node, ScalarNode):
            raise self.error(node, path, f"expected {what}, got {self.describe(node)}")
        tag, text, substituted = node.tag, node.value, None
        if "${" in text and not self.literal and not isinstance(node, _LiteralScalar):
            implicit = tag == _RESOLVER.resolve(ScalarNode, text, (True, False))
            text = substituted = self._substitute(node, path)
            if node.style is None and implicit:
                tag = _RESOLVER.resolve(ScalarNode, text, (True, False))
            node = ScalarNode(tag, text, node.start_mark, node.end_mark, node.style)
        construct = _CONSTRUCTOR.yaml_constructors.get(tag)
        if construct is None or tag.endswith((":seq", ":map", ":omap", ":pairs", ":set")):
            raise self.error(node, path, f"unsupported YAML tag {tag!r}")
        try:
            return construct(_CONSTRUCTOR, node), substituted
        except yaml.YAMLError as exc:
            raise self.error(node, path, f"bad {tag.rsplit(':', 1)[-1]} value: {exc}") from None

    def describe(self, node: Node) -> str:
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        try:
            value, _ = self.scalar(node, "", "a value")
        except ConfigError:
            return repr(node.value)
        if value is None:
            return "null"
        if isinstance(value, bool):
            return f"a boolean ({node.value})"
        if isinstance(value, int):
            return f"an integer ({value})"
        if isinstance(value, float):
            return f"a number ({node.value})"
        if isinstance(value, str):
            return f"a string ({value!r})"
        if isinstance(value, bytes):
            return "binary data"
        return f"a {type(value).__name__} ({node.value})"

    def string(self, node: Node, path: str, what: str = "a string") -> str:
        value, substituted = self.scalar(node, path, what)
        if substituted is not None:
            return substituted
        if isinstance(value, str):
            return value
        hint = "; quote it to make it a string" if value is not None else ""
        raise self.error(node, path, f"expected {what}, got {self.describe(node)}{hint}")

    def boolean(self, node: Node, path: str) -> bool:
        value, substituted = self.scalar(node, path, "true or false")
        if substituted is not None and substituted.strip().lower() in ("true", "false"):
            return substituted.strip().lower() == "true"
        if not isinstance(value, bool):
            raise self.error(node, path, f"expected true or false, got {self.describe(node)}")
        return value

    def integer(self, node: Node, path: str, minimum: int, maximum: int | None = None) -> int:
        what = "an integer"
        value, substituted = self.scalar(node, path, what)
        if substituted is not None and re.fullmatch(r"\s*[+-]?\d+\s*", substituted):
            value = int(substituted)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(node, path, f"expected {what}, got {self.describe(node)}")
        if maximum is not None and not minimum <= value <= maximum:
            raise self.error(node, path, f"must be from {minimum} to {maximum}, got {value}")
        if value < minimum:
            raise self.error(node, path, f"must be at least {minimum}, got {value}")
        return value

    def check(self, node: Node, path: str, parse: Callable[..., T], *args: Any) -> T:
        # parse(*args), its ValueError turned into a ConfigError located at node
        try:
            return parse(*args)
        except ValueError as exc:
            raise self.error(node, path, str(exc)) from None

    def duration(self, node: Node, path: str, *, allow_zero: bool = False) -> float:
        value, _ = self.scalar(node, path, "a duration like 250ms, 10s, 5m or 1h")
        seconds = self.check(node, path, units.parse_duration, value)
        if seconds == 0 and not allow_zero:
            raise self.error(node, path, "must be greater than 0")
        return seconds

    def size(self, node: Node, path: str) -> int:
        value, _ = self.scalar(node, path, "a size like 512, 8KiB or 1MiB")
        size = self.check(node, path, units.parse_size, value)
        if size == 0:
            raise self.error(node, path, "must be greater than 0")
        return size

    def name(self, node: Node, path: str, what: str, name: str | None = None) -> str:
        # a route/listener/upstream name; ``name`` is given for mapping keys (raw text)
        if name is None:
            name = self.string(node, path)
        if not _NAME.fullmatch(name):
            raise self.error(
                node,
                path,
                f"bad {what} name {name!r}: use up to 128 letters, digits, '_', "
                "'-' and '.', starting with a letter or digit",
            )
        return name

    # -- collections ------------------------------------------------------------------------

    def _pairs(self, node: MappingNode, path: str, active: frozenset[int] = frozenset()) -> Fields:
        if id(node) in active:
            raise self.error(node, path, "a merge key ('<<') refers back to its own mapping")
        explicit: Fields = {}
        merged: Fields = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in sources:
                    if not isinstance(source, MappingNode):
                        raise self.error(
                            source, path, "'<<' must merge a mapping or a list of them"
                        )
                    for key, pair in self._pairs(source, path, active | {id(node)}).items():
                        merged.setdefault(key, pair)
                continue
            if not isinstance(key_node, ScalarNode):
                raise self.error(
                    key_node, path, f"keys must be strings, got {self.describe(key_node)}"
                )
            key = key_node.value
            if key in explicit:
                first = explicit[key][0].start_mark.line + 1
                raise self.error(
                    key_node, _join(path, key), f"duplicate key {key!r} (first at line {first})"
                )
            explicit[key] = (key_node, value_node)
        merged.update(explicit)
        return merged

    def mapping(
        self,
        node: Node,
        path: str,
        allowed: tuple[str, ...] | None,
        *,
        required: tuple[str, ...] = (),
        nullable: tuple[str, ...] = (),
        what: str = "a mapping",
    ) -> Fields:
        if not isinstance(node, MappingNode):
            raise self.error(node, path, f"expected {what}, got {self.describe(node)}")
        fields: Fields = {}
        for key, (key_node, value_node) in self._pairs(node, path).items():
            if allowed is not None and key not in allowed:
                message = f"unknown key {key!r}"
                close = difflib.get_close_matches(key, allowed, n=1)
                if close:
                    message += f" (did you mean {close[0]!r}?)"
                elif not path and key in _NOT_YET:
                    message += " (not supported yet)"
                raise self.error(
                    key_node, _join(path, key), f"{message}; allowed keys: {', '.join(allowed)}"
                )
            if key not in nullable and self.is_null(value_node, _join(path, key)):
                if key in required:
                    raise self.error(key_node, _join(path, key), f"{key!r} needs a value")
                continue
            fields[key] = (key_node, value_node)
        for key in required:
            if key not in fields:
                raise self.error(node, _join(path, key), f"missing required key {key!r}")
        return fields

    def is_null(self, node: Node, path: str) -> bool:
        # null as written, or a value that ${...} substitution leaves empty
        if not isinstance(node, ScalarNode) or node.tag != _NULL_TAG and "${" not in node.value:
            return False
        value, substituted = self.scalar(node, path, "a value")
        return value is None or substituted == ""

    def sequence(self, node: Node, path: str, what: str = "a list") -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise self.error(node, path, f"expected {what}, got {self.describe(node)}")
        return list(node.value)

    def plain(
        self, node: Node, path: str, budget: list[int], active: frozenset[int] = frozenset()
    ) -> Any:
        # any YAML value as JSON-compatible Python (for respond.json)
        budget[0] -= 1
        if budget[0] < 0:
            raise self.error(node, path, f"value too large (more than {_JSON_NODE_BUDGET} items)")
        if id(node) in active:
            raise self.error(node, path, "an alias refers back to a value that contains it")
        inner = active | {id(node)}
        if isinstance(node, MappingNode):
            return {
                key: self.plain(value, _join(path, key), budget, inner)
                for key, (_, value) in self._pairs(node, path).items()
            }
        if isinstance(node, SequenceNode):
            return [self.plain(v, f"{path}[{i}]", budget, inner) for i, v in enumerate(node.value)]
        value, _ = self.scalar(node, path, "a value")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(node, path, f"{node.value} cannot be represented in JSON")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise self.error(
                node, path, f"{self.describe(node)} cannot be represented in JSON; quote it"
            )
        return value


class _Builder(_Reader):
    """Builds each section of the config from its node."""

    def config(self, root: Node) -> Config:
        what = "a mapping of settings (listeners, upstreams, routes, ...)"
        fields = self.mapping(root, "", _TOP_KEYS, what=what)
        self.route_fields: list[Fields] = []
        sections: dict[str, Callable[[Node, str], Any]] = {
            "listeners": self.listeners,
            "upstreams": self.upstreams,
            "routes": self.routes,
            "limits": self.limits,
            "workers": self.workers,
            "shutdown_timeout": lambda node, path: self.duration(node, path, allow_zero=True),
            "trusted_proxies": self.trusted_proxies,
            "pid_file": lambda node, path: self.string(node, path, "a file path"),
            "admin": self.admin,
            "store": self.store,
        }
        values = {key: sections[key](node, key) for key, (_, node) in fields.items()}
        self.check_references(values.get("routes", ()), values.get("upstreams", {}))
        return Config(**values, source=self.source)

    def listeners(self, node: Node, path: str) -> tuple[Listener, ...]:
        items = self.sequence(node, path)
        if not items:
            message = "needs at least one listener (leave 'listeners' out for the default"
            raise self.error(node, path, f"{message} {defaults.LISTENER_BIND})")
        names: dict[str, str] = {}
        binds: dict[tuple[str, int], str] = {}
        listeners = []
        for i, item in enumerate(items):
            at = f"{path}[{i}]"
            fields = self.mapping(item, at, _LISTENER_KEYS, required=_LISTENER_KEYS)
            name_node, bind_node = fields["name"][1], fields["bind"][1]
            name = self.name(name_node, f"{at}.name", "listener")
            if name in names:
                message = f"duplicate listener name {name!r} (also {names[name]})"
                raise self.error(name_node, f"{at}.name", message)
            bind = self.string(bind_node, f"{at}.bind")
            host, port = self.check(bind_node, f"{at}.bind", _parse_bind, bind)
            if port and (host, port) in binds:
                message = f"{bind!r} is already bound by {binds[host, port]}"
                raise self.error(bind_node, f"{at}.bind", message)
            names[name] = binds[host, port] = at
            listeners.append(Listener(name=name, bind=bind, host=host, port=port))
        return tuple(listeners)

    def upstreams(self, node: Node, path: str) -> Mapping[str, Upstream]:
        upstreams: dict[str, Upstream] = {}
        for name, (key_node, value_node) in self.mapping(node, path, None).items():
            at = _join(path, name)
            self.name(key_node, at, "upstream", name)
            upstreams[name] = self.upstream(name, value_node, at)
        return MappingProxyType(upstreams)

    def upstream(self, name: str, node: Node, path: str) -> Upstream:
        fields = self.mapping(node, path, _UPSTREAM_KEYS, required=("targets",))
        values: dict[str, Any] = {}
        for key, (_, value_node) in fields.items():
            at = f"{path}.{key}"
            if key == "targets":
                values[key] = self.targets(value_node, at)
            elif key == "scheme":
                values[key] = scheme = self.string(value_node, at).lower()
                if scheme not in defaults.UPSTREAM_SCHEMES:
                    supported = ", ".join(defaults.UPSTREAM_SCHEMES)
                    message = f"scheme {scheme!r} is not supported yet (supported: {supported})"
                    raise self.error(value_node, at, message)
            elif key in ("max_connections", "max_keepalive_connections"):
                values[key] = self.integer(value_node, at, 1 if key == "max_connections" else 0)
            else:
                values[key] = self.duration(value_node, at)
        most = values.get("max_connections", defaults.UPSTREAM_MAX_CONNECTIONS)
        idle = values.setdefault(
            "max_keepalive_connections", min(most, defaults.UPSTREAM_MAX_KEEPALIVE_CONNECTIONS)
        )
        if idle > most:
            at = f"{path}.max_keepalive_connections"
            message = f"cannot be more than max_connections ({most})"
            raise self.error(fields["max_keepalive_connections"][1], at, message)
        return Upstream(name=name, **values)

    def targets(self, node: Node, path: str) -> tuple[Target, ...]:
        items = self.sequence(node, path, "a list of 'host:port' strings")
        if not items:
            raise self.error(node, path, "needs at least one target")
        targets: list[Target] = []
        for i, item in enumerate(items):
            at = f"{path}[{i}]"
            text = self.string(item, at, "a 'host:port' string")
            target = Target(*self.check(item, at, units.parse_address, text))
            if target in targets:
                raise self.error(item, at, f"duplicate target {text!r}")
            targets.append(target)
        return tuple(targets)

    def routes(self, node: Node, path: str) -> tuple[Route, ...]:
        routes: list[Route] = []
        names: dict[str, int] = {}
        by_shape: dict[tuple[str | None, str], list[Route]] = {}
        for i, item in enumerate(self.sequence(node, path)):
            at = f"{path}[{i}]"
            fields = self.mapping(item, at, _ROUTE_KEYS, required=("name", "match"))
            name_node = fields["name"][1]
            name = self.name(name_node, f"{at}.name", "route")
            if name in names:
                message = f"duplicate route name {name!r} (also {path}[{names[name]}])"
                raise self.error(name_node, f"{at}.name", message)
            names[name] = i
            route, pattern = self.route(i, name, item, fields, at)
            same_shape = by_shape.setdefault((route.match.host, pattern.shape), [])
            for other in same_shape:
                mine, theirs = route.match.methods, other.match.methods
                if mine is None or theirs is None or set(mine) & set(theirs):
                    message = (
                        f"same host, path and methods as {path}[{other.index}] ({other.name!r})"
                    )
                    match_node = fields["match"][1]
                    raise self.error(match_node, f"{at}.match", message, RouteConflictError)
            same_shape.append(route)
            routes.append(route)
            self.route_fields.append(fields)
        return tuple(routes)

    def route(
        self, index: int, name: str, node: Node, fields: Fields, path: str
    ) -> tuple[Route, units.PathPattern]:
        match, pattern = self.match(fields["match"][1], f"{path}.match")
        if "upstream" in fields and "respond" in fields:
            message = "a route has 'upstream' or 'respond', not both"
            raise self.error(fields["respond"][0], path, message)
        if "upstream" not in fields and "respond" not in fields:
            message = "needs 'upstream' (proxy to a service) or 'respond' (a fixed response)"
            raise self.error(node, path, message)
        values: dict[str, Any] = {}
        for key, (key_node, value_node) in fields.items():
            at = f"{path}.{key}"
            if key in ("strip_prefix", "rewrite", "timeout", "websocket") and "respond" in fields:
                raise self.error(key_node, at, f"'{key}' only applies to routes with an 'upstream'")
            if key == "strip_prefix" and "rewrite" in fields:
                raise self.error(key_node, at, "use 'strip_prefix' or 'rewrite', not both")
            if key == "upstream":
                values[key] = self.string(value_node, at, "an upstream name")
            elif key == "timeout":
                values[key] = self.duration(value_node, at)
            elif key == "respond":
                values[key] = self.respond(value_node, at)
            elif key == "websocket":
                values[key] = self.boolean(value_node, at)
            elif key == "limits":
                values[key] = self.route_limits(value_node, at)
            elif key == "rewrite":
                template = self.string(value_node, at, "a path template")
                values[key] = self.check(value_node, at, units.check_rewrite, template, pattern)
            elif key == "strip_prefix":
                value, _ = self.scalar(value_node, at, "a path prefix or true")
                if not isinstance(value, bool):
                    value = self.string(value_node, at, "a path prefix or true")
                values[key] = self.check(value_node, at, units.parse_strip_prefix, value, pattern)
        return Route(name=name, match=match, index=index, **values), pattern

    def match(self, node: Node, path: str) -> tuple[RouteMatch, units.PathPattern]:
        fields = self.mapping(node, path, _MATCH_KEYS, required=("path",))
        path_node = fields["path"][1]
        text = self.string(path_node, f"{path}.path")
        pattern = self.check(path_node, f"{path}.path", units.parse_path_pattern, text)
        host = methods = None
        if "host" in fields:
            host_node = fields["host"][1]
            host_text = self.string(host_node, f"{path}.host")
            host = self.check(host_node, f"{path}.host", units.parse_host_pattern, host_text)
        if "methods" in fields:
            methods = self.methods(fields["methods"][1], f"{path}.methods")
        return RouteMatch(path=text, host=host, methods=methods), pattern

    def methods(self, node: Node, path: str) -> tuple[str, ...]:
        items = self.sequence(node, path, "a list of methods like [GET, POST]")
        if not items:
            message = "must not be empty; leave 'methods' out to match any method"
            raise self.error(node, path, message)
        methods: list[str] = []
        for i, item in enumerate(items):
            at = f"{path}[{i}]"
            method = self.check(
                item, at, units.parse_method, self.string(item, at, "a method name")
            )
            if method in methods:
                raise self.error(item, at, f"method {method} is listed twice")
            methods.append(method)
        return tuple(methods)

    def respond(self, node: Node, path: str) -> Respond:
        fields = self.mapping(node, path, _RESPOND_KEYS, nullable=("json",))
        status = defaults.RESPOND_STATUS
        if "status" in fields:
            status_node = fields["status"][1]
            status = self.integer(status_node, f"{path}.status", 100, 599)
            if status < 200:
                message = (
                    f"{status} is an interim (1xx) status; a fixed response needs a final "
                    "status from 200 to 599"
                )
                raise self.error(status_node, f"{path}.status", message)
        headers = (
            self.headers(fields["headers"][1], f"{path}.headers") if "headers" in fields else []
        )
        if "body" in fields and "json" in fields:
            raise self.error(fields["json"][0], f"{path}.json", "use 'body' or 'json', not both")
        body = b""
        if "json" in fields or "body" in fields:
            key = "json" if "json" in fields else "body"
            if status in (204, 304):
                raise self.error(
                    fields[key][0], f"{path}.{key}", f"a {status} response has no body"
                )
            if key == "json":
                value = self.plain(fields[key][1], f"{path}.json", [_JSON_NODE_BUDGET])
                text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
                content_type = defaults.JSON_CONTENT_TYPE
            else:
                text = self.string(fields[key][1], f"{path}.body")
                content_type = defaults.TEXT_CONTENT_TYPE
            body = text.encode()
            if not any(name.lower() == "content-type" for name, _ in headers):
                headers.append(("content-type", content_type))
        return Respond(status=status, headers=tuple(headers), body=body)

    def headers(self, node: Node, path: str) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        what = "a mapping of header names to values"
        for name, (key_node, value_node) in self.mapping(node, path, None, what=what).items():
            at = _join(path, name)
            if not _HEADER_NAME.fullmatch(name):
                raise self.error(key_node, at, f"bad header name {name!r}")
            if name.lower() in _FRAMING_HEADERS:
                raise self.error(key_node, at, f"{name} is set by the gateway")
            if any(name.lower() == seen.lower() for seen, _ in headers):
                raise self.error(key_node, at, f"header {name!r} is given twice")
            value, substituted = self.scalar(value_node, at, "a header value")
            if substituted is not None:
                text = substituted
            elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
                text = value_node.value
            else:
                message = f"expected a header value, got {self.describe(value_node)}"
                raise self.error(value_node, at, message)
            if any(c in text for c in "\r\n\0"):
                raise self.error(value_node, at, "header values must not contain CR, LF or NUL")
            headers.append((name, text.strip()))
        return headers

    def limits(self, node: Node, path: str) -> Limits:
        return Limits(**self.limit_values(node, path, tuple(_LIMIT_KINDS)))

    def route_limits(self, node: Node, path: str) -> RouteLimits:
        return RouteLimits(**self.limit_values(node, path, _ROUTE_LIMIT_KEYS))

    def limit_values(self, node: Node, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, (_, value_node) in self.mapping(node, path, allowed).items():
            at = f"{path}.{key}"
            kind = _LIMIT_KINDS[key]
            if kind == "size":
                values[key] = self.size(value_node, at)
            elif kind == "duration":
                values[key] = self.duration(value_node, at)
            else:
                values[key] = self.integer(value_node, at, 1)
        return values

    def workers(self, node: Node, path: str) -> int:
        value, substituted = self.scalar(node, path, "a positive integer or 'auto'")
        if value == "auto":
            return os.cpu_count() or 1
        if isinstance(value, str) and not (substituted and value.strip().lstrip("+-").isdigit()):
            raise self.error(node, path, f"expected a positive integer or 'auto', got {value!r}")
        return self.integer(node, path, 1)

    def trusted_proxies(self, node: Node, path: str) -> tuple[str, ...]:
        networks = []
        for i, item in enumerate(self.sequence(node, path, "a list of CIDRs like 10.0.0.0/8")):
            at = f"{path}[{i}]"
            networks.append(self.check(item, at, units.parse_cidr, self.string(item, at, "a CIDR")))
        return tuple(networks)

    def admin(self, node: Node, path: str) -> Admin:
        fields = self.mapping(node, path, _ADMIN_KEYS)
        values: dict[str, Any] = {}
        if "enabled" in fields:
            values["enabled"] = self.boolean(fields["enabled"][1], f"{path}.enabled")
        if "bind" in fields:
            bind_node = fields["bind"][1]
            bind = self.string(bind_node, f"{path}.bind")
            host, port = self.check(bind_node, f"{path}.bind", _parse_bind, bind)
            values.update(bind=bind, host=host, port=port)
        if "auth" in fields:
            values["auth"] = auth = self.admin_auth(fields["auth"][1], f"{path}.auth")
            host = values.get("host", defaults.ADMIN_HOST)
            if not auth.enabled and not is_loopback(host):
                bind = values.get("bind", defaults.ADMIN_BIND)
                enabled_node = self.mapping(fields["auth"][1], f"{path}.auth", None)["enabled"][1]
                message = (
                    f"auth can only be turned off when {path}.bind is a loopback address "
                    f"(127.0.0.1, [::1] or localhost), not {bind!r}"
                )
                raise self.error(enabled_node, f"{path}.auth.enabled", message)
        if "request_logs" in fields:
            at = f"{path}.request_logs"
            values["request_logs"] = self.request_logs(fields["request_logs"][1], at)
        return Admin(**values)

    def admin_auth(self, node: Node, path: str) -> AdminAuth:
        fields = self.mapping(node, path, _AUTH_KEYS)
        values: dict[str, Any] = {}
        for key, (_, value_node) in fields.items():
            at = f"{path}.{key}"
            if key == "enabled":
                values[key] = self.boolean(value_node, at)
            elif key == "jwt_expiry":
                values[key] = self.duration(value_node, at)
            elif key == "jwt_algorithm":
                values[key] = algorithm = self.string(value_node, at).upper()
                if algorithm not in defaults.JWT_ALGORITHMS:
                    supported = ", ".join(defaults.JWT_ALGORITHMS)
                    message = f"algorithm {algorithm!r} is not supported (supported: {supported})"
                    raise self.error(value_node, at, message)
            else:
                values[key] = self.string(value_node, at, "a secret string")
        if "jwt_secret" in values:
            # at least as long as the hash: 32 characters for HS256, 48 for HS384, 64 for HS512
            algorithm = values.get("jwt_algorithm", defaults.JWT_ALGORITHM)
            shortest = max(defaults.JWT_SECRET_MIN_LENGTH, int(algorithm[2:]) // 8)
            secret = values["jwt_secret"]
            if len(secret.encode()) < shortest:
                message = (
                    f"must be at least {shortest} characters long for {algorithm}, got "
                    f"{len(secret)} (leave it out for a random secret per process)"
                )
                raise self.error(fields["jwt_secret"][1], f"{path}.jwt_secret", message)
        return AdminAuth(**values)

    def request_logs(self, node: Node, path: str) -> RequestLogs:
        values: dict[str, Any] = {}
        for key, (_, value_node) in self.mapping(node, path, _REQUEST_LOG_KEYS).items():
            at = f"{path}.{key}"
            if key == "enabled":
                values[key] = self.boolean(value_node, at)
            elif key == "retention":
                values[key] = self.duration(value_node, at)
            else:
                values[key] = self.integer(value_node, at, 1)
        return RequestLogs(**values)

    def store(self, node: Node, path: str) -> Store:
        fields = self.mapping(node, path, _STORE_KEYS)
        if "url" not in fields:
            return Store()
        url_node = fields["url"][1]
        url = self.string(url_node, f"{path}.url", "a store URL")
        found = _STORE_URL.fullmatch(url)
        if found is None or not found.group(2):
            message = (
                f"bad store URL {url!r}: write it like sqlite:///isekai.db or "
                "postgresql://user@host/isekai"
            )
            raise self.error(url_node, f"{path}.url", message)
        if found.group(1).lower() not in defaults.STORE_SCHEMES:
            supported = ", ".join(f"{scheme}://" for scheme in defaults.STORE_SCHEMES)
            message = f"unsupported store URL {found.group(1)}:// (supported: {supported})"
            raise self.error(url_node, f"{path}.url", message)
        return Store(url=url)

    def check_references(
        self, routes: tuple[Route, ...], upstreams: Mapping[str, Upstream]
    ) -> None:
        for route, fields in zip(routes, self.route_fields, strict=True):
            if route.upstream is not None and route.upstream not in upstreams:
                known = ", ".join(upstreams) if upstreams else "none defined"
                message = f"no upstream named {route.upstream!r} (upstreams: {known})"
                raise self.error(fields["upstream"][1], f"routes[{route.index}].upstream", message)
