import importlib.metadata
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import isekai as isekai_package
from isekai.cli import main
from isekai.config.schema import Config

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
upstreams:
  users: {targets: ["127.0.0.1:9000"]}
routes:
  - name: users
    match: {path: /users/*}
    upstream: users
  - name: ping
    match: {path: /ping}
    respond: {body: pong}
"""

BROKEN = """\
routes:
  - name: users
    match: {path: /users}
    upstream: nowhere
"""


def isekai(*args, cwd, env=None):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ISEKAI_")}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "isekai", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_validate_good_file_exits_0_with_a_summary(tmp_path):
    (tmp_path / "gateway.yaml").write_text(GOOD)
    result = isekai("validate", "gateway.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "gateway.yaml: OK (2 routes, 1 upstreams, 1 listeners)\n"
    assert result.stderr == ""


def test_cli_validate_broken_file_exits_1_with_the_error_on_stderr(tmp_path):
    (tmp_path / "gateway.yaml").write_text(BROKEN)
    result = isekai("validate", "gateway.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "gateway.yaml:4: routes[0].upstream: "
        "no upstream named 'nowhere' (upstreams: none defined)\n"
    )


def test_cli_validate_yaml_syntax_error_exits_1(tmp_path):
    (tmp_path / "gateway.yaml").write_text("routes: [\n")
    result = isekai("validate", "gateway.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("gateway.yaml:2: invalid YAML: ")


def test_cli_validate_missing_file_exits_1(tmp_path):
    result = isekai("validate", "missing.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "missing.yaml: cannot read config file: No such file or directory\n"


def test_cli_validate_takes_the_file_from_isekai_config(tmp_path):
    (tmp_path / "gateway.yaml").write_text(GOOD)
    result = isekai("validate", cwd=tmp_path, env={"ISEKAI_CONFIG": "gateway.yaml"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("gateway.yaml: OK")
    result = isekai("validate", cwd=tmp_path)
    assert result.returncode == 2
    assert "give the FILE to check" in result.stderr


def test_cli_validate_bundled_default_config(tmp_path):
    result = isekai("validate", str(ROOT / "isekai" / "default.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(": OK (2 routes, 0 upstreams, 1 listeners)\n")


def test_cli_version_and_usage(tmp_path):
    result = isekai("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == f"isekai {isekai_package.__version__}\n"
    assert importlib.metadata.version("isekai") == isekai_package.__version__
    assert isekai(cwd=tmp_path).returncode == 2
    assert isekai("frobnicate", cwd=tmp_path).returncode == 2


# -- `run`, in process, with a stand-in for isekai.server (the real one is not imported) -------


@pytest.fixture
def served(monkeypatch):
    calls: list[Config] = []
    fake = types.ModuleType("isekai.server")

    def serve(config):
        calls.append(config)
        return 0

    fake.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "isekai.server", fake)
    for name in ("ISEKAI_CONFIG", "ISEKAI_WORKERS", "ISEKAI_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_cli_run_without_config_serves_the_bundled_default(served):
    assert main(["run"]) == 0
    (config,) = served
    assert [route.name for route in config.routes] == ["welcome", "ping"]
    assert config.source.endswith("default.yaml")


def test_cli_run_workers_option_overrides_env_and_file(served, tmp_path, monkeypatch):
    path = tmp_path / "gateway.yaml"
    path.write_text(GOOD + "workers: 2\n")
    monkeypatch.setenv("ISEKAI_CONFIG", str(path))
    assert main(["run"]) == 0
    monkeypatch.setenv("ISEKAI_WORKERS", "3")
    assert main(["run"]) == 0
    assert main(["run", "--workers", "5", "--log-level", "DEBUG"]) == 0
    assert [config.workers for config in served] == [2, 3, 5]
    assert all(config.source == str(path) for config in served)


def test_cli_run_config_error_exits_1_without_serving(served, tmp_path, capsys):
    path = tmp_path / "gateway.yaml"
    path.write_text(BROKEN)
    assert main(["run", "-c", str(path)]) == 1
    assert served == []
    assert capsys.readouterr().err == (
        f"{path}:4: routes[0].upstream: no upstream named 'nowhere' (upstreams: none defined)\n"
    )


def test_cli_run_bad_options_are_usage_errors(served, monkeypatch, capsys):
    assert main(["run", "--workers", "0"]) == 2
    assert "workers must be a positive integer or 'auto', got '0'" in capsys.readouterr().err
    assert main(["run", "--log-level", "loud"]) == 2
    monkeypatch.setenv("ISEKAI_WORKERS", "many")
    assert main(["run"]) == 2
    assert served == []
