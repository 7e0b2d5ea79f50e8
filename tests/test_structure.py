"""House rules that keep the code carry-able: no import cycle between project modules, no oversized module
or function.

The import graph is read from the source (ast), lazy imports inside functions included: a cycle hidden in a
function is still a cycle, it only fails later. Imports under `if TYPE_CHECKING:` never run and are left out.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP = {"tests", "benchmarks"}
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    """Project module name -> file: top-level modules and packages (index.x, service.y ...), nothing else
    (a virtual environment or a build folder inside the checkout is not the project)."""
    out = {}
    for top in REPO.iterdir():
        if top.suffix == ".py":
            files = [top]
        elif top.is_dir() and top.name not in SKIP and (top / "__init__.py").is_file():
            files = sorted(top.rglob("*.py"))
        else:
            continue
        for path in files:
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Project modules that `name` imports anywhere in its file."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    # `if TYPE_CHECKING:` imports are for type checkers only: they never run, so they make no cycle
    hints_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                  for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in hints_only:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        for t in targets:
            # the longest project module that the dotted name starts with
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycle():
    modules = _modules()
    graph = {n: _imports(p, n, modules) for n, p in modules.items()}
    assert "app" in graph and "index" in graph, sorted(graph)  # the walk found the project
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_modules_stay_small():
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    too_long = {n: k for n, k in long.items() if k > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines (split them by concern): {too_long}"


MAX_FUNCTION_LINES = 60


def test_functions_stay_short():
    long = {}
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{name}.{node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them): {long}"
