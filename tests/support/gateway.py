"""Run a real gateway process (`python -m isekai run -c FILE`) on port 0 and find its port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil

LISTENING = re.compile(r"listener (\S+) on http://(\S+):(\d+)")
REPO = Path(__file__).resolve().parents[2]


class Gateway:
    """A gateway subprocess; `port` is the first listener's bound port.

    `pid` is the process started (the master when there are several workers); `workers()`
    lists its worker processes. `wait_for_log` waits for a line matching a pattern, looking
    only at lines after `mark()` when given one.
    """

    def __init__(
        self,
        config_path: Path,
        *,
        startup_timeout: float = 15.0,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        new_session: bool = False,
    ) -> None:
        self.config_path = Path(config_path)
        environment = dict(os.environ, PYTHONUNBUFFERED="1")
        # The repo's isekai whether or not it is installed; the process runs in the config's
        # folder, so relative paths in it (a default sqlite store, say) stay out of the repo.
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), environment.get("PYTHONPATH")) if p
        )
        environment.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "isekai", "run", "-c", str(self.config_path.resolve()), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
            cwd=str(self.config_path.resolve().parent),
            start_new_session=new_session,
        )
        self.ports: dict[str, int] = {}
        self.log: list[str] = []
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        if not self._ready.wait(startup_timeout) or not self.ports:
            self.stop()
            raise RuntimeError("gateway did not start:\n" + "".join(self.log))
        self.port = next(iter(self.ports.values()))
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.log.append(line)
                self._changed.notify_all()
            found = LISTENING.search(line)
            if found:
                self.ports[found.group(1)] = int(found.group(3))
            if "isekai serving" in line:
                self._ready.set()
        self._ready.set()
        with self._changed:
            self._changed.notify_all()

    def mark(self) -> int:
        """A position in the log; pass it to `wait_for_log` to see only later lines."""
        with self._changed:
            return len(self.log)

    def wait_for_log(self, pattern: str, timeout: float = 5.0, since: int = 0) -> re.Match | None:
        """The first match of regex ``pattern`` in a log line after ``since``, or None."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = since
        with self._changed:
            while True:
                for line in self.log[seen:]:
                    found = regex.search(line)
                    if found:
                        return found
                seen = len(self.log)
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    return None
                self._changed.wait(left)

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def workers(self) -> list[int]:
        """Pids of the gateway's worker processes (none when it runs as one process)."""
        try:
            return sorted(child.pid for child in psutil.Process(self.pid).children())
        except psutil.NoSuchProcess:
            return []

    def wait(self, timeout: float) -> int | None:
        """The exit code once the process has exited within ``timeout``, else None."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        workers = _processes(self.workers())
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for proc in workers:  # left behind only if the master died without reaping them
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self._reader.join(5)
        return self.proc.returncode

    def output(self) -> str:
        return "".join(self.log)


def start_from_yaml(directory: Path, yaml_text: str, name: str = "gateway.yaml") -> Gateway:
    """Write YAML text (dedented) to ``directory/name`` and start a gateway on it."""
    path = Path(directory) / name
    text = textwrap.dedent(yaml_text)
    if not re.search(r"^admin:", text, re.M):
        # Most tests are about the data plane; the admin API has its own tests (and would
        # otherwise want the fixed default port 127.0.0.1:9080 in every gateway).
        text += "\nadmin: {enabled: false}\n"
    path.write_text(text)
    return Gateway(path)


def _processes(pids: list[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))  # remembers its start time: safe from pid reuse
        except psutil.NoSuchProcess:
            pass
    return found


def connection_owners(pids: list[int], port: int) -> dict[int, int]:
    """Client-side port -> pid of the process holding each established connection to ``port``."""
    owners = {}
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        for conn in conns:
            if conn.status == psutil.CONN_ESTABLISHED and conn.laddr and conn.laddr.port == port:
                owners[conn.raddr.port] = pid
    return owners


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
