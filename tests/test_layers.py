"""Imports run downward only: config/checkpoint/plots -> data -> models | sim -> algo -> train | ros ->
benchmark, demo -> cli (docs/design.md §1). Every import in the package, also those inside functions,
is checked, so a reader can follow data -> batch -> loss -> checkpoint -> node without going back.
No function in the package, the ROS 2 package or the benches is longer than MAX_FUNCTION_LINES."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "qsft_robot"
LAYERS = [  # lowest first; modules of one layer may import each other unless listed in INDEPENDENT
    {"qsft_robot.config", "qsft_robot.checkpoint", "qsft_robot.plots"},
    {"qsft_robot.data"},
    {"qsft_robot.models", "qsft_robot.sim"},
    {"qsft_robot.algo"},
    {"qsft_robot.train", "qsft_robot.ros"},
    {"qsft_robot.benchmark", "qsft_robot.demo"},
    {"qsft_robot.cli"},
]
INDEPENDENT = [("qsft_robot.models", "qsft_robot.sim"), ("qsft_robot.train", "qsft_robot.ros"),
               ("qsft_robot.benchmark", "qsft_robot.demo")]
# no exceptions: the support rule that acting and the targets share lives in models/support.py
EXCEPTIONS: set[tuple[str, str]] = set()


def _unit(module: str) -> str:
    """The layer unit of a module: its subpackage (qsft_robot.data) or top-level module (qsft_robot.cli)."""
    return ".".join(module.split(".")[:2])


def _layer(module: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if _unit(module) in units)


def _imports(path: Path, module: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join(module.split(".")[:-node.level] + [node.module])
            out.add(base)
    return {m for m in out if m == "qsft_robot" or m.startswith("qsft_robot.")}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
        yield path, ".".join(parts)


def test_every_unit_has_a_layer():
    units = {_unit(m) for _, m in _modules() if m != "qsft_robot"}
    assert units <= set().union(*LAYERS), units - set().union(*LAYERS)


def test_imports_only_run_downward():
    bad = []
    for path, module in _modules():
        if module == "qsft_robot":
            continue
        for target in _imports(path, module):
            if target == "qsft_robot" or _unit(target) == _unit(module) or (module, target) in EXCEPTIONS:
                continue
            pair = {_unit(module), _unit(target)}
            if _layer(target) > _layer(module) or any(pair == set(p) for p in INDEPENDENT):
                bad.append(f"{module} -> {target}")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_the_checker_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from qsft_robot.cli import main\n    from . import sibling\n")
    assert _imports(f, "qsft_robot.data.m") == {"qsft_robot.cli"}
    f.write_text("def g():\n    from .sibling import x\n")
    assert _imports(f, "qsft_robot.data.m") == {"qsft_robot.data.sibling"}


MAX_FUNCTION_LINES = 60  # def line to the last line; a nested function counts in its parent and on its own
SIZED_TREES = [PKG, ROOT / "ros2_ws" / "src" / "qsft_robot", ROOT / "bench"]


def _long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[tuple[int, str, int]]:
    """Every function or method in `path` longer than `limit` lines: (def line, name, length)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                out.append((node.lineno, node.name, n))
    return out


def test_no_function_is_longer_than_the_limit():
    """A long function hides its steps: split it into named helpers, each a step a reader can take or skip."""
    paths = [p for tree in SIZED_TREES for p in sorted(tree.rglob("*.py"))]
    assert all(tree.is_dir() for tree in SIZED_TREES) and len(paths) > 20, paths  # the trees moved?
    bad = [f"{path.relative_to(ROOT)}:{line} {name} ({n} lines)"
           for path in paths for line, name, n in _long_functions(path)]
    assert not bad, f"functions longer than {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(bad)


def test_the_length_checker_sees_methods_and_async_functions(tmp_path):
    f = tmp_path / "m.py"
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    f.write_text("class C:\n    def short(self):\n        pass\n    def m(self):\n" + body.replace("    ", "        ")
                 + "async def a():\n" + body + "def at_the_limit():\n" + body[body.index("\n") + 1:])
    assert sorted(_long_functions(f)) == [(4, "m", 61), (65, "a", 61)]


@pytest.mark.parametrize("module", [m for _, m in _modules()])
def test_every_module_imports(module):
    """Every module loads in the fast loop, also those whose behaviour only the slow tests drive (the ROS
    node's pieces under real ROS 2, multi-process training, Meta-World)."""
    importlib.import_module(module)
