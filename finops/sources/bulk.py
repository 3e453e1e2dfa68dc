"""The file source's bulk path on PostgreSQL: the file goes to the database with ``COPY`` and
is checked and mapped there, set-based, instead of row by row in Python.

A financial CSV file in UTF-8 with no quote character is first offered to the columnar path
(``finops.sources.columnar``): Arrow reads, checks and groups it on every core and only the
grouped facts are written (``finops.loading.load_grouped``). Whatever that path does not read
with certainty makes it give way to the steps below, before anything is written.

The row-by-row path (``finops.sources.mapping.RowMapper``) stays the one definition of what a
row means and the one author of the row-level report. This path only takes the files whose
every row it can read exactly as that path would, and gives way to it otherwise:

1. ``COPY ... FROM STDIN (FORMAT csv)`` streams the file (bounded memory) into an unlogged
   table of the load's own (``_WorkTables``) of text columns, one per header column: the raw
   bytes when PostgreSQL splits them exactly as Python's ``csv`` module does (no quote
   character, see ``_plain``), else the rows as Python's reader reads them, written again
   with every cell quoted. A row that ``COPY`` cannot take (too many or too few cells, a
   byte outside the encoding) stops here.
2. The distinct date texts (a few thousand at most in a ledger) are parsed in Python by the
   row path's own parser and period rule, and joined back as a small table. Codes are joined,
   exactly as written, to the stored entities, departments, leaf accounts and scenarios.
   Amounts are read in SQL only in the plain forms both paths read alike (an optional sign,
   digits with the configured thousands grouping, the configured decimal separator, no
   spaces), and must fit the fact column without rounding.
3. One scan of the raw rows, its per-row checks and joins in parallel workers, groups them
   by natural key (rows sharing a key add up) into the staging table of ``finops.loading``,
   which then replaces the source's facts in the scenario-periods the file covers: the same
   statements, semantics and counts as every load.

Anything the bulk path does not read with certainty (an unknown code, a code with spaces
around it, an accounting negative "(12.50)", an empty amount, a date the parser refuses)
makes it give way: its savepoint is rolled back, nothing is written, and the caller reads the
file through the row path, which loads it or reports each bad row by row and column. The
bulk path never rejects a file itself, so the two paths cannot disagree on what is refused,
and a file that loads through both gives the same facts (tested side by side).

Taken for CSV files (financial or operational facts) of at least ``FINOPS_LOAD_BULK_MIN_BYTES``
(default 4 MiB) whose header is on line 1 (or whose columns are named in the config), in UTF-8,
Latin-1 or Windows-1252, on PostgreSQL through psycopg2. XLSX files and small files take the
row path.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date
from typing import IO

from django.conf import settings
from django.db import DatabaseError, connection, transaction

from finops.errors import ImportRejected
from finops.loading import (
    FINANCIAL_SPEC,
    OPERATIONAL_SPEC,
    CopyStream,
    LoadResult,
    big_query_settings,
    copy_available,
    load_grouped,
    local_settings,
    lock_dimensions,
    replace_staged,
)
from finops.models import Account, DataSource, Entity
from finops.periods import month_end, month_start, period_for_date
from finops.sources import Report, columnar
from finops.sources.columnar import MAX_DATE_TEXTS, GiveWay, amount_pattern
from finops.sources.mapping import (
    AMOUNT_INTEGER_DIGITS,
    AMOUNT_PLACES,
    FINANCIAL,
    MAX_COUNT,
    MAX_DIMENSION,
    OPERATIONAL,
    VALUE_INTEGER_DIGITS,
    VALUE_PLACES,
    CellError,
    Lookups,
    MappingConfig,
    date_parser,
    moved_days_warning,
    remove_outside_scope,
    split_balance_warning,
)
from finops.sources.tabular import CSV, CSV_FIELD_LIMIT, Table, encoding_label

log = logging.getLogger(__name__)

BULK_MIN_BYTES = 4 * 1024 * 1024  # default of settings.FINOPS_LOAD_BULK_MIN_BYTES
WORK_TABLE_PREFIX = "finops_bulk_"  # + what it holds + a token of the load (``_WorkTables``)
PLAIN_SCAN_CHUNK = 4 * 1024 * 1024
REWRITE_ROWS_PER_READ = 10_000
# Python codec name (as codecs.lookup spells it) -> PostgreSQL's name for the same table.
PG_ENCODINGS = {"latin-1": "LATIN1", "iso8859-1": "LATIN1", "cp1252": "WIN1252"}  # UTF-8 aside
CODE_FIELDS = {
    FINANCIAL: ("entity", "department", "account", "scenario"),
    OPERATIONAL: ("entity", "series", "scenario"),
}
BLANK = r"^[ \t\r\n\f\v]*$"  # a cell the row path sees as blank (a strict subset of them)


# Opens the file as the row path reads it: a context manager giving (input, table).
TableOpener = Callable[[], AbstractContextManager[tuple[object, Table]]]


@dataclass(frozen=True)
class Plan:
    """How the file is copied: its columns, where the header is and how it is encoded."""

    header: list[str]
    has_header_line: bool
    delimiter: str
    pg_encoding: str


def min_bytes() -> int:
    return int(getattr(settings, "FINOPS_LOAD_BULK_MIN_BYTES", BULK_MIN_BYTES))


def plan_for(
    *,
    fmt: str,
    size: int,
    mapping: MappingConfig,
    header: list[str],
    header_row: int,
    delimiter: str,
    encoding: str,
) -> Plan | None:
    """The bulk plan for a file, or None when the file is for the row path."""
    if not copy_available() or fmt != CSV or size < min_bytes():
        return None
    if header_row not in (0, 1) or any("\n" in name or "\r" in name for name in header):
        return None
    label = encoding_label(encoding)
    pg_encoding = "UTF8" if label == "UTF-8" else PG_ENCODINGS.get(label)
    if pg_encoding is None:
        return None
    return Plan(header=header, has_header_line=header_row == 1, delimiter=delimiter, pg_encoding=pg_encoding)


def load(
    source: DataSource,
    mapping: MappingConfig,
    plan: Plan,
    stream: IO[bytes],
    open_table: TableOpener,
    *,
    report: Report,
) -> LoadResult | None:
    """Load the file through the bulk path, or return None (nothing written) to give way.

    ``stream`` is the file's bytes (seekable); ``open_table()`` opens it as the row path
    reads it (``finops.sources.files.open_source_table``). Only what happens while staging
    makes the bulk path give way; an error while applying the staged rows to the facts is
    the load's error, as it would be on the row path."""
    timings: dict[str, float] = {}
    if _columnar_reads(mapping, plan):
        result = _load_columnar(source, mapping, plan, stream, report, timings)
        if result is not None:
            return result
    try:
        with transaction.atomic():  # a savepoint inside the refresh's transaction
            staged = _stage(mapping, plan, stream, open_table, report, timings)
    except GiveWay as reason:
        log.info("file source %s: row-by-row path, because %s", source.slug, reason)
        return None
    except ImportRejected as rejected:  # Python's reader refused the file: the row path says why
        log.info("file source %s: row-by-row path, because %s", source.slug, rejected.errors[0])
        return None
    except (DatabaseError, connection.Database.Error) as error:  # COPY could not read the file
        log.info("file source %s: row-by-row path, because COPY stopped: %s", source.slug, error)
        return None
    clock = time.perf_counter()
    result = replace_staged(_spec(mapping), source)
    result.rows_read = staged.rows
    result.method = "bulk"
    if staged.scope is not None:
        remove_outside_scope(source, mapping.fact_kind, staged.scope, result)
    timings["replace"] = round(time.perf_counter() - clock, 3)
    result.timings = timings
    return result


