"""YAML text -> validated ``Config``, with every mistake located as ``file:line: path: message``.

One generic reader (`_Builder.object`) walks a config class's fields and reads each YAML node by
the field's kind (``meta.Setting``, declared in ``schema.py``); ``nodes.Reader`` gives the
typed, located access to nodes. After a class's fields are read, its ``validate`` hook
(``rules.py``) checks what ties fields together; checks that need the whole file (route ->
upstream references, route conflicts, listener binds) are ``Config``'s hook, so they run last.
The first error found is raised.

Routes and upstreams written through the admin API are checked by the same code: their JSON
documents become nodes (``nodes.document_node``) appended to the file's ``routes`` list and
``upstreams`` mapping, and the whole result is built as if it were one file
(``validate_dynamic``). Their scalars are literal: ``${VAR}`` is never substituted in them.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from isekai.config import defaults, metrics_policy, policies, units
from isekai.config.meta import Setting, keys_of, settings_of
from isekai.config.nodes import (
    API_MARK,
    API_SOURCE,
    JSON_NODE_BUDGET,
    MAP_TAG,
    SEQ_TAG,
    STR_TAG,
    LiteralScalar,
    Reader,
    document_node,
    join,
    parse,
)
from isekai.config.policies import PolicySpec
from isekai.config.rules import Where, is_loopback
from isekai.config.schema import Config, Route, Target
from isekai.errors import ConfigError
from isekai.store.urls import parse_store_url

__all__ = [
    "API_SOURCE",
    "file_documents",
    "file_policies",
    "is_loopback",
    "load_config",
    "load_config_text",
    "read_document",
    "validate_dynamic",
]

_ROOT_WHAT = "a mapping of settings (listeners, upstreams, routes, ...)"
_NOT_YET: frozenset[str] = frozenset()  # top-level keys of later releases
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_parse_bind = functools.partial(units.parse_address, bind=True)
_ENVELOPE = keys_of(PolicySpec)  # type, deadline: the keys of every policy
_POLICY_WHAT = "a policy: a mapping with 'type' and the family's keys"
_TARGET_WHAT = "a target: 'host:port' or a mapping with address and weight"
_RETRY_ON_WHAT = "connect_failure, reset, timeout or a 5xx status"


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    # a big file makes ~10 objects per line, all kept: the cyclic GC would rescan them again
    # and again while they are made (a third of the time of a 10,000-route file)
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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


@_no_gc()
def load_config_text(
    text: str, source: str = "<string>", *, env: Mapping[str, str] | None = None
) -> Config:
    """Validate YAML ``text`` into a ``Config``; ``source`` names it in errors.

    ``env`` is the mapping ``${VAR}`` references are looked up in (default ``os.environ``).
    """
    root = parse(text, source)
    return _Builder(source, os.environ if env is None else env).config(root)


@_no_gc()
def validate_dynamic(
    text: str,
    source: str = "<string>",
    *,
    routes: Sequence[Mapping[str, Any]] = (),
    upstreams: Mapping[str, Mapping[str, Any]] | None = None,
    policies: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Validate the config file ``text`` plus routes, upstreams and policies given as JSON
    documents.

    Each of ``routes`` is a route mapping as in YAML (with its ``name``); ``upstreams`` maps a
    name to an upstream mapping (without the name), ``policies`` a name to a policy mapping
    (without the name). They are appended, in order, after the file's own routes, upstreams
    and policies, and the whole is validated exactly as one file would be:
    the result's ``routes`` are the file's followed by these. Raises ``ConfigError`` as
    `load_config_text` does; a mistake inside one of the documents has ``file`` `API_SOURCE`,
    no line, and a ``path`` into the whole config (``routes[5].upstream``,
    ``upstreams.users.targets[0]``).
    """
    root = parse(text, source)
    if not isinstance(root, MappingNode) or (not routes and not upstreams and not policies):
        return _Builder(source, os.environ if env is None else env).config(root)
    reader = Reader(source, os.environ if env is None else env)
    pairs = list(reader.pairs(root, "").values())  # merge keys resolved, as the builder would
    added: list[tuple[str, Node, list[Any]]] = [
        ("upstreams", MappingNode(MAP_TAG, [], API_MARK, API_MARK), []),
        ("policies", MappingNode(MAP_TAG, [], API_MARK, API_MARK), []),
        ("routes", SequenceNode(SEQ_TAG, [], API_MARK, API_MARK), []),
    ]
    for at, docs in ((0, upstreams), (1, policies)):
        for name, doc in (docs or {}).items():
            key = LiteralScalar(STR_TAG, name, API_MARK, API_MARK)
            added[at][2].append((key, document_node(doc)))
    added[2][2].extend(document_node(doc) for doc in routes)
    for key, empty, extra in added:
        if not extra:
            continue
        at = next((i for i, (k, _) in enumerate(pairs) if k.value == key), None)
        if at is None:
            pairs.append((ScalarNode(STR_TAG, key, API_MARK, API_MARK), empty))
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


