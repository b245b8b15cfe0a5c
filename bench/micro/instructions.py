"""User-space instructions per proxied request, counted by valgrind's callgrind.

    python bench/micro/instructions.py                       # direct, nginx, haproxy, isekai
    python bench/micro/instructions.py --targets isekai --n1 500 --n2 2500

Each target runs under `valgrind --tool=callgrind` (one process: Isekai with `workers: 1`, nginx
with `master_process off`, HAProxy with one thread; "direct" is the backend nginx itself) while
a native nginx backend answers with a ~100 B body. A plain Python client in this process sends
sequential keep-alive GETs over one connection: WARMUP requests, a callgrind dump (which also
zeroes the counters), N1 requests, a dump, N2 requests, a dump. The answer is

    (I(N2) - I(N1)) / (N2 - N1)

so whatever each segment pays once (the dump itself, timers, the first request's lazy set-up)
cancels. Counts are user-space only (the kernel's share is not seen) and, unlike wall time, do
not move with a noisy machine. Hardware counters (perf) are not available in these VMs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import env  # noqa: E402

TARGETS = ("direct", "nginx", "haproxy", "isekai")
WARMUP = 200
TOTALS = re.compile(rb"^(?:totals|summary):\s*(\d+)", re.M)


def callgrind_argv(valgrind: str, out_file: Path, argv: list[str]) -> list[str]:
    return [valgrind, "--tool=callgrind", f"--callgrind-out-file={out_file}", *argv]


def dump(pid: int) -> None:
    out = subprocess.run(
        ["callgrind_control", "-d", str(pid)], capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0 or "OK" not in out.stdout:
        raise RuntimeError(f"callgrind_control -d {pid} failed: {out.stdout}{out.stderr}")


def part_total(out_file: Path, part: int, timeout: float = 60.0) -> int:
    path = Path(f"{out_file}.{part}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            m = TOTALS.search(path.read_bytes())
            if m:
                return int(m.group(1))
        time.sleep(0.1)
    raise RuntimeError(f"no callgrind dump {path}")


def drive(port: int, path: str, count: int, expect_len: int) -> int:
    """`count` sequential GETs over one keep-alive connection, each checked.

    Returns how many times the target closed the connection (nginx does after its default
    keepalive_requests, 1000): the client then opens a new one, as a browser would.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    closes = 0
    try:
        for _ in range(count):
            conn.request("GET", path, headers={"Host": "bench.local"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or len(body) != expect_len:
                raise RuntimeError(f"unexpected answer {resp.status} with {len(body)} B")
            if resp.will_close:
                closes += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    finally:
        conn.close()
    return closes


def measure(target: str, tools: dict, work: Path, backend, n1: int, n2: int) -> dict:
    from harness import targets as T

    plan = env.pinning_for(1)
    port = env.free_port()
    out_file = work / f"callgrind-{target}.out"
    tag = f"cg-{target}"
    bport = backend.port
    extra_env = None
    if target == "direct":
        argv = T.nginx_argv(tools["nginx"], work, tag, T.backend_conf(work, port, master=False))
    elif target == "nginx":
        conf = T.nginx_proxy_conf(work, tag, port, bport, 1, master=False)
        argv = T.nginx_argv(tools["nginx"], work, tag, conf)
    elif target == "haproxy":
        argv = T.haproxy_argv(tools["haproxy"], work, tag, port, bport, 1)
    else:
        path = work / f"{tag}.yaml"
        path.write_text(T.isekai_conf(port, bport, 1))
        argv = T.isekai_argv(path)
        extra_env = T.isekai_env()
    argv = callgrind_argv(tools["valgrind"], out_file, argv)
    proc = T.start(
        tag, argv, work / f"{tag}.log", port, cores=plan.proxy, env=extra_env, cwd=str(env.REPO)
    )
    expect = len(T.SMALL_BODY)
    try:
        t0 = time.monotonic()
        marker = T.ISEKAI_LISTENING if target == "isekai" else None
        T.wait_ready(proc, "/small", timeout=300, log_marker=marker)
        started = time.monotonic() - t0
        drive(port, "/small", WARMUP, expect)
        dump(proc.pid)
        part_total(out_file, 1)
        closes = drive(port, "/small", n1, expect)
        dump(proc.pid)
        i1 = part_total(out_file, 2)
        t1 = time.monotonic()
        closes += drive(port, "/small", n2, expect)
        seconds = time.monotonic() - t1
        dump(proc.pid)
        i2 = part_total(out_file, 3)
    finally:
        proc.stop(grace=60)
    return {
        "target": target,
        "instructions_per_request": round((i2 - i1) / (n2 - n1)),
        "i_n1": i1,
        "i_n2": i2,
        "n1": n1,
        "n2": n2,
        "per_request_n1": round(i1 / n1),
        "per_request_n2": round(i2 / n2),
        "client_reconnects": closes,
        "startup_s": round(started, 1),
        "requests_per_s_under_callgrind": round(n2 / seconds, 1),
    }


def run(targets, n1: int, n2: int, output: Path | None, quiet: bool = False) -> list[dict]:
    need = ("nginx",) + (("haproxy",) if "haproxy" in targets else ())
    tools = env.ensure_tools(need, python_modules=("psutil",))
    tools["valgrind"] = env.which("valgrind")
    if tools["valgrind"] is None or env.which("callgrind_control") is None:
        env.ensure_tools(("valgrind", "callgrind_control"))
        tools["valgrind"] = env.which("valgrind")

    from harness import targets as T

    base = output or (env.BENCH_DIR / "results")
    base.mkdir(parents=True, exist_ok=True)
    work = base / f"work-callgrind-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir()
    plan = env.pinning_for(1)
    if plan.pinned:
        os.sched_setaffinity(0, plan.load)
    bport = env.free_port()
    backend = T.start_nginx(
        tools["nginx"], work, "backend", T.backend_conf(work, bport), bport, 1, cores=plan.load
    )
    rows = []
    try:
        T.wait_ready(backend, "/small")
        for target in targets:
            if not quiet:
                print(f"  callgrind: {target} ...", flush=True)
            row = measure(target, tools, work, backend, n1, n2)
            rows.append(row)
            if not quiet:
                print(f"    {row['instructions_per_request']:,} instructions/request", flush=True)
    finally:
        backend.stop()
        os.sched_setaffinity(0, env.all_cores())
    doc = {
        "machine": env.machine(),
        "commit": env.git_commit()[0],
        "versions": env.versions({t: p for t in env.TOOLS if (p := env.which(t))}),
        "valgrind": subprocess.run(
            [tools["valgrind"], "--version"], capture_output=True, text=True
        ).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "results": rows,
    }
    (base / f"instructions-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(
        json.dumps(doc, indent=2) + "\n"
    )
    if not os.environ.get("ISEKAI_BENCH_KEEP"):
        shutil.rmtree(work, ignore_errors=True)  # dumps are tens of MB; logs only matter on failure
    return rows


def run_variants(variants, n1: int, n2: int) -> list[dict]:
    """`run` for Isekai once per ``(label, conf)``: ``conf`` stands in for
    `harness.targets.isekai_conf` (same arguments) while that variant runs."""
    from harness import targets as T

    plain_conf = T.isekai_conf
    rows = []
    for label, conf in variants:
        T.isekai_conf = conf
        try:
            row = run(["isekai"], n1, n2, None)[0]
        finally:
            T.isekai_conf = plain_conf
        row["target"] = label
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    out = [
        "| target | instructions/request | I(N1)/N1 | I(N2)/N2 | N1 → N2 | reconnects |",
        "|---|--:|--:|--:|---|--:|",
    ]
    for r in rows:
        out.append(
            f"| {r['target']} | {r['instructions_per_request']:,} | {r['per_request_n1']:,} "
            f"| {r['per_request_n2']:,} | {r['n1']} → {r['n2']} | {r['client_reconnects']} |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--targets", default=",".join(TARGETS), help="from " + ",".join(TARGETS))
    p.add_argument("--n1", type=int, default=500)
    p.add_argument("--n2", type=int, default=2500)
    p.add_argument("--output", type=Path, help="results directory (default bench/results)")
    args = p.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if any(t not in TARGETS for t in targets) or not 0 < args.n1 < args.n2 <= 100_000:
        p.error("bad --targets, or not 0 < n1 < n2 <= 100000")
    rows = run(targets, args.n1, args.n2, args.output)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
