"""The field metadata that makes ``schema.py`` the one description of the config.

Each field of a config class is declared with `setting` (a ``dataclasses.field`` carrying a
`Setting`): its *kind* (how a YAML/JSON value becomes the Python value), bounds, choices and
one doc line. ``loader.py`` reads YAML by it, ``jsonschema.py`` publishes it as JSON Schema
(which the admin API validates with), and ``reference.py`` renders the docs tables from it.

Kinds: ``duration`` ``size`` ``int`` ``number`` (int or float) ``bool`` ``string`` ``name``
``ref`` (a name of another item) ``cidr`` ``host_pattern`` ``path_pattern`` ``rewrite``
``strip_prefix`` ``headers`` ``header_name`` ``header_template`` (a header value whose
``${client_ip}``-style placeholders are left for the policy) ``header_map`` (header name ->
``item``, kept as pairs) ``origin`` (CORS) ``metric_name`` ``metric_labels`` (label name ->
source: the ``metrics`` policy) ``policy`` (a policy name or an inline policy)
``enum`` ``bind`` ``target`` (``"host:port"``, or the mapping ``cls``: address and weight)
``address`` (a target's ``host:port`` kept as written) ``hash_on`` (``client_ip``, ``path``,
``header:NAME``, ``cookie:NAME``) ``request_target`` (an origin-form ``/path?query``)
``host_port`` (a ``Host`` value: host, optional port) ``retry_on`` (a retry condition word or a
5xx status) ``method`` ``store_url`` ``workers`` ``json`` (any value)
``object`` (a nested class, ``cls``), ``list`` (of ``item``) and ``map`` (name -> ``item``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "Setting", "default_of", "item", "keys_of", "setting", "settings_of"]

KINDS = frozenset(
    {
        "duration",
        "size",
        "int",
        "number",
        "bool",
        "string",
        "name",
        "ref",
        "rate",
        "cidr",
        "host_pattern",
        "path_pattern",
        "rewrite",
        "strip_prefix",
        "headers",
        "header_name",
        "header_template",
        "header_map",
        "origin",
        "metric_name",
        "metric_labels",
        "policy",
        "enum",
        "bind",
        "target",
        "address",
        "hash_on",
        "request_target",
        "host_port",
        "retry_on",
        "method",
        "store_url",
        "workers",
        "json",
        "object",
        "list",
        "map",
    }
)


@dataclass(frozen=True, slots=True)
class Setting:
    """How one config value is written, checked and documented."""

    kind: str
    doc: str
    minimum: float | None = None  # int: inclusive; duration/size: 0 allowed only if minimum=0
    maximum: float | None = None
    choices: tuple[str, ...] = ()  # enum: the accepted values
    case: str | None = None  # enum: "upper"/"lower", values are normalised to it
    unsupported: str = ""  # enum: message, {value!r} and {choices} filled in
    cls: type | None = None  # object / list of object / map of object
    item: Setting | None = None  # list / map: the setting of each element
    what: str | None = None  # "expected <what>, got ..." (default: by kind)
    empty: str | None = None  # list: an empty list is an error with this message
    unique: str | None = None  # list: a repeated item is an error: {text!r} {value}
    unique_name: str | None = None  # list of object: items' names are unique: "route"...
    unique_by: str | None = None  # list: items are the same when this attribute is ("address")
    inline: bool = False  # JSON Schema: the nested class written in place, not as a $ref
    key_field: str | None = None  # map: the class field the mapping key fills
    index_field: str | None = None  # list: the class field the position fills
    single: bool = False  # list: one item may be written alone, without brackets
    yaml: bool = True  # False: derived (host/port from bind), not a key of its own
    nullable: bool = False  # null is a value, not "absent" (respond.json)
    required: bool = False
    schema: dict[str, Any] | None = None  # JSON Schema keywords overriding the generated ones
    default_doc: str | None = None  # how the default reads in the docs, when not the value


def setting(
    kind: str,
    doc: str,
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    repr: bool = True,  # noqa: A002 - the dataclasses.field name
    compare: bool = True,
    **options: Any,
) -> Any:
    """A dataclass field described by a `Setting` (``required`` when it has no default)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    if not doc or not doc.strip():
        raise ValueError("every setting needs a doc line")
    required = default is dataclasses.MISSING and default_factory is dataclasses.MISSING
    options.setdefault("required", required and options.get("yaml", True))
    meta = {"isekai": Setting(kind, doc, **options)}
    return dataclasses.field(
        default=default,
        default_factory=default_factory,
        repr=repr,
        compare=compare,
        metadata=meta,
    )


def item(kind: str, **options: Any) -> Setting:
    """The `Setting` of a list or map element (its doc is its container's)."""
    return Setting(kind, "", **options)


def settings_of(cls: type) -> tuple[tuple[str, Setting], ...]:
    """``(key, Setting)`` of every YAML key of ``cls``, in order, extra keys last (first when
    the class says ``extra_keys_first``)."""
    found = _SETTINGS.get(cls)
    if found is None:
        pairs = [
            (f.name, f.metadata["isekai"])
            for f in dataclasses.fields(cls)
            if "isekai" in f.metadata and f.metadata["isekai"].yaml
        ]
        extra = list(getattr(cls, "extra_keys", {}).items())
        pairs = [*extra, *pairs] if getattr(cls, "extra_keys_first", False) else [*pairs, *extra]
        found = _SETTINGS[cls] = tuple(pairs)
    return found


def keys_of(cls: type) -> tuple[str, ...]:
    """The YAML keys of ``cls`` in order (what "allowed keys" lists)."""
    return tuple(key for key, _ in settings_of(cls))


def default_of(cls: type, name: str) -> Any:
    """The default value of field ``name`` of ``cls`` (``MISSING`` when required)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return f.default
    return dataclasses.MISSING


_SETTINGS: dict[type, tuple[tuple[str, Setting], ...]] = {}
