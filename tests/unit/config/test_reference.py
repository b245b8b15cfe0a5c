"""The generated key tables of docs/configuration.md, and the doc line every key must have."""

import dataclasses
from pathlib import Path

import pytest

from isekai.cli import main
from isekai.config import reference
from isekai.config.jsonschema import classes
from isekai.config.meta import setting

DOCS = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def test_reference_tables_in_the_docs_are_current():
    text = DOCS.read_text(encoding="utf-8")
    assert reference.update(text) == text, (
        "the key tables of docs/configuration.md are stale: regenerate them with "
        "`python -m isekai.config.reference --write docs/configuration.md`"
    )


def test_reference_docs_have_a_table_for_every_config_class():
    text = DOCS.read_text(encoding="utf-8")
    for name in classes():
        assert f"<!-- generated:reference:{name} -->" in text


def test_reference_every_field_has_a_doc_line():
    for cls in classes().values():
        for field in dataclasses.fields(cls):
            meta = field.metadata.get("isekai")
            assert meta is not None, f"{cls.__name__}.{field.name} has no setting()"
            assert meta.doc.strip(), f"{cls.__name__}.{field.name} has an empty doc line"
        for key, extra in getattr(cls, "extra_keys", {}).items():
            assert extra.doc.strip(), f"{cls.__name__}.{key} has an empty doc line"


def test_reference_setting_refuses_an_empty_doc():
    with pytest.raises(ValueError, match="doc line"):
        setting("int", " ", default=1)


def test_reference_table_row_shows_kind_default_and_doc():
    table = reference.render_table(classes()["Upstream"])
    assert "| `pool_timeout` | duration | `5s` | How long a request waits" in table
    assert "| `max_connections` | integer ≥ 1 | `1024` |" in table


def test_reference_check_command_reports_stale_files(tmp_path, capsys):
    stale = tmp_path / "doc.md"
    stale.write_text("<!-- generated:reference:Store -->\nold\n<!-- /generated -->\n")
    assert reference.main([str(stale), "--check"]) == 1
    assert "python -m isekai.config.reference --write" in capsys.readouterr().out
    assert reference.main([str(stale), "--write"]) == 0
    assert reference.main([str(stale), "--check"]) == 0
    assert "| `url` | URL |" in stale.read_text()


def test_reference_cli_prints_every_table(capsys):
    assert main(["schema", "--reference"]) == 0
    out = capsys.readouterr().out
    assert "## upstreams" in out and "| `keepalive_expiry` |" in out
