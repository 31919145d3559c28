"""The engine's layers: imports only go down, no module imports another in a cycle, and no project is imported.

Every `import` in every engine module counts, at the top or inside a function:
a lazy import still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPOSITORY

LAYERS = {"orchard": 0, "features": 1, "training": 2, "monitoring": 3, "serve": 4, "pipelines": 5}
"""Kernel, features, training, serving, jobs and the CLI: a module may import its own layer and the ones below."""
EXAMPLES = REPOSITORY / "examples"


def engine_modules(root: Path = REPOSITORY) -> dict[str, Path]:
    modules = {}
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_names(path: Path, module: str) -> set[str]:
    """Every module `path` imports, absolute, with `from package import submodule` resolved to the submodule."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def internal_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the engine modules it imports (a name that is not a module, such as a class, is dropped)."""
    return {module: {name for name in imported_names(path, module) if name in modules and name != module}
            for module, path in modules.items()}


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} imports {target}" for module, targets in edges.items() for target in targets
                  if LAYERS[target.split(".")[0]] > LAYERS[module.split(".")[0]])


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges.get(module, ())):
            # A package's __init__ importing its own submodules is how a package exports them, not a cycle.
            if module == target.rpartition(".")[0]:
                continue
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_engine_module_imports_a_higher_layer():
    assert layer_violations(internal_edges(engine_modules())) == []


def test_the_engine_has_no_import_cycle():
    assert find_cycle(internal_edges(engine_modules())) is None


def test_the_engine_imports_no_project():
    projects = {path.name for path in EXAMPLES.iterdir() if (path / "__init__.py").is_file()}
    assert projects >= {"fruit", "surf", "hotel"}
    found = sorted(f"{module} imports {name}" for module, path in engine_modules().items()
                   for name in imported_names(path, module) if name.split(".")[0] in projects)
    assert found == []


def test_the_examples_use_only_the_public_api():
    """A project imports what `features` and `training` export (and `orchard.storage`), not engine internals."""
    public = {"features", "training", "orchard.storage"}
    engine = set(LAYERS)
    found = []
    for path in sorted(EXAMPLES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in engine:
                if node.module not in public:
                    found.append(f"{path.relative_to(REPOSITORY)} imports {node.module}")
            elif isinstance(node, ast.Import):
                found += [f"{path.relative_to(REPOSITORY)} imports {a.name}" for a in node.names
                          if a.name.split(".")[0] in engine and a.name not in public]
    assert found == []


# -- the checks themselves fail where they should


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.fixture()
def small_engine(tmp_path):
    _write(tmp_path, {"orchard/__init__.py": "", "orchard/config.py": "", "features/__init__.py": "",
                      "training/__init__.py": "", "serve/__init__.py": "", "pipelines/__init__.py": ""})
    return tmp_path


def test_an_upward_import_is_found_even_inside_a_function(small_engine):
    _write(small_engine, {"orchard/registry.py": "def f():\n    from training import evaluation\n",
                          "training/evaluation.py": ""})
    assert layer_violations(internal_edges(engine_modules(small_engine))) == [
        "orchard.registry imports training", "orchard.registry imports training.evaluation"]


def test_a_cycle_between_two_modules_is_found(small_engine):
    _write(small_engine, {"features/a.py": "from features import b\n", "features/b.py": "import features.a\n"})
    assert find_cycle(internal_edges(engine_modules(small_engine))) == ["features.a", "features.b", "features.a"]


def test_relative_imports_are_resolved(small_engine):
    _write(small_engine, {"features/a.py": "from .b import thing\n", "features/b.py": "from . import a\n"})
    assert find_cycle(internal_edges(engine_modules(small_engine))) == ["features.a", "features.b", "features.a"]
