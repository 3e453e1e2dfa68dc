"""Reading CSV and XLSX files safely, one row at a time.

Shared by the file data source (``finops.sources.files``) and the target importer
(``kpis.target_files``). What it guarantees:

- Memory stays bounded: CSV goes through the ``csv`` module over a text wrapper on the open
  file; XLSX through openpyxl in read-only mode (rows are streamed from the sheet's XML).
- A file that cannot be read is refused with one ``ImportRejected`` naming the file and the
  reason, never a crash: a wrong encoding names the encoding, the byte, its position and line;
  an "XLSX" that is no workbook (not a zip, an old binary .xls, a zip without a workbook) says
  so; a workbook that would inflate past a bound (a "zip bomb") is refused before openpyxl
  opens it. The zip module stops inflating a member at its declared size, so the declared
  sizes that are checked really bound what is read. XML entity expansion is refused by the
  expat parser itself (expat 2.4+ has billion-laughs protection).
- Rows carry the number the user sees: the line of the CSV file where the record starts, the
  row number of the sheet. Blank rows are skipped (their numbers are not reused).

Cells are returned as read: strings for CSV; for XLSX the cell's value (str, int, float, bool,
datetime, date, time) or None. Callers parse them (money as ``Decimal``, never ``float``).
"""

from __future__ import annotations

import codecs
import csv
import io
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from finops.errors import ImportRejected, RowError

CSV, XLSX = "csv", "xlsx"
FORMATS = (CSV, XLSX)
DEFAULT_MAX_UNCOMPRESSED = 1024 * 1024 * 1024
MAX_COLUMNS = 1000  # a header wider than this is not a table an analyst maps by hand
CSV_FIELD_LIMIT = 1024 * 1024  # characters in one CSV cell
SNIFF_DELIMITERS = ",;\t|"


@dataclass(frozen=True)
class TableOptions:
    format: str = CSV  # csv or xlsx (see ``guess_format``)
    delimiter: str | None = ","  # None: sniff from the first 4 KB among , ; tab |
    encoding: str = "utf-8"
    header_row: int = 1  # the line (CSV) or sheet row (XLSX) of the header; 0 = no header
    columns: tuple[str, ...] = ()  # the column names when there is no header row
    sheet: str = ""  # XLSX: the sheet's name; empty = the first sheet
    max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED  # XLSX: bound on the inflated size
    # What to do about a byte the encoding cannot decode (the default suits a data source).
    decode_hint: str = ""


@dataclass
class Table:
    """An open table: its header and an iterator over (row number, cells) of its data rows."""

    name: str
    header: list[str]
    header_row: int  # 0 when the columns were given instead of read
    rows: Iterator[tuple[int, list[Any]]] = field(repr=False)


def guess_format(name: str, head: bytes = b"") -> str:
    """XLSX for a ``.xlsx``/``.xlsm`` name or a zip signature, else CSV."""
    lower = name.lower()
    if lower.endswith((".xlsx", ".xlsm")) or head.startswith(b"PK\x03\x04"):
        return XLSX
    return CSV


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size:,} bytes"
    if size < 1024**2:
        return f"{size / 1024:,.1f} KB"
    return f"{size / 1024**2:,.1f} MB"


def file_error(name: str, reason: str, *, row: int | None = None, value: str | None = None) -> ImportRejected:
    return ImportRejected([RowError(name, row, None, value, reason)])


def encoding_label(encoding: str) -> str:
    """The name users know: UTF-8 for every spelling of it."""
    try:
        canonical = codecs.lookup(encoding).name
    except LookupError:
        return encoding
    return "UTF-8" if canonical in ("utf-8", "utf-8-sig") else canonical