def _columnar_reads(mapping: MappingConfig, plan: Plan) -> bool:
    """Whether the columnar path (``finops.sources.columnar``) may try this file first."""
    return (
        getattr(settings, "FINOPS_LOAD_COLUMNAR", True)
        and columnar.available()
        and mapping.fact_kind == FINANCIAL
        and plan.pg_encoding == "UTF8"
        and plan.delimiter.isascii()
    )


def _load_columnar(
    source: DataSource,
    mapping: MappingConfig,
    plan: Plan,
    stream: IO[bytes],
    report: Report,
    timings: dict[str, float],
) -> LoadResult | None:
    """The file read, checked and grouped by Arrow, then written; None (nothing written) when
    the columnar path gives way to the SQL checks."""
    clock = time.perf_counter()
    if not _plain(stream):
        log.info("file source %s: not columnar, because the file has quotes", source.slug)
        return None
    lock_dimensions()
    try:
        grouped = columnar.group_financial(
            stream,
            mapping=mapping,
            lookups=Lookups.from_db(),
            header=plan.header,
            has_header_line=plan.has_header_line,
            delimiter=plan.delimiter,
        )
    except GiveWay as reason:
        log.info("file source %s: not columnar, because %s", source.slug, reason)
        stream.seek(0)
        return None
    timings["read and group"] = round(time.perf_counter() - clock, 3)
    for warning in grouped.warnings:
        report.warn(warning)
    scope = grouped.scope
    result = load_grouped(
        FINANCIAL_SPEC,
        source,
        columns=["scenario_id", "period", "entity_id", "department_id", "account_id", "amount"],
        blocks=lambda source_id: grouped.csv_blocks(source_id),
        scope=scope,
        rows=len(grouped),
        totals=grouped.total_blocks,
    )
    result.rows_read = grouped.rows
    result.method = "columnar"
    timings |= result.timings  # the write's own steps
    if mapping.snapshot:
        clock = time.perf_counter()
        remove_outside_scope(source, mapping.fact_kind, scope, result)
        timings["other months removed"] = round(time.perf_counter() - clock, 3)
    result.timings = timings
    return result


