"""Reload: SIGHUP and `isekai reload` swap the config without dropping a connection."""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tests.support.gateway import Gateway, connection_owners, wait_for
from tests.support.upstream import payload_digest

BASE = """
workers: {workers}
admin: {{enabled: false}}
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
upstreams:
  app: {{targets: ["127.0.0.1:{port}"]{upstream_extra}}}
routes:
  - {{name: old, match: {{path: /old}}, respond: {{body: old}}}}
  - {{name: app, match: {{path: "/app/*"}}, upstream: app, strip_prefix: /app}}
"""
NEW_ROUTE = "  - {name: new, match: {path: /new}, respond: {body: new}}\n"


def config(workers: int, port: int, *, extra: str = "", upstream_extra: str = "") -> str:
    text = BASE.format(workers=workers, port=port, upstream_extra=upstream_extra)
    return textwrap.dedent(text) + extra


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def connections_to_every_worker(gw: Gateway) -> list[http.client.HTTPConnection]:
    """Keep-alive connections (at most 40) until every worker process holds at least one."""
    pids = gw.workers() or [gw.pid]
    conns = []
    for _ in range(40):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        assert get(conn, "/old") == (200, b"old")
        conns.append(conn)
        if len(conns) >= 2 and set(connection_owners(pids, gw.port).values()) == set(pids):
            return conns
    raise AssertionError("connections did not reach every worker")


