"""A third-party policy package, installed the way a user installs one: `examples/policy-package`
is pip-installed into this venv, found through the `isekai.policies` entry-point group by a real
gateway process, validated by the config reader, and drives real requests. It is uninstalled
afterwards."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.client import json_body, request

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "examples" / "policy-package"
DIST = "isekai-example-policy"


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def installed():
    done = pip("install", "--quiet", "--no-deps", "--no-build-isolation", str(PACKAGE))
    assert done.returncode == 0, done.stderr
    yield
    pip("uninstall", "--quiet", "--yes", DIST)


CONFIG = """
listeners: [{name: public, bind: "127.0.0.1:0"}]
admin: {enabled: false}
policies:
  no_bots: {type: deny_agents, agents: [BadBot], tag: checked}
routes:
  - {name: hello, match: {path: /hello}, respond: {body: hi}, policies: [no_bots]}
"""


def test_policy_package_serves_through_a_real_gateway(installed, start_gateway):
    gateway = start_gateway(CONFIG)
    status, headers, body = request(
        gateway.port, b"GET /hello HTTP/1.1\r\nHost: t\r\nUser-Agent: x BadBot/1\r\n\r\n"
    )
    assert status == 403 and json_body(body)["error"] == "this client is not allowed"
    status, headers, body = request(
        gateway.port, b"GET /hello HTTP/1.1\r\nHost: t\r\nUser-Agent: Mozilla\r\n\r\n"
    )
    assert (status, body, headers["x-agent-check"]) == (200, b"hi", "checked")


def test_policy_package_keys_are_validated_with_file_line_and_path(installed, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            policies:
              no_bots: {type: deny_agents, agents: []}
            routes: []
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "isekai", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"{path}:2" in done.stderr and "policies.no_bots.agents" in done.stderr
    assert "needs at least one agent" in done.stderr


def test_policy_package_own_tests_pass(installed):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PACKAGE / "tests")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PACKAGE,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
