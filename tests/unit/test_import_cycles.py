"""The project's own import graph: no cycles, and the layering of DESIGN.md section 2.

How it works: every ``.py`` file under gateway/, adapters/, policy/, audit/ and masking/ is parsed
(never imported) and mapped to its module name in the ``sqlward`` namespace (``policy/sqltext.py``
is ``sqlward.policy.sqltext``). An edge A -> B is an ``import`` / ``from ... import`` in A, relative
ones resolved, that names B or a name inside B. Imports that run when A is imported count:
module level, inside ``if``/``try``/``with`` blocks and class bodies, and inside
``if TYPE_CHECKING:`` blocks (a type-only import still ties the two modules together). Imports
inside functions are ignored: they run later, and are the usual way to defer an optional
dependency. Cycles are the strongly connected components (Tarjan) with more than one module, or a
module importing itself.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOP_LEVEL = ("gateway", "adapters", "policy", "audit", "masking")

# Known cycles still to remove, each the set of modules of one strongly connected component.
# Empty since issue 10 removed the last three (config <-> policy_files and each adapter's
# listener <-> session): the test keeps every cycle out.
PENDING: set[frozenset[str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["sqlward", *parts])


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in TOP_LEVEL:
        for path in sorted((REPO / top).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _import_time_nodes(body: list[ast.AST]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported (function bodies excluded)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            # if / else, try / except / finally, with, for, while, match cases, class bodies
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    yield from _import_time_nodes(inner)


def _resolve(name: str, modules: Collection[str]) -> str | None:
    """The longest prefix of `name` that is one of our modules."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module a `from ... import` names, relative imports resolved against `module`."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _edges(module: str, source: str, is_package: bool, modules: Collection[str]) -> set[str]:
    """The modules among `modules` that `module` (whose text is `source`) imports at import time."""
    tree = ast.parse(source)
    out: set[str] = set()
    for node in _import_time_nodes(tree.body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            origin = _absolute(node, module, is_package)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
            targets = [origin] + [f"{origin}.{alias.name}" for alias in node.names]
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module:
                out.add(resolved)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: _edges(name, path.read_text(encoding="utf-8"), path.name == "__init__.py", modules)
        for name, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with a cycle in them (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[frozenset[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(frozenset(component))
    return found


def _describe(component: frozenset[str], graph: dict[str, set[str]]) -> str:
    edges = sorted(f"{a} -> {b}" for a in component for b in graph[a] if b in component)
    return "{" + ", ".join(sorted(component)) + "}: " + "; ".join(edges)


# ------------------------------------------------------------------------------------ the tests


def test_graph_sees_the_project() -> None:
    graph = import_graph()
    assert "sqlward.gateway.config" in graph and "sqlward.policy.sqltext" in graph
    assert "sqlward.policy.model" in graph["sqlward.policy.engine"]
    assert "sqlward.policy.sqltext" in graph["sqlward.masking.lineage"]
    assert "sqlward.policy.analysis" not in graph["sqlward.policy.estimates"]  # inside a function


def test_edges_count_what_runs_at_import_time() -> None:
    modules = {f"sqlward.pkg.{name}" for name in "abcdefghij"} | {"sqlward.pkg", "sqlward.pkg.sub", "sqlward.pkg.sub.k"}
    source = """
from __future__ import annotations
import os
from typing import TYPE_CHECKING
import sqlward.pkg.a
from sqlward.pkg.b import name
from sqlward.pkg import c, not_a_module
from . import d
from .e import other
from .sub import k
try:
    from sqlward.pkg import f
except ImportError:
    from sqlward.pkg import g
if TYPE_CHECKING:
    from sqlward.pkg.h import Type
class C:
    from sqlward.pkg import i
def later() -> None:
    from sqlward.pkg import j
"""
    edges = _edges("sqlward.pkg.x", source, False, modules)
    assert edges == {f"sqlward.pkg.{n}" for n in "abcdefghi"} | {"sqlward.pkg", "sqlward.pkg.sub", "sqlward.pkg.sub.k"}
    assert _edges("sqlward.pkg", "from . import a\nfrom .sub import k\n", True, modules) == {
        "sqlward.pkg.a",
        "sqlward.pkg.sub",
        "sqlward.pkg.sub.k",
    }


def test_cycle_finder_on_a_small_graph() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"d"}}
    assert sorted(cycles(graph), key=sorted) == [frozenset("abc"), frozenset("e")]


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = set(cycles(graph))
    unexpected = sorted((_describe(c, graph) for c in found - PENDING))
    assert not unexpected, "import cycles:\n" + "\n".join(unexpected)


def test_config_and_policy_files_import_one_way() -> None:
    """gateway.config imports gateway.policy_files (load_config checks the policy files), which
    reads a Config through a protocol; what both need lives in gateway.config_errors."""
    graph = import_graph()
    config, policy_files = "sqlward.gateway.config", "sqlward.gateway.policy_files"
    assert not any(config in c and policy_files in c for c in cycles(graph))
    assert policy_files in graph[config]
    assert config not in graph[policy_files]
    assert graph["sqlward.gateway.config_errors"].isdisjoint({config, policy_files})
    # Not even inside a function: policy_files does not import config at all.
    tree = ast.parse((REPO / "gateway" / "policy_files.py").read_text(encoding="utf-8"))
    named = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    named |= {
        _absolute(node, policy_files, False) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    }
    assert config not in named and "sqlward.gateway" not in named


def test_layering() -> None:
    """DESIGN.md section 2: policy, masking and audit import nothing else from the project
    (masking may import policy); adapters never import gateway."""
    graph = import_graph()
    rules = {
        "policy": ("gateway", "adapters", "masking", "audit"),
        "masking": ("gateway", "adapters", "audit"),
        "audit": ("gateway", "adapters", "policy", "masking"),
        "adapters": ("gateway",),
    }
    broken = []
    for module, targets in sorted(graph.items()):
        layer = module.split(".")[1]
        for target in sorted(targets):
            if target.split(".")[1] in rules.get(layer, ()):
                broken.append(f"{module} -> {target}")
    assert not broken, "imports against the layering of DESIGN.md section 2:\n" + "\n".join(broken)


def test_no_private_names_across_modules() -> None:
    """policy/ and masking/ use each other's modules through public names only (the SQL text
    utilities are in policy/sqltext.py), inside functions too."""
    found = []
    for top in ("policy", "masking"):
        for path in sorted((REPO / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("sqlward.")):
                    found.extend(
                        f"{path.relative_to(REPO)}:{node.lineno} imports {alias.name} from {node.module}"
                        for alias in node.names
                        if alias.name.startswith("_")
                    )
    assert not found, "\n".join(found)
