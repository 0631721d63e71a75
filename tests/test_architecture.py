"""The shape of the code: brandtune's modules import each other in one direction.

The graph is read from the source with :mod:`ast`, so it counts every import a module can make: the ones at the
top and the lazy ones inside functions alike (a lazy import breaks the cycle at start-up, not the dependency).
Only imports under ``if TYPE_CHECKING:`` are left out: they never run. Importing ``a.b.c`` also runs the
``__init__`` of ``a`` and ``a.b``, so those packages count as imported too (except the importer's own packages,
which are already running).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("brandtune", "flows")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (all but the ``if TYPE_CHECKING:`` blocks)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def _known(name: str) -> str | None:
    """The longest prefix of a dotted name that is one of brandtune's modules."""
    parts = name.split(".")
    while parts:
        if (candidate := ".".join(parts)) in MODULES:
            return candidate
        parts.pop()
    return None


def _with_packages(module: str, importer: str) -> set[str]:
    """``module`` and the packages whose ``__init__`` importing it runs, less the importer's own packages.

    An explicit import of one's own package (``from brandtune.registry import x`` inside brandtune.registry) counts:
    it reads the package's namespace, which may still be half-built.
    """
    own = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 1)}
    parts = module.split(".")
    parents = {".".join(parts[:i]) for i in range(1, len(parts))}
    return ({module} | {m for m in parents if m in MODULES and m not in own}) - {importer}


def _targets(node: ast.Import | ast.ImportFrom, importer: str) -> set[str]:
    path = MODULES[importer]
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        # ``from a.b import c`` imports the module a.b.c when there is one, else the name c from a.b
        names = [
            f"{prefix}.{alias.name}" if _known(f"{prefix}.{alias.name}") else prefix for alias in node.names
        ]
    found: set[str] = set()
    for name in names:
        if (module := _known(name)) is not None:
            found |= _with_packages(module, importer)
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = set().union(*(_targets(node, module) for node in _imports(tree)))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_lazy_imports_and_packages(graph: dict[str, set[str]]) -> None:
    # the measuring stick itself: a function-level import and the package __init__ it runs are both edges
    assert len(graph) > 50
    assert any(graph.values())
    lazy = ast.parse("def f():\n    from brandtune.registry import fetch\n")
    assert _targets(next(_imports(lazy)), "flows.generate") == {"brandtune", "brandtune.registry"}
    assert _targets(next(_imports(lazy)), "brandtune.registry._loading") == {"brandtune.registry"}
    assert _targets(next(_imports(lazy)), "brandtune.generation") == {"brandtune.registry"}
    skipped = ast.parse(
        "if TYPE_CHECKING:\n    import brandtune.registry\nelse:\n    import brandtune.errors\n"
    )
    assert [ast.unparse(n) for n in _imports(skipped)] == ["import brandtune.errors"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    found = cycles(graph)
    assert found == [], "import cycles among brandtune's modules: " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_the_library_imports_neither_flows_nor_the_cli(graph: dict[str, set[str]]) -> None:
    shells = ("flows", "brandtune.cli")
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module.startswith("brandtune") and not module.startswith("brandtune.cli")
        for target in targets
        if any(target == shell or target.startswith(shell + ".") for shell in shells)
    )
    assert wrong == []


def test_configs_are_the_bottom_layer(graph: dict[str, set[str]]) -> None:
    # every job config lives in brandtune.config, which the stages import and which imports no stage
    allowed = {"brandtune", "brandtune.errors", "brandtune.settings"}
    config = {m for m in graph if m == "brandtune.config" or m.startswith("brandtune.config.")}
    assert config, "brandtune.config is missing"
    wrong = sorted(f"{m} imports {t}" for m in config for t in graph[m] - config - allowed)
    assert wrong == []


#: The shared helpers below the stages, and the stages: a helper serves every stage and imports none of them.
HELPERS = (
    "brandtune.tracking",
    "brandtune.services",
    "brandtune.images",
    "brandtune.fsutil",
    "brandtune.procs",
    "brandtune.provenance",
    "brandtune.sampling",
    "brandtune.synthetic",
    "brandtune._quiet",
)
STAGES = (
    "brandtune.ingest",
    "brandtune.models",
    "brandtune.training",
    "brandtune.registry",
    "brandtune.evaluation",
    "brandtune.generation",
    "brandtune.gallery",
)


def _within(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == root or module.startswith(root + ".") for root in roots)


def test_shared_helpers_import_no_stage(graph: dict[str, set[str]]) -> None:
    assert [m for m in (*HELPERS, *STAGES) if m not in graph] == []  # a rename must update these lists
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if _within(module, HELPERS)
        for target in targets
        if _within(target, STAGES)
    )
    assert wrong == []


def _readme_layout() -> list[Path]:
    """The paths of the README's "Where the pieces live" table; a bare name after a file is that file's sibling."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Where the pieces live", 1)[1].split("\n## ", 1)[0]
    paths: list[Path] = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        folder = None
        for name in line.split("|")[1].replace("`", " ").replace(",", " ").split():
            path = REPO / name if "/" in name else (folder or REPO) / name
            folder = path.parent if path.suffix else None
            paths.append(path)
    return paths


def test_readme_layout_table_matches_the_tree() -> None:
    listed = _readme_layout()
    assert [str(p.relative_to(REPO)) for p in listed if not p.exists()] == []
    packages = {p.parent for p in (REPO / "brandtune").glob("*/__init__.py")}
    assert sorted(str(p.relative_to(REPO)) for p in packages - set(listed)) == []
