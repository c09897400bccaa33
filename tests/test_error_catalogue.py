"""The error catalogue, docs/errors.md, stays true to the tests.

Each row of its one table names a bad input, the fixed part of the message trimlab gives for it (one code span),
and the test that asserts it (`tests/<file>.py::<test>`, optionally with a parameter id in brackets). A row holds
when that test function exists and its message is a substring of one of the string constants of the test
(its body and its decorators, so parametrize lists count) or of the module-level constants of its file.

The reverse rule is how "every message the tests assert is in the table" is enforced: every literal fragment
passed to `assert_clear_error(result, ...)`, and every `match=` literal of a `pytest.raises(...)` whose first
argument is named `...Error`, `Diverged` or `Interrupted`, in any file under tests/, must overlap the message of
some row: the fragment occurs in the row's message, or the row's message occurs in the fragment (so a `match=`
regex is covered by a row holding a literal piece of it). An f-string stands for its longest constant part.
Fragments that are no trimlab message are listed in ALLOWLIST, each with its reason.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO / "docs" / "errors.md"
HEADER = ["Input", "Message", "Test"]
MIN_ROWS = 70
ERROR_NAMES = ("Diverged", "Interrupted")
ALLOWLIST = {
    "size mismatch",  # PyTorch's own load_state_dict error: a plain model cannot take pruned weights unresized
    "boom",  # the exception a test raises itself, to show a failed save leaves nothing behind
}


@dataclass(frozen=True)
class Row:
    line: int
    message: str
    test: str

    @property
    def file(self) -> Path:
        return REPO / self.test.split("::")[0]

    @property
    def function(self) -> str:
        return self.test.split("::", 1)[1].split("[")[0]

    def __str__(self) -> str:
        return f"docs/errors.md line {self.line} ({self.test})"


def split_cells(line: str) -> list[str]:
    """The cells of a table line; `\\|` is a pipe inside a cell."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def table_lines() -> list[tuple[int, list[str]]]:
    """(line number, cells) of every table line after the header and its separator."""
    lines = CATALOGUE.read_text().splitlines()
    table = [(n, split_cells(line)) for n, line in enumerate(lines, 1) if line.startswith("|")]
    return [(n, cells) for n, cells in table if cells != HEADER and not is_separator(cells)]


def is_separator(cells: list[str]) -> bool:
    return all(re.fullmatch(r":?-+:?", cell) for cell in cells)


def row_problem(cells: list[str]) -> str | None:
    if len(cells) != 3:
        return f"has {len(cells)} cells, not 3"
    if not re.fullmatch(r"`[^`]+`", cells[1]):
        return f"message {cells[1]!r} is not exactly one code span"
    if not re.fullmatch(r"tests/\w+\.py::test_\w+(\[.+\])?", cells[2].strip("`")):
        return f"test {cells[2]!r} is not tests/<file>.py::<test_function>[<id>]"
    return None


def catalogue_rows() -> list[Row]:
    return [Row(n, cells[1][1:-1], cells[2].strip("`")) for n, cells in table_lines() if row_problem(cells) is None]


@cache
def parsed(file: Path) -> ast.Module:
    return ast.parse(file.read_text(), filename=str(file))


def strings_in(node: ast.AST) -> list[str]:
    """Every string constant under `node`: literals (joined as Python joins them) and the fixed parts of f-strings."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def functions_of(file: Path) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in parsed(file).body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def module_constants(file: Path) -> list[str]:
    return [s for node in parsed(file).body if isinstance(node, (ast.Assign, ast.AnnAssign)) for s in strings_in(node)]


def literal_text(node: ast.expr) -> str | None:
    """A literal's text; for an f-string its longest constant part; None for anything computed."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = [p.value for p in node.values if isinstance(p, ast.Constant)]
        return max(parts, key=len) if parts else None
    return None


def called_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def asserted_fragments(file: Path) -> list[tuple[int, str]]:
    """(line, text) of the literal messages a test file asserts through assert_clear_error or pytest.raises."""
    found = []
    for call in (n for n in ast.walk(parsed(file)) if isinstance(n, ast.Call)):
        name = called_name(call.func)
        if name == "assert_clear_error":
            found += [(call.lineno, literal_text(arg)) for arg in call.args[1:]]
        elif name == "raises" and call.args and is_error_type(call.args[0]):
            found += [(call.lineno, literal_text(k.value)) for k in call.keywords if k.arg == "match"]
    return [(line, text) for line, text in found if text]


def is_error_type(node: ast.expr) -> bool:
    name = called_name(node)
    return name.endswith("Error") or name in ERROR_NAMES


def test_the_catalogue_is_one_table_of_well_formed_rows() -> None:
    lines = CATALOGUE.read_text().splitlines()
    headers = [n for n, line in enumerate(lines, 1) if line.startswith("|") and split_cells(line) == HEADER]
    assert len(headers) == 1, f"docs/errors.md: expected one `| Input | Message | Test |` header, found {headers}"
    problems = [f"docs/errors.md line {n}: {p}" for n, cells in table_lines() if (p := row_problem(cells))]
    assert not problems, "\n".join(problems)


def test_the_catalogue_has_enough_rows() -> None:
    assert len(catalogue_rows()) >= MIN_ROWS, f"docs/errors.md has {len(catalogue_rows())} rows, fewer than {MIN_ROWS}"


def test_every_row_names_a_test_that_exists() -> None:
    problems = [
        f"{row}: {'no file ' + str(row.file) if not row.file.is_file() else 'no function ' + row.function}"
        for row in catalogue_rows()
        if not row.file.is_file() or row.function not in functions_of(row.file)
    ]
    assert not problems, "\n".join(problems)


def test_every_row_message_is_asserted_by_its_test() -> None:
    problems = []
    for row in catalogue_rows():
        if not row.file.is_file() or row.function not in functions_of(row.file):
            continue  # reported by test_every_row_names_a_test_that_exists
        strings = strings_in(functions_of(row.file)[row.function]) + module_constants(row.file)
        if not any(row.message in s for s in strings):
            problems.append(f"{row}: message {row.message!r} is in no string constant of {row.function}")
    assert not problems, "\n".join(problems)


def overlaps(fragment: str, message: str) -> bool:
    return fragment in message or message in fragment


def test_every_asserted_message_is_in_the_catalogue() -> None:
    messages = [row.message for row in catalogue_rows()]
    missing = [
        f"tests/{file.name}:{line}: {text!r} is in no row's message of docs/errors.md"
        for file in sorted((REPO / "tests").glob("*.py"))
        for line, text in asserted_fragments(file)
        if text not in ALLOWLIST and not any(overlaps(text, message) for message in messages)
    ]
    assert not missing, "\n".join(missing)
