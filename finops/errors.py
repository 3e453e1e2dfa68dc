"""Errors that name exactly what was wrong with the input: file, row, column, value, reason."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RowError:
    file: str
    row: int | None  # 1-based line number in the file, None for file-level problems
    column: str | None
    value: str | None
    reason: str

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
        if self.column:
            where += f", column {self.column}"
        shown = f" {self.value!r}" if self.value is not None else ""
        return f"{where}:{shown} {self.reason}".replace(": ", ": ", 1)

    def as_dict(self) -> dict:
        return asdict(self)


class ImportRejected(Exception):
    """Raised when input fails validation; nothing has been written."""

    MAX_SHOWN = 20

    def __init__(self, errors: list[RowError], *, rows: int | None = None):
        self.errors = errors
        # How many input rows were refused: the errors may list only some of them (and the
        # file's own problems are no row). None: one per error.
        self.rows = len(errors) if rows is None else rows
        shown = "\n".join(f"  {error}" for error in errors[: self.MAX_SHOWN])
        more = len(errors) - self.MAX_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"Import rejected, nothing was loaded ({len(errors)} problem(s)):\n{shown}{tail}")
