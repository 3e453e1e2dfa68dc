"""Mapping tabular records onto facts: the layer shared by the file, SQL and HTTP sources.

A connector reads records (rows of a file, of a query, objects of a JSON payload); this module
turns them into rows for ``finops.loading`` and says exactly what is wrong with the others.

The mapping config (a JSON object, stored under ``"mapping"`` in the source's config)::

    {
      "fact_kind": "financial",                 # or "operational"
      "columns": {                              # fact field -> column (or JSON field) name
        "date": "Posting date",                 # or "period": a month column; exactly one
        "entity": "Company", "account": "GL account", "amount": "Amount"
      },
      "constants": {"department": "sales", "scenario": "actual"},  # fixed values
      "date_format": "%d/%m/%Y",                # or "iso" (the default)
      "decimal_separator": ",",                 # "." (default) or ","
      "thousands_separator": ".",               # "" (default), ",", ".", " " or "'"
      "period_rule": "calendar_month",          # or nearest_month_start / nearest_month_end
      "snapshot": false                         # true: the input holds every period of the source
    }

Fields per fact kind (each from a column or a constant, never both):

- financial: ``period`` or ``date``, ``entity``, ``department``, ``account``, ``scenario``,
  ``amount``;
- operational: ``period`` or ``date``, ``entity``, ``series``, ``scenario``, ``value``, and
  optionally ``count`` (default 1) and ``dimension`` (default empty).

``period``, ``date``, ``amount`` and ``value`` always come from a column. Codes are matched
exactly against the stored entities, departments, accounts, series and scenarios; an unknown
code is a problem of its row (with a hint when only the letter case differs). Accounts must be
leaves of the chart (facts are booked on leaves; totals roll up).

Numbers are parsed from their text into ``Decimal`` (never through ``float``) with the
configured separators; thousands separators must group by three. Amounts keep at most 4
decimal places and 16 digits before the point (values: 6 and 14), as the fact columns do;
nothing is rounded, a number that does not fit is a problem. XLSX numeric cells arrive as
binary floats: they are read at Excel's own precision of 15 significant digits.

A date becomes a month by the period rule (``finops.periods.period_for_date``); a ``period``
column names the month itself (``YYYY-MM``, or a date whose calendar month is taken).
Operational facts keep their day; a day that the rule moves into the next month is stored on
that month's first day, one moved into the previous month on its last day.

Rows that share a key in one period add up (both are real). ``RowMapper`` keeps only the sums
per key, so memory grows with the number of distinct keys, not with the rows read. Every
record is validated before anything is written: a caller loads ``mapper.rows()`` only when
``mapper.problems`` is empty.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from finops.errors import ImportRejected, RowError
from finops.loading import LoadResult, delete_facts_outside, load_financial_facts, load_operational_facts
from finops.models import (
    MONEY_DIGITS,
    MONEY_PLACES,
    Account,
    DataSource,
    Department,
    Entity,
    FinancialFact,
    OperationalFact,
    OperationalSeries,
    Scenario,
    code_validator,
)
from finops.periods import PeriodRule, month_end, month_start, period_for_date
from finops.sources import Report

FINANCIAL, OPERATIONAL = "financial", "operational"
FACT_KINDS = (FINANCIAL, OPERATIONAL)
ISO = "iso"
DECIMAL_SEPARATORS = (".", ",")
THOUSANDS_SEPARATORS = ("", ",", ".", " ", "'")
CODE_FIELDS = ("entity", "department", "account", "series", "scenario")
FIELDS = {
    FINANCIAL: ("period", "date", "entity", "department", "account", "scenario", "amount"),
    OPERATIONAL: ("period", "date", "entity", "series", "scenario", "value", "count", "dimension"),
}
REQUIRED = {
    FINANCIAL: ("entity", "department", "account", "scenario", "amount"),
    OPERATIONAL: ("entity", "series", "scenario", "value"),
}
COLUMN_ONLY = ("period", "date", "amount", "value")
DEFAULT_CONSTANTS = {OPERATIONAL: {"count": "1", "dimension": ""}, FINANCIAL: {}}
KEYS = (
    "fact_kind",
    "columns",
    "constants",
    "date_format",
    "decimal_separator",
    "thousands_separator",
    "period_rule",
    "snapshot",
)

# Bounds of the fact columns: DecimalField(20, 4) for amounts, (20, 6) for values.
AMOUNT_PLACES, AMOUNT_INTEGER_DIGITS = MONEY_PLACES, MONEY_DIGITS - MONEY_PLACES
VALUE_PLACES, VALUE_INTEGER_DIGITS = 6, MONEY_DIGITS - 6
MAX_COUNT = 10**15
MAX_DIMENSION = 100
MIN_YEAR, MAX_YEAR = 1900, 2199
MAX_PROBLEMS = 200  # problems kept (and stored on a run); the total is always counted
EXAMPLES_PER_KIND = 5  # the same problem in the same column is listed this often, then counted
_SAMPLE_DAY = date(2024, 11, 23)  # a day whose fields are all distinct, to test a date format


class ConfigInvalid(ValueError):
    """A mapping (or connector) config with problems; ``problems`` lists (field, message)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        listed = "\n".join(f"  - {where}: {message}" for where, message in problems)
        super().__init__(f"The source's configuration is not valid ({len(problems)} problem(s)):\n{listed}")


