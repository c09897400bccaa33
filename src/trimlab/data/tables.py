"""Reading labelled CSV/TSV rows with their line numbers, so that a bad row is an error that says where it is.

A row with an empty label would otherwise become a class of its own (`''`), trained and reported like any
other; a short row would be an IndexError. Both are refused here, naming the file and the line.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from trimlab.errors import DataError

csv.field_size_limit(sys.maxsize)
Numbered = list[tuple[int, list[str]]]  # (line number in the file, fields), blank lines left out


def read_numbered(path: Path, delimiter: str, quoting: int, header: bool) -> Numbered:
    """All non-blank rows of a CSV/TSV with the line each starts on; a clear error for a missing or undecodable
    file. A quoted field may span lines, so the line is counted by the reader, not by enumerating rows."""
    if not path.is_file():
        raise DataError(f"text file not found: {path.absolute()}; set data.root (env TRIMLAB_DATA) or data.file")
    rows, line = [], 0
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a leading BOM is not part of a name
            reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
            for row in reader:
                if row:
                    rows.append((line + 1, row))
                line = reader.line_num
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read {path} as UTF-8 {'TSV' if delimiter == chr(9) else 'CSV'} ({err})") from err
    return rows[1:] if header else rows


def checked_fields(path: Path, rows: Numbered, text_at: int, label_at: int) -> tuple[list[str], list[str]]:
    """Texts and stripped labels of `rows`; a row too short for both columns, or with an empty label, is a
    `DataError` naming the file and the line."""
    short = [line for line, row in rows if len(row) <= max(text_at, label_at)]
    if short:
        raise DataError(f"{path}: row {short[0]} has fewer fields than the header ({len(short)} such rows)")
    empty = [line for line, row in rows if not row[label_at].strip()]
    if empty:
        raise DataError(
            f"{path}: line {empty[0]} has an empty label ({len(empty)} such rows); "
            "give every row a label or remove the unlabelled rows"
        )
    return [row[text_at] for _, row in rows], [row[label_at].strip() for _, row in rows]


def class_numbers(path: Path, rows: Numbered, labels: list[str], names: list[str]) -> list[str]:
    """Labels written as class numbers 1..len(names) (AG News), as names; any other label names its line."""
    allowed = {str(number): name for number, name in enumerate(names, start=1)}
    bad = [(line, label) for (line, _), label in zip(rows, labels, strict=True) if label not in allowed]
    if bad:
        line, label = bad[0]
        raise DataError(
            f"{path}: line {line} has label {label!r}, not a class number 1-{len(names)} of classes.txt "
            f"({len(bad)} such rows); fix or remove those rows"
        )
    return [allowed[label] for label in labels]
