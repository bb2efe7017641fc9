"""The project's import graph, drawn from its own source: floors, arrows, circles, largest modules, layers.

usage: python scripts/import_graph.py [--layers] [--modules]

A module's floor is 1 + the highest floor of what it imports (floor 1 imports no project module); an arrow is one
module importing another (at the top or inside a function: both are dependencies); a circle is a set of modules
that import each other. ``--layers`` prints the package picture (which sub-package imports which),
``--modules`` every module with its floor, lines and imports.
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("capml_core", "flows", "dashboard")


def module_name(path: Path) -> str:
    """Dotted name of a source file (``capml_core/store/writer.py`` -> ``capml_core.store.writer``)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules imported by one file (``from a.b import c`` counts ``a.b.c`` when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                elif node.module in modules:
                    found.add(node.module)
    found.discard(module_name(path))
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Floor of each module (a module in a circle shares the floor of its circle)."""
    memo: dict[str, int] = {}

    def floor(v: str, seen: frozenset[str]) -> int:
        if v in memo:
            return memo[v]
        below = [floor(w, seen | {v}) for w in graph[v] if w not in seen]
        memo[v] = 1 + max(below, default=0)
        return memo[v]

    return {v: floor(v, frozenset()) for v in sorted(graph)}


def layer_of(module: str) -> str:
    """The sub-package of a module (``capml_core.stages.gnn`` -> ``capml_core.stages``, ``flows.cli`` -> ``flows``)."""
    parts = module.split(".")
    if parts[0] != "capml_core":
        return parts[0]
    return ".".join(parts[:2]) if len(parts) > 2 else module


def main() -> None:
    """Print the summary (and, on request, the layers and the modules)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", action="store_true", help="which sub-package imports which")
    parser.add_argument("--modules", action="store_true", help="every module: floor, lines, imports")
    args = parser.parse_args()
    modules = {m: p for m, p in project_modules().items() if p.name != "__init__.py"}
    graph = {m: imports_of(p, modules) for m, p in modules.items()}
    level = floors(graph)
    lines = {m: len(p.read_text().splitlines()) for m, p in modules.items()}
    loops = circles(graph)
    print(
        f"modules: {len(modules)}  floors: {max(level.values())}  arrows: {sum(map(len, graph.values()))}  "
        f"circles: {len(loops)}"
    )
    for loop in loops:
        print("  circle:", " <-> ".join(loop))
    print("largest:", ", ".join(f"{m} {n}" for m, n in sorted(lines.items(), key=lambda kv: -kv[1])[:6]))
    if args.layers:
        edges: dict[str, set[str]] = defaultdict(set)
        for m, targets in graph.items():
            for t in targets:
                if layer_of(t) != layer_of(m):
                    edges[layer_of(m)].add(layer_of(t))
        layers = sorted(
            {layer_of(m) for m in modules}, key=lambda lay: -max(level[m] for m in modules if layer_of(m) == lay)
        )
        for lay in layers:
            print(f"{lay:24s} -> {', '.join(sorted(edges[lay])) or '(nothing of the project)'}")
    if args.modules:
        for m in sorted(modules, key=lambda m: (-level[m], m)):
            print(f"{level[m]:3d} {lines[m]:5d} {m}: {', '.join(sorted(graph[m]))}")


if __name__ == "__main__":
    main()