@dataclass(frozen=True)
class _WorkTables:
    """The load's own tables for the raw rows, the codes and the dates: unlogged (not
    temporary) so that PostgreSQL's parallel workers can read them, named with a token of the
    load so that two loads never share one. Made in the load's transaction, and dropped by it
    (or by its rollback)."""

    token: str

    @classmethod
    def new(cls) -> _WorkTables:
        return cls(secrets.token_hex(6))

    @property
    def raw(self) -> str:
        return f"{WORK_TABLE_PREFIX}raw_{self.token}"

    @property
    def dates(self) -> str:
        return f"{WORK_TABLE_PREFIX}dates_{self.token}"

    def codes(self, field: str) -> str:
        return f"{WORK_TABLE_PREFIX}{field}_{self.token}"

    def all(self, fields: tuple[str, ...]) -> list[str]:
        return [self.raw, self.dates, *(self.codes(field) for field in fields)]


@dataclass
class _Staged:
    rows: int  # data rows read
    scope: set[tuple[int, date]] | None  # the (scenario, period) pairs, for a snapshot


def _stage(
    mapping: MappingConfig,
    plan: Plan,
    stream: IO[bytes],
    open_table: TableOpener,
    report: Report,
    timings: dict[str, float],
) -> _Staged:
    """COPY the file, check and group it into the staging table of its fact kind (``_spec``);
    GiveWay if unsure."""
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[step] = round(now - clock, 3)
        clock = now

    position = {name.lower(): i for i, name in enumerate(plan.header)}
    missing = [name for name in mapping.columns.values() if name.lower() not in position]
    if missing:
        raise GiveWay(f"the file has no column {missing[0]!r}")
    column = {field: f"r.c{position[name.lower()]}" for field, name in mapping.columns.items()}
    lock_dimensions()
    lookups = Lookups.from_db()
    tables = _WorkTables.new()
    raw = tables.raw
    with connection.cursor() as cursor:
        restore = big_query_settings(cursor)
        cells = ", ".join(f"c{i} text" for i in range(len(plan.header)))
        cursor.execute(f"CREATE UNLOGGED TABLE {raw} ({cells})")
        if _plain(stream):  # PostgreSQL splits it exactly as Python's csv module does
            options = (
                f"FORMAT csv, DELIMITER {_literal(plan.delimiter)}, "
                f"HEADER {'true' if plan.has_header_line else 'false'}, ENCODING '{plan.pg_encoding}'"
            )
            source_bytes = _without_bom(stream) if plan.pg_encoding == "UTF8" else stream
            cursor.copy_expert(f"COPY {raw} FROM STDIN WITH ({options})", source_bytes, size=1 << 20)
            lap("copy")
        else:  # quotes (or other CSV subtleties): the row path's own reader splits the rows
            with open_table() as (_item, table):
                rows = _rewritten(table.rows, len(plan.header))
                cursor.copy_expert(f"COPY {raw} FROM STDIN WITH (FORMAT csv, ENCODING 'UTF8')", rows)
            lap("read and copy")

        blank = " AND ".join(f"(r.c{i} IS NULL OR r.c{i} ~ '{BLANK}')" for i in range(len(plan.header)))
        joins, ids = [], {}
        for field in CODE_FIELDS[mapping.fact_kind]:
            table = field
            if field in mapping.constants:
                code = mapping.constants[field]
                found = lookups.codes(field).get(code)
                if found is None or (field == "account" and code in lookups.parent_accounts):
                    raise GiveWay(f"the fixed {field} {code!r} is not a code the load can use")
                ids[field] = str(int(found))
                continue
            codes = lookups.codes(field)
            if field == "account":
                codes = {code: pk for code, pk in codes.items() if code not in lookups.parent_accounts}
            _code_table(cursor, tables.codes(field), codes)
            joins.append(f"LEFT JOIN {tables.codes(field)} {table} ON {table}.code = {column[field]}")
            ids[field] = f"{table}.id"

        time_field = mapping.time_field
        _date_table(cursor, tables, mapping, column[time_field], blank)
        lap("dates")
        joins.append(f"LEFT JOIN {tables.dates} d ON d.raw = {column[time_field]}")

        group = _group_financial if mapping.fact_kind == FINANCIAL else _group_operational
        cursor.execute(f"ANALYZE {raw}")  # its size: the planner then reads it in parallel
        unread, too_big, rows = group(cursor, tables, mapping, column, ids, joins, blank, report)
        lap("check and group")
        if unread:
            raise GiveWay(f"{unread:,} key(s) have a row it does not read with certainty")
        if too_big:
            raise GiveWay("rows sharing a key add up past the fact column")
        if not rows:
            raise GiveWay("the file has no data rows")
        for table in tables.all(CODE_FIELDS[mapping.fact_kind]):
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
        if mapping.fact_kind == FINANCIAL and time_field == "date" and lookups.balance_accounts:
            _warn_split_balances(cursor, report, sorted(lookups.balance_accounts))
        scope = None
        if mapping.snapshot:
            spec = _spec(mapping)
            cursor.execute(f"SELECT DISTINCT scenario_id, {spec.period} FROM {spec.table} s")  # noqa: S608
            scope = set(cursor.fetchall())
        restore()
    return _Staged(rows=int(rows), scope=scope)


