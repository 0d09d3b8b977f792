"""bench/ is layered: its import graph has no cycle, imports of bench modules sit
at the top of a module (none hidden in a function), and no module imports
another's private names."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

BENCH = Path(__file__).parents[1] / "bench"


def bench_imports(tree: ast.Module, package: str = "bench") -> Iterator[tuple[ast.stmt, str, str]]:
    """(statement, imported bench module, name imported from it or "") for every
    import of a bench module anywhere in `tree`, TYPE_CHECKING blocks included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(package + "."):
                    yield node, alias.name.split(".")[1], ""
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == package:
                # `from bench import x`: x is a module.
                for alias in node.names:
                    yield node, alias.name, ""
            elif node.module.startswith(package + "."):
                for alias in node.names:
                    yield node, node.module.split(".")[1], alias.name
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"relative import at line {node.lineno}: use `bench.`")


def import_graph(root: Path = BENCH) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        graph[path.stem] = {module for _, module, _ in bench_imports(tree)} - {path.stem}
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for after in sorted(graph.get(node, ())):
            if after in on_path:
                return [*path[path.index(after) :], after]
            if after not in done:
                cycle = visit(after)
                if cycle is not None:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


def test_find_cycle_finds_a_cycle_and_only_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"a"}, "a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_bench_imports_sees_every_form_of_import() -> None:
    source = (
        "import bench.wrk\n"
        "from bench import report\n"
        "from bench.systems import Service\n"
        "def f():\n"
        "    from bench.runner import run\n"
    )
    found = [(module, name) for _, module, name in bench_imports(ast.parse(source))]
    assert sorted(found) == [
        ("report", ""),
        ("runner", "run"),
        ("systems", "Service"),
        ("wrk", ""),
    ]


def test_bench_has_no_import_cycle() -> None:
    graph = import_graph()
    assert {"cli", "runner", "scenarios", "own_loop", "base", "scenario_mcp"} <= graph.keys()
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle in bench/: {' -> '.join(cycle)}"


def test_bench_imports_its_modules_at_the_top_and_no_private_names() -> None:
    problems = []
    for path in sorted(BENCH.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        top_level = set(map(id, tree.body))
        for node, module, name in bench_imports(tree):
            where = f"bench/{path.name}:{node.lineno}"
            if id(node) not in top_level:
                problems.append(f"{where}: bench.{module} imported inside a block")
            if name.startswith("_"):
                problems.append(f"{where}: private name {name} of bench.{module}")
    assert not problems, "\n".join(problems)


def test_the_runner_and_the_loops_do_not_know_the_scenarios() -> None:
    graph = import_graph()
    for module in ("base", "runner", "own_loop", "launch", "report", "systems", "wrk"):
        scenario_modules = {m for m in graph[module] if m.startswith("scenario")}
        assert not scenario_modules, f"bench/{module}.py imports {scenario_modules}"
