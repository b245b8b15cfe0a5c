"""Macro benchmark: Isekai against nginx, HAProxy and no proxy at all, driven by wrk.

    python bench/run.py --quick                  # ~100 s: small_get + get_16k, direct/isekai/nginx
    python bench/run.py --scenarios small_get,new_conn --targets isekai,nginx --runs 5
    make bench BENCH_ARGS="--quick"

A backend nginx (one worker) serves a ~100 B body, 16 KiB and 1 MiB static files and a POST sink.
Every proxy is started afresh for each scenario, warmed up, and then runs are interleaved: run 1
of every target, then run 2 of every target (the order rotated each round), so drift on a noisy
machine hits all targets alike. Writes bench-<time>.json/.md/.png into --output
and prints the table. See bench/README.md for what each scenario measures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import env, variants
from harness.variants import API_KEY, TRACING_RATIOS, with_policies  # noqa: F401 (micro/ imports it)

ALL_TARGETS = ("direct", "isekai", "nginx", "haproxy")
QUICK_SCENARIOS = ("small_get", "get_16k")
QUICK_TARGETS = ("direct", "isekai:1", "nginx:1")
# --scenarios NAME runs every scenario of the group (plus the baselines they compare with)
GROUPS = {
    "observability": (
        "small_get_metrics_off",
        "small_get_tracing_0",
        "small_get_tracing_1pct",
        "small_get_tracing_100pct",
        "small_get_access_log",
        "small_get_request_log",
    ),
    "jwt": ("small_get_jwt_cached", "small_get_jwt_uncached"),
    "auth": ("small_get_api_key",),
    "rate_limit": (
        "small_get_rate_limit",
        "small_get_rate_limit_headers",
        "small_get_rate_limit_redis",
    ),
}


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    what: str
    connections: int = 64
    headers: tuple[str, ...] = ()
    post: int | None = None
    routes: int | None = None  # the proxies get a config with this many routes
    targets: tuple[str, ...] = ALL_TARGETS
    expect_len: int | None = None
    # Isekai's config edited by harness.variants (the others proxy as for small_get)
    variant: str | None = None
    # measured interleaved with this scenario's Isekai rows (same run, same processes' rounds)
    # and reported as a ratio to them
    baseline: str | None = None
    # Lua put before the wrk script (a `request` function varying each request), made once
    lua: Callable[[], str] | None = None
    probe_headers: tuple[str, ...] = ()  # sent with the probe request only (not by wrk)


def scenarios() -> dict[str, Scenario]:
    from harness.targets import (
        POST_BODY_SIZE,
        ROUTE_COUNTS,
        SMALL_BODY,
        STATIC_FILES,
        middle_route,
    )

    small = len(SMALL_BODY)
    out = [
        Scenario(
            "small_get", "/small", "keep-alive GET, ~100 B body, 64 connections", expect_len=small
        ),
        Scenario(
            "small_get_policies",
            "/small",
            "small_get with headers + cors + ip_filter on the route (Isekai; nginx plain)",
            headers=("Origin: https://app.example.com",),
            targets=("isekai", "nginx"),
            expect_len=small,
            variant="policies",
        ),
        Scenario(
            "get_16k",
            "/static/16k.bin",
            "keep-alive GET of a 16 KiB static file",
            expect_len=STATIC_FILES["16k.bin"],
        ),
        Scenario(
            "get_1m",
            "/static/1m.bin",
            "keep-alive GET of a 1 MiB static file",
            expect_len=STATIC_FILES["1m.bin"],
        ),
        Scenario(
            "post_4k",
            "/sink",
            "keep-alive POST of a 4 KiB body, 3 B answer",
            post=POST_BODY_SIZE,
            expect_len=3,
        ),
        Scenario(
            "new_conn",
            "/small",
            "a new client connection per request (Connection: close)",
            headers=("Connection: close",),
            expect_len=small,
        ),
    ]
    for name, count in ROUTE_COUNTS.items():
        out.append(
            Scenario(
                name,
                middle_route(count),
                f"small GET hitting route {count // 2} of {count:,}",
                routes=count,
                targets=("isekai", "nginx"),
                expect_len=small,
            )
        )
    out += observability_scenarios(small)
    out += jwt_scenarios(small)
    out.append(
        Scenario(
            "small_get_api_key",
            "/small",
            "small_get with an api_key policy on the route (1,000 consumers, key in a header)",
            headers=(f"X-API-Key: {API_KEY}",),
            targets=("isekai",),
            expect_len=small,
            variant="api_key",
            baseline="small_get",
        )
    )
    for variant, what in (
        ("rate_limit", "a rate_limit policy (local table shared by the workers, one hot key)"),
        ("rate_limit_headers", "the same with RateLimit headers on every response"),
        ("rate_limit_redis", "the same counted in Redis (one round trip per request)"),
    ):
        out.append(
            Scenario(
                f"small_get_{variant}",
                "/small",
                f"small_get with {what}; never refused",
                targets=("isekai",),
                expect_len=small,
                variant=variant,
                baseline="small_get",
            )
        )
    out.append(
        Scenario(
            "c1000",
            "/small",
            "keep-alive small GET over 1000 connections",
            connections=1000,
            expect_len=small,
        )
    )
    return {s.name: s for s in out}


def observability_scenarios(small: int) -> list[Scenario]:
    """small_get with one observability feature changed, each against the plain small_get
    (metrics on, tracing and logs off: the defaults) of the same run; Isekai only."""
    what = {
        "metrics_off": "observability.metrics.enabled: false",
        **{
            name: f"tracing on, sample_ratio {ratio:g}, export to a local OTLP sink"
            for name, ratio in TRACING_RATIOS.items()
        },
        "access_log": "a JSON access-log line per request, to a file",
        "request_log": "admin process + SQLite store, admin.request_logs.enabled: true",
    }
    return [
        Scenario(
            f"small_get_{variant}",
            "/small",
            f"small_get with {text}",
            targets=("isekai",),
            expect_len=small,
            variant=variant,
            baseline="small_get",
        )
        for variant, text in what.items()
    ]


def jwt_scenarios(small: int) -> list[Scenario]:
    """small_get behind a ``jwt`` policy (RS256) against the plain small_get of the same run:
    the same token on every request (the verified-token cache answers), and distinct tokens
    (4× the policy's cache, so every request verifies a signature). Isekai only."""
    from harness import jwt_tokens

    bearer = f"Authorization: Bearer {jwt_tokens.token(0)}"
    return [
        Scenario(
            "small_get_jwt_cached",
            "/small",
            "small_get with a jwt policy, the same RS256 token every request (cached)",
            headers=(bearer,),
            targets=("isekai",),
            expect_len=small,
            variant="jwt",
            baseline="small_get",
        ),
        Scenario(
            "small_get_jwt_uncached",
            "/small",
            f"small_get with a jwt policy, {jwt_tokens.ROTATION} distinct RS256 tokens in turn "
            "(every request verifies a signature)",
            targets=("isekai",),
            expect_len=small,
            variant="jwt",
            baseline="small_get",
            lua=jwt_tokens.rotation_lua,
            probe_headers=(bearer,),
        ),
    ]


def expand(names: list[str], all_scen: dict[str, Scenario]) -> list[str]:
    """Scenario names with groups (GROUPS) unfolded and each baseline added before the first
    scenario that compares with it; unknown names are an error."""
    out: list[str] = []
    for name in names:
        for each in GROUPS.get(name, (name,)):
            if each not in all_scen:
                known = ", ".join([*all_scen, *GROUPS])
                raise SystemExit(f"unknown scenario {each!r}; choose from {known}")
            base = all_scen[each].baseline
            if base and base not in out:
                out.append(base)
            if each not in out:
                out.append(each)
    return out


def batches(chosen: list[Scenario]) -> list[list[Scenario]]:
    """Scenarios measured together: a baseline with every chosen scenario compared with it
    (their targets interleaved run by run), every other scenario alone."""
    names = {s.name for s in chosen}
    out: list[list[Scenario]] = []
    for s in chosen:
        if s.baseline in names:
            continue  # measured in its baseline's batch
        out.append([s, *(o for o in chosen if o.baseline == s.name)])
    return out


@dataclass
class Target:
    kind: str  # direct | isekai | nginx | haproxy
    workers: int
    proc: object = None  # harness.targets.Proc (the backend for direct)
    failed: str | None = None
    runs: dict = field(default_factory=dict)  # scenario -> [run results]
    scenario: Scenario | None = None  # what this process is configured and measured for

    @property
    def label(self) -> str:
        label = f"{self.kind} ×{self.workers}"
        if self.scenario is not None and self.scenario.variant:
            label += f" [{self.scenario.variant}]"
        return label


def parse_targets(text: str, worker_counts: list[int]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        kind, _, n = item.partition(":")
        if kind not in ALL_TARGETS:
            raise SystemExit(f"unknown target {kind!r}; choose from {', '.join(ALL_TARGETS)}")
        counts = [1] if kind == "direct" else ([int(n)] if n else worker_counts)
        for w in counts:
            if (kind, w) not in out:
                out.append((kind, w))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--quick",
        action="store_true",
        help="small_get + get_16k; direct, isekai ×1, nginx ×1; 3 runs of 5 s",
    )
    p.add_argument(
        "--scenarios",
        help="comma-separated names (default: all but the compared ones); see bench/README.md: "
        "small_get, small_get_policies, get_16k, get_1m, post_4k, new_conn, routes_10, "
        "routes_10k, c1000; compared with small_get: small_get_metrics_off, "
        "small_get_tracing_0/_1pct/_100pct, small_get_access_log, small_get_request_log, "
        "or the group `observability` for all of these; small_get_jwt_cached/_uncached "
        "or the group `jwt`",
    )
    p.add_argument(
        "--targets",
        help="comma-separated from direct,isekai,nginx,haproxy; "
        "NAME:N for one worker count (default: all)",
    )
    p.add_argument("--workers", help=f"worker counts for the proxies (default: 1,{cores})")
    p.add_argument("--runs", type=int, help="runs per target and scenario (default 3)")
    p.add_argument("--duration", type=int, help="seconds per run (default 10; --quick 5)")
    p.add_argument("--warmup", type=int, default=1, help="unrecorded seconds first (1; 0 = none)")
    p.add_argument("--output", default=str(env.BENCH_DIR / "results"), help="results directory")
    p.add_argument(
        "--no-pin", action="store_true", help="pin nothing, even where cores would allow it"
    )
    p.add_argument("--keep-work", action="store_true", help="keep configs and logs of the run")
    args = p.parse_args(argv)
    args.worker_counts = sorted({int(w) for w in (args.workers or f"1,{cores}").split(",")})
    if args.quick:
        args.scenarios = args.scenarios or ",".join(QUICK_SCENARIOS)
        args.targets = args.targets or ",".join(QUICK_TARGETS)
        args.runs = args.runs or 3
        args.duration = args.duration or 5
    args.runs = args.runs or 3
    args.duration = args.duration or 10
    if not args.targets and args.scenarios and set(args.scenarios.split(",")) <= set(GROUPS):
        args.targets = "isekai"  # a group compares Isekai with itself
    args.targets = args.targets or ",".join(ALL_TARGETS)
    if not 1 <= args.runs <= 50 or not 1 <= args.duration <= 600:
        raise SystemExit("--runs must be 1..50 and --duration 1..600 s")
    return args


class Bench:
    def __init__(self, args, tools: dict, work: Path) -> None:
        from harness import targets as T

        self.T = T
        self.args = args
        self.tools = tools
        self.work = work
        self.notes: list[str] = []
        self.backend = None
        self.sink = None  # the OTLP sink, started for tracing scenarios
        self.lua: dict[str, str] = {}  # scenario -> its Lua part (made once per run)

    def note(self, text: str) -> None:
        print(f"  ! {text}", flush=True)
        self.notes.append(text)

    # -- processes --

    def start_backend(self) -> None:
        port = env.free_port()
        plan = env.pinning_for(1)
        self.backend = self.T.start_nginx(
            self.tools["nginx"],
            self.work,
            "backend",
            self.T.backend_conf(self.work, port),
            port,
            1,
            cores=plan.load,
        )
        self.T.wait_ready(self.backend, "/small")

    def start_sink(self) -> None:
        """The OTLP/HTTP receiver of the tracing scenarios, on the load side's cores."""
        port = env.free_port()
        self.sink = self.T.start_otlp_sink(self.work, port, cores=env.pinning_for(1).load)
        self.T.wait_ready(self.sink, "/")

    def stop_sink(self) -> None:
        if self.sink is None:
            return
        self.sink.stop()
        summary = [ln for ln in self.sink.log_text().splitlines() if "exports" in ln]
        if summary:
            self.note(summary[-1])

    def isekai_conf(self, t: Target, port: int, tag: str) -> str:
        s = t.scenario
        conf = self.T.isekai_conf(port, self.backend.port, t.workers, s.routes if s else None)
        if s is None or s.variant is None:
            return conf
        sink = self.sink.port if self.sink is not None else None
        return variants.apply(conf, s.variant, self.work, tag, sink)

    def start_target(self, t: Target) -> None:
        T, work = self.T, self.work
        if t.kind == "direct":
            t.proc = self.backend
            return
        plan = env.pinning_for(t.workers)
        port = env.free_port()
        routes = t.scenario.routes if t.scenario else None
        tag = f"{t.scenario.name if t.scenario else 'target'}-{t.kind}-w{t.workers}"
        bport = self.backend.port
        if t.kind == "isekai":
            conf = self.isekai_conf(t, port, tag)
            extra = variants.environment(t.scenario.variant if t.scenario else None)
            t.proc = T.start_isekai(work, tag, conf, port, t.workers, cores=plan.proxy, env=extra)
        elif t.kind == "nginx":
            conf = T.nginx_proxy_conf(work, tag, port, bport, t.workers, routes)
            t.proc = T.start_nginx(
                self.tools["nginx"], work, tag, conf, port, t.workers, cores=plan.proxy
            )
        else:
            t.proc = T.start_haproxy(
                self.tools["haproxy"], work, tag, port, bport, t.workers, cores=plan.proxy
            )

    def wait_target(self, t: Target, probe: str) -> None:
        if t.kind == "direct":
            return
        marker = None
        if t.kind == "isekai":
            marker = "workers up" if t.workers > 1 else self.T.ISEKAI_LISTENING
        t0 = time.monotonic()
        try:
            self.T.wait_ready(t.proc, probe, timeout=60, log_marker=marker)
        except RuntimeError as exc:
            t.failed = f"did not start: {str(exc).strip()[:600]}"
            self.note(f"{t.label}: {t.failed}")
            t.proc.stop()
            return
        if t.kind == "isekai":
            print(f"  {t.label} ready in {time.monotonic() - t0:.1f} s", flush=True)

    def verify(self, t: Target, s: Scenario) -> None:
        """One request by hand before measuring: right status and body size, or a note."""
        body = b"x" * s.post if s.post else None
        try:
            status, data = self.T.http_get(
                t.proc.port,
                s.path,
                "POST" if s.post else "GET",
                body,
                headers=(*s.headers, *s.probe_headers),
            )
        except OSError as exc:
            self.note(f"{t.label} {s.name}: probe request failed: {exc}")
            return
        if status != 200 or (s.expect_len is not None and len(data) != s.expect_len):
            self.note(
                f"{t.label} {s.name}: probe got {status} with {len(data)} B "
                f"(expected 200 with {s.expect_len} B)"
            )

    # -- runs --

    def one_run(self, t: Target, s: Scenario, duration: float, record: bool):
        from harness.load import Load, run_wrk, write_script

        plan = env.pinning_for(t.workers)
        backend_pids = self.backend.pids()
        if plan.pinned:
            env.set_affinity(backend_pids, plan.proxy if t.kind == "direct" else plan.load)
            os.sched_setaffinity(0, plan.load)
        else:
            env.set_affinity(backend_pids, env.all_cores())
            os.sched_setaffinity(0, env.all_cores())
        if s.lua is not None and s.name not in self.lua:
            self.lua[s.name] = s.lua()
        script = write_script(self.work, s.name, s.post, self.lua.get(s.name))
        load = Load(s.path, s.connections, 1, s.headers, script)
        try:
            others = () if t.kind == "direct" else (self.backend.pid,)
            if self.sink is not None:
                others += (self.sink.pid,)
            res = run_wrk(
                self.tools["wrk"],
                t.proc.port,
                load,
                duration,
                t.proc.pid,
                cores=plan.load,
                other_pids=others,
            )
        except RuntimeError as exc:
            self.note(f"{t.label} {s.name}: wrk failed: {str(exc)[:400]}")
            res = None
        if not t.proc.alive():
            t.failed = f"exited with {t.proc.popen.returncode} during {s.name}"
            self.note(f"{t.label}: {t.failed}; log tail:\n{t.proc.log_text()[-1500:]}")
        if res is None or not record:
            return res
        tag = f"{t.label} {s.name} run {len(t.runs.get(s.name, [])) + 1}"
        if res["errors"]:
            self.note(f"{tag}: wrk errors {res['errors']} over {res['requests']:,} requests")
        if "processes_changed" in res:
            self.note(f"{tag}: processes changed during the run {res['processes_changed']}")
        t.runs.setdefault(s.name, []).append(res)
        print(
            f"    {s.name:<11} {t.label:<12} rps {res['rps']:>10,.0f}  p50 {res['p50_ms']:6.2f}"
            f"  p99 {res['p99_ms']:6.2f} ms  cpu {res.get('cpu_us_per_req') or 0:6.1f} µs/req"
            f"  rss {res.get('rss_mib') or 0:6.1f} MiB  busy {res.get('cpu_pct', 0):4.0f} %"
            f"  other {res.get('foreign_cpu_pct', 0):4.0f} %",
            flush=True,
        )
        return res

    def group(self, scens: list[Scenario], chosen) -> list[Target]:
        """One process per (scenario, target) of the batch, all started afresh, measured with
        their runs interleaved; stopped at the end."""
        ts = [Target(k, w, scenario=s) for s in scens for k, w in chosen if k in s.targets]
        try:
            for t in ts:
                self.start_target(t)
            for t in ts:
                self.wait_target(t, t.scenario.path)
            self.measure([t for t in ts if not t.failed])
        finally:  # also on an exception or Ctrl-C: never leave a proxy running
            for t in ts:
                if t.kind != "direct" and t.proc is not None:
                    t.proc.stop()
                    self.scan_log(t)
        return ts

    def measure(self, live: list[Target]) -> None:
        for s in dict.fromkeys(t.scenario for t in live):
            labels = ", ".join(t.label for t in live if t.scenario is s)
            print(f"\n== {s.name}: {s.what} ({labels})", flush=True)
        for t in live:
            self.verify(t, t.scenario)
            if self.args.warmup > 0:
                self.one_run(t, t.scenario, self.args.warmup, record=False)
        for r in range(self.args.runs):
            order = live[r % len(live) :] + live[: r % len(live)] if live else []
            for t in order:
                if not t.failed:
                    self.one_run(t, t.scenario, self.args.duration, record=True)

    def scan_log(self, t: Target) -> None:
        if t.kind != "isekai":
            return
        lines = t.proc.log_text().splitlines()
        bad = [ln for ln in lines if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln]
        if bad:
            shown = "\n    ".join(bad[:8])
            self.note(f"{t.label}: {len(bad)} warning/error lines in its log, first:\n    {shown}")


def problems(
    chosen: list[tuple[str, int]], chosen_scen: list[Scenario], rows: list[dict], ts: list[Target]
) -> list[str]:
    """Why this run is not a complete result: every requested target that failed, and every
    (scenario, target) pair requested that produced no row. Empty when all of them ran."""
    out = [f"{t.label}: {t.failed}" for t in ts if t.failed]
    have = {(r["scenario"], r["target"], r["workers"]) for r in rows}
    for s in chosen_scen:
        for kind, w in chosen:
            if kind in s.targets and (s.name, kind, w) not in have:
                out.append(f"{kind} ×{w} {s.name}: no results")
    return out


def exit_status(found: list[str]) -> int:
    """0 for a complete run; 1, with the reasons on stderr, when anything requested is missing."""
    if not found:
        return 0
    print("\nbench: FAILED, requested targets did not run or gave no rows:", file=sys.stderr)
    for reason in found:
        print(f"  - {' '.join(reason.split())[:300]}", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    args = parse_args(argv)
    env.PIN = not args.no_pin
    started = time.monotonic()
    chosen = parse_targets(args.targets, args.worker_counts)
    need = ("wrk", "nginx") + (("haproxy",) if any(k == "haproxy" for k, _ in chosen) else ())
    tools = env.ensure_tools(need, python_modules=("psutil", "matplotlib"))

    from harness import report

    all_scen = scenarios()
    # by default every scenario that stands alone; the compared ones (GROUPS) when asked for
    default = ",".join(n for n, s in all_scen.items() if s.baseline is None)
    names = [n.strip() for n in (args.scenarios or default).split(",") if n.strip()]
    names = expand(names, all_scen)
    chosen_scen = [all_scen[n] for n in names]

    nofile = env.raise_nofile()
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = out_dir / f"work-{stamp}"
    work.mkdir()

    cores = os.cpu_count() or 1
    print(
        f"isekai bench: {len(chosen_scen)} scenarios x {len(chosen)} targets x {args.runs} runs "
        f"x {args.duration:g} s on {cores} cores ({env.cpu_model()}); RLIMIT_NOFILE {nofile}"
    )
    pin_notes = []
    for w in sorted({w for _, w in chosen}):
        plan = env.pinning_for(w)
        note = plan.describe(f"{w}-worker runs")
        if plan.pinned and w == 1:
            note = note.replace("proxy", "proxy (the backend, for direct)", 1)
        pin_notes.append(note)
    for n in pin_notes:
        print(f"  pinning: {n}")

    bench = Bench(args, tools, work)
    bench.notes += [f"pinning: {n}" for n in pin_notes]
    if nofile < 4096 and any(s.connections > 500 for s in chosen_scen):
        bench.note(f"RLIMIT_NOFILE is only {nofile} (hard limit): c1000 may fail to connect")
    commit, dirty = env.git_commit()
    rows: list[dict] = []
    ran: list[Target] = []
    try:
        bench.start_backend()
        if any(s.variant in TRACING_RATIOS for s in chosen_scen):
            bench.start_sink()
        results: dict[tuple[str, str, int], list] = {}
        for batch in batches(chosen_scen):  # fresh processes per batch: RSS, pools from zero
            for t in bench.group(batch, chosen):
                ran.append(t)
                for sname, runs in t.runs.items():
                    results[(sname, t.kind, t.workers)] = runs
        order = {k: i for i, k in enumerate(ALL_TARGETS)}
        for s in chosen_scen:
            for kind, w in sorted(chosen, key=lambda kw: (kw[1], order[kw[0]])):
                runs = results.get((s.name, kind, w))
                if runs:
                    rows.append(report.median_row(s.name, kind, w, runs))
        report.relate_to_baselines(rows, {s.name: s.baseline for s in chosen_scen})
    finally:
        bench.stop_sink()
        if bench.backend is not None:
            bench.backend.stop()
        os.sched_setaffinity(0, env.all_cores())

    settings = {
        "scenarios": names,
        "targets": [f"{k}:{w}" for k, w in chosen],
        "runs": args.runs,
        "duration": args.duration,
        "warmup": args.warmup,
        "pinned": not args.no_pin,
        "wrk": "wrk -t1 -cC -dDs --timeout 10s --latency -s done.lua",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "notes": bench.notes,
    }
    doc = report.document(
        env.machine(),
        commit,
        dirty,
        env.versions({t: p for t in env.TOOLS if (p := env.which(t))}),
        settings,
        rows,
    )
    base = out_dir / f"bench-{stamp}"
    report.write_json(doc, base.with_suffix(".json"))
    table = report.markdown(doc)
    base.with_suffix(".md").write_text(table)
    png = report.chart(doc, base.with_suffix(".png"))
    failed = any("did not start" in n or "exited with" in n for n in bench.notes)
    args.keep_work = args.keep_work or failed
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    else:  # the logs and configs stay; the test files and nginx temp dirs go
        for junk in [work / "static", *work.glob("*-tmp")]:
            shutil.rmtree(junk, ignore_errors=True)
    elapsed = time.monotonic() - started
    print("\n" + table)
    print(
        f"wrote {base}.json, .md{', .png' if png else ' (no matplotlib: no chart)'}"
        f"{f'; configs and logs in {work}' if args.keep_work else ''}"
    )
    print(f"total time {elapsed:.0f} s")
    return exit_status(problems(chosen, chosen_scen, rows, ran))


if __name__ == "__main__":
    sys.exit(main())