@dataclass(frozen=True)
class MappingConfig:
    fact_kind: str
    columns: dict[str, str]
    constants: dict[str, str]
    date_format: str = ISO
    decimal_separator: str = "."
    thousands_separator: str = ""
    period_rule: PeriodRule = PeriodRule.CALENDAR_MONTH
    snapshot: bool = False

    @property
    def time_field(self) -> str:
        """``date`` (a day, mapped to a month by the period rule) or ``period`` (the month)."""
        return "date" if "date" in self.columns else "period"

    @property
    def value_field(self) -> str:
        return "amount" if self.fact_kind == FINANCIAL else "value"

    def as_json(self) -> dict:
        return {
            "fact_kind": self.fact_kind,
            "columns": dict(self.columns),
            "constants": dict(self.constants),
            "date_format": self.date_format,
            "decimal_separator": self.decimal_separator,
            "thousands_separator": self.thousands_separator,
            "period_rule": self.period_rule.value,
            "snapshot": self.snapshot,
        }


def validate_config(data: Any) -> MappingConfig:
    """A typed MappingConfig from its JSON form, or ConfigInvalid listing every problem."""
    problems: list[tuple[str, str]] = []

    def bad(where: str, message: str) -> None:
        problems.append((f"mapping.{where}" if where else "mapping", message))

    if not isinstance(data, Mapping):
        raise ConfigInvalid([("mapping", "missing: give the fact kind and the column mapping")])
    for key in data:
        if key not in KEYS:
            bad(str(key), f"unknown setting; use {', '.join(KEYS)}")

    kind = data.get("fact_kind")
    if kind not in FACT_KINDS:
        bad("fact_kind", f"{kind!r} is not a fact kind; use financial or operational")
        kind = None
    columns = _string_dict(data.get("columns", {}), "columns", bad)
    raw_constants = data.get("constants", {})
    if isinstance(raw_constants, Mapping) and isinstance(raw_constants.get("count"), int):
        raw_constants = {**raw_constants, "count": str(raw_constants["count"])}
    constants = _string_dict(raw_constants, "constants", bad, allow_empty=True)

    if kind:
        allowed = FIELDS[kind]
        for name in columns:
            if name not in allowed:
                bad(f"columns.{name}", f"not a field of {kind} facts; use {', '.join(allowed)}")
        for name in constants:
            if name not in allowed:
                bad(f"constants.{name}", f"not a field of {kind} facts; use {', '.join(allowed)}")
            elif name in COLUMN_ONLY:
                bad(f"constants.{name}", "must come from a column, not a fixed value")
            elif name in columns:
                bad(
                    f"constants.{name}",
                    f"{name} is mapped to column {columns[name]!r} too; give one or the other",
                )
        times = [name for name in ("period", "date") if name in columns]
        if not times:
            bad("columns.date", "map a date column (or a period column holding the month)")
        elif len(times) == 2:
            bad("columns.period", "map either a date column or a period column, not both")
        for name in REQUIRED[kind]:
            if name not in columns and name not in constants:
                how = "map a column" if name in COLUMN_ONLY else "map a column or give a fixed value"
                bad(f"columns.{name}", f"{name} is required: {how}")
        constants = {**{k: v for k, v in DEFAULT_CONSTANTS[kind].items() if k not in columns}, **constants}
        for name, value in constants.items():
            is_code = name in CODE_FIELDS and name in allowed
            if is_code and (not value or len(value) > 60 or not code_validator.regex.match(value)):
                bad(f"constants.{name}", f"{value!r} is not a code (letters, digits, '_', '-', '.')")
        if kind == OPERATIONAL and "count" in constants:
            text = constants["count"]
            if not text.isdigit() or not 0 < int(text) <= MAX_COUNT:
                bad("constants.count", f"{text!r} is not a whole number of 1 or more")
        if len(constants.get("dimension", "")) > MAX_DIMENSION:
            bad("constants.dimension", f"longer than {MAX_DIMENSION} characters")

    date_format = data.get("date_format") or ISO
    if not isinstance(date_format, str):
        bad("date_format", "must be text: 'iso' or a pattern such as %d/%m/%Y")
        date_format = ISO
    elif date_format != ISO:
        message = _check_format(
            date_format, "date" if "date" in columns or "period" not in columns else "period"
        )
        if message:
            bad("date_format", message)

    decimal = data.get("decimal_separator", ".")
    if decimal not in DECIMAL_SEPARATORS:
        bad("decimal_separator", f"{decimal!r}: use '.' or ','")
    thousands = data.get("thousands_separator", "") or ""
    if thousands not in THOUSANDS_SEPARATORS:
        bad("thousands_separator", f"{thousands!r}: use none, ',', '.', ' ' or \"'\"")
    elif thousands and thousands == decimal:
        bad("thousands_separator", f"the same as the decimal separator {decimal!r}")

    rule = data.get("period_rule") or PeriodRule.CALENDAR_MONTH.value
    if rule not in {member.value for member in PeriodRule}:
        bad("period_rule", f"{rule!r}: use {', '.join(member.value for member in PeriodRule)}")
        rule = PeriodRule.CALENDAR_MONTH.value
    snapshot = data.get("snapshot", False)
    if not isinstance(snapshot, bool):
        bad("snapshot", "must be true or false")

    if problems:
        raise ConfigInvalid(problems)
    return MappingConfig(
        fact_kind=kind,
        columns=columns,
        constants=constants,
        date_format=date_format,
        decimal_separator=decimal,
        thousands_separator=thousands,
        period_rule=PeriodRule(rule),
        snapshot=snapshot,
    )


