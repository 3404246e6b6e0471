"""The shape docs/architecture.md describes, checked on the source: two floors (backend above model), no
import circle between modules, no module much over 400 lines."""

from __future__ import annotations

import ast

from conftest import ROOT

PACKAGES = ("backend", "model")
MAX_LINES = 420  # "about 400": a module past this wants splitting


def modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = ast.parse(path.read_text(), filename=str(path))
    return found


def imports(tree: ast.Module, everywhere: bool) -> set[str]:
    """Project modules `tree` imports: at module level only, or also inside functions."""
    nodes = ast.walk(tree) if everywhere else tree.body
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.split(".")[0] in PACKAGES}


def test_model_never_imports_backend():
    offenders = {name: sorted(i for i in imports(tree, everywhere=True) if i.startswith("backend"))
                 for name, tree in modules().items() if name.startswith("model")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_circle_between_modules():
    found = modules()
    graph = {name: {i for i in imports(tree, everywhere=False) if i in found and i != name}
             for name, tree in found.items()}
    circles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_no_module_much_over_400_lines():
    long = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES:
                long[str(path.relative_to(ROOT))] = lines
    assert long == {}
