"""House rules that keep the code carry-able, read from the source (ast):

- the library is the package `cir/`; it never imports a top-level module of the checkout, and only the
  commands (`cir/cli/`, and a package's `__main__`) import the command layer;
- only an allowed list of files stays at the top level, and those are thin entry points (hubconf.py and
  gunicorn.conf.py excepted: torch.hub and gunicorn need definitions there);
- no import cycle between project modules (lazy imports inside functions included: a cycle hidden in a
  function is still a cycle, it only fails later; `if TYPE_CHECKING:` imports never run and are left out);
- no module over 600 lines, no function over 60;
- test files take shared things as fixtures (conftest.py): they import neither conftest nor each other.
"""
from __future__ import annotations

import ast
from pathlib import Path

from cir.paths import REPO_DIR

REPO = REPO_DIR
PACKAGE = "cir"
MAX_LINES = 600
MAX_FUNCTION_LINES = 60
# The design card's entry points and the commands: each a few lines over cir/.
ALLOWED_TOP = {"app.py", "model.py", "data_utils.py", "extract_features.py", "utils.py", "hubconf.py", "train.py",
               "evaluate.py", "query.py", "explain.py", "bof.py", "layouts.py", "label_retrieval.py", "plots.py",
               "gunicorn.conf.py"}
MAY_DEFINE = {"hubconf", "gunicorn.conf"}   # torch.hub's entry points, gunicorn's hooks
TOP_MAX_LINES = 30


def _modules() -> dict[str, Path]:
    """Project module name -> file: the top-level modules and every module of the package (a virtual
    environment or a build folder inside the checkout is not the project)."""
    out = {p.stem: p for p in REPO.glob("*.py")}
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
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


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {n: _imports(p, n, modules) for n, p in modules.items()}


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


def _in_package(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def test_no_import_cycle():
    graph = _graph()
    assert "app" in graph and "cir.index" in graph, sorted(graph)  # the walk found the project
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_never_imports_a_top_level_module():
    bad = {n: sorted(m for m in deps if not _in_package(m)) for n, deps in _graph().items() if _in_package(n)}
    bad = {n: deps for n, deps in bad.items() if deps}
    assert not bad, f"cir/ imports top-level modules (move what they need into the package): {bad}"


def test_only_the_commands_import_the_command_layer():
    def is_cli(name: str) -> bool:
        return name == f"{PACKAGE}.cli" or name.startswith(f"{PACKAGE}.cli.")
    bad = {n: sorted(filter(is_cli, deps)) for n, deps in _graph().items()
           if _in_package(n) and not is_cli(n) and not n.endswith(".__main__")}
    bad = {n: deps for n, deps in bad.items() if deps}
    assert not bad, f"library modules import the command layer (cir.cli): {bad}"


def test_only_the_allowed_files_stay_at_the_top_level():
    top = {p.name for p in REPO.glob("*.py")}
    assert not top - ALLOWED_TOP, f"new top-level modules (put them in cir/): {sorted(top - ALLOWED_TOP)}"
    packages = {p.name for p in REPO.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages == {PACKAGE}, f"top-level packages besides cir/: {sorted(packages - {PACKAGE})}"


def test_top_level_files_are_thin_entry_points():
    heavy = {}
    for name, path in _modules().items():
        if _in_package(name) or name in MAY_DEFINE:
            continue
        tree = ast.parse(path.read_text())
        defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        lines = len(path.read_text().splitlines())
        if defs or lines > TOP_MAX_LINES:
            heavy[name] = {"defines": defs, "lines": lines}
    assert not heavy, f"top-level files must only hand over to cir/ (move the code into the package): {heavy}"


def test_modules_stay_small():
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    too_long = {n: k for n, k in long.items() if k > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines (split them by concern): {too_long}"


def test_functions_stay_short():
    long = {}
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{name}.{node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them): {long}"


def test_tests_share_through_fixtures_only():
    tests = REPO / "tests"
    bad = {}
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            shared = [n for n in names if n.split(".")[0] == "conftest" or n.split(".")[-1].startswith("test_")]
            if shared:
                bad[str(path.relative_to(tests))] = shared
    assert not bad, f"test files importing conftest or other test files (use a fixture): {bad}"
