"""The OAuth2 endpoints against their OpenAPI description, with the server on: a schemathesis
run (every check, all phases) limited to ``/oauth/*``, ``/.well-known/*`` and
``/api/oauth/*``, authenticated as an admin (the general run has the server off: 404s)."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import admin_helpers
import live_admin
import pytest
from test_admin_openapi import SCHEMATHESIS_CONFIG

from isekai.admin.openapi import document
from tests.support import services

OAUTH_YAML = admin_helpers.BASE_YAML + "  oauth: {enabled: true, signing_algorithm: ES256}\n"


def test_openapi_describes_the_oauth_endpoints():
    paths = document()["paths"]
    for path in (
        "/oauth/token",
        "/oauth/revoke",
        "/oauth/introspect",
        "/oauth/jwks.json",
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
        "/api/oauth/clients",
        "/api/oauth/clients/{client_id}",
        "/api/oauth/clients/{client_id}/secret",
        "/api/oauth/keys",
        "/api/oauth/keys/rotate",
    ):
        assert path in paths, path
    token = paths["/oauth/token"]["post"]
    assert "application/x-www-form-urlencoded" in token["requestBody"]["content"]
    assert token["security"] == [{"oauthClient": []}, {}]
    assert token["responses"]["401"] == {"$ref": "#/components/responses/OAuthE401"}


@pytest.mark.timeout(600)
def test_oauth_schemathesis_finds_no_failures(tmp_path, monkeypatch):
    executable = Path(sysconfig.get_path("scripts")) / "schemathesis"
    if not executable.is_file():
        services.unavailable(f"schemathesis is not installed in {executable.parent} (.[dev])")
    monkeypatch.setattr(live_admin, "make_config", lambda *_: admin_helpers.make_config(OAUTH_YAML))
    config = tmp_path / "schemathesis.toml"
    config.write_text(textwrap.dedent(SCHEMATHESIS_CONFIG))
    with live_admin.LiveAdmin(tmp_path) as live:
        command = [
            str(executable),
            "--config-file",
            str(config),
            "--no-color",
            "run",
            f"{live.url}/openapi.json",
            "--include-path-regex",
            "^/(oauth/|\\.well-known/|api/oauth/)",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {live.token}",
            "--max-examples",
            "25",
            "--seed",
            "20261130",
            "--workers",
            "1",
            "--request-timeout",
            "10",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=540, cwd=tmp_path)
    output = result.stdout + result.stderr
    summary = "\n".join(output.splitlines()[-40:])
    sys.stdout.write(summary + "\n")
    assert result.returncode == 0, output[-20000:]
    found = re.search(r"(\d+) generated, (\d+) passed", output)
    assert found is not None, summary
    assert int(found.group(1)) >= 300 and found.group(1) == found.group(2), summary
