"""The package's architecture as the folders state it (docs/architecture.md): each layer imports only the layers below
it, no module imports itself back through others, and every package says its job in its docstring.

Reads the sources with `ast` (every import, at module level or inside a function), so it fails on an import added
anywhere, not only on what happens to run.
"""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "opmask_fast")

# Bottom to top. A module may import its own top-level package and anything of a lower rank.
LAYERS = {
    "_extension": 0, "ops": 1, "kernels": 1, "modeling": 2, "config": 3, "variants": 4, "data": 4, "training": 5,
    "evaluation": 6, "analysis": 7, "predictor": 8, "cli": 9,
    # `python -m opmask_fast.<command>` shims and the package itself sit on top.
    "train": 10, "evaluate": 10, "predict": 10, "compare": 10, "analyze": 10, "__init__": 10,
}


def _modules() -> dict[str, str]:
    """Dotted name below opmask_fast -> file path."""
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), PACKAGE)[:-3].split(os.sep)
                if rel[-1] == "__init__" and len(rel) > 1:
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(root, f)
    return out


def _imports(name: str, path: str, known: set[str]) -> set[str]:
    """The package's modules that `name` imports (relative imports resolved; `from x import y` counts y when y is a
    module)."""
    is_pkg = path.endswith("__init__.py")
    base = [] if name == "__init__" else name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[:len(base) - node.level + 1] if node.level > 1 else base
                mod = ".".join(parent + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
        else:
            continue
        relative = isinstance(node, ast.ImportFrom) and node.level > 0
        for t in targets:
            t = t.removeprefix("opmask_fast.") if t.startswith("opmask_fast.") else (t if relative else "")
            while t and t not in known:
                t = t.rpartition(".")[0]
            # A module's own packages are being imported already when it runs: not an edge of the graph.
            if t and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    if top not in LAYERS:
        pytest.fail(f"opmask_fast.{module}: its folder has no layer in tests/test_layout.py (add it to LAYERS and to "
                    "docs/architecture.md)")
    return LAYERS[top]


def test_imports_only_go_down_the_layers():
    graph = _graph()
    assert "ops" in graph["modeling.roi_heads.roi_heads"] and "cli.options" in graph["cli.train"]  # the graph is read
    up = [f"{m} -> {t}" for m, ts in graph.items() for t in ts
          if m.split(".")[0] != t.split(".")[0] and _layer(t) >= _layer(m)]
    assert not up, "imports that run up (or across) a layer: " + "; ".join(sorted(up))


def test_no_import_circles():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if t not in graph:
                continue
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import circles: " + "; ".join(cycles)


def test_the_detector_does_not_know_the_layers_above():
    """modeling and ops import nothing of the package above them (they are what users swap into other code)."""
    graph = _graph()
    for m, ts in graph.items():
        if m.split(".")[0] in ("ops", "modeling"):
            assert all(_layer(t) <= 2 for t in ts), (m, ts)


def test_every_package_states_its_job():
    for root, _, files in os.walk(PACKAGE):
        if "__init__.py" in files and "__pycache__" not in root:
            tree = ast.parse(open(os.path.join(root, "__init__.py")).read())
            doc = ast.get_docstring(tree)
            assert doc and len(doc) > 40, f"{root}/__init__.py has no docstring saying what the folder does"
