"""Tools, versions, machine facts, ports, file limits and the CPU pinning plan."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent
SETUP_SCRIPT = BENCH_DIR / "setup.sh"

# tool -> how to find it (also in /usr/sbin, which a non-root PATH may lack)
TOOLS = ("wrk", "nginx", "haproxy")
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    for d in SBIN_DIRS:
        path = Path(d) / tool
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def ensure_tools(tools: tuple[str, ...] = TOOLS, python_modules: tuple[str, ...] = ()) -> dict:
    """Return {tool: path}; run bench/setup.sh once if a tool or a Python module is missing."""
    missing = [t for t in tools if which(t) is None]
    missing_mods = [m for m in python_modules if not _importable(m)]
    if missing or missing_mods:
        print(f"bench: missing {' '.join(missing + missing_mods)}: running {SETUP_SCRIPT}")
        env = dict(os.environ, PYTHON=sys.executable)
        subprocess.run(["bash", str(SETUP_SCRIPT)], check=True, env=env, timeout=1200)
    paths = {}
    for t in tools:
        path = which(t)
        if path is None:
            raise SystemExit(f"bench: {t} still missing after {SETUP_SCRIPT}")
        paths[t] = path
    return paths


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile(wanted: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE (inherited by everything we start); return the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _version_in(text: str) -> str:
    m = re.search(r"(\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else text


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def isekai_version() -> str:
    try:
        with open(REPO / "pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return _dist_version("isekai")


def versions(tools: dict) -> dict:
    out = {"isekai": isekai_version()}
    if "nginx" in tools:
        out["nginx"] = _version_in(_first_line([tools["nginx"], "-v"]))
    if "haproxy" in tools:
        out["haproxy"] = _version_in(_first_line([tools["haproxy"], "-v"]))
    if "wrk" in tools:
        out["wrk"] = _version_in(_first_line([tools["wrk"], "-v"]))
    out["python"] = platform.python_version()
    for name, dist in (("uvloop", "uvloop"), ("httptools", "httptools"), ("cython", "Cython")):
        out[name] = _dist_version(dist)
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "memory_gib": mem,
        "hostname": platform.node(),
    }


def git_commit() -> tuple[str, bool]:
    """(HEAD sha, whether isekai/ has uncommitted changes)."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "isekai", "setup.py"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return sha, bool(status.strip())


@dataclass(frozen=True)
class Pinning:
    """Which cores the process under test and the load side (wrk + backend) get, or None."""

    proxy: frozenset[int] | None
    load: frozenset[int] | None

    @property
    def pinned(self) -> bool:
        return self.proxy is not None

    def describe(self, what: str) -> str:
        if not self.pinned:
            why = "" if PIN else " (--no-pin)"
            return f"{what}: not pinned{why} (proxy, wrk and backend share all cores)"
        return (
            f"{what}: proxy on cores {fmt_cores(self.proxy)} (taskset -c {fmt_cores(self.proxy)}), "
            f"wrk + backend on cores {fmt_cores(self.load)} (taskset -c {fmt_cores(self.load)})"
        )


def fmt_cores(cores) -> str:
    return ",".join(str(c) for c in sorted(cores))


PIN = True  # bench/run.py --no-pin turns pinning off for every run


def pinning_for(workers: int, cores: int | None = None) -> Pinning:
    """Give the proxy `workers` cores of its own and wrk + backend the rest, when that fits.

    On 2 cores: 1-worker runs pin the proxy to core 0 and wrk + backend to core 1; N-worker runs
    (N = cores) cannot be separated, so nothing is pinned.
    """
    if not PIN:
        return Pinning(None, None)
    available = sorted(os.sched_getaffinity(0))
    if cores is not None:
        available = available[:cores]
    if len(available) <= workers:
        return Pinning(None, None)
    return Pinning(frozenset(available[:workers]), frozenset(available[workers:]))


def all_cores() -> frozenset[int]:
    return frozenset(os.sched_getaffinity(0))


def set_affinity(pids, cores) -> None:
    """Pin every thread of every pid to `cores` (threads too: HAProxy runs nbthread threads)."""
    cores = set(cores)
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            tids = [pid]
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cores)
            except OSError:
                pass
