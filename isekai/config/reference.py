"""The key tables of docs/configuration.md, rendered from the schema's metadata.

Each table sits between ``<!-- generated:reference:CLASS -->`` and ``<!-- /generated -->``
in the Markdown; `update` rewrites every such block, so a key cannot be added without its row
(and its doc line). ``tests/unit/config/test_reference.py`` fails when the file is stale.

    python -m isekai.config.reference --write docs/configuration.md   # regenerate
    python -m isekai.config.reference --check docs/configuration.md   # exit 1 when stale
    isekai schema --reference                                         # print every table
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Sequence
from typing import Any

from isekai.config.jsonschema import classes
from isekai.config.meta import Setting, default_of, settings_of

__all__ = ["SECTIONS", "render", "render_table", "update"]

# class name -> (what its items are called, the docs anchor of its section)
SECTIONS = {
    "Config": ("top level", "top-level"),
    "Listener": ("listeners", "listeners"),
    "Upstream": ("upstreams", "upstreams"),
    "Target": ("target", "target"),
    "HealthCheck": ("health check", "health-check"),
    "Outlier": ("outlier", "outlier"),
    "Breaker": ("breaker", "breaker"),
    "Retry": ("retry", "retry"),
    "Route": ("routes", "routes"),
    "RouteMatch": ("match", "match"),
    "Respond": ("respond", "respond"),
    "RouteLimits": ("route limits", "route-limits"),
    "Limits": ("limits", "limits"),
    "Admin": ("admin", "admin"),
    "AdminAuth": ("auth", "admin-auth"),
    "LoginLimits": ("login limits", "login-limits"),
    "AdminApiRoutes": ("api routes", "api-routes"),
    "RequestLogs": ("request logs", "request-logs"),
    "AdminOAuth": ("oauth", "admin-oauth"),
    "Store": ("store", "store"),
    "Observability": ("observability", "observability"),
    "Metrics": ("metrics", "metrics"),
    "Tracing": ("tracing", "tracing"),
    "AccessLog": ("access log", "access-log"),
    "Elasticsearch": ("elasticsearch", "elasticsearch"),
    "RouteAccessLog": ("route access log", "route-access-log"),
    "Health": ("health", "health"),
    "PolicySpec": ("policies", "policies"),
    "HeadersConfig": ("headers policy", "headers-policy"),
    "HeaderEdits": ("header edits", "header-edits"),
    "CorsConfig": ("cors policy", "cors-policy"),
    "IpFilterConfig": ("ip_filter policy", "ip_filter-policy"),
    "FaultConfig": ("fault policy", "fault-policy"),
    "FaultAbort": ("fault abort", "fault-abort"),
    "FaultDelay": ("fault delay", "fault-delay"),
    "MetricsConfig": ("metrics policy", "metrics-policy"),
    "HmacConfig": ("hmac policy", "hmac-policy"),
    "HmacKey": ("hmac key", "hmac-key"),
    "IdentityHeaders": ("identity headers", "identity-headers"),
    "CustomCounter": ("metrics counter", "metrics-counter"),
    "CustomHistogram": ("metrics histogram", "metrics-histogram"),
}
_BLOCK = re.compile(r"(<!-- generated:reference:(\w+) -->\n)(.*?)(<!-- /generated -->)", re.S)
_PLAIN_TYPES = {
    "duration": "duration",
    "size": "size",
    "rate": "rate (`100/s`, `10/m`, `30/10s`)",
    "bool": "`true`/`false`",
    "name": "name",
    "cidr": "CIDR",
    "host_pattern": "host pattern",
    "path_pattern": "path pattern",
    "rewrite": "path template",
    "strip_prefix": "path prefix, or `true`",
    "headers": "mapping name → value",
    "bind": "`host:port`",
    "address": "`host:port`",
    "hash_on": "`client_ip`, `path`, `header:NAME` or `cookie:NAME`",
    "request_target": "path",
    "host_port": "`host` or `host:port`",
    "retry_on": "`connect_failure`, `reset`, `timeout` or a status 500–599",
    "method": "method",
    "store_url": "URL",
    "workers": "positive integer or `auto`",
    "json": "any YAML value",
    "header_name": "header name",
    "header_template": "header value template",
    "origin": "origin",
    "metric_name": "metric name",
    "metric_labels": "mapping label name → label source",
}


def _link(cls: type) -> str:
    title, anchor = SECTIONS.get(cls.__name__, (cls.__name__, cls.__name__.lower()))
    return f"[{title}](#{anchor})"


def type_of(setting: Setting) -> str:
    """How a value of ``setting`` is written, in a few words."""
    kind = setting.kind
    if kind == "object" and setting.cls is not None:
        return _link(setting.cls)
    if kind == "policy":
        return "policy name, or an inline [policy](#policies)"
    if kind == "target":
        mapping = f" or {_link(setting.cls)}" if setting.cls is not None else ""
        return f"`host:port`{mapping}"
    if kind == "header_map" and setting.item is not None:
        return f"mapping header name → {type_of(setting.item)}"
    if kind in ("list", "map") and setting.item is not None:
        element = setting.item
        if element.kind == "policy":
            return "list of policy names or inline [policies](#policies)"
        inner = _link(element.cls) if element.kind == "object" else type_of(element)
        if kind == "list" and setting.single:
            return f"{inner}, or a list of them"
        return f"list of {inner}" if kind == "list" else f"mapping name → {inner}"
    if kind == "int":
        schema = setting.schema or {}
        low = schema.get("minimum", setting.minimum)
        high = schema.get("maximum", setting.maximum)
        if low is not None and high is not None:
            return f"integer {int(low)}–{int(high)}"
        return "integer" if low is None else f"integer ≥ {int(low)}"
    if kind == "enum":
        choices = [f"`{choice}`" for choice in setting.choices]
        return choices[0] if len(choices) == 1 else ", ".join(choices[:-1]) + " or " + choices[-1]
    if kind == "number":
        if setting.minimum is not None and setting.maximum is not None:
            return f"number {setting.minimum:g}–{setting.maximum:g}"
        return "number"
    if kind == "duration" and setting.minimum == 0:
        return "duration (zero allowed)"
    if kind in ("string", "ref") or (kind == "json" and setting.what):
        what = setting.what or "a string"
        return what.split(" ", 1)[1] if what.startswith(("a ", "an ")) else what
    return _PLAIN_TYPES[kind]


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def _size(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def default_text(cls: type, key: str, setting: Setting) -> str:
    """The default of ``key`` as the docs show it."""
    if setting.default_doc is not None:
        return setting.default_doc
    if setting.required:
        return "required"
    value: Any = default_of(cls, key)
    if value is dataclasses.MISSING or value is None or value == () or value == {}:
        return "none"
    if setting.kind == "object" and setting.cls is not None:
        return f"see {_link(setting.cls)}"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if setting.kind == "duration":
        return f"`{_duration(value)}`"
    if setting.kind == "size":
        return f"`{_size(value)}`"
    if value == b"":
        return "empty"
    return f"`{value}`"


def render_table(cls: type) -> str:
    """The Markdown table of ``cls``'s keys: key, type, default, doc line."""
    rows = ["| key | type | default | |", "|---|---|---|---|"]
    for key, setting in settings_of(cls):
        text = setting.doc.replace("|", "\\|")
        default = default_text(cls, key, setting)
        rows.append(f"| `{key}` | {type_of(setting)} | {default} | {text} |")
    return "\n".join(rows) + "\n"


def render() -> str:
    """Every table, each under a heading naming its section."""
    parts = []
    for name, cls in classes().items():
        title = SECTIONS.get(name, (name, ""))[0]
        parts.append(f"## {title}\n\n{render_table(cls)}")
    return "\n".join(parts)


def update(text: str) -> str:
    """``text`` with every ``generated:reference`` block rendered anew."""
    found = classes()

    def replace(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in found:
            raise ValueError(f"no config class {name!r} (known: {', '.join(found)})")
        return f"{match.group(1)}{render_table(found[name])}{match.group(4)}"

    return _BLOCK.sub(replace, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m isekai.config.reference", description=__doc__.split("\n")[0]
    )
    parser.add_argument("file", help="the Markdown file with generated:reference blocks")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite the blocks in place")
    action.add_argument("--check", action="store_true", help="exit 1 if a block is stale")
    args = parser.parse_args(argv)
    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    new = update(text)
    if args.check:
        if new != text:
            command = f"python -m isekai.config.reference --write {args.file}"
            print(f"{args.file} is stale: run {command}")
            return 1
        return 0
    with open(args.file, "w", encoding="utf-8") as f:
        f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
