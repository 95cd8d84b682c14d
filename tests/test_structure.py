"""The code's shape (issue 18): no import cycle in latbench and nas, no module over 450 lines and no
function over 80 lines outside tests, except what :data:`LONG_MODULES` / :data:`LONG_FUNCTIONS` list
with the reason. Both read the source (``ast``), import nothing, and take well under a second.

An import cycle counts every ``import`` the interpreter may run: module-level ones, function-local
ones (they only hide a loop) and those under ``try``; only ``if TYPE_CHECKING:`` blocks are left
out. ``from pkg import name`` is an edge to the submodule ``pkg.name`` when there is one, else to
``pkg`` itself; importing ``pkg.sub`` is not counted as an edge to ``pkg/__init__.py``.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("latbench", "nas")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80

#: Modules allowed over MAX_MODULE_LINES, with why (none today; an entry needs its reason, and the
#: README's layout section says so too).
LONG_MODULES: dict[str, str] = {
}

#: Functions (``path::qualified.name``) allowed over MAX_FUNCTION_LINES, with why.
LONG_FUNCTIONS: dict[str, str] = {
}


def _modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in packages:
        for path in (root / pkg).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """The modules of ``known`` that ``name`` imports, each with the line of its first import."""
    found: dict[str, int] = {}
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]

    def add(target: str, line: int) -> None:
        if target in known and target != name:
            found.setdefault(target, line)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_node(other)
                continue
            visit_node(child)

    def visit_node(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                add(sub if sub in known else source, node.lineno)
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def import_cycles(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[list[str]]:
    """Every strongly connected group of two or more modules of the import graph (Tarjan), as
    the edges inside the group."""
    known = _modules(root, packages)
    graph = {m: _imports(m, p, known) for m, p in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:  # iterative, so deep graphs need no recursion limit
        work = [(v, iter(sorted(graph[v])))]
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.append(w)
                    if w == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    for group in groups:  # the edges inside each group, for the message
        group[:] = [f"{m} -> {t} ({known[m].relative_to(root)}:{line})"
                    for m in group for t, line in sorted(graph[m].items()) if t in group]
    return groups


def test_no_import_cycle_in_latbench_and_nas():
    cycles = import_cycles()
    assert not cycles, "import cycles (every edge inside each group):\n" + "\n\n".join(
        "\n".join(group) for group in cycles)


def test_the_cycle_finder_sees_a_function_local_loop(tmp_path):
    """The check is not vacuous: a loop closed only by a function-local import is found, and a
    ``TYPE_CHECKING`` import is not an edge."""
    pkg = tmp_path / "latbench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from latbench.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from latbench import a\n    return a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from latbench import a\n")
    (pkg / "d.py").write_text("from . import c\n")
    cycles = import_cycles(tmp_path, ("latbench",))
    assert len(cycles) == 1 and "latbench.b -> latbench.a (latbench/b.py:2)" in cycles[0]
    assert not any("latbench.c" in edge for edge in cycles[0])


@functools.lru_cache(maxsize=1)
def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    modules: dict[str, int] = {}
    functions: dict[str, int] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            source = path.read_text(encoding="utf-8")
            modules[rel] = len(source.splitlines())

            def walk(node: ast.AST, prefix: str) -> None:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        qual = f"{prefix}{child.name}"
                        if not isinstance(child, ast.ClassDef):
                            first = min([d.lineno for d in child.decorator_list] + [child.lineno])
                            functions[f"{rel}::{qual}"] = child.end_lineno - first + 1
                        walk(child, qual + ".")
                    else:
                        walk(child, prefix)

            walk(ast.parse(source), "")
    return modules, functions


def test_no_long_module_or_function_outside_the_allow_lists():
    modules, functions = _sizes()
    long_modules = {m: n for m, n in modules.items() if n > MAX_MODULE_LINES and m not in LONG_MODULES}
    long_functions = {f: n for f, n in functions.items() if n > MAX_FUNCTION_LINES and f not in LONG_FUNCTIONS}
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_the_allow_lists_hold_only_what_is_still_long():
    """An entry that is no longer long (or no longer exists) is removed, so the lists only shrink."""
    modules, functions = _sizes()
    stale = [m for m in LONG_MODULES if modules.get(m, 0) <= MAX_MODULE_LINES] + \
        [f for f in LONG_FUNCTIONS if functions.get(f, 0) <= MAX_FUNCTION_LINES]
    assert not stale, f"allow-list entries that are no longer over the limit (remove them): {stale}"
