"""Read a dataset's files into rows: JSON (an array, or JSON Lines in a .json file), JSON Lines, CSV,
Parquet, or a folder of them. Each row keeps its number so that a check can name it.

Row numbers are 1-based: the element of a JSON array, the line of a JSON Lines file, the data row of
a CSV file (the header is not counted), the row of a Parquet file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from airtune.data.errors import DataError, RowError

SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class FileRows:
    path: str
    rows: list  # dicts (anything else is reported by the format checks)
    numbers: list[int] | None = None  # row numbers when they are not 1..len(rows) (JSON Lines with blank lines)
    errors: list[RowError] = field(default_factory=list)  # lines that are not JSON (read with skip_bad)

    def number(self, i: int) -> int:
        return self.numbers[i] if self.numbers is not None else i + 1


def expand_files(files: list[str | Path]) -> list[Path]:
    """The files a dataset names: folders become their data files (sorted, recursively)."""
    out = []
    for f in files:
        p = Path(f)
        if p.is_dir():
            found = sorted(
                q for q in p.rglob("*")
                if q.is_file() and q.suffix.lower() in SUFFIXES and not any(part.startswith(".") for part in q.relative_to(p).parts)
            )
            if not found:
                raise DataError(f"{p}: the folder holds no data files ({', '.join(sorted(SUFFIXES))})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return out


def _fail(path, row: int | None, problem: str, field_: str | None = None) -> DataError:
    e = RowError(str(path), row, field_, problem)
    return DataError(str(e), [e], 1)


def read_file(path: Path, *, skip_bad: bool = False) -> FileRows:
    """The rows of one file. With `skip_bad`, JSON Lines lines that do not parse are returned as errors."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise _fail(path, None, f"unsupported file type {path.suffix!r}; accepted: {', '.join(sorted(SUFFIXES))} or a folder of them")
    if kind == "jsonl":
        return _parse_jsonl(path, _read_text(path), skip_bad)
    return {"json": _read_json, "csv": _read_csv, "parquet": _read_parquet}[kind](path)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _fail(path, None, f"not UTF-8 text ({exc})") from None


def _read_json(path: Path) -> FileRows:
    text = _read_text(path)
    if not text.lstrip().startswith("["):
        if text.lstrip().startswith("{") and _looks_like_jsonl(text):
            return _parse_jsonl(path, text)
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise _fail(path, None, f"invalid JSON: {exc}") from None
        raise _fail(path, None, f"expected a JSON array of rows, found a {type(value).__name__}")
    try:
        rows = json.loads(text)
    except ValueError as exc:
        row = _failing_element(text)
        raise _fail(path, row, f"invalid JSON: {exc}") from None
    return FileRows(str(path), rows)


def _looks_like_jsonl(text: str) -> bool:
    first = text.lstrip().split("\n", 1)[0].strip()
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:
        return False


def _failing_element(text: str) -> int | None:
    """Which element of a JSON array fails to parse (1-based), by decoding the elements one by one."""
    decoder = json.JSONDecoder()
    i = text.index("[") + 1
    n = 0
    ws = " \t\r\n"
    while True:
        while i < len(text) and text[i] in ws:
            i += 1
        if i < len(text) and text[i] == "]":
            return None
        n += 1
        try:
            _, i = decoder.raw_decode(text, i)
        except ValueError:
            return n
        while i < len(text) and text[i] in ws:
            i += 1
        if i >= len(text) or text[i] not in ",]":
            return n
        if text[i] == "]":
            return None
        i += 1


def _parse_jsonl(path: Path, text: str, skip_bad: bool = False) -> FileRows:
    rows, numbers, errors = [], [], []
    loads = json.loads
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(loads(line))
        except ValueError as exc:
            if not skip_bad:
                raise _fail(path, n, f"invalid JSON: {exc}") from None
            errors.append(RowError(str(path), n, None, f"invalid JSON: {exc}"))
            continue
        numbers.append(n)
    dense = numbers == list(range(1, len(numbers) + 1))
    return FileRows(str(path), rows, None if dense else numbers, errors)


def _read_csv(path: Path) -> FileRows:
    import csv
    import io

    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    rows = []
    for n, row in enumerate(reader, start=1):
        if None in row:  # more cells than header columns
            raise _fail(path, n, f"{len(row) - 1 + len(row[None])} cells, the header has {len(reader.fieldnames or [])}")
        rows.append(row)
    return FileRows(str(path), rows)


def _read_parquet(path: Path) -> FileRows:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise _fail(path, None, f"not a readable Parquet file ({exc})") from None
    return FileRows(str(path), table.to_pylist())