def _spec(mapping: MappingConfig):  # noqa: ANN202 - a finops.loading.StageSpec
    return FINANCIAL_SPEC if mapping.fact_kind == FINANCIAL else OPERATIONAL_SPEC


def _group(cursor, raw: str, table: str, outer: str, inner: str, joins: list[str], blank: str) -> None:
    """Create ``table`` from the raw rows grouped by the five key columns ``outer`` starts with.
    The inner query reads each row once (OFFSET 0 keeps the planner from copying the number's
    regex and cast into every aggregate); rows sharing a key add up. The per-row work (the
    checks, casts and code joins) runs in parallel workers: their start-up and hand-over costs
    are counted as nothing here, where millions of rows repay them (the planner's defaults
    keep such a scan serial)."""
    cursor.execute(f"DROP TABLE IF EXISTS {table}")
    restore = local_settings(
        cursor, {"parallel_setup_cost": "0", "parallel_tuple_cost": "0", "min_parallel_table_scan_size": "0"}
    )
    cursor.execute(
        f"""CREATE TEMPORARY TABLE {table} ON COMMIT DROP AS
        SELECT {outer}
        FROM (SELECT {inner} FROM {raw} r {" ".join(joins)} WHERE NOT ({blank}) OFFSET 0) x
        GROUP BY 1, 2, 3, 4, 5"""  # noqa: S608 - our own names, code ids and checked literals
    )
    restore()