def _string_dict(value: Any, where: str, bad, *, allow_empty: bool = False) -> dict[str, str]:
    if not isinstance(value, Mapping):
        bad(where, "must be an object of field names to text")
        return {}
    result = {}
    for name, text in value.items():
        if not isinstance(text, str):
            bad(f"{where}.{name}", f"{text!r} must be text")
        elif not text.strip() and not allow_empty:
            bad(f"{where}.{name}", "empty; name the column or leave the field out")
        else:
            result[str(name)] = text.strip()
    return result


def _check_format(pattern: str, what: str) -> str | None:
    """Why ``pattern`` cannot read a date (or a month), or None when it can."""
    if "%" not in pattern:
        return f"{pattern!r} is not a date pattern; use 'iso' or a pattern such as %d/%m/%Y"
    try:
        text = _SAMPLE_DAY.strftime(pattern)
        parsed = datetime.strptime(text, pattern).date()  # noqa: DTZ007 - a calendar date, no zone
    except ValueError as error:
        return f"{pattern!r} is not a usable pattern ({error})"
    if what == "period":
        if (parsed.year, parsed.month) != (_SAMPLE_DAY.year, _SAMPLE_DAY.month):
            return f"{pattern!r} does not hold a year and a month (use %Y and %m or %b)"
    elif parsed != _SAMPLE_DAY:
        return f"{pattern!r} does not hold a full date (it needs the year, month and day: %Y, %m, %d)"
    return None


# --- the codes the records are matched against ----------------------------------------------


