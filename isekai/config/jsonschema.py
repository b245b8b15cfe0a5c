"""The published JSON Schema (draft 2020-12) of the config, made from the schema's metadata.

`document_schema` is the whole-file schema (``isekai schema`` prints it; it is committed as
docs/isekai.schema.json for editors); `class_schema` gives one class's object schema with its
nested classes as ``$ref`` (the admin API publishes Route, Upstream, ... this way). Each kind
says what the loader checks where JSON Schema can say it: bounds, choices, the grammar of
names, durations, sizes, paths, hosts and header fields, unknown keys, required keys; the
cross-field rules that JSON can express come from ``rules.JSON_RULES``. What it cannot say (a
route naming an upstream that exists, two routes that tie, a rewrite naming a parameter of the
path) the loader still judges. Null is the same as absent for optional keys, as in YAML.

In a file (``env=True``) any scalar may also be a ``${VAR}`` reference, substituted at load.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from isekai.config import defaults, metrics_policy, policies, rules, units
from isekai.config.meta import Setting, settings_of
from isekai.config.policies import PolicySpec
from isekai.config.schema import Config
from isekai.store.urls import SCHEMES

__all__ = ["class_schema", "classes", "document_schema", "dumps", "kind_schema"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_NULL = {"type": "null"}
_ENV = {
    "type": "string",
    "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}",
    "description": "A ${VAR} or ${VAR:-default} reference, substituted when the file is read.",
}
_NAME = {"type": "string", "pattern": units.NAME_PATTERN, "maxLength": 128}
_PATH = {"type": "string", "pattern": units.PATH_PATTERN}
_ADDRESS = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]{h}):[0-9]{{1,5}}$"  # as units.parse_address
_CIDR = r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$"
_ORIGIN = r"^(\*|([A-Za-z][A-Za-z0-9+.\-]*://)?[^\s/?#]+)$"  # units.parse_origin judges

Ref = Callable[[type], str]


def _nocase(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


def _positive(number: dict[str, Any], pattern: str, minimum: float | None) -> dict[str, Any]:
    # a duration or size: a number or a string; zero only when minimum is 0
    string: dict[str, Any] = {"type": "string", "pattern": pattern}
    if minimum == 0:
        return {"anyOf": [{**number, "minimum": 0}, string]}
    string = {"type": "string", "allOf": [{"pattern": pattern}, {"pattern": units.NONZERO_PATTERN}]}
    return {"anyOf": [{**number, "exclusiveMinimum": 0}, string]}


def kind_schema(setting: Setting, ref: Ref, *, env: bool = False) -> dict[str, Any]:
    """The schema of one value of ``setting`` (not counting null)."""
    kind = setting.kind
    schema: dict[str, Any]
    if kind == "duration":
        number: dict[str, Any] = {"type": "number"}
        if setting.maximum is not None:
            number["maximum"] = setting.maximum
        schema = _positive(number, units.DURATION_PATTERN, setting.minimum)
    elif kind == "size":
        whole: dict[str, Any] = {"type": "integer"}
        if setting.minimum:
            whole["minimum"] = int(setting.minimum)
        schema = _positive(whole, units.SIZE_PATTERN, setting.minimum)
    elif kind == "rate":
        rate = [{"pattern": units.RATE_PATTERN}, {"pattern": units.NONZERO_PATTERN}]
        schema = {"type": "string", "allOf": rate}
    elif kind == "int":
        schema = {"type": "integer"}
        if setting.minimum is not None:
            schema["minimum"] = int(setting.minimum)
        if setting.maximum is not None:
            schema["maximum"] = int(setting.maximum)
    elif kind == "workers":
        schema = {"anyOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}]}
    elif kind == "number":
        schema = {"type": "number"}
        if setting.minimum is not None:
            schema["minimum"] = setting.minimum
        if setting.maximum is not None:
            schema["maximum"] = setting.maximum
    elif kind == "bool":
        schema = {"type": "boolean"}
    elif kind == "string":
        schema = {"type": "string"}
    elif kind in ("name", "ref"):
        schema = dict(_NAME)
    elif kind == "cidr":
        schema = {"type": "string", "pattern": _CIDR}
    elif kind == "host_pattern":
        schema = {"type": "string", "pattern": units.HOST_PATTERN, "maxLength": 255}
    elif kind in ("path_pattern", "rewrite"):
        schema = dict(_PATH)
    elif kind == "strip_prefix":
        schema = {"anyOf": [{"type": "boolean"}, _PATH]}
    elif kind == "method":
        schema = {"type": "string", "pattern": units.TOKEN_PATTERN}
    elif kind == "bind":
        schema = {"type": "string", "pattern": _ADDRESS.format(h="*")}
    elif kind == "target":
        address = {"type": "string", "pattern": _ADDRESS.format(h="+")}
        assert setting.cls is not None
        mapping = _nested(setting, ref, env=env)
        return {"anyOf": [address, mapping, _ENV]} if env else {"anyOf": [address, mapping]}
    elif kind == "address":
        schema = {"type": "string", "pattern": _ADDRESS.format(h="+")}
    elif kind == "hash_on":
        schema = {"type": "string", "pattern": units.HASH_ON_PATTERN}
    elif kind == "request_target":
        schema = {"type": "string", "pattern": units.REQUEST_TARGET_PATTERN}
    elif kind == "host_port":
        schema = {"type": "string", "pattern": units.HOST_PORT_PATTERN}
    elif kind == "retry_on":
        words = {"type": "string", "enum": list(defaults.RETRY_CONDITIONS)}
        schema = {"anyOf": [words, {"type": "integer", "minimum": 500, "maximum": 599}]}
    elif kind == "store_url":
        schemes = "|".join(_nocase(scheme) for scheme in SCHEMES)
        schema = {"type": "string", "pattern": f"^({schemes})://.+$"}
    elif kind == "enum":
        choices = "|".join(_nocase(choice) for choice in setting.choices)
        schema = {"type": "string", "pattern": f"^({choices})$"}
    elif kind == "headers":
        value = {"type": "string", "pattern": units.HEADER_VALUE_PATTERN}
        schema = {
            "type": "object",
            "propertyNames": {"pattern": units.TOKEN_PATTERN},
            "additionalProperties": {"anyOf": [value, {"type": "number"}, _NULL]},
        }
        env = False  # the values are leaves of their own
    elif kind == "header_name":
        schema = {"type": "string", "pattern": units.TOKEN_PATTERN}
    elif kind == "header_template":
        value = {"type": "string", "pattern": units.HEADER_VALUE_PATTERN}
        schema = {"anyOf": [value, {"type": "number"}]}
        env = False  # ${...} is part of the template's grammar
    elif kind == "header_map":
        assert setting.item is not None
        return {
            "type": "object",
            "propertyNames": {"pattern": units.TOKEN_PATTERN},
            "additionalProperties": {"anyOf": [kind_schema(setting.item, ref, env=env), _NULL]},
        }
    elif kind == "origin":
        schema = {"type": "string", "pattern": _ORIGIN}
    elif kind == "metric_name":
        ours = _nocase(metrics_policy.OURS)
        schema = {
            "type": "string",
            "pattern": metrics_policy.METRIC_NAME_PATTERN,
            "not": {"pattern": f"^{ours}"},
        }
    elif kind == "metric_labels":
        return {
            "type": "object",
            "propertyNames": {
                "pattern": metrics_policy.LABEL_NAME_PATTERN,
                "not": {"pattern": "^(__|le$)"},
            },
            "additionalProperties": {
                "type": "string",
                "pattern": metrics_policy.LABEL_SOURCE_PATTERN,
            },
        }
    elif kind == "policy":
        options = [dict(_NAME), {"$ref": ref(PolicySpec)}]
        return {"anyOf": [*options, _ENV]} if env else {"anyOf": options}
    elif kind == "json":
        if not setting.schema:
            return {}
        schema = {}  # a family's own description of the values it takes
    elif kind == "object":
        return _nested(setting, ref, env=env)
    elif kind in ("list", "map"):
        assert setting.item is not None
        element = kind_schema(setting.item, ref, env=env)
        if kind == "map":
            return {
                "type": "object",
                "propertyNames": {"pattern": units.NAME_PATTERN},
                "additionalProperties": {"anyOf": [element, _NULL]},
            }
        schema = {"type": "array", "items": element}
        if setting.empty:
            schema["minItems"] = 1
        if setting.unique:
            schema["uniqueItems"] = True
        if setting.single:
            return {"anyOf": [element, schema]}
        return schema
    else:  # pragma: no cover - meta.KINDS is checked when a setting is made
        raise ValueError(f"no JSON Schema for kind {kind!r}")
    if setting.schema:
        schema.update(setting.schema)
    if env:
        return {"anyOf": [schema, _ENV]}
    return schema


def _nested(setting: Setting, ref: Ref, *, env: bool) -> dict[str, Any]:
    # a nested config class: a $ref, or its schema in place (``inline``: the admin API's
    # component list need not know the class)
    assert setting.cls is not None
    if setting.inline:
        return class_schema(setting.cls, ref, env=env)
    return {"$ref": ref(setting.cls)}


def _policy_union(ref: Ref) -> dict[str, Any]:
    # a policy: one of the families' objects, told apart by their `type`
    return {
        "description": "A policy: `type` names its family, whose keys follow.",
        "oneOf": [{"$ref": ref(cls)} for _, cls in policies.family_classes()],
    }


def class_schema(cls: type, ref: Ref, *, env: bool = False) -> dict[str, Any]:
    """The object schema of config class ``cls``: every YAML key, documented.

    ``PolicySpec`` is the union of the policy families; a family's config class has the keys
    of every policy (``type``, ``deadline``) before its own."""
    if cls is PolicySpec:
        return _policy_union(ref)
    family = policies.family_type(cls)
    pairs = settings_of(cls)
    if family is not None:
        pairs = (*settings_of(PolicySpec), *pairs)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for key, setting in pairs:
        if family is not None and key == "type":
            properties[key] = {"const": family, "description": setting.doc}
            required.append(key)
            continue
        value = {**kind_schema(setting, ref, env=env), "description": setting.doc}
        if setting.required:
            required.append(key)
        elif not setting.nullable:
            value = {"anyOf": [kind_schema(setting, ref, env=env), _NULL]}
            value["description"] = setting.doc
        properties[key] = value
    schema: dict[str, Any] = {
        "type": "object",
        "description": (cls.__doc__ or "").strip().split("\n")[0],
        "additionalProperties": False,
        "properties": properties,
    }
    if required:
        schema["required"] = required
    schema.update(rules.JSON_RULES.get(cls.__name__, {}))
    return schema


def classes(root: type = Config) -> dict[str, type]:
    """Every config class reachable from ``root``, by name, ``root`` first."""
    found: dict[str, type] = {}

    def visit(cls: type) -> None:
        if cls.__name__ in found:
            return
        found[cls.__name__] = cls
        if cls is PolicySpec:
            for _, family in policies.family_classes():
                visit(family)
        for _, setting in settings_of(cls):
            element = setting.item or setting
            if element.cls is not None:
                visit(element.cls)

    visit(root)
    return found


def document_schema() -> dict[str, Any]:
    """The whole-file schema: a config file as written (``${VAR}`` references allowed)."""

    def ref(cls: type) -> str:
        return f"#/$defs/{cls.__name__}"

    found = classes()
    inline = {
        (setting.item or setting).cls
        for cls in found.values()
        for _, setting in settings_of(cls)
        if (setting.item or setting).inline
    }
    defs = {
        name: class_schema(cls, ref, env=True) for name, cls in found.items() if cls not in inline
    }
    root = defs.pop("Config")
    return {
        "$schema": DIALECT,
        "$id": "https://github.com/isekai-gateway/isekai/docs/isekai.schema.json",
        "title": "Isekai gateway configuration",
        **root,
        "description": "An Isekai config file (docs/configuration.md).",
        "$defs": defs,
    }


def dumps(schema: dict[str, Any]) -> str:
    """Stable JSON text: sorted keys, two-space indent, ending in a newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
