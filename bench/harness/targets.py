"""Config generators and process control for the backend and the proxies under test.

Every process is started in a session of its own, logs to a file in the work directory and is
stopped by its own pid (SIGTERM, then SIGKILL of its process group after a grace period).
"""

from __future__ import annotations

import http.client
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from harness.env import REPO, fmt_cores

SMALL_BODY = (b"isekai-bench: a small response body of about one hundred bytes, " * 2)[:100]
STATIC_FILES = {"16k.bin": 16 * 1024, "1m.bin": 1024 * 1024}
POST_BODY_SIZE = 4096
ROUTE_COUNTS = {"routes_10": 10, "routes_10k": 10_000}


def route_path(i: int) -> str:
    return f"/api/r{i:05d}/items"


def middle_route(count: int) -> str:
    return route_path(count // 2)


# -- process control ---------------------------------------------------------------------------


@dataclass
class Proc:
    """A started process (and its children): what was run, where it logs, how to stop it."""

    name: str
    popen: subprocess.Popen
    log: Path
    port: int
    workers: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def pids(self) -> list[int]:
        return [p.pid for p in self.tree()]

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout=grace)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            pass  # too slow, or a second Ctrl-C: no more grace
        finally:
            # the session we created for it: the process and anything it left behind (a worker
            # that outlived its master)
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def start(name: str, argv: list[str], log: Path, port: int, cores=None, env=None, **kw) -> Proc:
    if cores is not None:
        argv = ["taskset", "-c", fmt_cores(cores), *argv]
    fh = open(log, "wb")  # noqa: SIM115 - handed to the child, closed below
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=kw.pop("cwd", None),
            env=env,
        )
    finally:
        fh.close()
    return Proc(name, popen, log, port, **kw)


def http_get(
    port: int,
    path: str,
    method: str = "GET",
    body: bytes | None = None,
    timeout=5.0,
    headers: tuple[str, ...] = (),
):
    """One request; ``headers`` as wrk takes them (``"Name: value"``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    fields = {"Host": "bench.local"}
    for line in headers:
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    try:
        conn.request(method, path, body=body, headers=fields)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(proc: Proc, path: str = "/", timeout: float = 30.0, log_marker: str | None = None):
    """Wait until `proc` answers `path` (and its log shows `log_marker`, if given)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log_text()}")
        if log_marker is None or log_marker in proc.log_text():
            try:
                status, _ = http_get(proc.port, path, timeout=2.0)
                if status < 500:
                    return
                last = f"status {status}"
            except OSError as exc:
                last = exc
        time.sleep(0.05)
    raise RuntimeError(
        f"{proc.name} not ready after {timeout}s ({last}):\n{proc.log_text()[-2000:]}"
    )


# -- nginx (backend and proxy) -----------------------------------------------------------------


