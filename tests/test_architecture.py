"""The code's shape, held by tests: no module imports one that imports it back (not even inside a function),
no function over 50 lines, no file over 300 lines. Each failure names what to split or which import to move."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "trimlab"
MAX_FUNCTION_LINES = 50
MAX_FILE_LINES = 300

# Exceptions, each a set of modules that import each other: none. A cycle means shared code belongs in a module
# both import; list one here only with the reason it cannot be moved.
KNOWN_CYCLES: set[frozenset[str]] = set()
# Files allowed over the limit: none.
KNOWN_LONG_FILES: set[str] = set()


def module_files() -> dict[str, Path]:
    """Dotted module name → file, for every module of the trimlab package (a package is its __init__)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The trimlab modules one module imports, from every import statement in it (functions included).

    `from pkg import x` imports the module pkg.x when there is one, else the name x from pkg itself."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    found = set()
    for target in targets:
        while target and target not in modules:  # `import trimlab.x.Thing`-style paths: the module holding it
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Groups of modules that reach each other through imports (the strongly connected components > 1)."""
    reach = {name: reachable(graph, name) for name in graph}
    groups = {frozenset({name, *(other for other in reach[name] if name in reach[other])}) for name in graph}
    return sorted((group for group in groups if len(group) > 1), key=sorted)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_the_import_graph_sees_imports_inside_functions_and_from_package_imports():
    graph = import_graph()
    assert "trimlab.rundir" in graph["trimlab.launch"]  # `from trimlab import rundir`
    assert "trimlab.factory" in graph["trimlab.evaluate"]  # an import inside `evaluate()`
    assert "trimlab.errors" in graph["trimlab.models"]  # a package's own __init__ counts


def test_no_module_imports_one_that_imports_it_back():
    found = set(cycles(import_graph()))
    new = [sorted(group) for group in found - KNOWN_CYCLES]
    assert not new, f"import cycles: {new}; move the shared code into a module both import (see README, Layout)"
    gone = [sorted(group) for group in KNOWN_CYCLES - found]
    assert not gone, f"{gone} no longer import each other: remove them from KNOWN_CYCLES"


def test_no_function_is_over_50_lines():
    long = []
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (def to last line): {long}; split them"


def test_no_file_is_over_300_lines():
    long = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in source_files()}
    over = {path: n for path, n in long.items() if n > MAX_FILE_LINES and path not in KNOWN_LONG_FILES}
    assert not over, f"files over {MAX_FILE_LINES} lines: {over}; split them by what each part owns"
    fixed = sorted(path for path in KNOWN_LONG_FILES if long.get(path, 0) <= MAX_FILE_LINES)
    assert not fixed, f"{fixed} are short now: remove them from KNOWN_LONG_FILES"
