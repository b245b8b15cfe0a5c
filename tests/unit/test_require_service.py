"""The `require_service` fixture: a service that does not answer skips a test locally and fails it
under CI=true; the probes speak enough of each protocol not to take any listener for the service."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from tests.support import services
from tests.support.gateway import REPO

NEEDS_REDIS = """
def test_needs_redis(require_service):
    assert require_service("redis").startswith("redis://")
"""


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_pytest(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    """pytest in a subprocess on one test that needs Redis, at a URL where nothing listens."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text("from tests.conftest import require_service  # noqa\n")
    (tmp_path / "test_needs_redis.py").write_text(textwrap.dedent(NEEDS_REDIS))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["ISEKAI_TEST_REDIS_URL"] = f"redis://127.0.0.1:{closed_port()}/0"
    if ci is not None:
        env["CI"] = ci
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)]
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )


def test_unreachable_service_skips_locally(tmp_path):
    result = run_pytest(tmp_path, ci=None)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "1 skipped" in out and "redis is not reachable at redis://127.0.0.1:" in out, out
    assert "ISEKAI_TEST_REDIS_URL" in out, out


def test_unreachable_service_fails_under_ci(tmp_path):
    result = run_pytest(tmp_path, ci="true")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "1 failed" in out and " skipped" not in out, out
    assert "redis is not reachable" in out and "CI=true: this must run, not skip" in out, out


@pytest.mark.parametrize("ci, strict", [("true", True), ("TRUE", True), ("1", True), ("", False)])
def test_ci_values(monkeypatch, ci, strict):
    monkeypatch.setenv("CI", ci)
    assert services.in_ci() is strict


class OneShotServer:
    """Accepts connections on 127.0.0.1 and answers each with fixed bytes, then closes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(1024)
                conn.sendall(self.answer)
            except OSError:
                pass

    def __enter__(self) -> OneShotServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        self.thread.join(10)


@pytest.mark.parametrize(
    "name, scheme, answer, ok",
    [
        ("redis", "redis", b"+PONG\r\n", True),
        ("redis", "redis", b"HTTP/1.1 400 Bad Request\r\n\r\n", False),
        ("redis", "redis", b"", False),
        # a connection.start method frame: type 1, channel 0, size, class 10, method 10, ...
        ("amqp", "amqp", b"\x01\x00\x00\x00\x00\x01\xf4\x00\x0a\x00\x0a\x00\x09", True),
        ("amqp", "amqp", services.AMQP_HEADER, False),  # "I speak another version"
        ("amqp", "amqp", b"+PONG\r\n-ERR unknown\r\n", False),
    ],
)
def test_probe_speaks_the_protocol(name, scheme, answer, ok):
    with OneShotServer(answer) as server:
        problem = services.probe(name, f"{scheme}://guest:pw@127.0.0.1:{server.port}/")
    if ok:
        assert problem is None
    else:
        assert problem is not None and f"{name} is not reachable" in problem
        assert "pw@" not in problem  # the password is redacted


def test_probe_postgres_refused_names_the_variable():
    problem = services.probe("postgres", f"postgresql://u:pw@127.0.0.1:{closed_port()}/test")
    assert problem is not None and "ISEKAI_TEST_POSTGRES_DSN" in problem and "pw@" not in problem