def _group_financial(cursor, tables, mapping, column, ids, joins, blank, report) -> tuple[int, int, int]:
    """Rows into ``FINANCIAL_SPEC.table``, one per natural key; (keys with a row it cannot read
    with certainty, keys whose rows add up past the column, rows read)."""
    amount = _amount_sql(column["amount"], mapping, AMOUNT_PLACES)
    limit = 10**AMOUNT_INTEGER_DIGITS
    keys = [f"{ids['entity']} AS entity_id", f"{ids['department']} AS department_id"]
    keys += [f"{ids['scenario']} AS scenario_id", f"{ids['account']} AS account_id"]
    _group(
        cursor,
        tables.raw,
        FINANCIAL_SPEC.table,
        "period, entity_id, department_id, scenario_id, account_id, SUM(v) AS amount, count(*) AS rows, "
        "count(v) AS read, max(abs(v)) AS largest, min(day) AS first_day, max(day) AS last_day",
        f"d.period, d.day, {', '.join(keys)}, {amount} AS v",
        joins,
        blank,
    )
    cursor.execute(
        f"""SELECT count(*) FILTER (WHERE rows <> read OR largest >= {limit} OR period IS NULL
                OR entity_id IS NULL OR department_id IS NULL OR scenario_id IS NULL
                OR account_id IS NULL),
            count(*) FILTER (WHERE abs(amount) >= {limit}), COALESCE(sum(rows), 0)
        FROM {FINANCIAL_SPEC.table}"""  # noqa: S608
    )
    return cursor.fetchone()


def _group_operational(cursor, tables, mapping, column, ids, joins, blank, report) -> tuple[int, int, int]:
    """The same for operational rows into ``OPERATIONAL_SPEC.table``: a day the period rule
    moves into another month is stored on its period's first or last day (counted for the
    warning), counts are whole numbers written as digits, a dimension has no space around it."""
    value = _amount_sql(column["value"], mapping, VALUE_PLACES)
    limit = 10**VALUE_INTEGER_DIGITS
    if "count" in column:
        count = f"CASE WHEN {column['count']} ~ '^[0-9]{{1,16}}$' THEN ({column['count']})::bigint END"
    else:
        count = str(int(mapping.constants.get("count", "1")))
    if "dimension" in column:
        cell = column["dimension"]
        dimension = f"COALESCE({cell}, '')"
        # The row path strips any (Unicode) space around it: only printable ASCII at the ends.
        odd = f"({cell} ~ '^[^!-~]|[^!-~]$' OR length({cell}) > {MAX_DIMENSION})"
    else:
        dimension, odd = _literal(mapping.constants.get("dimension", "")), "false"
    keys = [
        f"{ids['entity']} AS entity_id",
        f"{ids['scenario']} AS scenario_id",
        f"{ids['series']} AS series_id",
    ]
    _group(
        cursor,
        tables.raw,
        OPERATIONAL_SPEC.table,
        "date, entity_id, scenario_id, series_id, dimension, SUM(v) AS value, SUM(n) AS count, "
        "count(*) AS rows, count(v) AS read, count(n) AS counted, max(abs(v)) AS largest, "
        "max(n) AS most, bool_or(odd) AS odd, sum(moved) AS moved",
        f"d.stored_day AS date, {', '.join(keys)}, {dimension} AS dimension, {value} AS v, "
        f"{count} AS n, COALESCE({odd}, false) AS odd, d.moved AS moved",
        joins,
        blank,
    )
    cursor.execute(
        f"""SELECT count(*) FILTER (WHERE rows <> read OR rows <> counted OR largest >= {limit}
                OR most > {MAX_COUNT} OR odd OR date IS NULL OR entity_id IS NULL
                OR scenario_id IS NULL OR series_id IS NULL),
            count(*) FILTER (WHERE abs(value) >= {limit}), COALESCE(sum(rows), 0),
            COALESCE(sum(moved), 0)
        FROM {OPERATIONAL_SPEC.table}"""  # noqa: S608
    )
    unread, too_big, rows, moved = cursor.fetchone()
    if moved and not unread and not too_big:
        report.warn(moved_days_warning(int(moved), mapping.period_rule))
    return unread, too_big, rows