def isekai(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ISEKAI_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "isekai", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=environment,
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_sighup_serves_new_route_on_open_connections(start_gateway, upstream, workers):
    gw = start_gateway(config(workers, upstream.port))
    conns = connections_to_every_worker(gw)
    for conn in conns:
        assert get(conn, "/new")[0] == 404
    gw.config_path.write_text(config(workers, upstream.port, extra=NEW_ROUTE))
    mark = gw.mark()
    gw.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 1.0
    for conn in conns:  # the same keep-alive connections, on every worker
        assert wait_for(lambda c=conn: get(c, "/new") == (200, b"new"), timeout=1.0)
        assert time.monotonic() < deadline
        assert get(conn, "/old") == (200, b"old")
    reloaded = "all 2 workers on config version 2" if workers > 1 else r"version 2\)"
    assert gw.wait_for_log(reloaded, since=mark)
    assert gw.wait_for_log(r"config reloaded \(version 2\)", since=mark)
    for conn in conns:
        conn.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_broken_file_is_rejected_and_old_config_kept(start_gateway, upstream, workers):
    gw = start_gateway(config(workers, upstream.port))
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    assert get(conn, "/old") == (200, b"old")
    broken = config(workers, upstream.port, extra="  - {name: bad, match: {path: /bad}}\n")
    gw.config_path.write_text(broken)
    line = broken.splitlines().index("  - {name: bad, match: {path: /bad}}") + 1
    gw.send_signal(signal.SIGHUP)
    found = gw.wait_for_log(r"reload rejected: (\S+):(\d+): routes\[2\]")
    assert found, gw.output()
    assert found.group(1) == str(gw.config_path) and int(found.group(2)) == line
    assert gw.proc.poll() is None
    assert get(conn, "/old") == (200, b"old")  # the same connection, the old snapshot
    assert get(conn, "/bad")[0] == 404
    assert len(gw.workers()) == (2 if workers > 1 else 0)
    assert "config reloaded" not in gw.output()
    conn.close()


def test_reload_during_slow_download_keeps_it_intact(start_gateway, upstream):
    size = 16 * 1024 * 1024
    gw = start_gateway(config(2, upstream.port))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # little buffered ahead
    sock.settimeout(10)
    sock.connect(("127.0.0.1", gw.port))
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.sock = sock
    conn.request("GET", f"/app/bytes/{size}")
    resp = conn.getresponse()
    assert resp.status == 200
    digest = hashlib.sha256()
    received = 0
    reloads = [
        config(2, upstream.port, extra=NEW_ROUTE),
        # a new connect_timeout gives the upstream new pools; the old ones close when idle
        config(2, upstream.port, extra=NEW_ROUTE, upstream_extra=", connect_timeout: 2s"),
    ]
    started = time.monotonic()
    while received < size and time.monotonic() - started < 20:
        piece = resp.read(64 * 1024)
        if not piece:
            break
        digest.update(piece)
        received += len(piece)
        if reloads and received >= size // 3 * (3 - len(reloads)):
            mark = gw.mark()
            gw.config_path.write_text(reloads.pop(0))
            gw.send_signal(signal.SIGHUP)
            assert gw.wait_for_log(r"all 2 workers on config version", since=mark)
        time.sleep(0.01)
    assert not reloads
    assert received == size
    assert digest.hexdigest() == payload_digest(size)
    assert get(conn, "/new") == (200, b"new")  # and the connection lives on
    conn.close()


def test_reload_command_signals_the_pid_in_the_pid_file(start_gateway, upstream, tmp_path):
    pid_file = tmp_path / "isekai.pid"
    gw = start_gateway(config(2, upstream.port, extra=f"pid_file: {pid_file}\n"))
    assert pid_file.read_text().strip() == str(gw.pid)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    assert get(conn, "/new")[0] == 404
    gw.config_path.write_text(config(2, upstream.port, extra=NEW_ROUTE))
    result = isekai("reload", "--pid-file", str(pid_file))
    assert result.returncode == 0, result.stderr
    assert f"sent SIGHUP to isekai (pid {gw.pid})" in result.stdout
    assert wait_for(lambda: get(conn, "/new") == (200, b"new"), timeout=1.0)
    conn.close()


def test_reload_command_takes_the_pid_file_from_the_config(start_gateway, upstream, tmp_path):
    pid_file = tmp_path / "isekai.pid"
    gw = start_gateway(config(1, upstream.port, extra=f"pid_file: {pid_file}\n"))
    text = config(1, upstream.port, extra=NEW_ROUTE + f"pid_file: {pid_file}\n")
    gw.config_path.write_text(text)
    mark = gw.mark()
    result = isekai("reload", "-c", str(gw.config_path))
    assert result.returncode == 0, result.stderr
    assert gw.wait_for_log(r"config reloaded \(version 2\)", since=mark)
    gw.config_path.write_text(text + "nonsense: 1\n")
    result = isekai("reload", "-c", str(gw.config_path))  # checked first: not sent
    assert result.returncode == 1
    assert f"{gw.config_path}:" in result.stderr and "nonsense" in result.stderr
    assert "reload rejected" not in gw.output()


def test_reload_command_without_a_running_gateway_exits_1(tmp_path):
    result = isekai("reload")
    assert result.returncode == 1
    assert "no pid file" in result.stderr
    missing = tmp_path / "missing.pid"
    result = isekai("reload", env={"ISEKAI_PID_FILE": str(missing)})
    assert result.returncode == 1
    assert f"no pid file {missing}" in result.stderr
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    stale = tmp_path / "stale.pid"
    stale.write_text(f"{dead.pid}\n")
    result = isekai("reload", "--pid-file", str(stale))
    assert result.returncode == 1
    assert f"stale pid file {stale}: process {dead.pid} is not running" in result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_pid_file_written_at_start_and_removed_at_exit(start_gateway, tmp_path, workers):
    pid_file = tmp_path / "run" / "isekai.pid"
    pid_file.parent.mkdir()
    gw = start_gateway(
        f"""
        workers: {workers}
        pid_file: {pid_file}
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        """
    )
    assert pid_file.read_text() == f"{gw.pid}\n"
    assert gw.stop() == 0
    assert not pid_file.exists()


def test_reload_pid_file_of_a_running_gateway_is_not_taken_over(start_gateway, tmp_path):
    pid_file = tmp_path / "isekai.pid"
    text = f"""
    pid_file: {pid_file}
    listeners: [{{name: public, bind: "127.0.0.1:0"}}]
    """
    gw = start_gateway(text)
    second = tmp_path / "second.yaml"
    second.write_text(textwrap.dedent(text))
    result = isekai("run", "-c", str(second))
    assert result.returncode == 1
    assert f"names process {gw.pid}, which is running" in result.stderr
    assert pid_file.read_text() == f"{gw.pid}\n"


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_listener_change_warns_and_applies_the_rest(start_gateway, upstream, workers):
    gw = start_gateway(config(workers, upstream.port))
    changed = config(workers, upstream.port, extra=NEW_ROUTE).replace(
        'bind: "127.0.0.1:0"', 'bind: "127.0.0.1:1"'
    )
    gw.config_path.write_text(changed)
    gw.send_signal(signal.SIGHUP)
    assert gw.wait_for_log(r"listeners changed in \S+: restart to apply")
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    assert wait_for(lambda: get(conn, "/new") == (200, b"new"), timeout=1.0)
    conn.close()


def test_reload_repeated_sighup_while_serving_keeps_every_request(start_gateway, upstream):
    gw = start_gateway(config(2, upstream.port))
    errors: list[str] = []
    done = threading.Event()

    def load() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        while not done.is_set():
            try:
                status, _ = get(conn, "/app/echo")
                if status != 200:
                    errors.append(str(status))
            except (OSError, http.client.HTTPException) as exc:
                errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        conn.close()

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for i in range(5):
        extra = NEW_ROUTE if i % 2 == 0 else ""
        gw.config_path.write_text(config(2, upstream.port, extra=extra))
        gw.send_signal(signal.SIGHUP)
        assert gw.wait_for_log(rf"all 2 workers on config version {i + 2}", timeout=2)
    done.set()
    for thread in threads:
        thread.join(10)
    assert errors == []
