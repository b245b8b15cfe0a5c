"""bench/run.py decides its exit status from what actually ran: a requested target that did not
start, or a (scenario, target) pair without a row, makes it exit 1 with the reason. The Isekai
target is started for real (with the interpreter the harness picks) to show both outcomes."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import pytest

from tests.support.gateway import REPO

BENCH = REPO / "bench"


@pytest.fixture(scope="module")
def bench():
    """bench/run.py as a module (its `harness` package is imported from bench/, as it does)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_run"] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        from harness import report, targets

        yield SimpleNamespace(run=module, report=report, targets=targets)
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("bench_run", None)


def rows_for(bench, pairs):
    """Report rows as run.py builds them, one measured run each."""
    run = {"rps": 1000.0, "p50_ms": 0.5, "p99_ms": 1.0, "errors": {}}
    return [bench.report.median_row(s, kind, w, [run]) for s, kind, w in pairs]


def test_complete_run_exits_zero(bench, capsys):
    scen = bench.run.scenarios()
    chosen = [("direct", 1), ("isekai", 1), ("nginx", 1)]
    pairs = [(s, k, w) for s in ("small_get", "get_16k") for k, w in chosen]
    found = bench.run.problems(
        chosen, [scen["small_get"], scen["get_16k"]], rows_for(bench, pairs), []
    )
    assert found == []
    assert bench.run.exit_status(found) == 0
    assert capsys.readouterr().err == ""


def test_target_without_rows_exits_one_with_the_reason(bench, capsys):
    # the original failure: Isekai never started, the table had only direct and nginx, exit 0
    scen = bench.run.scenarios()
    chosen = [("direct", 1), ("isekai", 1), ("nginx", 1)]
    rows = rows_for(bench, [("small_get", "direct", 1), ("small_get", "nginx", 1)])
    found = bench.run.problems(chosen, [scen["small_get"]], rows, [])
    assert found == ["isekai ×1 small_get: no results"]
    assert bench.run.exit_status(found) == 1
    err = capsys.readouterr().err
    assert "bench: FAILED" in err and "isekai ×1 small_get: no results" in err


