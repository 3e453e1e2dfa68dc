"""The ``file`` data source: a CSV or XLSX file, uploaded in the admin or read from a path.

Config (``DataSource.config``; the admin edits it as a form, docs/data-sources.md has examples)::

    {
      "path": "",              # a file under FINOPS_SOURCE_FILES_DIR; empty: the newest upload
      "format": "auto",        # auto (by the file name, or a zip signature), csv or xlsx
      "delimiter": ",",        # CSV: , ; tab | (any single character)
      "encoding": "utf-8",     # CSV: a Python codec name (utf-8 also accepts a BOM)
      "header_row": 1,         # the line (CSV) or sheet row (XLSX) of the header; 0: no header
      "columns": [],           # the column names when header_row is 0
      "sheet": "",             # XLSX: the sheet's name; empty: the first sheet
      "mapping": {...}         # how the columns map onto facts: finops.sources.mapping
    }

Loading is all or nothing. The whole file is read once, streaming (memory grows with the
number of distinct fact keys, not with the size of the file); every row is checked; if any
row has a problem the load raises ImportRejected with the row-level report (the first 200
problems, the same problem listed 5 times at most, and the total) and nothing is written.
Otherwise the rows replace this source's facts for the scenario-periods the file covers
(``finops.loading``): loading the same file again changes nothing, a corrected row is
corrected, a removed row removed, and rows that share a key in one period add up.
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from django.conf import settings

from finops.errors import ImportRejected, RowError
from finops.loading import LoadResult
from finops.models import DataSource, SourceFile
from finops.sources import Report, bulk
from finops.sources.mapping import (
    ConfigInvalid,
    Lookups,
    MappedRow,
    MappingConfig,
    RowMapper,
    load_mapped,
    validate_config,
)
from finops.sources.tabular import CSV, XLSX, Table, TableOptions, guess_format, human_size, open_table

AUTO = "auto"
FORMATS = (AUTO, CSV, XLSX)
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
KEYS = ("path", "format", "delimiter", "encoding", "header_row", "columns", "sheet", "mapping")
MAX_HEADER_ROW = 1000
PREVIEW_ROWS = 20
PREVIEW_CHECK_ROWS = 100_000  # a preview checks this many rows at most; a refresh checks all


@dataclass(frozen=True)
class FileConfig:
    path: str
    format: str
    delimiter: str
    encoding: str
    header_row: int
    columns: tuple[str, ...]
    sheet: str
    mapping: MappingConfig

    def table_options(self, fmt: str) -> TableOptions:
        return TableOptions(
            format=fmt,
            delimiter=self.delimiter,
            encoding=self.encoding,
            header_row=self.header_row,
            columns=self.columns,
            sheet=self.sheet,
            max_uncompressed=settings.FINOPS_SOURCE_XLSX_MAX_UNCOMPRESSED_BYTES,
        )

    def as_json(self) -> dict:
        return {
            "path": self.path,
            "format": self.format,
            "delimiter": self.delimiter,
            "encoding": self.encoding,
            "header_row": self.header_row,
            "columns": list(self.columns),
            "sheet": self.sheet,
            "mapping": self.mapping.as_json(),
        }


def validate_file_config(data: Any) -> FileConfig:
    """A typed FileConfig, or ConfigInvalid listing every problem (the mapping's too)."""
    problems: list[tuple[str, str]] = []
    if not isinstance(data, dict):
        raise ConfigInvalid([("config", "must be an object")])
    for key in data:
        if key not in KEYS:
            problems.append((str(key), f"unknown setting; use {', '.join(KEYS)}"))

    path = data.get("path") or ""
    if not isinstance(path, str):
        problems.append(("path", "must be text"))
        path = ""
    elif path:
        try:
            resolve_path(path)
        except ValueError as error:
            problems.append(("path", str(error)))
    fmt = data.get("format") or AUTO
    if fmt not in FORMATS:
        problems.append(("format", f"{fmt!r}: use auto, csv or xlsx"))
    delimiter = data.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n' or delimiter.isalnum():
        problems.append(("delimiter", f"{delimiter!r}: use one character such as , ; tab or |"))
    encoding = data.get("encoding") or "utf-8"
    try:
        if not codecs.lookup(encoding)._is_text_encoding:
            raise LookupError
    except (LookupError, TypeError):
        problems.append(
            ("encoding", f"{encoding!r} is not a text encoding (for example utf-8, latin-1, cp1252)")
        )
    header_row = data.get("header_row", 1)
    if (
        not isinstance(header_row, int)
        or isinstance(header_row, bool)
        or not 0 <= header_row <= MAX_HEADER_ROW
    ):
        problems.append(
            ("header_row", f"{header_row!r}: use a row number from 1, or 0 when there is no header")
        )
        header_row = 1
    columns = data.get("columns") or []
    if not isinstance(columns, list) or not all(isinstance(name, str) and name.strip() for name in columns):
        problems.append(("columns", "must be a list of column names"))
        columns = []
    columns = [name.strip() for name in columns]
    if header_row == 0 and not columns:
        problems.append(("columns", "the file has no header row (header row 0): name its columns, in order"))
    if header_row and columns:
        problems.append(("columns", "give either a header row or a column list, not both"))
    if len({name.lower() for name in columns}) != len(columns):
        problems.append(("columns", "a column name appears twice"))
    sheet = data.get("sheet") or ""
    if not isinstance(sheet, str):
        problems.append(("sheet", "must be text"))
        sheet = ""

    mapping = None
    try:
        mapping = validate_config(data.get("mapping"))
    except ConfigInvalid as invalid:
        problems.extend(invalid.problems)
    if problems:
        raise ConfigInvalid(problems)
    return FileConfig(
        path=path,
        format=fmt,
        delimiter=delimiter,
        encoding=encoding,
        header_row=header_row,
        columns=tuple(columns),
        sheet=sheet.strip(),
        mapping=mapping,
    )


def source_files_dir() -> Path:
    return Path(settings.FINOPS_SOURCE_FILES_DIR).resolve()


def resolve_path(path: str) -> Path:
    """The file ``path`` names, which must lie inside FINOPS_SOURCE_FILES_DIR (after
    following symbolic links); ValueError otherwise."""
    return path_inside(source_files_dir(), path, "the source files folder", "FINOPS_SOURCE_FILES_DIR")


def path_inside(base: Path, path: str, folder: str, setting: str) -> Path:
    """``path`` (relative to ``base`` unless absolute) resolved, symbolic links followed; a
    ValueError naming ``folder`` and its ``setting`` when it lies outside ``base``."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    resolved = candidate.resolve()
    if not resolved.is_relative_to(base):
        raise ValueError(f"{path!r} is outside {folder} {base} ({setting}); refused")
    return resolved


def max_bytes() -> int:
    return settings.FINOPS_SOURCE_FILE_MAX_BYTES


def check_size(name: str, size: int) -> None:
    """Refuse an empty file, or one larger than the limit, before reading it."""
    if size == 0:
        raise ImportRejected([RowError(name, None, None, None, "the file is empty (0 bytes)")])
    if size > max_bytes():
        raise ImportRejected(
            [
                RowError(
                    name,
                    None,
                    None,
                    None,
                    f"the file is {human_size(size)}, larger than the limit of {human_size(max_bytes())} "
                    "(FINOPS_SOURCE_FILE_MAX_BYTES); refused unread",
                )
            ]
        )


def store_upload(source: DataSource, upload, *, user=None) -> SourceFile:
    """Keep an uploaded file for ``source`` (it becomes the file the source loads).
    ImportRejected when it is empty or larger than the limit."""
    check_size(upload.name, upload.size)
    digest = hashlib.sha256()
    for chunk in upload.chunks():
        digest.update(chunk)
    upload.seek(0)
    return SourceFile.objects.create(
        source=source,
        file=upload,
        original_name=Path(upload.name).name[:255],
        size=upload.size,
        sha256=digest.hexdigest(),
        uploaded_by=user,
    )


# --- where the bytes come from ---------------------------------------------------------------


@dataclass
class Input:
    name: str  # shown in problems: the uploaded file's name or the configured path
    size: int
    origin: str  # a sentence for the preview: which file, from where
    upload: SourceFile | None = None
    path: Path | None = None
    format: str = ""  # csv or xlsx, once the file is open


def input_for(source: DataSource, config: FileConfig) -> Input:
    """The file the source reads now, or ImportRejected saying why there is none."""
    if config.path:
        try:
            path = resolve_path(config.path)
        except ValueError as error:
            raise ImportRejected(
                [RowError(f"data source {source.slug}", None, "path", config.path, str(error))]
            ) from None
        if not path.is_file():
            what = "not a regular file" if path.exists() else "no such file"
            raise ImportRejected([RowError(config.path, None, None, None, f"{what} ({path})")])
        size = path.stat().st_size
        return Input(name=config.path, size=size, origin=f"path {path}", path=path)
    upload = source.files.select_related("uploaded_by").first()
    if upload is None:
        raise ImportRejected(
            [
                RowError(
                    f"data source {source.slug}",
                    None,
                    "path",
                    None,
                    "no file: upload one in the admin or configure a path",
                )
            ]
        )
    by = f" by {upload.uploaded_by.get_username()}" if upload.uploaded_by else ""
    origin = f"uploaded file {upload.original_name}, uploaded {upload.uploaded_at:%Y-%m-%d %H:%M %Z}{by}"
    return Input(name=upload.original_name, size=upload.size, origin=origin, upload=upload)


@contextmanager
def _stream(item: Input) -> Iterator[IO[bytes]]:
    try:
        if item.path is not None:
            handle = open(item.path, "rb")  # noqa: SIM115 - closed below
        else:
            handle = item.upload.file.storage.open(item.upload.file.name, "rb")
    except OSError as error:
        what = "the uploaded file cannot be opened" if item.path is None else "the file cannot be opened"
        raise ImportRejected(
            [RowError(item.name, None, None, None, f"{what}: {error.strerror or error}")]
        ) from None
    with handle:
        yield getattr(handle, "file", handle)


@contextmanager
def open_source_table(source: DataSource, config: FileConfig) -> Iterator[tuple[Input, Table]]:
    """Open the source's file as a table (size checked first)."""
    item = input_for(source, config)
    check_size(item.name, item.size)
    with _stream(item) as stream:
        if item.path is not None:  # the size on disk now, not when the path was resolved
            check_size(item.name, Path(item.path).stat().st_size)
        fmt = config.format
        if fmt == AUTO:
            fmt = guess_format(item.name, stream.read(8))
            stream.seek(0)
        item.format = fmt
        with open_table(stream, name=item.name, options=config.table_options(fmt)) as table:
            yield item, table


# --- the loader ------------------------------------------------------------------------------


def parse_config(source: DataSource) -> FileConfig:
    """The source's config, or ImportRejected naming each bad setting (a run shows them)."""
    try:
        return validate_file_config(source.config or {})
    except ConfigInvalid as invalid:
        where = f"data source {source.slug} (config)"
        raise ImportRejected(
            [RowError(where, None, name, None, message) for name, message in invalid.problems]
        ) from None


def _read(
    source: DataSource, config: FileConfig, *, keep: int = 0, max_rows: int | None = None
) -> tuple[Input, Table, RowMapper, list[MappedRow], bool]:
    """Map the source's file: (input, table, mapper, the first ``keep`` rows, read to the end?)."""
    kept: list[MappedRow] = []
    complete = True
    with open_source_table(source, config) as (item, table):
        mapper = RowMapper(config.mapping, Lookups.from_db(), file=table.name)
        if mapper.bind(table.header, header_row=table.header_row or None):
            for number, cells in table.rows:
                if max_rows is not None and mapper.records >= max_rows:
                    complete = False
                    break
                row = mapper.map(number, cells)
                if len(kept) < keep:
                    kept.append(row)
            if complete:
                mapper.finish()
            if mapper.records == 0 and not mapper.problems:
                reason = (
                    "the file has a header but no data rows"
                    if table.header_row
                    else "the file has no data rows"
                )
                mapper.problems.add(None, None, None, reason)
    return item, table, mapper, kept, complete


def load(source: DataSource, *, report: Report) -> LoadResult:
    """Read, validate and load the source's file, all or nothing (see the module docstring)."""
    config = parse_config(source)
    result = _load_in_bulk(source, config, report)
    if result is not None:
        return result
    _item, _table, mapper, _kept, _complete = _read(source, config)
    return load_mapped(source, mapper, report=report)


def _load_in_bulk(source: DataSource, config: FileConfig, report: Report) -> LoadResult | None:
    """A large CSV through the database (``finops.sources.bulk``), or None for the row path."""
    with open_source_table(source, config) as (item, table):
        plan = bulk.plan_for(
            fmt=item.format,
            size=item.size,
            mapping=config.mapping,
            header=table.header,
            header_row=table.header_row,
            delimiter=config.delimiter,
            encoding=config.encoding,
        )
    if plan is None:
        return None
    with _stream(item) as stream:
        return bulk.load(
            source, config.mapping, plan, stream, lambda: open_source_table(source, config), report=report
        )


# --- the admin's preview ---------------------------------------------------------------------


@dataclass
class PeriodLine:
    scenario: str
    period: date
    rows: int
    total: Decimal


@dataclass
class Preview:
    """What "Test connection / preview" shows: nothing here is written anywhere."""

    source: DataSource
    config: FileConfig | None = None
    input: Input | None = None
    header: list[str] = field(default_factory=list)
    header_row: int = 0
    rows: list[MappedRow] = field(default_factory=list)
    records: int = 0  # rows checked
    complete: bool = True  # the whole file was checked
    check_limit: int = PREVIEW_CHECK_ROWS
    problems: list[RowError] = field(default_factory=list)
    problem_total: int = 0
    problem_rows: int = 0
    periods: list[PeriodLine] = field(default_factory=list)
    keys: int = 0
    checked_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return not self.problem_total

    @property
    def mapping(self) -> MappingConfig | None:
        return self.config.mapping if self.config else None

    @property
    def columns(self) -> list[tuple[str, str]]:
        """(fact field, source column) in the order a preview shows them."""
        if not self.config:
            return []
        columns = self.config.mapping.columns
        order = ("date", "period", "entity", "department", "account", "series", "scenario", "dimension")
        shown = [(name, columns[name]) for name in order if name in columns]
        value = self.config.mapping.value_field
        shown.append((value, columns[value]))
        if "count" in columns:
            shown.append(("count", columns["count"]))
        return shown


def preview(source: DataSource, *, rows: int = PREVIEW_ROWS, max_rows: int = PREVIEW_CHECK_ROWS) -> Preview:
    """Read the first ``rows`` rows as they would be loaded, and check the file (its first
    ``max_rows`` rows for a very big file) for problems, without writing anything."""
    from django.utils import timezone

    result = Preview(source=source, check_limit=max_rows, checked_at=timezone.now())
    try:
        result.config = parse_config(source)
        item, table, mapper, kept, complete = _read(source, result.config, keep=rows, max_rows=max_rows)
    except ImportRejected as rejected:
        result.problems = rejected.errors
        result.problem_total = len(rejected.errors)
        try:
            result.input = input_for(source, result.config) if result.config else None
        except ImportRejected:
            result.input = None
        return result
    result.input, result.header, result.header_row = item, table.header, table.header_row
    result.rows, result.records, result.complete = kept, mapper.records, complete
    result.problems = mapper.problems.as_errors()
    result.problem_total, result.problem_rows = mapper.problems.total, mapper.problems.rows
    result.keys = mapper.keys
    result.periods = [
        PeriodLine(scenario, period, line.rows, line.total)
        for (scenario, period), line in sorted(
            mapper.summary.items(), key=lambda item: (item[0][0], item[0][1])
        )
    ]
    return result
