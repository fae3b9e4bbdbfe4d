"""No import cycle inside ``dynrec``, function-level imports included.

import-linter (grimp) sees every import statement, but a cycle between two modules of one layer
passes its layer contract, and an import written inside a function to dodge a cycle at import time
is still a cycle in the design. This test parses every module under ``src/dynrec`` with `ast`,
collects each ``import`` / ``from ... import`` wherever it appears (module level, functions,
methods, ``try`` blocks, ``if TYPE_CHECKING:``), and asserts the module graph has no strongly
connected component larger than one module. Type-checking imports count (as they do for
import-linter): a module that needs another's class to describe its own arguments depends on it, and
the usual way to hide a cycle is a function-level import one way and a type-checking import back.

Edges are the ones Python executes: ``from a.b import c`` depends on ``a.b.c`` when that is a
module, else on ``a.b``. The implicit import of a parent package's ``__init__`` is not an edge (as
in grimp), and neither are string-based imports (``importlib.import_module``, the model registry's
table), which are looked up at call time by design.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "dynrec"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int


def module_files(src: Path = SRC, root: str = ROOT) -> dict[str, Path]:
    """Every module of the `root` package: dotted name -> file (a package is its ``__init__``)."""
    out: dict[str, Path] = {}
    for path in sorted((src / root).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in `tree`, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted `name` that is a module of the package (None: outside it)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_edges(modules: dict[str, Path], root: str = ROOT) -> list[Edge]:
    edges: list[Edge] = []
    for mod, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _import_nodes(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:  # relative: `from . import x` inside package p means p.x
                    pkg = mod.split(".") if is_package else mod.split(".")[:-1]
                    base_parts = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"] or [base]
            for name in targets:
                if name != root and not name.startswith(root + "."):
                    continue
                target = _resolve(name, modules)
                if target is not None and target != mod:
                    edges.append(Edge(mod, target, node.lineno))
    return edges


def strongly_connected(nodes: list[str], succ: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(succ.get(start, [])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            advanced = False
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(succ.get(w, []))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp: list[str] = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def one_cycle(component: list[str], succ: dict[str, list[str]]) -> list[str]:
    """A shortest cycle through the component's first module, as a path that returns to it."""
    inside = set(component)
    start = component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for v in frontier:
            for w in succ.get(v, []):
                if w not in inside:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return component  # unreachable for a strongly connected component


def cycles_report(edges: list[Edge]) -> list[str]:
    succ: dict[str, list[str]] = {}
    where: dict[tuple[str, str], int] = {}
    for e in edges:
        if e.target not in succ.setdefault(e.source, []):
            succ[e.source].append(e.target)
            where[(e.source, e.target)] = e.line
    nodes = sorted({e.source for e in edges} | {e.target for e in edges})
    lines = []
    for comp in strongly_connected(nodes, succ):
        cycle = one_cycle(comp, succ)
        hops = " -> ".join(f"{a} (line {where[(a, b)]})" for a, b in zip(cycle, cycle[1:], strict=False))
        lines.append(f"cycle among {len(comp)} modules {comp}: {hops} -> {cycle[-1]}")
    return lines


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    edges = [Edge("a", "b", 1), Edge("b", "c", 2), Edge("c", "a", 3), Edge("c", "d", 4), Edge("d", "e", 5)]
    report = cycles_report(edges)
    assert len(report) == 1
    assert "a (line 1) -> b (line 2) -> c (line 3) -> a" in report[0]
    assert cycles_report([Edge("a", "b", 1), Edge("b", "c", 1)]) == []


def test_function_level_and_relative_imports_are_edges(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import low\n")
    (pkg / "sub" / "low.py").write_text("def f():\n    from pkg import top\n    return top\n")
    (pkg / "top.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.low import f\ntry:\n    import pkg.other as o\nexcept ImportError:\n    o = None\n"
    )
    (pkg / "other.py").write_text("")
    mods = module_files(tmp_path, "pkg")
    got = {(e.source, e.target) for e in import_edges(mods, "pkg")}
    want = {
        ("pkg.sub", "pkg.sub.low"),
        ("pkg.sub.low", "pkg.top"),
        ("pkg.top", "pkg.sub.low"),
        ("pkg.top", "pkg.other"),
    }
    assert got == want
    assert len(cycles_report(import_edges(mods, "pkg"))) == 1


def test_no_import_cycle_inside_dynrec() -> None:
    modules = module_files()
    assert "dynrec.models.base" in modules  # the walk found the package
    report = cycles_report(import_edges(modules))
    assert not report, "import cycles inside dynrec:\n" + "\n".join(report)
