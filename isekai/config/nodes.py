"""YAML nodes with their lines: typed scalar access, ``${VAR}``, merge keys, located errors.

``yaml.compose`` gives a node tree in which every node knows its line; we never let PyYAML
build Python objects for a document. A `Reader` reads nodes as typed values carrying the
dotted path of where they are (``routes[2].match.path``), so an error names the exact line and
key. ``${VAR}`` / ``${VAR:-default}`` are substituted in scalar values before the scalar is
typed, so ``port: ${PORT:-8080}`` is an int. A key whose value is null counts as absent.

JSON documents (from the admin API) become nodes too (`document_node`): their scalars are
literal (never substituted) and their errors name `API_SOURCE` instead of a line.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from isekai.config import units
from isekai.errors import ConfigError

__all__ = [
    "API_MARK",
    "API_SOURCE",
    "JSON_NODE_BUDGET",
    "MAP_TAG",
    "SEQ_TAG",
    "STR_TAG",
    "Fields",
    "LiteralScalar",
    "Reader",
    "document_node",
    "join",
    "parse",
]

_ENV_REF = re.compile(r"\$\$\{|\$\{([^}]*)(\})?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")

_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"
STR_TAG = "tag:yaml.org,2002:str"
MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"

API_SOURCE = "<api>"  # ConfigError.file of a mistake inside a document given to validate_dynamic
API_MARK = yaml.Mark(API_SOURCE, 0, 0, 0, None, None)
_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
JSON_NODE_BUDGET = 100_000

Fields = dict[str, tuple[Node, Node]]  # key -> (key node, value node), in document order
T = TypeVar("T")


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


class LiteralScalar(ScalarNode):
    """A scalar from a JSON document: its text is never ``${VAR}``-substituted."""


_QUOTED_PREVIEW = 100  # characters of a quoted value kept in a message
_LONG_MESSAGE = 400  # shorter messages are left as they are
_LONG_QUOTED = re.compile(
    r"'(?:[^'\\\n]|\\.){N,}'|\"(?:[^\"\\\n]|\\.){N,}\"".replace("N", str(_QUOTED_PREVIEW))
)


def shorten_values(message: str) -> str:
    """``message`` with every quoted value longer than a line cut to a preview: a mistake in
    a megabyte value is reported in a line, and the value does not come back whole."""

    def cut(match: re.Match[str]) -> str:
        text = match.group(0)
        return f"{text[:_QUOTED_PREVIEW]}...{text[0]} ({len(text) - 2} characters)"

    return _LONG_QUOTED.sub(cut, message) if len(message) > _LONG_MESSAGE else message


def document_node(value: Any) -> Node:
    # a JSON value as the node YAML would compose for it, every scalar explicitly tagged
    if isinstance(value, Mapping):
        pairs = [
            (LiteralScalar(STR_TAG, str(key), API_MARK, API_MARK), document_node(item))
            for key, item in value.items()
        ]
        return MappingNode(MAP_TAG, pairs, API_MARK, API_MARK)
    if isinstance(value, (list, tuple)):
        items = [document_node(item) for item in value]
        return SequenceNode(SEQ_TAG, items, API_MARK, API_MARK)
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
        tag, text = STR_TAG, value
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")
    return LiteralScalar(tag, text, API_MARK, API_MARK)


def parse(text: str, source: str) -> Node:
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


def _plain(number: float | None) -> str:
    return f"{number:g}"


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Reader:
    """Typed access to YAML nodes; every failure becomes a located ConfigError."""

    def __init__(self, source: str, env: Mapping[str, str], *, literal: bool = False) -> None:
        self.source = source
        self.env = env
        self.literal = literal  # True: no ${VAR} substitution anywhere

    def error(
        self, node: Node, path: str, message: str, cls: type[ConfigError] = ConfigError
    ) -> ConfigError:
        message = shorten_values(message)
        if node.start_mark is API_MARK:
            return cls(message, path=path, file=API_SOURCE)
        return cls(message, path=path, file=self.source, line=node.start_mark.line + 1)

    # -- scalars ----------------------------------------------------------------------------

    def _substitute(self, node: ScalarNode, path: str, placeholders: bool = False) -> str:
        # placeholders: a header-value template, whose ${client_ip}-style placeholders stay
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            inner = match.group(1)
            if match.group(2) is None:
                raise self.error(node, path, f"unclosed '${{{inner}': write ${{NAME}}")
            if placeholders and units.HEADER_PLACEHOLDER.fullmatch(inner):
                return match.group(0)
            name, has_default, default = inner.partition(":-")
            if placeholders and not _ENV_NAME.fullmatch(name):
                raise self.error(
                    node,
                    path,
                    f"bad reference '${{{inner}}}': placeholders are {units.PLACEHOLDERS}; "
                    "environment variables are ${NAME} or ${NAME:-default}",
                )
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

    def scalar(
        self, node: Node, path: str, what: str, *, placeholders: bool = False
    ) -> tuple[Any, str | None]:
        # the scalar's Python value, and its text after substitution if it had ${...}
        if not isinstance(node, ScalarNode):
            raise self.error(node, path, f"expected {what}, got {self.describe(node)}")
        tag, text, substituted = node.tag, node.value, None
        if "${" in text and not self.literal and not isinstance(node, LiteralScalar):
            implicit = tag == _RESOLVER.resolve(ScalarNode, text, (True, False))
            text = substituted = self._substitute(node, path, placeholders)
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

    def number(
        self, node: Node, path: str, minimum: float | None = None, maximum: float | None = None
    ) -> float:
        what = "a number"
        value, substituted = self.scalar(node, path, what)
        if substituted is not None:
            try:
                value = float(substituted)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(node, path, f"expected {what}, got {self.describe(node)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(node, path, f"expected a finite number, got {node.value}")
        low = -math.inf if minimum is None else minimum
        high = math.inf if maximum is None else maximum
        if not low <= value <= high:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            if minimum is not None and maximum is not None:
                message = f"must be from {_plain(minimum)} to {_plain(maximum)}, got {shown}"
            elif minimum is not None:
                message = f"must be at least {_plain(minimum)}, got {shown}"
            else:
                message = f"must be at most {_plain(maximum)}, got {shown}"
            raise self.error(node, path, message)
        try:
            return float(value)
        except OverflowError:  # pragma: no cover - only with no maximum
            raise self.error(node, path, f"{value} is too large") from None

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
        return self.check(node, path, units.parse_name, name, what)

    # -- collections ------------------------------------------------------------------------

    def pairs(self, node: MappingNode, path: str, active: frozenset[int] = frozenset()) -> Fields:
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
                    for key, pair in self.pairs(source, path, active | {id(node)}).items():
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
                    key_node, join(path, key), f"duplicate key {key!r} (first at line {first})"
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
        not_yet: frozenset[str] = frozenset(),
    ) -> Fields:
        if not isinstance(node, MappingNode):
            raise self.error(node, path, f"expected {what}, got {self.describe(node)}")
        fields: Fields = {}
        for key, (key_node, value_node) in self.pairs(node, path).items():
            if allowed is not None and key not in allowed:
                message = f"unknown key {key!r}"
                close = difflib.get_close_matches(key, allowed, n=1)
                if close:
                    message += f" (did you mean {close[0]!r}?)"
                elif key in not_yet:
                    message += " (not supported yet)"
                raise self.error(
                    key_node, join(path, key), f"{message}; allowed keys: {', '.join(allowed)}"
                )
            if key not in nullable and self.is_null(value_node, join(path, key)):
                if key in required:
                    raise self.error(key_node, join(path, key), f"{key!r} needs a value")
                continue
            fields[key] = (key_node, value_node)
        for key in required:
            if key not in fields:
                raise self.error(node, join(path, key), f"missing required key {key!r}")
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
            raise self.error(node, path, f"value too large (more than {JSON_NODE_BUDGET} items)")
        if id(node) in active:
            raise self.error(node, path, "an alias refers back to a value that contains it")
        inner = active | {id(node)}
        if isinstance(node, MappingNode):
            return {
                key: self.plain(value, join(path, key), budget, inner)
                for key, (_, value) in self.pairs(node, path).items()
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
