"""One wrk run against one target, with the target's CPU time and peak RSS measured alongside."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from harness.env import fmt_cores

# wrk calls done() once at the end; one parseable line carries everything we keep.
DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d bytes=%d p50_us=%.1f p90_us=%.1f p99_us=%.1f " ..
    "p999_us=%.1f max_us=%d err_connect=%d err_read=%d err_write=%d err_status=%d " ..
    "err_timeout=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50.0), latency:percentile(90.0), latency:percentile(99.0),
    latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""

POST_LUA = """
wrk.method = "POST"
wrk.body = string.rep("x", {size})
wrk.headers["Content-Type"] = "application/octet-stream"
"""

BENCH_LINE = re.compile(r"^BENCH (.*)$", re.M)


def write_script(
    work: Path, name: str, post_size: int | None = None, extra: str | None = None
) -> Path:
    """The wrk script of a scenario: ``extra`` Lua (a ``request`` function, say) first."""
    path = work / f"wrk-{name}.lua"
    text = (extra or "") + (POST_LUA.format(size=post_size) if post_size else "") + DONE_LUA
    path.write_text(text)
    return path


@dataclass
class Load:
    """How wrk drives one scenario."""

    path: str
    connections: int = 64
    threads: int = 1
    headers: tuple[str, ...] = ()
    script: Path | None = None


class Sampler(threading.Thread):
    """Samples the summed RSS of a process tree every `interval` s; remembers the peak."""

    def __init__(self, root_pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.interval = interval
        self.peak = 0
        self.pids_seen: set[int] = set()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = 0
            for p in tree(self.root_pid):
                try:
                    rss += p.memory_info().rss
                    self.pids_seen.add(p.pid)
                except psutil.Error:
                    pass
            self.peak = max(self.peak, rss)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def tree(root_pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(root_pid: int) -> dict[int, float]:
    out = {}
    for p in tree(root_pid):
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def busy_and_steal() -> tuple[float, float]:
    """Machine-wide CPU seconds spent busy (not idle, iowait or steal) and stolen, so far."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    steal = getattr(t, "steal", 0.0)
    guest = getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    return sum(t) - idle - steal - guest, steal


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def run_wrk(
    wrk: str,
    port: int,
    load: Load,
    duration: float,
    measured_pid: int | None,
    cores=None,
    other_pids: tuple[int, ...] = (),
) -> dict:
    """Run wrk once; return its numbers plus CPU µs/request and peak RSS of `measured_pid`'s tree.

    `other_pids` (the backend, when it is not what is measured) are only used to work out how
    much CPU the rest of the machine took during the run: `foreign_cpu_pct`, in % of one core,
    is busy time that neither wrk, the backend, the target nor this script accounts for.
    """
    argv = [
        wrk,
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{max(1, round(duration))}s",  # wrk takes whole seconds only
        "--timeout",
        "10s",
        "--latency",
    ]
    for h in load.headers:
        argv += ["-H", h]
    if load.script is not None:
        argv += ["-s", str(load.script)]
    argv.append(f"http://127.0.0.1:{port}{load.path}")
    if cores is not None:
        argv = ["taskset", "-c", fmt_cores(cores), *argv]

    sampler = Sampler(measured_pid) if measured_pid else None
    before = cpu_seconds(measured_pid) if measured_pid else {}
    others_before = sum(sum(cpu_seconds(p).values()) for p in other_pids)
    busy0, steal0 = busy_and_steal()
    wrk0, self0 = _children_cpu(), _self_cpu()
    if sampler:
        sampler.start()
    started = time.monotonic()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    finally:
        if sampler:
            sampler.stop()
    wall = time.monotonic() - started
    after = cpu_seconds(measured_pid) if measured_pid else {}
    busy1, steal1 = busy_and_steal()
    wrk_cpu, self_cpu = _children_cpu() - wrk0, _self_cpu() - self0
    others = sum(sum(cpu_seconds(p).values()) for p in other_pids) - others_before

    m = BENCH_LINE.search(out.stdout)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    fields = dict(kv.split("=", 1) for kv in m.group(1).split())
    num = {k: float(v) for k, v in fields.items()}
    requests = int(num["requests"])
    secs = num["duration_us"] / 1e6
    result = {
        "requests": requests,
        "seconds": round(secs, 3),
        "rps": round(requests / secs, 1) if secs else 0.0,
        "p50_ms": round(num["p50_us"] / 1000, 3),
        "p90_ms": round(num["p90_us"] / 1000, 3),
        "p99_ms": round(num["p99_us"] / 1000, 3),
        "p999_ms": round(num["p999_us"] / 1000, 3),
        "max_ms": round(num["max_us"] / 1000, 3),
        "mib_per_s": round(num["bytes"] / secs / 2**20, 1) if secs else 0.0,
        "errors": {k[4:]: int(v) for k, v in num.items() if k.startswith("err_") and int(v) != 0},
        "wall_s": round(wall, 2),
        "wrk_cpu_s": round(wrk_cpu, 3),
        "steal_pct": round((steal1 - steal0) / wall * 100, 1),
    }
    if measured_pid:
        cpu = sum(after.get(pid, 0.0) - before.get(pid, 0.0) for pid in after)
        vanished = sorted(set(before) - set(after))
        born = sorted(set(after) - set(before))
        result["cpu_s"] = round(cpu, 3)
        result["cpu_pct"] = round(cpu / wall * 100, 1)  # of one core: ~100 × workers = saturated
        result["cpu_us_per_req"] = round(cpu * 1e6 / requests, 2) if requests else None
        result["rss_mib"] = round(sampler.peak / 2**20, 1)
        foreign = (busy1 - busy0) - cpu - wrk_cpu - self_cpu - others
        result["foreign_cpu_pct"] = round(max(0.0, foreign) / wall * 100, 1)
        if vanished or born:
            # a worker died (its CPU is lost) or was started during the run: worth a look
            result["processes_changed"] = {"gone": vanished, "new": born}
    return result
