"""Tests of the example family through a real gateway: `python -m isekai run` on port 0 with a
fixed-response route (no upstream needed), real HTTP requests. Run with the package installed:

    pip install -e examples/policy-package && pytest examples/policy-package/tests
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import textwrap
import time

import pytest

CONFIG = """
listeners: [{name: public, bind: "127.0.0.1:0"}]
admin: {enabled: false}
policies:
  no_bots: {type: deny_agents, agents: [BadBot, python-requests], tag: checked}
routes:
  - {name: hello, match: {path: /hello}, respond: {body: hi}, policies: [no_bots]}
"""


@pytest.fixture
def gateway(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    proc = subprocess.Popen(
        [sys.executable, "-m", "isekai", "run", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    port = None
    deadline = time.monotonic() + 20
    while port is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        found = re.search(r"listener public on http://[^ ]+:(\d+)", line)
        if found:
            port = int(found.group(1))
    if port is None:
        proc.kill()
        pytest.fail(f"the gateway did not start: {proc.stdout.read()}")
    yield port
    proc.terminate()
    proc.wait(10)


def fetch(port, agent):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/hello", headers={"User-Agent": agent})
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read()


def test_deny_agents_refuses_listed_agents(gateway):
    status, headers, body = fetch(gateway, "Mozilla/5.0 (compatible; badbot/2.1)")
    assert status == 403
    assert json.loads(body) == {"success": False, "error": "this client is not allowed"}


def test_deny_agents_tags_what_it_lets_through(gateway):
    status, headers, body = fetch(gateway, "Mozilla/5.0")
    assert (status, body) == (200, b"hi")
    assert headers["X-Agent-Check"] == "checked"
