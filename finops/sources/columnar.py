"""The file source's columnar path: a large plain CSV ledger read, checked and grouped by Apache
Arrow on every core of the worker, so that only the grouped facts (one row per natural key, in
the order of the fact table's index) go to PostgreSQL.

``finops.sources.bulk`` tries it first for financial CSV files in UTF-8 with no quote character
(``bulk._plain``). It takes only what the row path (``finops.sources.mapping``) reads alike, and
anything else makes it give way (``GiveWay``) to the bulk path's SQL checks, which in turn give
way to the row path; it never rejects a file itself:

- cells split on the delimiter only, one row per line; a row with another number of cells than
  the header stops it;
- codes match stored codes exactly (accounts: leaves only); an unknown or empty code stops it;
- each distinct date text is parsed once, by the row path's own parser and period rule;
- amounts in the plain forms both other paths read alike (``amount_pattern``: an optional sign,
  digits with the configured thousands grouping, the configured decimal separator), turned into
  the fact column's type without rounding: Arrow refuses a value with more than 16 digits before
  the point or non-zero digits past the fourth decimal.

Rows sharing a key add up, in exact decimals; a sum past the fact column stops it. The key of a
row is one 64-bit number built from the month and the codes' ranks, ordered as the fact table's
natural key (scenario, month, entity, department, account), so one hash grouping and one sort
put the facts in index order.

Memory is bounded: the file is read in segments of ``SEGMENT_BYTES`` (each parsed on every
core), each row kept only as its key and amount (24 bytes), and these are grouped whenever they
pass ``COMPACT_ROWS``: what is held grows with the distinct keys, not with the file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from typing import IO, Any

import numpy as np

from finops.periods import period_for_date
from finops.sources.mapping import (
    AMOUNT_INTEGER_DIGITS,
    AMOUNT_PLACES,
    CellError,
    Lookups,
    MappingConfig,
    date_parser,
    split_balance_warning,
)

try:  # an optional dependency: without it the bulk path's SQL checks read every file
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv
except ImportError:  # pragma: no cover - pyarrow is in requirements.txt
    pa = None

SEGMENT_BYTES = 32 * 1024 * 1024  # of the file parsed at once
BLOCK_BYTES = 4 * 1024 * 1024  # Arrow's unit of parallel parsing inside a segment
COMPACT_ROWS = 2_000_000  # ungrouped rows held (24 bytes each) before they are grouped
MAX_DATE_TEXTS = 200_000  # distinct date texts parsed in Python (by either fast path); more: give way
MONTHS = 12 * 10_000  # month numbers (year * 12 + month - 1) of the years 0 to 9999
CODE_FIELDS = ("scenario", "entity", "department", "account")  # after the month, in key order
KEY_BITS = 62  # the product of the key's ranges must stay under 2**62


class GiveWay(Exception):  # noqa: N818 - not an error: another path takes the file
    """A fast path cannot read this file with certainty: the next one will (the columnar path
    gives way to the bulk path's SQL checks, and those to the row path)."""


def available() -> bool:
    return pa is not None


@dataclass
class Grouped:
    """The file's facts, one per natural key, in the fact table's index order."""

    scenario_id: np.ndarray  # int64
    period: np.ndarray  # datetime64[D]
    entity_id: np.ndarray
    department_id: np.ndarray
    account_id: np.ndarray
    amount: Any  # a pyarrow decimal array (exact)
    rows: int  # data rows read
    scope: set[tuple[int, date]]  # the (scenario id, month) pairs the file covers
    warnings: list[str]

    def __len__(self) -> int:
        return len(self.scenario_id)

    def csv_blocks(self, source_id: int | None = None, rows_per_block: int = 50_000) -> Iterator[bytes]:
        """The facts as CSV for ``COPY``, a block at a time: (source id if given,) scenario id,
        period, entity id, department id, account id, amount."""
        columns: dict[str, Any] = {}
        if source_id is not None:
            columns["source_id"] = pa.array(np.full(len(self), source_id, dtype=np.int64))
        columns |= {
            "scenario_id": pa.array(self.scenario_id),
            "period": pa.array(self.period.astype("datetime64[D]"), type=pa.date32()),
            "entity_id": pa.array(self.entity_id),
            "department_id": pa.array(self.department_id),
            "account_id": pa.array(self.account_id),
            "amount": self.amount,
        }
        yield from _csv(pa.table(columns), rows_per_block)

    def total_blocks(self, rows_per_block: int = 50_000) -> Iterator[bytes]:
        """The facts added up per ledger total, as CSV for ``COPY``: period, entity id,
        scenario id, account id, amount."""
        table = pa.table(
            {
                "period": pa.array(self.period.astype("datetime64[D]"), type=pa.date32()),
                "entity_id": pa.array(self.entity_id),
                "scenario_id": pa.array(self.scenario_id),
                "account_id": pa.array(self.account_id),
                "amount": self.amount.cast(pa.decimal128(38, AMOUNT_PLACES)),
            }
        )
        keys = ["period", "entity_id", "scenario_id", "account_id"]
        totals = table.group_by(keys, use_threads=False).aggregate([("amount", "sum")])
        yield from _csv(totals, rows_per_block)


def _csv(table: Any, rows_per_block: int) -> Iterator[bytes]:
    options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
    for batch in table.to_batches(max_chunksize=rows_per_block):
        out = io.BytesIO()
        pa_csv.write_csv(batch, out, options)
        yield out.getvalue()


def amount_pattern(mapping: MappingConfig, places: int) -> str:
    """The plain forms of a number read alike by every path: an optional sign, digits grouped
    by the configured thousands separator (a space groups as written; the no-break spaces the
    row path also takes there do not match), the configured decimal separator and at most
    ``places`` decimals but for trailing zeros. A regular expression both Arrow (RE2) and
    PostgreSQL read alike (``bulk._amount_sql``)."""
    decimal, thousands = mapping.decimal_separator, mapping.thousands_separator
    integer = f"([0-9]{{1,3}}([{thousands}][0-9]{{3}})+|[0-9]+)" if thousands else "[0-9]+"
    fraction = f"[{decimal}][0-9]{{1,{places}}}0*"
    return f"^[+-]?({integer}({fraction})?|{fraction})$"


def group_financial(
    stream: IO[bytes],
    *,
    mapping: MappingConfig,
    lookups: Lookups,
    header: list[str],
    has_header_line: bool,
    delimiter: str,
) -> Grouped:
    """Read, check and group a financial CSV file (UTF-8, no quote character); GiveWay if
    unsure. ``stream`` is read from its start."""
    if pa is None:
        raise GiveWay("pyarrow is not installed")
    reader = _Reader(mapping, lookups, header)
    try:
        first = True
        for segment in _segments(stream):
            _check_text(segment, first)
            table = _parse(
                segment, len(header), delimiter, reader.types, skip_header=first and has_header_line
            )
            first = False
            reader.add(table)
        return reader.result()
    finally:
        reader.pool.shutdown(cancel_futures=True)


def _segments(stream: IO[bytes]) -> Iterator[memoryview]:
    """The file in pieces of about ``SEGMENT_BYTES``, each ending at a line end."""
    stream.seek(0)
    rest = b""
    while chunk := stream.read(SEGMENT_BYTES):
        data = rest + chunk if rest else chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # no line end yet: a longer piece
            rest = data
            continue
        rest = data[cut:]
        yield memoryview(data)[:cut]
    if rest:
        yield memoryview(rest)


def _check_text(segment: memoryview, first: bool) -> None:
    """What Arrow would not see: a byte that is not UTF-8 in a column the load does not read
    (Arrow checks only the columns it converts), and a byte order mark at the start of a later
    segment (Arrow drops one at the start of any buffer; only the file's first is not data)."""
    try:
        str(segment, "utf-8")
    except UnicodeDecodeError:
        raise GiveWay("the file is not UTF-8 text throughout") from None
    if not first and segment[:3] == b"\xef\xbb\xbf":
        raise GiveWay("a line starts with a byte order mark")


def _parse(
    segment: memoryview, width: int, delimiter: str, types: dict[str, Any], *, skip_header: bool
) -> Any:
    names = [f"c{i}" for i in range(width)]
    try:
        return pa_csv.read_csv(
            pa.BufferReader(pa.py_buffer(segment)),
            read_options=pa_csv.ReadOptions(
                column_names=names, skip_rows=1 if skip_header else 0, block_size=BLOCK_BYTES
            ),
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter, quote_char=False, double_quote=False, ignore_empty_lines=False
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types=types, include_columns=list(types), strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as error:  # a row of another width
        raise GiveWay(f"Arrow cannot read the file: {error}") from None


class _Reader:
    """Rows into (key, amount) pairs, chunk by chunk on every core; grouped when asked."""

    def __init__(self, mapping: MappingConfig, lookups: Lookups, header: list[str]):
        self.mapping = mapping
        position = {name.lower(): i for i, name in enumerate(header)}
        self.column: dict[str, str] = {}
        for field, name in mapping.columns.items():
            if name.lower() not in position:
                raise GiveWay(f"the file has no column {name!r}")
            self.column[field] = f"c{position[name.lower()]}"
        if list(self.column.values()).count(self.column["amount"]) > 1:
            raise GiveWay("the amount's column is also read as a code or a date")
        # Codes and dates repeat: a dictionary of each chunk's texts; amounts as text.
        self.types = {name: pa.dictionary(pa.int32(), pa.string()) for name in self.column.values()}
        self.types[self.column["amount"]] = pa.string()
        self.amount_pattern = amount_pattern(mapping, AMOUNT_PLACES)
        self.amount_type = pa.decimal128(AMOUNT_INTEGER_DIGITS + AMOUNT_PLACES, AMOUNT_PLACES)
        # Each code field: its codes ranked by id (so the key sorts as the ids do).
        self.ids: dict[str, np.ndarray] = {}
        self.rank: dict[str, dict[str, int]] = {}
        self.constant_rank: dict[str, int] = {}
        for field in CODE_FIELDS:
            codes = dict(lookups.codes(field))
            if field == "account":
                codes = {code: pk for code, pk in codes.items() if code not in lookups.parent_accounts}
            ordered = sorted(codes.items(), key=lambda item: item[1])
            self.ids[field] = np.array([pk for _code, pk in ordered] or [0], dtype=np.int64)
            self.rank[field] = {code: i for i, (code, _pk) in enumerate(ordered)}
            if field in mapping.constants:
                code = mapping.constants[field]
                if code not in self.rank[field]:
                    raise GiveWay(f"the fixed {field} {code!r} is not a code the load can use")
                self.constant_rank[field] = self.rank[field][code]
        # The key: ((((scenario * M + month) * E + entity) * D + department) * A + account).
        self.sizes = {"period": MONTHS} | {field: len(self.ids[field]) for field in CODE_FIELDS}
        order = ("scenario", "period", "entity", "department", "account")
        self.multiplier: dict[str, int] = {}
        product = 1
        for field in reversed(order):
            self.multiplier[field] = product
            product *= self.sizes[field]
        if product >= 2**KEY_BITS:
            raise GiveWay("too many codes for one 64-bit key")
        period_column = mapping.time_field == "period"
        self.parse_date = date_parser(mapping.date_format, period=period_column)
        self.period_column = period_column
        self.days_needed = not period_column and bool(lookups.balance_accounts)
        self.balance_accounts = lookups.balance_accounts
        self.dates: dict[str, tuple[int, int]] = {}  # text -> (month number, day ordinal)
        self.keys: list[Any] = []
        self.amounts: list[Any] = []
        self.firsts: list[Any] = []  # each row's day, then a key's earliest (days_needed only)
        self.lasts: list[Any] = []  # and its latest
        self.held = 0
        self.rows = 0
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)

    # --- a segment of rows -----------------------------------------------------------------

    def add(self, table: Any) -> None:
        self.rows += table.num_rows
        chunks = table.column(0).num_chunks
        for key, amount, day in self.pool.map(lambda i: self._chunk(table, i), range(chunks)):
            self.keys.append(key)
            self.amounts.append(amount)
            if day is not None:
                self.firsts.append(day)
                self.lasts.append(day)
            self.held += len(key)
        if self.held > COMPACT_ROWS:
            self._compact()

    def _chunk(self, table: Any, index: int) -> tuple[Any, Any, Any]:
        key = None
        day = None
        months, days = self._dates(table.column(self.column[self.mapping.time_field]).chunk(index))
        key = months * self.multiplier["period"]
        if self.days_needed:
            day = pa.array(days)
        for field in CODE_FIELDS:
            if field in self.constant_rank:
                key += self.constant_rank[field] * self.multiplier[field]
            else:
                key += (
                    self._ranks(field, table.column(self.column[field]).chunk(index)) * self.multiplier[field]
                )
        amount = self._amount(table.column(self.column["amount"]).chunk(index))
        return pa.array(key), amount, day

    def _dates(self, cells: Any) -> tuple[np.ndarray, np.ndarray]:
        texts = cells.dictionary.to_pylist()
        months = np.empty(len(texts), dtype=np.int64)
        days = np.empty(len(texts), dtype=np.int64)
        for i, text in enumerate(texts):
            found = self.dates.get(text)
            if found is None:
                found = self._date(text)
            months[i], days[i] = found
        indices = cells.indices.to_numpy()
        return months[indices], days[indices]

    def _date(self, text: str) -> tuple[int, int]:
        if len(self.dates) >= MAX_DATE_TEXTS:
            raise GiveWay(f"more than {MAX_DATE_TEXTS:,} distinct date texts")
        try:
            day = self.parse_date(text)
        except CellError as error:
            raise GiveWay(f"the date {text!r} is {error}") from None
        period = day if self.period_column else period_for_date(day, self.mapping.period_rule)
        found = (period.year * 12 + period.month - 1, day.toordinal())
        self.dates[text] = found
        return found

    def _ranks(self, field: str, cells: Any) -> np.ndarray:
        rank = self.rank[field]
        codes = cells.dictionary.to_pylist()
        unknown = [code for code in codes if code not in rank]
        if unknown:
            raise GiveWay(f"the {field} {unknown[0]!r} is not a code the load can use")
        ranks = np.array([rank[code] for code in codes], dtype=np.int64)
        return ranks[cells.indices.to_numpy()]

    def _amount(self, cells: Any) -> Any:
        text = cells
        if not len(text):
            return pa.array([], self.amount_type)
        if not pc.all(pc.match_substring_regex(text, self.amount_pattern)).as_py():
            raise GiveWay("an amount is not in a plain form both other paths read alike")
        thousands, decimal = self.mapping.thousands_separator, self.mapping.decimal_separator
        if thousands:
            text = pc.replace_substring(text, thousands, "")
        if decimal != ".":
            text = pc.replace_substring(text, decimal, ".")
        try:
            return pc.cast(text, self.amount_type)
        except pa.ArrowInvalid as error:  # more digits than the fact column holds, unrounded
            raise GiveWay(f"an amount does not fit the fact column: {error}") from None

    # --- grouping --------------------------------------------------------------------------

    def _grouped(self) -> Any:
        columns = {"key": pa.chunked_array(self.keys, pa.int64()), "amount": pa.chunked_array(self.amounts)}
        aggregates = [("amount", "sum")]
        if self.days_needed:
            columns["first"] = pa.chunked_array(self.firsts, pa.int64())
            columns["last"] = pa.chunked_array(self.lasts, pa.int64())
            aggregates += [("first", "min"), ("last", "max")]
        return pa.table(columns).group_by("key").aggregate(aggregates)

    def _compact(self) -> None:
        grouped = self._grouped()
        self.keys = [grouped.column("key").combine_chunks()]
        try:  # a partial sum past the fact column: give way (the other paths say why)
            self.amounts = [grouped.column("amount_sum").combine_chunks().cast(self.amount_type)]
        except pa.ArrowInvalid:
            raise GiveWay("rows sharing a key add up past the fact column") from None
        if self.days_needed:  # the earliest and latest day of a key stand for all of its days
            self.firsts = [grouped.column("first_min").combine_chunks()]
            self.lasts = [grouped.column("last_max").combine_chunks()]
        self.held = sum(len(key) for key in self.keys)

    def result(self) -> Grouped:
        if not self.rows:
            raise GiveWay("the file has no data rows")
        grouped = self._grouped().sort_by("key")
        amount = grouped.column("amount_sum").combine_chunks()
        limit = pa.scalar(10**AMOUNT_INTEGER_DIGITS, pa.decimal128(38, 0))
        if pc.any(pc.greater_equal(pc.abs(amount), limit.cast(amount.type))).as_py():
            raise GiveWay("rows sharing a key add up past the fact column")
        amount = amount.cast(self.amount_type)
        key = grouped.column("key").to_numpy()
        parts = {}
        for field in ("account", "department", "entity", "period", "scenario"):
            key, parts[field] = np.divmod(key, self.sizes[field])
        months = parts["period"]
        period = (months - 1970 * 12).astype("datetime64[M]").astype("datetime64[D]")
        ids = {field: self.ids[field][parts[field]] for field in CODE_FIELDS}
        # The key's (scenario, month) part, once per pair: the keys are sorted.
        pairs = np.unique(grouped.column("key").to_numpy() // self.multiplier["period"])
        scope = {(int(self.ids["scenario"][pair // MONTHS]), _month(int(pair % MONTHS))) for pair in pairs}
        warnings = []
        if self.days_needed:
            warnings = self._split_balances(ids, period, grouped)
        return Grouped(
            scenario_id=ids["scenario"],
            period=period,
            entity_id=ids["entity"],
            department_id=ids["department"],
            account_id=ids["account"],
            amount=amount,
            rows=self.rows,
            scope=scope,
            warnings=warnings,
        )

    def _split_balances(self, ids: dict[str, np.ndarray], period: np.ndarray, grouped: Any) -> list[str]:
        """The row path's warning about balances dated on two days of one period."""
        first = grouped.column("first_min").to_numpy()
        last = grouped.column("last_max").to_numpy()
        split = np.isin(ids["account"], np.array(sorted(self.balance_accounts), dtype=np.int64)) & (
            first != last
        )
        if not split.any():
            return []
        code_of = {
            field: {pk: code for code, pk in self._rank_codes(field)} for field in ("entity", "account")
        }
        found = sorted(
            (
                period[i].astype(date),
                code_of["entity"][int(ids["entity"][i])],
                code_of["account"][int(ids["account"][i])],
                int(i),
            )
            for i in np.flatnonzero(split)
        )[0]
        month, entity, account, i = found
        codes = {"entity": entity, "account": account}
        return [
            split_balance_warning(
                int(split.sum()),
                codes,
                date.fromordinal(int(first[i])),
                date.fromordinal(int(last[i])),
                month,
            )
        ]

    def _rank_codes(self, field: str) -> list[tuple[str, int]]:
        return [(code, int(self.ids[field][rank])) for code, rank in self.rank[field].items()]


def _month(number: int) -> date:
    """The first day of month ``number`` (year * 12 + month - 1)."""
    return date(number // 12, number % 12 + 1, 1)