def test_targets_a_scenario_does_not_run_are_not_missing(bench):
    # routes_10 compares Isekai and nginx only: no direct row is expected there
    scen = bench.run.scenarios()
    chosen = [("direct", 1), ("isekai", 1), ("nginx", 1)]
    rows = rows_for(bench, [("routes_10", "isekai", 1), ("routes_10", "nginx", 1)])
    assert bench.run.problems(chosen, [scen["routes_10"]], rows, []) == []
    found = bench.run.problems(chosen, [scen["routes_10"]], rows[:1], [])
    assert found == ["nginx ×1 routes_10: no results"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("broken", [False, True])
def test_isekai_target_started_for_real(bench, tmp_path, monkeypatch, broken):
    """A real Isekai process from the harness: it starts (the venv's interpreter, not the one
    behind its symlink), or with a broken config the target is marked failed and the run exits 1.
    Without a backend a proxied path would answer 502, so readiness is probed on a 404."""
    monkeypatch.setattr(sys.modules["harness.env"], "PIN", False)
    T = bench.targets
    port = sys.modules["harness.env"].free_port()
    conf = "listeners: 5\n" if broken else T.isekai_conf(port, 1, 1, 10)
    target = bench.run.Target("isekai", 1)
    runner = bench.run.Bench(SimpleNamespace(), {}, tmp_path)
    target.proc = T.start_isekai(tmp_path, "probe", conf, port, 1)
    try:
        runner.wait_target(target, "/not-a-route")
    finally:
        target.proc.stop()
    scen = bench.run.scenarios()["small_get"]
    found = bench.run.problems([("isekai", 1)], [scen], [], [target])
    if broken:
        assert target.failed and "did not start" in target.failed, target.failed
        assert found[0].startswith("isekai ×1: did not start"), found
    else:
        assert target.failed is None, target.proc.log_text()
        assert "No module named" not in target.proc.log_text()
        assert found == ["isekai ×1 small_get: no results"]  # started, but measured nothing
    assert bench.run.exit_status(found) == 1


# -- the observability scenarios (item 9 of issue 11) ------------------------------------------

# the names issue 11 asks for, in the order the group runs them
FEATURES = "metrics_off tracing_0 tracing_1pct tracing_100pct access_log request_log"
OBSERVABILITY = tuple(f"small_get_{feature}" for feature in FEATURES.split())


def isekai_config(bench, scenario_name: str, tmp_path, sink_port=4999):
    """The config text the harness gives Isekai for a scenario, loaded by Isekai's own loader."""
    from isekai.config.loader import load_config

    runner = bench.run.Bench(SimpleNamespace(), {}, tmp_path)
    runner.backend = SimpleNamespace(port=8081)
    runner.sink = SimpleNamespace(port=sink_port)
    target = bench.run.Target("isekai", 2, scenario=bench.run.scenarios()[scenario_name])
    text = runner.isekai_conf(target, 8080, f"{scenario_name}-isekai-w2")
    path = tmp_path / f"{scenario_name}.yaml"
    path.write_text(text)
    return text, load_config(path)


def test_observability_group_expands_with_its_baseline_first(bench):
    scen = bench.run.scenarios()
    assert bench.run.expand(["observability"], scen) == ["small_get", *OBSERVABILITY]
    # one compared scenario alone still brings the plain small_get it is measured against
    assert bench.run.expand(["small_get_tracing_1pct"], scen) == [
        "small_get",
        "small_get_tracing_1pct",
    ]
    assert bench.run.expand(["get_16k", "small_get", "small_get_access_log"], scen) == [
        "get_16k",
        "small_get",
        "small_get_access_log",
    ]
    with pytest.raises(SystemExit, match="unknown scenario 'nope'"):
        bench.run.expand(["nope"], scen)


def test_observability_scenarios_are_isekai_only_and_batched_with_small_get(bench):
    scen = bench.run.scenarios()
    for name in OBSERVABILITY:
        assert scen[name].targets == ("isekai",) and scen[name].baseline == "small_get"
        assert scen[name].path == scen["small_get"].path
    chosen = [scen[n] for n in bench.run.expand(["get_16k", "observability"], scen)]
    batches = bench.run.batches(chosen)
    assert [[s.name for s in b] for b in batches] == [["get_16k"], ["small_get", *OBSERVABILITY]]
    # Isekai targets of every scenario of a batch; nginx only where the scenario has it
    found = bench.run.problems([("isekai", 1), ("nginx", 1)], batches[1], [], [])
    assert "nginx ×1 small_get: no results" in found
    assert not any("nginx ×1 small_get_" in f for f in found)
    assert len(found) == 1 + 1 + len(OBSERVABILITY)


def test_observability_group_defaults_to_isekai_and_is_not_in_the_default_run(bench):
    args = bench.run.parse_args(["--scenarios", "observability"])
    assert args.targets == "isekai"
    args = bench.run.parse_args(["--scenarios", "observability", "--targets", "isekai:1,nginx:1"])
    assert args.targets == "isekai:1,nginx:1"
    assert bench.run.parse_args([]).targets == "direct,isekai,nginx,haproxy"


@pytest.mark.parametrize("name", ["small_get", *OBSERVABILITY])
def test_observability_scenario_configs_are_valid_and_change_one_thing(bench, tmp_path, name):
    text, config = isekai_config(bench, name, tmp_path)
    obs = config.observability
    plain = name == "small_get"
    assert config.workers == 2 and [r.name for r in config.routes] == ["all"]
    assert obs.metrics.enabled is (name != "small_get_metrics_off")
    assert obs.tracing.enabled is name.startswith("small_get_tracing")
    if obs.tracing.enabled:
        ratio = {"0": 0.0, "1pct": 0.01, "100pct": 1.0}[name.rsplit("_", 1)[1]]
        assert obs.tracing.sample_ratio == ratio
        assert obs.tracing.endpoint == "http://127.0.0.1:4999"
    assert obs.access_log.enabled is (name == "small_get_access_log")
    if obs.access_log.enabled:
        assert obs.access_log.path == str(tmp_path / f"{name}-isekai-w2-access.log")
        assert obs.access_log.format == "json"
    request_log = name == "small_get_request_log"
    assert config.admin.enabled is request_log and config.admin.request_logs.enabled is request_log
    if request_log:
        assert config.admin.auth.enabled is False and config.admin.port == 0
        assert str(tmp_path / f"{name}-isekai-w2.db") in config.store.url
    assert plain == (text == bench.targets.isekai_conf(8080, 8081, 2))


def test_observability_tracing_variant_needs_the_sink(bench, tmp_path):
    from harness import variants

    conf = bench.targets.isekai_conf(8080, 8081, 1)
    with pytest.raises(ValueError, match="OTLP sink"):
        variants.apply(conf, "tracing_1pct", tmp_path, "t", None)
    with pytest.raises(ValueError, match="unknown Isekai variant 'x'"):
        variants.apply(conf, "x", tmp_path, "t", 1)


def test_observability_rows_carry_their_ratio_to_plain_small_get(bench):
    rows = rows_for(bench, [("small_get", "isekai", 1), ("small_get", "nginx", 1)])
    runs = {"rps": 900.0, "p50_ms": 0.5, "p99_ms": 1.5, "cpu_us_per_req": 22.0, "errors": {}}
    rows.append(bench.report.median_row("small_get_tracing_100pct", "isekai", 1, [runs]))
    rows.append(bench.report.median_row("small_get_access_log", "isekai", 2, [runs]))
    rows[0]["cpu_us_per_req"] = 20.0
    baselines = {"small_get": None, "small_get_tracing_100pct": "small_get"}
    baselines["small_get_access_log"] = "small_get"
    bench.report.relate_to_baselines(rows, baselines)
    traced = rows[2]
    assert traced["baseline"] == "small_get"
    assert traced["rps_vs_baseline"] == 0.9 and traced["cpu_vs_baseline"] == 1.1
    assert traced["p99_vs_baseline"] == 1.5
    assert rows[3]["rps_vs_baseline"] is None  # no plain isekai ×2 row to compare with
    assert "baseline" not in rows[0] and "baseline" not in rows[1]
    doc = bench.report.document(
        {"cpu_model": "cpu", "cores": 2, "kernel": "k"},
        "abc",
        False,
        {},
        {"runs": 1, "duration": 1},
        rows,
    )
    table = bench.report.markdown(doc)
    assert "| small_get_tracing_100pct | isekai ×1 | 900 | 0.900 | 22.0 | 1.100 | 1.500 |" in table
    assert "| small_get_access_log | isekai ×2 | 900 | — |" in table


@pytest.mark.timeout(60)
def test_otlp_sink_accepts_trace_exports(bench, tmp_path):
    """The sink the tracing scenarios export to, as a real process: POST /v1/traces -> 200 with
    an empty body; it counts what it took and says so when stopped."""
    port = sys.modules["harness.env"].free_port()
    sink = bench.targets.start_otlp_sink(tmp_path, port)
    try:
        bench.targets.wait_ready(sink, "/", timeout=20)
        for _ in range(3):
            status, body = bench.targets.http_get(port, "/v1/traces", "POST", b"\x0a\x00" * 50)
            assert (status, body) == (200, b"")
        assert bench.targets.http_get(port, "/v1/other", "POST", b"x")[0] == 404
    finally:
        sink.stop()
    assert "otlp-sink: 3 exports, 301 bytes, 2 other requests" in sink.log_text()
