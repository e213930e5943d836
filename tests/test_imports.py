"""No import cycle anywhere in the project: the module graph (imports at module level and
inside functions alike) of ``kd_regression`` and ``experiments`` is acyclic, so each layer
can be read, and imported, without the ones above it."""

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("kd_regression", "experiments")


def _modules() -> dict[str, str]:
    """Dotted module name -> file, for every .py file of the project's packages."""
    out = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    out[".".join(parts)] = path
    return out


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """The project modules that the file at ``path`` imports (a ``from P import N`` names
    the module ``P.N`` where there is one, else ``P``)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m in modules}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle():
    modules = _modules()
    assert "experiments.sweep.sweep" in modules and "kd_regression.losses" in modules
    graph = {m: _imports(path, modules) - {m} for m, path in modules.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def _top_level_names(path: str) -> set[str]:
    """The names a module defines or imports at its top level (what ``from M import N`` finds)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def test_every_project_import_names_something_that_exists():
    """A renamed or moved module, or a name that left it, fails here, in every file of the
    project and its tests (also imports inside functions, and tests only some installs run)."""
    import kd_regression

    modules = _modules()
    files = [*modules.values(), *glob.glob(os.path.join(ROOT, "tests", "*.py"))]
    missing = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                wanted = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                wanted = [(node.module, a.name) for a in node.names]
            else:
                continue
            for module, name in wanted:
                if module.split(".")[0] not in PACKAGES:
                    continue
                if module not in modules:
                    missing.append(f"{os.path.relpath(path, ROOT)}: no module {module}")
                elif name and f"{module}.{name}" not in modules:
                    known = _top_level_names(modules[module])
                    if module == "kd_regression":
                        known |= set(kd_regression._SOURCES)
                    if name not in known:
                        missing.append(f"{os.path.relpath(path, ROOT)}: no {name} in {module}")
    assert not missing, "\n".join(missing)


def test_the_package_loads_its_names_on_first_use():
    """``import kd_regression`` (and the dataset builder's command line) loads neither JAX
    nor tensorstore; each public name still comes from its module."""
    import subprocess
    import sys

    probe = (
        "import sys, kd_regression as kd, kd_regression.datasets.build\n"
        "print(sorted(m for m in ('jax', 'tensorstore', 'flax') if m in sys.modules))\n"
        "print(kd.train_student.__module__, kd.TrainConfig.__module__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "kd_regression.distill kd_regression.trainer"

    import kd_regression as kd

    assert sorted(kd.__all__) == sorted([*kd._SOURCES, "__version__"])
    assert all(getattr(kd, name) is not None for name in kd.__all__)
