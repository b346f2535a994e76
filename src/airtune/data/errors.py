"""Errors of the prepare step: every bad row is named by file, row, field and what is wrong."""

from __future__ import annotations

from dataclasses import dataclass

# How many row errors a failing job lists; the rest are counted.
SHOWN_ERRORS = 10


@dataclass(frozen=True)
class RowError:
    file: str
    row: int | None  # 1-based row number (JSON array element, JSONL/CSV data line, Parquet row); None: the whole file
    field: str | None  # the column or message field at fault
    problem: str
    dataset: str | None = None

    def __str__(self) -> str:
        where = [self.file]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field:
            where.append(self.field)
        prefix = f"dataset {self.dataset}: " if self.dataset else ""
        return prefix + ": ".join(where) + ": " + self.problem


class DataError(ValueError):
    """The data cannot be prepared. `errors` holds the row errors (possibly only the first ones), `total` all of them."""

    def __init__(self, message: str, errors: list[RowError] | None = None, total: int | None = None):
        self.errors = list(errors or [])
        self.total = total if total is not None else len(self.errors)
        super().__init__(message)

    @classmethod
    def from_rows(cls, errors: list[RowError], total: int, what: str = "rows failed their checks") -> DataError:
        shown = errors[:SHOWN_ERRORS]
        lines = [f"{total} {what}" + (f"; the first {len(shown)}:" if len(errors) > len(shown) else ":")]
        lines += [f"  {e}" for e in shown]
        lines.append("Fix the data, or set skip_bad_rows: true to skip such rows (their number is reported).")
        return cls("\n".join(lines), shown, total)