def read_document(
    cls: type, doc: Mapping[str, Any], path: str, *, extra: Mapping[str, Any] | None = None
) -> Any:
    """One JSON document (a route, an upstream, a policy: ``PolicySpec``) read into ``cls`` by
    the same reader and rules as a file; errors have ``file`` `API_SOURCE` and paths under
    ``path``. ``extra`` gives fields that are not in the document (a route's ``index``, an
    upstream's or policy's ``name``)."""
    builder = _Builder(API_SOURCE, {})
    node = document_node(doc)
    if extra and "name" in extra and cls is not Route:  # a mapping key, as in `upstreams`
        builder.name(node, path, _plan(cls).entity, extra["name"])
    return builder.object(cls, node, path, extra=dict(extra or {}))


def file_documents(
    text: str, source: str = "<string>"
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The routes and upstreams of config file ``text`` as JSON-compatible documents.

    Values are as written: ``${VAR}`` references are kept, not substituted. The file is
    expected to be valid (see `load_config_text`); raises ``ConfigError`` otherwise.
    """
    root = parse(text, source)
    reader = Reader(source, {}, literal=True)
    routes: list[dict[str, Any]] = []
    upstreams: dict[str, dict[str, Any]] = {}
    if not isinstance(root, MappingNode):
        return routes, upstreams
    fields = reader.pairs(root, "")
    budget = [JSON_NODE_BUDGET * 100]
    if "routes" in fields and isinstance(fields["routes"][1], SequenceNode):
        for i, node in enumerate(fields["routes"][1].value):
            routes.append(reader.plain(node, f"routes[{i}]", budget))
    if "upstreams" in fields and isinstance(fields["upstreams"][1], MappingNode):
        for name, (_, node) in reader.pairs(fields["upstreams"][1], "upstreams").items():
            upstreams[name] = reader.plain(node, join("upstreams", name), budget)
    return routes, upstreams


def file_policies(text: str, source: str = "<string>") -> dict[str, dict[str, Any]]:
    """The named policies of config file ``text`` as JSON-compatible documents (values as
    written, as `file_documents` gives routes and upstreams)."""
    root = parse(text, source)
    reader = Reader(source, {}, literal=True)
    found: dict[str, dict[str, Any]] = {}
    if not isinstance(root, MappingNode):
        return found
    fields = reader.pairs(root, "")
    budget = [JSON_NODE_BUDGET * 100]
    if "policies" in fields and isinstance(fields["policies"][1], MappingNode):
        for name, (_, node) in reader.pairs(fields["policies"][1], "policies").items():
            found[name] = reader.plain(node, join("policies", name), budget)
    return found


class _Plan(NamedTuple):
    """How to read one config class: its settings by key, and what the mapping allows."""

    settings: dict[str, Setting]
    allowed: tuple[str, ...]
    required: tuple[str, ...]
    nullable: tuple[str, ...]
    entity: str  # "route": what its names are called in messages
    validate: Callable[[dict[str, Any], Any], None] | None


_PLANS: dict[type, _Plan] = {}


def _plan(cls: type) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        pairs = settings_of(cls)
        plan = _PLANS[cls] = _Plan(
            dict(pairs),
            tuple(key for key, _ in pairs),
            tuple(key for key, s in pairs if s.required),
            tuple(key for key, s in pairs if s.nullable),
            getattr(cls, "entity", cls.__name__.lower()),
            getattr(cls, "validate", None),
        )
    return plan


class _Builder(Reader):
    """Reads any config class from its node, field by field, by each field's kind."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        super().__init__(source, env)
        self.wheres: dict[int, Where] = {}
        self.kinds: dict[str, Callable[[Setting, Node, str], Any]] = {
            "duration": self.duration_value,
            "size": self.size_value,
            "int": self.int_value,
            "number": lambda s, n, p: self.number(n, p, s.minimum, s.maximum),
            "workers": self.workers,
            "bool": lambda s, n, p: self.boolean(n, p),
            "string": lambda s, n, p: self.string(n, p, s.what or "a string"),
            "name": lambda s, n, p: self.name(n, p, s.what or "item"),
            "ref": lambda s, n, p: self.string(n, p, s.what or "a name"),
            "rate": lambda s, n, p: self.check(
                n, p, units.parse_rate_spec, self.string(n, p, "a rate like 100/s")
            ),
            "cidr": lambda s, n, p: self.parsed(units.parse_cidr, s, n, p),
            "host_pattern": lambda s, n, p: self.parsed(units.parse_host_pattern, s, n, p),
            "path_pattern": lambda s, n, p: self.checked(units.parse_path_pattern, s, n, p),
            "rewrite": lambda s, n, p: self.checked(units.check_rewrite_template, s, n, p),
            "strip_prefix": self.strip_prefix,
            "method": lambda s, n, p: self.parsed(units.parse_method, s, n, p),
            "bind": lambda s, n, p: self.checked(_parse_bind, s, n, p),
            "target": self.target,
            "address": lambda s, n, p: self.checked(units.parse_address, s, n, p),
            "hash_on": lambda s, n, p: self.checked(units.check_hash_on, s, n, p),
            "request_target": lambda s, n, p: self.checked(units.check_request_target, s, n, p),
            "host_port": lambda s, n, p: self.checked(units.check_host_port, s, n, p),
            "retry_on": self.retry_on,
            "store_url": lambda s, n, p: self.checked(parse_store_url, s, n, p),
            "enum": self.enum,
            "headers": lambda s, n, p: self.headers(n, p),
            "header_name": lambda s, n, p: self.checked(units.check_header_name, s, n, p),
            "header_template": self.header_template,
            "header_map": self.header_map,
            "origin": lambda s, n, p: self.parsed(units.parse_origin, s, n, p),
            "metric_name": lambda s, n, p: self.checked(metrics_policy.check_metric_name, s, n, p),
            "metric_labels": lambda s, n, p: self.metric_labels(n, p),
            "policy": self.policy_item,
            "json": lambda s, n, p: self.plain(n, p, [JSON_NODE_BUDGET]),
            "object": lambda s, n, p: self.object(s.cls, n, p),
            "list": self.list_value,
            "map": self.map_value,
        }

    def config(self, root: Node) -> Config:
        extra = {"source": self.source}
        return self.object(Config, root, "", what=_ROOT_WHAT, not_yet=_NOT_YET, extra=extra)

    def object(
        self,
        cls: Any,
        node: Node,
        path: str,
        *,
        what: str = "a mapping",
        not_yet: frozenset[str] = frozenset(),
        extra: dict[str, Any] | None = None,
        envelope: tuple[str, ...] = (),
    ) -> Any:
        # envelope: keys allowed in the mapping, read by the caller (a policy's type, deadline)
        if cls is PolicySpec:
            return self.policy(node, path, (extra or {}).get("name"))
        plan = _PLANS.get(cls) or _plan(cls)
        fields = self.mapping(
            node,
            path,
            (*envelope, *plan.allowed) if envelope else plan.allowed,
            required=plan.required,
            nullable=plan.nullable,
            what=what,
            not_yet=not_yet,
        )
        values = {} if extra is None else extra
        settings, kinds = plan.settings, self.kinds
        for key, (_, value_node) in fields.items():
            if envelope and key in envelope:
                continue
            setting = settings[key]
            values[key] = kinds[setting.kind](setting, value_node, f"{path}.{key}" if path else key)
        where = Where(self, path, node, fields)
        if plan.validate is not None:
            plan.validate(values, where)
        result = cls(**values)
        self.wheres[id(result)] = where
        return result

    # -- kinds ------------------------------------------------------------------------------

    def parsed(self, parse: Callable[[str], Any], setting: Setting, node: Node, path: str) -> Any:
        # the string, as the parser returns it (normalised)
        return self.check(node, path, parse, self.string(node, path, setting.what or "a string"))

    def checked(self, parse: Callable[[str], Any], setting: Setting, node: Node, path: str) -> str:
        # the string as written, once the parser accepts it
        text = self.string(node, path, setting.what or "a string")
        self.check(node, path, parse, text)
        return text

    def duration_value(self, setting: Setting, node: Node, path: str) -> float:
        seconds = self.duration(node, path, allow_zero=setting.minimum == 0)
        if setting.maximum is not None and seconds > setting.maximum:
            most = next(
                f"{setting.maximum // size:g}{unit}"
                for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
                if setting.maximum % size == 0 or unit == "s"
            )
            message = f"must be at most {most}, got {node.value}"
            raise self.error(node, path, message)
        return seconds

    def size_value(self, setting: Setting, node: Node, path: str) -> int:
        if setting.minimum != 0:
            size = self.size(node, path)
            if setting.minimum is not None and size < setting.minimum:
                message = f"must be at least {int(setting.minimum)} bytes, got {size}"
                raise self.error(node, path, message)
            if setting.maximum is not None and size > setting.maximum:
                message = f"must be at most {int(setting.maximum)} bytes, got {size}"
                raise self.error(node, path, message)
            return size
        value, _ = self.scalar(node, path, "a size like 512, 8KiB or 1MiB")
        return self.check(node, path, units.parse_size, value)

    def int_value(self, setting: Setting, node: Node, path: str) -> int:
        lowest = -(2**63) if setting.minimum is None else int(setting.minimum)
        highest = None if setting.maximum is None else int(setting.maximum)
        return self.integer(node, path, lowest, highest)

    def workers(self, setting: Setting, node: Node, path: str) -> int:
        value, substituted = self.scalar(node, path, "a positive integer or 'auto'")
        if value == "auto":
            return os.cpu_count() or 1
        if isinstance(value, str) and not (substituted and value.strip().lstrip("+-").isdigit()):
            raise self.error(node, path, f"expected a positive integer or 'auto', got {value!r}")
        return self.integer(node, path, 1)

    def enum(self, setting: Setting, node: Node, path: str) -> str:
        value = self.string(node, path, setting.what or "a string")
        if setting.case == "upper":
            value = value.upper()
        elif setting.case == "lower":
            value = value.lower()
        if value not in setting.choices:
            supported = ", ".join(setting.choices)
            message = setting.unsupported or "{value!r} is not one of: {choices}"
            raise self.error(node, path, message.format(value=value, choices=supported))
        return value

    def target(self, setting: Setting, node: Node, path: str) -> Target:
        # "host:port", or {address: "host:port", weight: N}
        if isinstance(node, MappingNode):
            return self.object(Target, node, path, what=_TARGET_WHAT)
        value, substituted = self.scalar(node, path, _TARGET_WHAT)
        if substituted is None and not isinstance(value, str):
            raise self.error(node, path, f"expected {_TARGET_WHAT}, got {self.describe(node)}")
        return Target(*self.parsed(units.parse_address, setting, node, path))

    def retry_on(self, setting: Setting, node: Node, path: str) -> str | int:
        # a retry condition: connect_failure, reset, timeout, or a 5xx status (an int)
        value, substituted = self.scalar(node, path, _RETRY_ON_WHAT)
        if substituted is not None:
            value = int(substituted) if substituted.strip().isdigit() else substituted
        if isinstance(value, str) and value in defaults.RETRY_CONDITIONS:
            return value
        if isinstance(value, int) and not isinstance(value, bool) and 500 <= value <= 599:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            raise self.error(node, path, f"a retried status is a 5xx (500 to 599), got {value}")
        shown = repr(value) if isinstance(value, str) else self.describe(node)
        raise self.error(node, path, f"expected {_RETRY_ON_WHAT}, got {shown}")

    def strip_prefix(self, setting: Setting, node: Node, path: str) -> str | bool:
        value, _ = self.scalar(node, path, "a path prefix or true")
        if isinstance(value, bool):
            return value
        text = self.string(node, path, "a path prefix or true")
        return self.check(node, path, units.check_path_prefix, text)

    def headers(self, node: Node, path: str) -> tuple[tuple[str, str], ...]:
        headers: list[tuple[str, str]] = []
        what = "a mapping of header names to values"
        for name, (key_node, value_node) in self.mapping(node, path, None, what=what).items():
            at = join(path, name)
            self.check(key_node, at, units.check_header_name, name)
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
            headers.append(
                (name, self.check(value_node, at, units.check_header_value, text).strip())
            )
        return tuple(headers)

    def header_template(self, setting: Setting, node: Node, path: str) -> str:
        # a header value whose ${client_ip}-style placeholders are kept for the policy
        value, substituted = self.scalar(node, path, "a header value", placeholders=True)
        if substituted is not None:
            text = substituted
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            text = node.value
        else:
            raise self.error(node, path, f"expected a header value, got {self.describe(node)}")
        return self.check(node, path, units.check_header_template, text).strip()

    def header_map(self, setting: Setting, node: Node, path: str) -> tuple[tuple[str, Any], ...]:
        # header name -> value (by the item's kind), as pairs; names unique in any case
        if not isinstance(node, MappingNode):
            what = "a mapping of header names to values"
            raise self.error(node, path, f"expected {what}, got {self.describe(node)}")
        element = setting.item
        assert element is not None
        read = self.kinds[element.kind]
        pairs: list[tuple[str, Any]] = []
        seen: set[str] = set()
        for name, (key_node, value_node) in self.pairs(node, path).items():
            at = join(path, name)
            self.check(key_node, at, units.check_header_name, name)
            if name.lower() in seen:
                raise self.error(key_node, at, f"header {name!r} is given twice")
            seen.add(name.lower())
            if isinstance(value_node, ScalarNode) and value_node.tag == "tag:yaml.org,2002:null":
                continue  # null: as if absent
            pairs.append((name, read(element, value_node, at)))
        return tuple(pairs)

    def metric_labels(self, node: Node, path: str) -> tuple[tuple[str, str], ...]:
        # label name -> label source (metrics policy), as pairs in the order written
        what = "a mapping of label names to sources like header:x-tier"
        pairs: list[tuple[str, str]] = []
        for name, (key_node, value_node) in self.mapping(node, path, None, what=what).items():
            at = join(path, name)
            self.check(key_node, at, metrics_policy.check_label_name, name)
            source = self.string(value_node, at, "a label source like header:x-tier")
            self.check(value_node, at, metrics_policy.parse_label_source, source)
            pairs.append((name, source))
        return tuple(pairs)

    def policy_item(self, setting: Setting, node: Node, path: str) -> str | PolicySpec:
        # in a route's or listener's list: a policy's name, or a policy written inline
        if isinstance(node, MappingNode):
            return self.policy(node, path)
        what = "a policy name or a policy mapping"
        value, substituted = self.scalar(node, path, what)
        if substituted is None and not isinstance(value, str):
            raise self.error(node, path, f"expected {what}, got {self.describe(node)}")
        return self.name(node, path, "policy")

    def policy(self, node: Node, path: str, name: str | None = None) -> PolicySpec:
        """A policy mapping: ``type`` picks the family, whose config class is read by
        `object` like any other; ``deadline`` and ``type`` are every policy's keys."""
        if not isinstance(node, MappingNode):
            raise self.error(node, path, f"expected {_POLICY_WHAT}, got {self.describe(node)}")
        fields = self.pairs(node, path)
        type_path = join(path, "type")
        if "type" not in fields:
            known = ", ".join(policies.known_types())
            raise self.error(node, type_path, f"missing required key 'type' (known types: {known})")
        type_key, type_node = fields["type"]
        if self.is_null(type_node, type_path):
            raise self.error(type_key, type_path, "'type' needs a value")
        kind = self.string(type_node, type_path, "a policy type")
        cls = policies.config_class(kind)
        if cls is None:
            raise self.error(type_node, type_path, policies.unknown_type(kind))
        options = self.object(cls, node, path, envelope=_ENVELOPE)
        deadline = defaults.POLICY_DEADLINE
        if "deadline" in fields:
            deadline_path = join(path, "deadline")
            deadline_node = fields["deadline"][1]
            if not self.is_null(deadline_node, deadline_path):
                deadline = self.duration(deadline_node, deadline_path)
        spec = PolicySpec(kind, options, name, deadline)
        self.wheres[id(spec)] = self.wheres[id(options)]
        return spec

    def list_value(self, setting: Setting, node: Node, path: str) -> tuple[Any, ...]:
        if setting.single and isinstance(node, ScalarNode):
            node = SequenceNode(SEQ_TAG, [node], node.start_mark, node.end_mark)
        items = self.sequence(node, path, setting.what or "a list")
        if not items and setting.empty:
            raise self.error(node, path, setting.empty)
        element = setting.item
        assert element is not None
        read = self.kinds[element.kind]
        values: list[Any] = []
        seen: list[Any] = []  # what makes items the same (unique_by), when they must differ
        names: dict[str, int] = {}
        for i, item in enumerate(items):
            at = f"{path}[{i}]"
            if setting.index_field:
                value = self.object(element.cls, item, at, extra={setting.index_field: i})
            else:
                value = read(element, item, at)
            if setting.unique:
                same = getattr(value, setting.unique_by) if setting.unique_by else value
                # 1 == True and 502 == 502.0 in Python; a status and a word never are
                if any(same == other and type(same) is type(other) for other in seen):
                    text = item.value if isinstance(item, ScalarNode) else same
                    raise self.error(item, at, setting.unique.format(text=text, value=value))
                seen.append(same)
            if setting.unique_name:
                if value.name in names:
                    message = (
                        f"duplicate {setting.unique_name} name {value.name!r} "
                        f"(also {path}[{names[value.name]}])"
                    )
                    raise self.wheres[id(value)].error("name", message)
                names[value.name] = i
            values.append(value)
        return tuple(values)

    def map_value(self, setting: Setting, node: Node, path: str) -> Mapping[str, Any]:
        element = setting.item
        assert element is not None and element.cls is not None and setting.key_field
        entity = _plan(element.cls).entity
        values: dict[str, Any] = {}
        for name, (key_node, value_node) in self.mapping(node, path, None).items():
            at = join(path, name)
            self.name(key_node, at, entity, name)
            values[name] = self.object(element.cls, value_node, at, extra={setting.key_field: name})
        return MappingProxyType(values)