@contextmanager
def open_table(stream: IO[bytes], *, name: str, options: TableOptions) -> Iterator[Table]:
    """Open ``stream`` (binary, seekable) as a table; raise ImportRejected if it cannot be read.

    Rows are read lazily while the caller iterates ``table.rows``; a problem found then (a
    byte that is not in the encoding, a damaged workbook) raises ImportRejected at that point.
    """
    if options.format == XLSX:
        with _open_xlsx(stream, name, options) as table:
            yield table
    elif options.format == CSV:
        with _open_csv(stream, name, options) as table:
            yield table
    else:
        raise ValueError(f"unknown table format {options.format!r}")


# --- CSV -----------------------------------------------------------------------------------


@contextmanager
def _open_csv(stream: IO[bytes], name: str, options: TableOptions) -> Iterator[Table]:
    encoding = "utf-8-sig" if encoding_label(options.encoding) == "UTF-8" else options.encoding
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    text = io.TextIOWrapper(stream, encoding=encoding, errors="strict", newline="")
    try:
        delimiter = options.delimiter
        if delimiter is None:
            delimiter = _sniff(stream, text, name, options)
        reader = csv.reader(text, delimiter=delimiter, strict=False)
        records = _csv_records(reader, stream, name, options)
        header, header_row = _header(records, name, options)
        yield Table(name=name, header=header, header_row=header_row, rows=records)
    finally:
        text.detach()  # the caller owns the stream


def _sniff(stream: IO[bytes], text: io.TextIOWrapper, name: str, options: TableOptions) -> str:
    try:
        sample = text.read(4096)
    except UnicodeDecodeError:
        raise _decode_error(stream, name, options) from None
    text.seek(0)
    try:
        return csv.Sniffer().sniff(sample, delimiters=SNIFF_DELIMITERS).delimiter
    except csv.Error:
        return ","


def _csv_records(
    reader, stream: IO[bytes], name: str, options: TableOptions
) -> Iterator[tuple[int, list[str]]]:
    line = 1  # the line where the next record starts
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError:
            raise _decode_error(stream, name, options) from None
        except csv.Error as error:
            raise file_error(name, f"unreadable CSV: {error}", row=reader.line_num) from None
        start, line = line, reader.line_num + 1
        if any(cell.strip() for cell in cells):
            yield start, cells


def _decode_error(stream: IO[bytes], name: str, options: TableOptions) -> ImportRejected:
    """Find the first byte that does not decode, with its position and line, by re-reading
    the file (only on this error path) with an incremental decoder."""
    encoding = options.encoding
    label = encoding_label(encoding)
    # Plain UTF-8 here even for utf-8-sig: a BOM decodes (as U+FEFF) and positions stay exact.
    decoder = codecs.getincrementaldecoder("utf-8" if label == "UTF-8" else encoding)("strict")
    stream.seek(0)
    offset, lines = 0, 1
    while True:
        chunk = stream.read(1 << 20)
        pending = len(decoder.getstate()[0])
        try:
            decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as error:
            # error.object is the bytes held back from the last chunk followed by this chunk
            position = offset - pending + error.start  # 0-based offset in the file
            lines += error.object.count(b"\n", pending, error.start)
            bad = error.object[error.start : error.end]
            shown = "0x" + bad.hex()
            hint = "set the source's encoding (for example latin-1 or cp1252) or save the file as UTF-8"
            if label != "UTF-8":
                hint = "set the source's encoding to the one the file was saved in"
            hint = options.decode_hint or hint
            reason = (
                f"not {label} text: byte {shown} at byte position {position + 1:,} (line {lines:,}) "
                f"cannot be decoded as {label}; {hint}"
            )
            return file_error(name, reason, row=lines, value=shown)
        if not chunk:
            break
        lines += chunk.count(b"\n")
        offset += len(chunk)
    return file_error(name, f"not {label} text")  # pragma: no cover - the wrapper saw an error


# --- XLSX ----------------------------------------------------------------------------------


