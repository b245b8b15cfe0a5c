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