@dataclass
class Lookups:
    """Code -> id of every dimension a record can name (small tables, read once per load)."""

    entity: dict[str, int]
    department: dict[str, int]
    account: dict[str, int]
    series: dict[str, int]
    scenario: dict[str, int]
    parent_accounts: set[str] = field(default_factory=set)
    balance_accounts: set[int] = field(default_factory=set)  # ids of accounts that hold balances

    @classmethod
    def from_db(cls) -> Lookups:
        accounts = dict(Account.objects.values_list("code", "id"))
        parents = set(
            Account.objects.filter(children__isnull=False).values_list("code", flat=True).distinct()
        )
        balances = set(Account.objects.filter(time_behaviour="balance").values_list("id", flat=True))
        return cls(
            entity=dict(Entity.objects.values_list("code", "id")),
            department=dict(Department.objects.values_list("code", "id")),
            account=accounts,
            series=dict(OperationalSeries.objects.values_list("code", "id")),
            scenario=dict(Scenario.objects.values_list("code", "id")),
            parent_accounts=parents,
            balance_accounts=balances,
        )

    def codes(self, name: str) -> dict[str, int]:
        return getattr(self, name)


# --- problems ----------------------------------------------------------------------------------


class Problems:
    """Row-level problems: the first ``limit`` kept, each kind (column and reason) listed a few
    times and then only counted, and the total always known."""

    def __init__(self, file: str, *, limit: int = MAX_PROBLEMS, examples: int = EXAMPLES_PER_KIND):
        self.file, self.limit, self.examples = file, limit, examples
        self.items: list[RowError] = []
        self.total = 0
        self.rows = 0  # rows with at least one problem
        self._last_row: int | None = None
        self._kinds: dict[tuple, int] = {}

    def __bool__(self) -> bool:
        return self.total > 0

    def __len__(self) -> int:
        return self.total

    def add(
        self, row: int | None, column: str | None, value: Any, reason: str, *, kind: tuple | None = None
    ) -> RowError:
        error = RowError(self.file, row, column, _shown(value), reason)
        self.total += 1
        if row is not None and row != self._last_row:
            self.rows += 1
            self._last_row = row
        key = kind if kind is not None else (column, reason)
        seen = self._kinds.get(key, 0)
        self._kinds[key] = seen + 1
        if seen < self.examples and len(self.items) < self.limit:
            self.items.append(error)
        return error

    @property
    def listed(self) -> int:
        return len(self.items)

    def rejected(self) -> ImportRejected:
        """The error that refuses the input, with every problem counted."""
        return ImportRejected(self.as_errors(), rows=self.rows)

    def as_errors(self) -> list[RowError]:
        """The listed problems, then one line saying how many more there were."""
        errors = list(self.items)
        more = self.total - len(self.items)
        if more > 0:
            errors.append(
                RowError(
                    self.file,
                    None,
                    None,
                    None,
                    f"... and {more:,} more problem(s) not listed ({self.total:,} in all, in "
                    f"{self.rows:,} row(s)); the same problem in the same column is listed "
                    f"{self.examples} times at most",
                )
            )
        return errors


def _shown(value: Any) -> str | None:
    if value is None:
        return None
    text = value.isoformat() if isinstance(value, date | datetime | time) else str(value)
    return text if len(text) <= 100 else text[:97] + "..."


# --- parsing one cell ------------------------------------------------------------------------


class CellError(ValueError):
    """Why a cell cannot be used (the message is the reason shown to the user)."""


