"""`isekai run`: logs its addresses, exits cleanly on SIGINT and SIGTERM, serves the default."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys

import pytest

CONFIG = """
listeners: [{name: public, bind: "127.0.0.1:0"}, {name: second, bind: "127.0.0.1:0"}]
routes:
  - {name: hello, match: {path: /hello}, respond: {body: hi}}
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_logs_addresses_and_exits_cleanly(start_gateway, sig):
    gw = start_gateway(CONFIG)
    assert set(gw.ports) == {"public", "second"}
    for port in gw.ports.values():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/hello")
        assert c.getresponse().read() == b"hi"
    assert gw.stop(sig) == 0
    assert "stopped" in gw.output()


def test_run_rejects_broken_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("routes:\n  - {name: x, match: {path: /x}, upstream: nope}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "isekai", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert f"{path}:2: routes[0].upstream" in proc.stderr


def test_run_default_config_answers(tmp_path):
    """The bundled config serves `/` and `/ping`; run it on a free port via ${...} override."""
    from importlib.resources import files

    text = files("isekai").joinpath("default.yaml").read_text()
    assert '"0.0.0.0:8080"' in text
    path = tmp_path / "default-on-free-port.yaml"
    path.write_text(text.replace('"0.0.0.0:8080"', '"127.0.0.1:0"'))
    from tests.support.gateway import Gateway

    gw = Gateway(path)
    try:
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        c.request("GET", "/")
        resp = c.getresponse()
        assert resp.status == 200
        assert resp.getheader("x-served-by") == "isekai"  # the listener's policy
        assert json.loads(resp.read())["success"] is True
        c.request("GET", "/ping")
        assert c.getresponse().read() == b"pong"
    finally:
        assert gw.stop() == 0