@contextmanager
def _open_xlsx(stream: IO[bytes], name: str, options: TableOptions) -> Iterator[Table]:
    head = stream.read(8)
    stream.seek(0)
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        raise file_error(
            name, "not an XLSX workbook: this is an old binary Excel (.xls) file; save it as .xlsx"
        )
    try:
        archive = zipfile.ZipFile(stream)
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise file_error(name, "not an XLSX workbook (not a zip archive)") from None
    inflated = sum(member.file_size for member in members)
    if inflated > options.max_uncompressed:
        raise file_error(
            name,
            f"the workbook would expand to {human_size(inflated)}, more than the limit of "
            f"{human_size(options.max_uncompressed)}; refused unopened",
        )
    names = {member.filename for member in members}
    if "[Content_Types].xml" not in names or "xl/workbook.xml" not in names:
        raise file_error(name, "not an XLSX workbook (a zip archive without a workbook in it)")
    stream.seek(0)
    from openpyxl import load_workbook  # imported here: only XLSX files need it

    try:
        workbook = load_workbook(stream, read_only=True, data_only=True)
    except Exception as error:  # openpyxl raises many kinds for a damaged workbook
        raise file_error(name, f"not a readable XLSX workbook ({type(error).__name__}: {error})") from None
    try:
        if options.sheet:
            if options.sheet not in workbook.sheetnames:
                raise file_error(
                    name,
                    f"no sheet named {options.sheet!r}; the workbook has {', '.join(workbook.sheetnames)}",
                )
            sheet = workbook[options.sheet]
        else:
            sheet = workbook.worksheets[0]
        label = name if not options.sheet else f"{name} [{options.sheet}]"
        try:
            if options.header_row:
                first = next(
                    sheet.iter_rows(
                        min_row=options.header_row,
                        max_row=options.header_row,
                        max_col=MAX_COLUMNS + 1,
                        values_only=True,
                    ),
                    (),
                )
                header = _clean_header([_cell_text(cell) for cell in first], name, options.header_row)
            else:
                header = list(options.columns)
        except ImportRejected:
            raise
        except Exception as error:
            raise _damaged(label, error) from None
        rows = _xlsx_records(sheet, label, options.header_row + 1, max(len(header), 1))
        yield Table(name=label, header=header, header_row=options.header_row, rows=rows)
    finally:
        workbook.close()


def _xlsx_records(sheet, name: str, first: int, width: int) -> Iterator[tuple[int, list[Any]]]:
    try:
        for number, row in enumerate(
            sheet.iter_rows(min_row=first, max_col=width, values_only=True), start=first
        ):
            if any(cell is not None and (not isinstance(cell, str) or cell.strip()) for cell in row):
                yield number, list(row)
    except ImportRejected:
        raise
    except Exception as error:  # a damaged sheet (bad XML, a member whose CRC fails)
        raise _damaged(name, error) from None


def _damaged(name: str, error: Exception) -> ImportRejected:
    return file_error(name, f"the workbook is damaged and cannot be read ({type(error).__name__}: {error})")


def _cell_text(cell: Any) -> str:
    return "" if cell is None else str(cell)


# --- header --------------------------------------------------------------------------------


def _header(records: Iterator[tuple[int, list[str]]], name: str, options: TableOptions):
    if not options.header_row:
        return list(options.columns), 0
    for number, cells in records:
        if number > options.header_row:
            raise file_error(name, f"no header on line {options.header_row} (it is blank)", row=number)
        if number == options.header_row:
            return _clean_header(cells, name, number), number
    raise file_error(name, "the file is empty (no header row and no data)")


def _clean_header(cells: list[str], name: str, row: int) -> list[str]:
    header = [str(cell).strip().lstrip("\ufeff") for cell in cells]
    while header and not header[-1]:
        header.pop()
    if not header:
        raise file_error(name, f"the header row (row {row}) is empty", row=row)
    if len(header) > MAX_COLUMNS:
        raise file_error(name, f"more than {MAX_COLUMNS} columns in the header", row=row)
    seen: dict[str, str] = {}
    for cell in header:
        key = cell.lower()
        if key and key in seen:
            raise ImportRejected(
                [RowError(name, row, cell, cell, "the header names this column twice; names must be unique")]
            )
        seen[key] = cell
    return header