def _warn_split_balances(cursor, report: Report, balance_accounts: list[int]) -> None:
    """The row path's warning about balances dated on two days of one period."""
    cursor.execute(
        f"""SELECT count(*) OVER (), e.code, a.code, s.period, s.first_day, s.last_day
        FROM {FINANCIAL_SPEC.table} s
        JOIN {Entity._meta.db_table} e ON e.id = s.entity_id
        JOIN {Account._meta.db_table} a ON a.id = s.account_id
        WHERE s.account_id = ANY(%s) AND s.first_day <> s.last_day
        ORDER BY s.period, e.code, a.code LIMIT 1""",  # noqa: S608 - our own table names
        [balance_accounts],
    )
    found = cursor.fetchone()
    if found:
        keys, entity, account, period, first, last = found
        codes = {"entity": entity, "account": account}
        report.warn(split_balance_warning(keys, codes, first, last, period))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _code_table(cursor, name: str, codes: dict[str, int]) -> None:
    cursor.execute(f"CREATE UNLOGGED TABLE {name} (code text PRIMARY KEY, id bigint)")
    if codes:
        rows = list(codes.items())
        cursor.execute(
            f"INSERT INTO {name} (code, id) SELECT * FROM unnest(%s::text[], %s::bigint[])",  # noqa: S608
            [[code for code, _pk in rows], [pk for _code, pk in rows]],
        )
    cursor.execute(f"ANALYZE {name}")


def _date_table(cursor, tables: _WorkTables, mapping: MappingConfig, cell: str, blank: str) -> None:
    """Parse each distinct date text once, in Python, exactly as the row path does."""
    cursor.execute(
        f"SELECT DISTINCT {cell} FROM {tables.raw} r WHERE NOT ({blank}) LIMIT {MAX_DATE_TEXTS + 1}"  # noqa: S608
    )
    texts = [text for (text,) in cursor.fetchall()]
    if len(texts) > MAX_DATE_TEXTS:
        raise GiveWay(f"more than {MAX_DATE_TEXTS:,} distinct date texts")
    period_column = mapping.time_field == "period"
    parse = date_parser(mapping.date_format, period=period_column)
    periods: list[date] = []
    days: list[date] = []
    stored: list[date] = []  # an operational fact's day, inside its period
    for text in texts:
        if text is None:
            raise GiveWay("a row has no date")
        try:
            day = parse(text)
        except CellError as error:
            raise GiveWay(f"the date {text!r} is {error}") from None
        period = day if period_column else period_for_date(day, mapping.period_rule)
        periods.append(period)
        days.append(day)
        if month_start(day) == period:
            stored.append(day)
        else:  # as RowMapper stores it
            stored.append(period if day < period else month_end(period))
    dates = tables.dates
    cursor.execute(
        f"CREATE UNLOGGED TABLE {dates} (raw text PRIMARY KEY, period date, day date, "
        "stored_day date, moved integer)"
    )
    cursor.execute(
        f"INSERT INTO {dates} (raw, period, day, stored_day, moved) "  # noqa: S608
        "SELECT raw, period, day, stored_day, (stored_day <> day)::integer "
        "FROM unnest(%s::text[], %s::date[], %s::date[], %s::date[]) AS t (raw, period, day, stored_day)",
        [texts, periods, days, stored],
    )
    cursor.execute(f"ANALYZE {dates}")


