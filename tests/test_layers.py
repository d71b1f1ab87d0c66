"""The package's layers: imports point only downwards (apps -> io -> models -> core), no cycles,
no module/attribute name clashes, and nothing reads files outside the package."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "scire_jax"
LAYERS = {"core": 0, "models": 1, "io": 2, "apps": 3}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path):
    """Every ``scire_jax...`` module imported by ``path`` (top level and inside functions)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("scire_jax"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scire_jax"):
            found.add(node.module)
            for alias in node.names:  # "from scire_jax.core import schedules" imports a module too
                candidate = f"{node.module}.{alias.name}"
                if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists():
                    found.add(candidate)
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {i for i in _imports(path) if i != name} for name, path in MODULES.items()}


def _layer(module: str):
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) is not None))
def test_imports_point_only_downwards(module):
    own = _layer(module)
    upward = sorted(i for i in GRAPH[module] if _layer(i) is not None and _layer(i) > own)
    assert not upward, f"{module} (layer {own}) imports higher layers: {upward}"


def test_core_never_imports_models_io_or_apps():
    for module, imported in GRAPH.items():
        if _layer(module) == 0:
            assert all(_layer(i) in (0, None) for i in imported if i != "scire_jax"), (module, imported)


def test_no_import_cycles():
    # edges between modules (a package __init__ importing its children is not a cycle of concern)
    edges = {m: {i for i in imported if i in MODULES and not m.startswith(i + ".") and not i.startswith(m + ".")}
             for m, imported in GRAPH.items()}
    visiting, done = set(), set()

    def visit(node, path):
        if node in done:
            return
        assert node not in visiting, "import cycle: " + " -> ".join(path + [node])
        visiting.add(node)
        for nxt in edges.get(node, ()):
            visit(nxt, path + [node])
        visiting.discard(node)
        done.add(node)

    for module in edges:
        visit(module, [])


def test_no_module_attribute_name_clash():
    import importlib

    import scire_jax as sj

    for name in dir(sj):
        module = f"scire_jax.{name}"
        if module in MODULES:
            assert importlib.import_module(module) is getattr(sj, name), f"sj.{name} is not the module {module}"


def test_nothing_reads_files_outside_the_package():
    for module, path in MODULES.items():
        text = path.read_text()
        assert '"benchmarks"' not in text and "'benchmarks'" not in text, module
        assert ".parent.parent" not in text, f"{module} reaches outside the package"