def _number_parser(decimal: str, thousands: str) -> Callable[[Any], Decimal]:
    d = re.escape(decimal)
    if thousands:
        t = "[ \u00a0\u202f]" if thousands == " " else re.escape(thousands)
        integer = rf"(?:\d{{1,3}}(?:{t}\d{{3}})+|\d+)"
        strip = re.compile(t)
    else:
        integer, strip = r"\d+", None
    pattern = re.compile(rf"(?P<sign>[+-]?)(?P<int>{integer})?(?:{d}(?P<frac>\d+))?")
    scientific = re.compile(r"\d[eE][+-]?\d")
    shown = f"decimal separator '{decimal}', " + (
        f"thousands separator '{thousands}'" if thousands else "no thousands separator"
    )

    def parse(cell: Any) -> Decimal:
        if isinstance(cell, bool):
            raise CellError("a true/false cell, not a number")
        if isinstance(cell, int):
            return Decimal(cell)
        if isinstance(cell, float):
            # An XLSX number: read at Excel's precision (15 significant digits), never as float.
            if cell != cell or cell in (float("inf"), float("-inf")):
                raise CellError("not a finite number")
            return Decimal(format(cell, ".15g"))
        if isinstance(cell, Decimal):
            return cell
        if isinstance(cell, date | datetime | time):
            raise CellError("a date, not a number")
        text = str(cell).strip()
        if not text:
            raise CellError("empty; a number is required")
        negative = False
        if text.startswith("(") and text.endswith(")"):  # accounting negatives: (1,234.50)
            text, negative = text[1:-1].strip(), True
        elif text.endswith("-") and not text.startswith(("-", "+")):  # trailing minus: 1234.50-
            text, negative = text[:-1].strip(), True
        match = pattern.fullmatch(text)
        if not match or not (match["int"] or match["frac"]):
            if scientific.search(text):
                raise CellError("in scientific notation; export the column as a plain number")
            raise CellError(f"not a number in the configured format ({shown})")
        digits = match["int"] or "0"
        if strip is not None:
            digits = strip.sub("", digits)
        value = Decimal(f"{match['sign']}{digits}.{match['frac'] or '0'}")
        return -value if negative else value

    return parse


def _bounded(value: Decimal, places: int, integer_digits: int) -> Decimal:
    if not value.is_finite():
        raise CellError("not a finite number")
    if abs(value) >= Decimal(10) ** integer_digits:
        raise CellError(f"more than {integer_digits} digits before the decimal point")
    exponent = value.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -places:
        raise CellError(f"more than {places} decimal places; amounts are never rounded")
    return value


def date_parser(date_format: str, period: bool) -> Callable[[Any], date]:
    """A function from a cell to a date (the first of its month for a period column)."""
    cache: dict[str, date] = {}

    def from_text(text: str) -> date:
        if date_format == ISO:
            if period and len(text) == 7:
                return date.fromisoformat(text + "-01")
            return date.fromisoformat(text) if len(text) <= 10 else datetime.fromisoformat(text).date()
        return datetime.strptime(text, date_format).date()  # noqa: DTZ007 - a calendar date

    expected = (
        "YYYY-MM or YYYY-MM-DD"
        if period and date_format == ISO
        else ("YYYY-MM-DD" if date_format == ISO else date_format)
    )

    def parse(cell: Any) -> date:
        if isinstance(cell, datetime):
            day = cell.date()
        elif isinstance(cell, date):
            day = cell
        elif isinstance(cell, bool | int | float):
            raise CellError(
                f"a number, not a date (expected {expected}; in Excel, format the cells as dates)"
            )
        else:
            text = str(cell).strip()
            if not text:
                raise CellError(f"empty; a {'period' if period else 'date'} is required")
            day = cache.get(text)
            if day is None:
                try:
                    day = from_text(text)
                except ValueError:
                    raise CellError(f"not a {'month' if period else 'date'} in the form {expected}") from None
                if len(cache) < 10_000:
                    cache[text] = day
        if not MIN_YEAR <= day.year <= MAX_YEAR:
            raise CellError(f"year {day.year} is outside {MIN_YEAR}-{MAX_YEAR}")
        return month_start(day) if period else day

    return parse


def _code_text(cell: Any) -> str:
    """A code as text: Excel stores account 4000 as the number 4000.0."""
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    if cell is None:
        return ""
    return str(cell).strip()


# --- mapping records -------------------------------------------------------------------------


