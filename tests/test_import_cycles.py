"""No import cycles among shared/, services/ and pipeline/: every import counts, also one inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "services", "pipeline")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, str | None]]:
    """Every import statement anywhere in `tree` (also inside functions): (module, name imported from it or None)."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                source = ".".join([*base[: len(base) - (node.level - 1)], *([source] if source else [])])
            found.extend((source, alias.name) for alias in node.names)
    return found


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """module -> the modules of `packages` it imports: `from pkg import sub` points at pkg.sub when that is a
    module, `from pkg import name` at pkg (its __init__), `import a.b` at a.b."""
    paths = {module_name(path, root): path for package in packages for path in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        targets = set()
        for source, name in imports(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py"):
            if name is not None and f"{source}.{name}" in paths:
                targets.add(f"{source}.{name}")
            elif source in paths:
                targets.add(source)
        graph[module] = targets - {module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) for every group of modules that import each other."""
    return [cycle_in(graph, group) for group in import_groups(graph)]


def import_groups(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of two or more modules that all reach each other by imports (Tarjan's SCCs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the first module of `component`, as a path that ends where it starts."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected component always has one


def test_no_import_cycles() -> None:
    graph = import_graph(ROOT)
    assert "pipeline.cli" in graph and "services.trainer.train_gan" in graph
    groups = import_groups(graph)
    assert not groups, "import cycles:\n" + "\n".join(
        f"{' -> '.join(cycle_in(graph, group))}  (the group: {', '.join(sorted(group))})" for group in groups
    )


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .b import thing\n")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def thing():\n    from ..a import x\n    return x\n")
    (package / "c.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"} and graph["pkg.sub"] == {"pkg.sub.b"}
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]


@pytest.mark.parametrize("statement", ["import pkg.c", "from pkg import c", "from . import c", "from .c import y"])
def test_every_form_of_import_is_an_edge(tmp_path: Path, statement: str) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "c.py").write_text("def f():\n    import pkg.d\n")
    (package / "d.py").write_text(f"class K:\n    def m(self):\n        {statement}\n")
    assert find_cycles(import_graph(tmp_path, ("pkg",))) == [["pkg.c", "pkg.d", "pkg.c"]]