def _nginx_common(work: Path, tag: str, workers: int, master: bool = True) -> str:
    tmp = work / f"{tag}-tmp"
    tmp.mkdir(exist_ok=True)
    temps = "\n".join(
        f"    {kind}_temp_path {tmp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # raised by env.raise_nofile()
    nofile = nofile if 0 < nofile <= 1 << 20 else 65536
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read files in our tmp dir
    return f"""{user}worker_processes {workers};
daemon off;
master_process {"on" if master else "off"};
pid {work / (tag + ".pid")};
error_log {work / (tag + "-error.log")} warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {min(16384, nofile // 2)}; multi_accept off; }}
http {{
    access_log off;
    server_tokens off;
{temps}
"""


def backend_conf(work: Path, port: int, master: bool = True) -> str:
    """nginx answering like a fast upstream: a ~100 B body, two static files, a POST sink."""
    static = work / "static"
    static.mkdir(exist_ok=True)
    for name, size in STATIC_FILES.items():
        path = static / name
        if not path.exists() or path.stat().st_size != size:
            path.write_bytes((b"0123456789abcdef" * (size // 16 + 1))[:size])
    body = SMALL_BODY.decode()
    return (
        _nginx_common(work, "backend", 1, master)
        + f"""    default_type text/plain;
    sendfile on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "{body}"; }}
        location /static/ {{ alias {static}/; }}
        # the 4 KiB POST sink: nginx reads (and drops) the body, then answers; the body buffer
        # holds a whole 4 KiB body in memory so nothing touches client_body_temp_path
        location = /sink {{
            client_body_buffer_size 16k;
            client_max_body_size 1m;
            return 200 "ok\\n";
        }}
    }}
}}
"""
    )


def nginx_proxy_conf(
    work: Path,
    tag: str,
    port: int,
    backend_port: int,
    workers: int,
    routes: int | None = None,
    master: bool = True,
) -> str:
    """nginx as a reverse proxy: upstream keepalive, HTTP/1.1 upstream, `Connection: ""`."""
    if routes is None:
        locations = "        location / { proxy_pass http://be; }\n"
    else:
        locations = "".join(
            f"        location = {route_path(i)} {{ proxy_pass http://be; }}\n"
            for i in range(routes)
        )
    return (
        _nginx_common(work, tag, workers, master)
        + f"""    upstream be {{
        server 127.0.0.1:{backend_port};
        keepalive 128;
    }}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    server {{
        listen 127.0.0.1:{port} backlog=4096;
{locations}    }}
}}
"""
    )


def nginx_argv(nginx: str, work: Path, tag: str, conf: str) -> list[str]:
    path = work / f"{tag}.conf"
    path.write_text(conf)
    return [nginx, "-p", str(work), "-e", str(work / f"{tag}-error.log"), "-c", str(path)]


def start_nginx(nginx: str, work: Path, tag: str, conf: str, port: int, workers: int, cores=None):
    argv = nginx_argv(nginx, work, tag, conf)
    return start(tag, argv, work / f"{tag}.log", port, cores=cores, workers=workers)


# -- HAProxy -----------------------------------------------------------------------------------


def haproxy_conf(port: int, backend_port: int, threads: int) -> str:
    return f"""global
    nbthread {threads}
    maxconn 8000

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    http-reuse always

frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    server s1 127.0.0.1:{backend_port}
"""


def haproxy_argv(haproxy: str, work: Path, tag: str, port, backend_port, threads) -> list[str]:
    path = work / f"{tag}.cfg"
    path.write_text(haproxy_conf(port, backend_port, threads))
    return [haproxy, "-db", "-f", str(path)]


def start_haproxy(haproxy: str, work: Path, tag: str, port, backend_port, threads, cores=None):
    argv = haproxy_argv(haproxy, work, tag, port, backend_port, threads)
    return start(tag, argv, work / f"{tag}.log", port, cores=cores, workers=threads)


# -- Isekai ------------------------------------------------------------------------------------


def isekai_conf(port: int, backend_port: int, workers: int, routes: int | None = None) -> str:
    lines = [
        f"workers: {workers}",
        "shutdown_timeout: 2s",
        # No admin API, store or request log: the proxies it is compared with run with
        # access logging off too.
        "admin: {enabled: false}",
        f'listeners: [{{name: public, bind: "127.0.0.1:{port}"}}]',
        f'upstreams: {{be: {{targets: ["127.0.0.1:{backend_port}"]}}}}',
        "routes:",
    ]
    if routes is None:
        lines.append('  - {name: all, match: {path: "/*"}, upstream: be}')
    else:
        lines += [
            f'  - {{name: r{i}, match: {{path: "{route_path(i)}"}}, upstream: be}}'
            for i in range(routes)
        ]
    return "\n".join(lines) + "\n"


def isekai_env() -> dict:
    env = dict(os.environ)
    # the repo's isekai (in-place build) comes first, whether or not it is pip-installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def isekai_argv(conf_path: Path, python: str | None = None) -> list[str]:
    # This interpreter as it was started: a venv's bin/python (a symlink) must not be resolved,
    # or the child leaves the venv and finds no uvloop. It is a binary, never a wrapper script
    # (a pyenv shim execs the real one, so sys.executable already names that), so valgrind can
    # run it directly.
    python = python or sys.executable
    return [python, "-m", "isekai", "run", "-c", str(conf_path)]


def start_isekai(
    work: Path, tag: str, conf: str, port: int, workers: int, cores=None, env=None
) -> Proc:
    path = work / f"{tag}.yaml"
    path.write_text(conf)
    return start(
        tag,
        isekai_argv(path),
        work / f"{tag}.log",
        port,
        cores=cores,
        env={**isekai_env(), **(env or {})},
        cwd=str(REPO),
        workers=workers,
    )


ISEKAI_LISTENING = "listener public on http://"


# -- OTLP sink (tracing scenarios) -------------------------------------------------------------

OTLP_SINK = Path(__file__).resolve().parent / "otlp_sink.py"


def start_otlp_sink(work: Path, port: int, cores=None) -> Proc:
    """The OTLP/HTTP receiver the tracing scenarios export to (otlp_sink.py)."""
    argv = [sys.executable, str(OTLP_SINK), str(port)]
    return start("otlp-sink", argv, work / "otlp-sink.log", port, cores=cores)
