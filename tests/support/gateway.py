"""Run a real gateway process (`python -m isekai run -c FILE`) on port 0 and find its port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

LISTENING = re.compile(r"listener (\S+) on http://(\S+):(\d+)")


class Gateway:
    """A gateway subprocess; `port` is the first listener's bound port."""

    def __init__(self, config_path: Path, *, startup_timeout: float = 15.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "isekai", "run", "-c", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.ports: dict[str, int] = {}
        self.log: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        if not self._ready.wait(startup_timeout) or not self.ports:
            self.stop()
            raise RuntimeError("gateway did not start:\n" + "".join(self.log))
        self.port = next(iter(self.ports.values()))
        self.url = f"http://127.0.0.1:{self.port}"

    def _read_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)
            found = LISTENING.search(line)
            if found:
                self.ports[found.group(1)] = int(found.group(3))
            if "isekai serving" in line:
                self._ready.set()
        self._ready.set()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode

    def output(self) -> str:
        return "".join(self.log)


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
