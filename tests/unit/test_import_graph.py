"""The import graph of the package: no cycles, and imports run one way (DESIGN.md section 3).

Every import counts, module-level or inside a function, ``import`` and Cython ``cimport``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import isekai

PACKAGE = Path(isekai.__file__).parent
_CYTHON_IMPORT = re.compile(
    r"^\s*(?:from\s+(isekai[\w.]*)\s+c?import\s+(.+)|c?import\s+(isekai[\w.]*))", re.M
)

# A module may import only from groups of a lower rank (or its own group). Groups are the
# top-level modules and packages of `isekai`; "isekai" is the package's public API.
RANKS = {
    "errors": 0,
    "_core": 1,
    "store": 2,
    "config": 3,
    "process": 4,
    "policy": 4,
    "policies": 4,
    "chains": 4.5,
    "upstream": 4,
    "observability": 4,
    "gateway": 5,
    "proxy": 5,
    "isekai": 5,
    "admin": 6,
    "worker": 7,
    "control": 7,
    "master": 8,
    "server": 9,
    "cli": 10,
    "__main__": 11,
}


def _module_name(path: Path) -> str:
    parts = ["isekai", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix in (".py", ".pyx") and "__pycache__" not in path.parts:
            found[_module_name(path)] = path
    return found


def _resolve(name: str, attribute: str | None, modules: dict[str, Path]) -> str | None:
    # ``from a.b import c`` is an import of module a.b.c when that is a module, else of a.b
    if attribute is not None and f"{name}.{attribute}" in modules:
        return f"{name}.{attribute}"
    return name if name in modules else None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    text = path.read_text()
    targets: set[str | None] = set()
    if path.suffix == ".pyx":
        for match in _CYTHON_IMPORT.finditer(text):
            if match.group(3):
                targets.add(_resolve(match.group(3), None, modules))
                continue
            for item in match.group(2).strip("()").split(","):
                targets.add(
                    _resolve(match.group(1), item.split()[0] if item.split() else None, modules)
                )
        return {t for t in targets if t and t != module}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            targets.update(_resolve(alias.name, None, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets.update(_resolve(base, alias.name, modules) for alias in node.names)
    return {t for t in targets if t and t != module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "isekai"


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def test_import_graph_finds_function_level_imports_and_cimports():
    graph = _graph()
    assert "isekai.errors" in graph["isekai._core.router"]  # a Cython module's import
    assert "isekai._core.http" in graph["isekai._core.protocol"]  # a cimport
    assert "isekai.server" in graph["isekai.cli"]  # imported inside a function


def test_import_graph_cycle_finder_reports_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_has_no_cycle():
    assert _find_cycle(_graph()) is None


def test_import_graph_imports_run_one_way():
    wrong = []
    for module, targets in _graph().items():
        mine = _group(module)
        for target in targets:
            theirs = _group(target)
            if theirs != mine and RANKS[theirs] >= RANKS[mine]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_import_graph_every_group_has_a_rank():
    assert {_group(module) for module in _graph()} <= set(RANKS)


def test_import_graph_admin_process_entry_never_loads_core():
    reached = _reachable(_graph(), "isekai.admin.__main__")
    assert "isekai.config.reload" in reached
    assert not [module for module in reached if module.startswith("isekai._core")]