def _amount_sql(cell: str, mapping: MappingConfig, places: int) -> str:
    """The number as numeric, NULL when the text is not in a plain form read alike by both
    paths or has more than ``places`` decimals (but for trailing zeros)."""
    decimal, thousands = mapping.decimal_separator, mapping.thousands_separator
    pattern = amount_pattern(mapping, places)
    text = cell
    if thousands:
        text = f"replace({text}, {_literal(thousands)}, '')"
    if decimal != ".":
        text = f"replace({text}, {_literal(decimal)}, '.')"
    return f"CASE WHEN {cell} ~ {_literal(pattern)} THEN ({text})::numeric END"


def _plain(stream: IO[bytes]) -> bool:
    """Whether PostgreSQL's CSV parser splits this file exactly as Python's ``csv`` module
    (the row path) does: no quote character anywhere (the two read a quote inside a field
    differently), no line starting with a backslash and a period (COPY's end-of-data mark),
    and no line anywhere near the row path's cell limit (it refuses longer cells; COPY would
    not). One pass over the bytes at the speed of ``bytes.find``; the stream is rewound."""
    half = CSV_FIELD_LIMIT // 2
    last, run, plain = b"\n", 0, True  # run: bytes since the last newline
    while plain and (chunk := stream.read(PLAIN_SCAN_CHUNK)):
        if b'"' in chunk or b"\n\\." in last + chunk[:2] or b"\n\\." in chunk:
            plain = False
            break
        first = chunk.find(b"\n")
        if first < 0:
            run += len(chunk)
        else:
            # A line of CSV_FIELD_LIMIT bytes or more holds a whole window of half that size,
            # on this grid, without a newline (a shorter line may be taken for a long one).
            long_inside = any(
                chunk.find(b"\n", start, start + half) < 0
                for start in range(first, len(chunk) - half + 1, half)
            )
            plain = not long_inside and run + first < half
            run = len(chunk) - chunk.rfind(b"\n") - 1
        plain = plain and run < half
        last = chunk[-1:]
    stream.seek(0)
    return plain


def _rewritten(rows: Iterator[tuple[int, list]], width: int) -> CopyStream:
    """The rows as the row path reads them, written again as CSV with every cell quoted, for
    COPY: one parser (Python's) decides what the cells are. A row with a different number of
    cells than the header (but for empty cells after the last column) makes the bulk path
    give way: the row path reports it."""

    def cells() -> Iterator[list]:
        for number, row in rows:
            if len(row) != width:
                if len(row) < width or any(cell not in (None, "") for cell in row[width:]):
                    raise GiveWay(f"row {number} has {len(row)} cells for {width} columns")
                row = row[:width]
            yield row

    def blocks() -> Iterator[str]:  # CSV text of REWRITE_ROWS_PER_READ rows at a time
        source = cells()
        while batch := list(itertools.islice(source, REWRITE_ROWS_PER_READ)):
            buffer = io.StringIO()
            csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(batch)
            yield buffer.getvalue()

    return CopyStream(blocks(), per_read=1)


class _without_bom:  # noqa: N801 - a small file wrapper
    """The stream without a leading UTF-8 byte order mark (the row path drops it too)."""

    def __init__(self, stream: IO[bytes]):
        self._stream, self._first = stream, True

    def read(self, size: int = -1) -> bytes:
        chunk = self._stream.read(size)
        if self._first:
            self._first = False
            if chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]
        return chunk

    readline = read
