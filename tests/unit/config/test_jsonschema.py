"""The published JSON Schema: current, valid, and in agreement with the loader."""

import json
import re
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from isekai.cli import main
from isekai.config import jsonschema, units
from isekai.config.loader import load_config_text
from isekai.config.meta import Setting
from isekai.config.nodes import Reader, parse
from isekai.config.schema import Respond, Route, Upstream
from isekai.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "docs" / "isekai.schema.json"
FRAGMENT = "<!-- schema: fragment -->"
_FENCE = re.compile(r"(?:^(<!--[^\n]*-->)\n)?^```yaml\n(.*?)^```", re.S | re.M)


def _as_written(text):
    # the file as the gateway reads it: keys are text (a bare `on:` key is "on", not the
    # YAML 1.1 boolean that yaml.safe_load makes of it), ${VAR} references kept
    return Reader("doc.yaml", {}, literal=True).plain(parse(text, "doc.yaml"), "", [10**6])


def _validator():
    return Draft202012Validator(jsonschema.document_schema())


def _examples():
    for path in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]:
        text = path.read_text(encoding="utf-8")
        for found in _FENCE.finditer(text):
            line = text[: found.start(2)].count("\n") + 1
            if found.group(1) != FRAGMENT:  # a fragment of a file is not a whole config
                yield pytest.param(found.group(1), found.group(2), id=f"{path.name}:{line}")


def test_jsonschema_committed_file_is_current():
    generated = jsonschema.dumps(jsonschema.document_schema())
    committed = COMMITTED.read_text(encoding="utf-8")
    assert generated == committed, (
        "docs/isekai.schema.json is stale: regenerate it with "
        "`isekai schema > docs/isekai.schema.json`"
    )


def test_jsonschema_is_a_valid_draft_2020_12_schema():
    schema = jsonschema.document_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert set(schema["$defs"]) >= {"Route", "Upstream", "Listener", "Limits", "Admin", "Store"}


def test_jsonschema_cli_prints_the_schema(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == jsonschema.document_schema()


def test_jsonschema_accepts_the_bundled_default_yaml():
    text = (ROOT / "isekai" / "default.yaml").read_text(encoding="utf-8")
    errors = [error.message for error in _validator().iter_errors(yaml.safe_load(text))]
    assert errors == []


@pytest.mark.parametrize(("marker", "text"), list(_examples()))
def test_jsonschema_accepts_every_yaml_example_in_the_docs(marker, text):
    errors = [
        f"{list(error.absolute_path)}: {error.message}"
        for error in _validator().iter_errors(_as_written(text))
    ]
    assert errors == []


@pytest.mark.parametrize(
    "document",
    [
        {"routes": [], "polices": {}},  # unknown key
        {"limits": {"keepalive_timeout": "10 seconds"}},  # bad duration
        {"limits": {"keepalive_timeout": "0s"}},  # must be > 0
        {"upstreams": {"u": {"targets": ["127.0.0.1:1"], "keepalive_expiry": 0}}},
        {
            "routes": [
                {"name": "a", "match": {"path": "/"}, "respond": {"headers": {"X-A": "a\rb"}}}
            ]
        },
        {
            "routes": [
                {"name": "a", "match": {"path": "/"}, "respond": {"headers": {"X-A": "a\u2603b"}}}
            ]
        },
        {"routes": [{"name": "a", "match": {"path": "/a b"}, "respond": {}}]},
        {"routes": [{"name": "a", "match": {"path": "/", "host": "a_b.com"}, "respond": {}}]},
        {"routes": [{"name": "a", "match": {"path": "/"}}]},  # neither upstream nor respond
        {"routes": [{"name": "a", "match": {"path": "/"}, "upstream": "u", "respond": {}}]},
        {"admin": {"auth": {"jwt_algorithm": "RS256"}}},
        {"workers": 0},
    ],
)
def test_jsonschema_rejects_what_the_loader_refuses(document):
    assert not _validator().is_valid(document)
    with pytest.raises(ConfigError):
        load_config_text(json.dumps(document), "doc.json")


def _ref(cls):
    return f"#/$defs/{cls.__name__}"


def test_jsonschema_states_bounds_as_the_loader_does():
    upstream = jsonschema.class_schema(Upstream, _ref)["properties"]
    expiry = upstream["keepalive_expiry"]["anyOf"][0]["anyOf"][0]
    assert expiry == {"type": "number", "exclusiveMinimum": 0}
    assert upstream["pool_timeout"]["anyOf"][0]["anyOf"][0] == expiry
    assert upstream["max_keepalive_connections"]["anyOf"][0] == {"type": "integer", "minimum": 0}
    status = jsonschema.class_schema(Respond, _ref)["properties"]["status"]["anyOf"][0]
    assert (status["minimum"], status["maximum"]) == (200, 599)


def test_jsonschema_allows_env_references_in_files_only():
    assert _validator().is_valid({"workers": "${WORKERS:-2}", "limits": {"max_body_size": "${M}"}})
    api_route = Draft202012Validator({**jsonschema.class_schema(Route, _ref), "$defs": _defs()})
    route = {"name": "a", "match": {"path": "/"}, "respond": {}}
    assert api_route.is_valid(route)
    assert not api_route.is_valid({**route, "name": "${NAME}"})


def _defs():
    return {name: jsonschema.class_schema(cls, _ref) for name, cls in jsonschema.classes().items()}


def test_jsonschema_rate_kind_accepts_what_parse_rate_accepts():
    rate = Draft202012Validator(jsonschema.kind_schema(Setting("rate", "A rate."), _ref))
    for text in ("100/s", "10/m", "30/10s", "1.5/h"):
        assert rate.is_valid(text) and units.parse_rate(text) > 0
    for text in ("100", "0/s", "10/x", 10):
        assert not rate.is_valid(text)