@dataclass
class MappedRow:
    """One record as it would be loaded (or why it would not be): what a preview shows."""

    number: int
    raw: dict[str, Any]  # the mapped columns' cells, by fact field
    period: date | None = None
    day: date | None = None
    codes: dict[str, str] = field(default_factory=dict)
    value: Decimal | None = None
    count: int | None = None
    dimension: str = ""
    problems: list[RowError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class PeriodSummary:
    rows: int = 0
    total: Decimal = Decimal(0)


class RowMapper:
    """Maps records one by one, keeping the problems and the sums per natural key."""

    def __init__(
        self, config: MappingConfig, lookups: Lookups, *, file: str, problems: Problems | None = None
    ):
        self.config, self.lookups, self.file = config, lookups, file
        self.problems = problems or Problems(file)
        self.records = 0
        self.moved_days = 0  # operational rows whose day the period rule moved to another month
        # The first and last day of each balance-account key's rows: a key with rows on more
        # than one day of a period adds them up, so a balance read twice (at the end of one
        # month and the start of the next) is doubled.
        self._balance_days: dict[tuple, tuple[date, date]] = {}
        self.summary: dict[tuple[str, date], PeriodSummary] = {}
        self._sums: dict[tuple, Any] = {}
        self._number = _number_parser(config.decimal_separator, config.thousands_separator)
        self._time = date_parser(config.date_format, period=config.time_field == "period")
        self._index: dict[str, int] | None = None  # fact field -> position, for sequence records
        self._width = 0
        self._constant_ids: dict[str, int] = {}
        self._code_fields = [name for name in CODE_FIELDS if name in FIELDS[config.fact_kind]]
        self._bound = False

    # -- setting up --

    def bind(
        self, header: Sequence[str] | None = None, *, header_row: int | None = None, where: str = "the file"
    ) -> bool:
        """Check the mapped columns against ``header`` (None for records that are dicts) and
        the constants against the stored codes; False (with problems) when nothing can map.
        ``where`` names what holds the columns in a problem ("the file", "the query's result")."""
        ok = True
        if header is not None:
            positions = {str(name).strip().lower(): i for i, name in enumerate(header)}
            self._index, self._width = {}, len(header)
            listed = ", ".join(str(name) for name in header if str(name).strip()) or "no named columns"
            for target, column in self.config.columns.items():
                position = positions.get(column.lower())
                if position is None:
                    ok = False
                    self.problems.add(
                        header_row,
                        column,
                        None,
                        f"column {column!r} (mapped to {target}) is not in {where}; "
                        f"its columns are: {listed}",
                    )
                else:
                    self._index[target] = position
        for name in self._code_fields:
            if name in self.config.constants:
                code = self.config.constants[name]
                found = self.lookups.codes(name).get(code)
                if found is None:
                    ok = False
                    self.problems.add(None, f"{name} (fixed value)", code, self._unknown(name, code))
                elif name == "account" and code in self.lookups.parent_accounts:
                    ok = False
                    self.problems.add(None, "account (fixed value)", code, self._not_leaf(code))
                else:
                    self._constant_ids[name] = found
        self._bound = ok
        return ok

    def _unknown(self, name: str, code: str) -> str:
        what = {"series": "operational series"}.get(name, name)
        reason = f"no {what} with this code"
        folded = {known.lower(): known for known in self.lookups.codes(name)}
        if code.lower() in folded:
            reason += f" (codes are matched exactly: did you mean {folded[code.lower()]!r}?)"
        return reason

    @staticmethod
    def _not_leaf(code: str) -> str:
        return "the account has sub-accounts; facts are booked on leaf accounts only"

    # -- one record --

    def _cell(self, record: Any, target: str) -> Any:
        column = self.config.columns[target]
        if self._index is not None:
            position = self._index[target]
            return record[position] if position < len(record) else None
        if column in record:
            return record[column]
        raise KeyError(column)

    def map(self, number: int, record: Sequence[Any] | Mapping[str, Any]) -> MappedRow:
        """Map one record; its problems are recorded; a good one is added to the sums."""
        if not self._bound:
            raise RuntimeError("call bind() before map()")
        self.records += 1
        config = self.config
        row = MappedRow(number=number, raw={})

        def bad(target: str, value: Any, reason: str, *, kind: tuple | None = None) -> None:
            column = config.columns.get(target, target)
            row.problems.append(self.problems.add(number, column, value, reason, kind=kind))

        if self._index is not None and len(record) != self._width:
            extra = [str(cell) for cell in record[self._width :] if cell not in (None, "")]
            if len(record) < self._width or extra:
                reason = f"{len(record)} cells but the header has {self._width} columns"
                shown = ", ".join(extra) if extra else None
                row.problems.append(self.problems.add(number, None, shown, reason))
                return row

        cells: dict[str, Any] = {}
        for target in config.columns:
            try:
                cells[target] = self._cell(record, target)
            except KeyError:
                bad(target, None, "missing field")
        row.raw = cells

        time_field = config.time_field
        if time_field in cells:
            try:
                parsed = self._time(cells[time_field])
            except CellError as error:
                bad(time_field, cells[time_field], str(error))
            else:
                if time_field == "period":
                    row.period, row.day = parsed, parsed
                else:
                    row.day, row.period = parsed, period_for_date(parsed, config.period_rule)

        ids: dict[str, int] = {}
        for name in self._code_fields:
            if name in self._constant_ids:
                ids[name] = self._constant_ids[name]
                row.codes[name] = config.constants[name]
                continue
            if name not in cells:
                continue
            code = _code_text(cells[name])
            row.codes[name] = code
            if not code:
                bad(name, cells[name], f"empty; a {name} code is required")
                continue
            found = self.lookups.codes(name).get(code)
            if found is None:
                bad(name, code, self._unknown(name, code), kind=(name, "unknown", code))
            elif name == "account" and code in self.lookups.parent_accounts:
                bad(name, code, self._not_leaf(code), kind=(name, "parent", code))
            else:
                ids[name] = found

        value_field = config.value_field
        places, digits = (
            (AMOUNT_PLACES, AMOUNT_INTEGER_DIGITS)
            if value_field == "amount"
            else (VALUE_PLACES, VALUE_INTEGER_DIGITS)
        )
        if value_field in cells:
            try:
                row.value = _bounded(self._number(cells[value_field]), places, digits)
            except CellError as error:
                bad(value_field, cells[value_field], str(error))

        if config.fact_kind == OPERATIONAL:
            if "count" in cells:
                try:
                    count = self._number(cells["count"])
                    if count != count.to_integral_value() or not 0 <= count <= MAX_COUNT:
                        raise CellError("not a whole number of 0 or more")
                    row.count = int(count)
                except CellError as error:
                    bad("count", cells["count"], str(error))
            else:
                row.count = int(config.constants.get("count", "1"))
            if "dimension" in cells:
                row.dimension = _code_text(cells["dimension"])
                if len(row.dimension) > MAX_DIMENSION:
                    bad("dimension", row.dimension, f"longer than {MAX_DIMENSION} characters")
            else:
                row.dimension = config.constants.get("dimension", "")

        if row.ok:
            self._add(row, ids)
        return row

    def _add(self, row: MappedRow, ids: dict[str, int]) -> None:
        summary = self.summary.setdefault((row.codes["scenario"], row.period), PeriodSummary())
        summary.rows += 1
        summary.total += row.value
        if self.config.fact_kind == FINANCIAL:
            key = (row.period, ids["entity"], ids["department"], ids["scenario"], ids["account"])
            self._sums[key] = self._sums.get(key, Decimal(0)) + row.value
            if ids["account"] in self.lookups.balance_accounts and self.config.time_field == "date":
                low, high = self._balance_days.get(key, (row.day, row.day))
                self._balance_days[key] = (min(low, row.day), max(high, row.day))
            return
        day = row.day
        if month_start(day) != row.period:
            self.moved_days += 1
            day = row.period if day < row.period else month_end(row.period)
        key = (day, ids["entity"], ids["scenario"], ids["series"], row.dimension)
        value, count = self._sums.get(key, (Decimal(0), 0))
        self._sums[key] = (value + row.value, count + row.count)

    # -- the result --

    def finish(self) -> None:
        """Check the sums per key (rows that add up must still fit the fact columns)."""
        places, digits = (
            (AMOUNT_PLACES, AMOUNT_INTEGER_DIGITS)
            if self.config.fact_kind == FINANCIAL
            else (VALUE_PLACES, VALUE_INTEGER_DIGITS)
        )
        limit = Decimal(10) ** digits
        for key, total in self._sums.items():
            value = total if self.config.fact_kind == FINANCIAL else total[0]
            if abs(value) >= limit:
                self.problems.add(
                    None,
                    self.config.columns.get(self.config.value_field),
                    value,
                    f"rows with the same key in {key[0]:%Y-%m} add up to more than {digits} digits",
                )

    def rows(self) -> list[tuple]:
        """The rows for ``finops.loading`` (one per natural key, sums added up)."""
        if self.config.fact_kind == FINANCIAL:
            return [(*key, amount) for key, amount in self._sums.items()]
        return [(*key, value, count) for key, (value, count) in self._sums.items()]

    @property
    def keys(self) -> int:
        return len(self._sums)

    def warnings(self) -> list[str]:
        """What a load of these rows should tell the analyst, though nothing stops it."""
        found = []
        if self.moved_days:
            found.append(moved_days_warning(self.moved_days, self.config.period_rule))
        split = [(key, days) for key, days in self._balance_days.items() if days[0] != days[1]]
        if split:
            entity = {pk: code for code, pk in self.lookups.entity.items()}
            account = {pk: code for code, pk in self.lookups.account.items()}
            # The example the bulk path gives too: the earliest period, then by codes.
            key, (first, last) = min(
                split, key=lambda item: (item[0][0], entity[item[0][1]], account[item[0][4]])
            )
            codes = {"entity": entity[key[1]], "account": account[key[4]]}
            found.append(split_balance_warning(len(split), codes, first, last, key[0]))
        return found

    def scope(self) -> set[tuple[int, date]]:
        """The (scenario id, period) pairs the mapped rows cover."""
        if self.config.fact_kind == FINANCIAL:
            return {(key[3], key[0]) for key in self._sums}
        return {(key[2], month_start(key[0])) for key in self._sums}


def moved_days_warning(rows: int, rule: PeriodRule) -> str:
    """The warning for operational rows the period rule moved into another month."""
    return (
        f"{rows:,} row(s) are dated in another month than their period under the rule "
        f"'{rule.label}'; they are stored on the first or last day of their period."
    )


def split_balance_warning(keys: int, codes: dict[str, str], first: date, second: date, period: date) -> str:
    """The warning for balance rows of one key dated on two days of one period."""
    return (
        f"{keys:,} balance(s) have rows dated on more than one day of the same period, which add "
        f"up (for example account {codes.get('account')}, entity {codes.get('entity')}, "
        f"{period:%b %Y}: {first.isoformat()} and {second.isoformat()}). A balance is read once per "
        "period: check the period rule, or whether the extract holds two snapshots of one month."
    )


def map_rows(
    records: Iterable[Sequence[Any] | Mapping[str, Any]],
    config: MappingConfig,
    lookups: Lookups,
    *,
    header: Sequence[str] | None = None,
    file: str = "records",
    first_row: int = 1,
) -> tuple[list[tuple], list[RowError]]:
    """Map every record; return (rows for ``finops.loading``, problems).

    Records are dicts (keyed by column name) or, with ``header``, sequences of cells. Row
    numbers count from ``first_row``. When there is any problem the rows are empty: a load is
    all or nothing.
    """
    mapper = RowMapper(config, lookups, file=file)
    if mapper.bind(header, header_row=first_row - 1 if header is not None else None):
        for number, record in enumerate(records, start=first_row):
            mapper.map(number, record)
        mapper.finish()
    if mapper.problems:
        return [], mapper.problems.as_errors()
    return mapper.rows(), []


def load_mapped(source: DataSource, mapper: RowMapper, *, report: Report) -> LoadResult:
    """Write a mapper's rows as ``source``'s facts, all or nothing: ImportRejected with the
    row-level report if any record had a problem, else its warnings on ``report``.

    Replaces the source's facts in the scenario-periods the rows cover; with ``snapshot`` the
    input is the whole source, so its facts in periods the input no longer has are deleted too.
    """
    if mapper.problems:
        raise mapper.problems.rejected()
    for warning in mapper.warnings():
        report.warn(warning)
    if mapper.config.fact_kind == FINANCIAL:
        result = load_financial_facts(source=source, rows=mapper.rows())
    else:
        result = load_operational_facts(source=source, rows=mapper.rows())
    result.rows_read = mapper.records
    if mapper.config.snapshot:
        remove_outside_scope(source, mapper.config.fact_kind, mapper.scope(), result)
    return result


def remove_outside_scope(
    source: DataSource, fact_kind: str, scope: set[tuple[int, date]], result: LoadResult
) -> None:
    """For a snapshot input (the whole source): delete the source's facts outside ``scope``,
    the (scenario id, period) pairs the input covers, and its facts of the other kind."""
    own, other = (
        (FinancialFact, OperationalFact) if fact_kind == FINANCIAL else (OperationalFact, FinancialFact)
    )
    for model, kept in ((own, scope), (other, set())):
        deleted, months = delete_facts_outside(model, source, kept)
        result.rows_deleted += deleted
        result.changed_periods |= months
