"""Loader for the AdventureWorksDW export (pipe-delimited, header-less files; see
``../shared/data/adventureworks-dw/SOURCE.md``).

The data source's ``config`` is ``{"path": DIR, "period_rule": RULE}``; RULE is a
``finops.periods.PeriodRule`` value. ``load`` reads every file, validates every row and only
then writes: dimensions are upserted on their codes, facts go through ``finops.loading``. It
runs inside the transaction that ``finops.refresh`` opens, so a rejected or failed load leaves
the database as it was. ``read_export`` and ``export_warnings`` are pure (no database) and are
also what ``manage.py import_adventureworks --preview`` shows.

Decisions, each a judgement the data leaves open:

- Periods. Booking dates drift around month ends (2010-12-29, 2011-01-29, 2011-03-01, ...), so
  a finance row's period is ``period_for_date(Date, rule)`` with the rule chosen on the source.
  Nothing in the data says which rule is right; the analyst chooses and can preview it.
- The export is a full snapshot: a load replaces all of this source's facts. Facts of this
  source in scenario-periods the export no longer covers (after a change of period rule, say)
  are deleted too, with a warning; ``finops.loading`` only replaces the periods a load covers.
- Rows that share a natural key in one period (the year-end entries booked a day early) are
  added up by ``finops.loading``; both are real.
- Accounts: code = AccountCodeAlternateKey, sort_order = AccountKey, parent by
  ParentAccountKey, Operator ``+``/``-``/``~`` gives rollup_sign 1/-1/0. AccountType maps to
  (type, time behaviour): Assets -> asset/balance; Liabilities -> liability/balance, except
  that "Owners Equity" (code 300) and its whole subtree are equity/balance (AdventureWorks types
  equity as Liabilities); Revenue -> revenue/flow; Expenditures -> expense/flow (so Returns and
  Discounts, typed Expenditures under Net Sales, are expenses that roll up with ``-``);
  Balances -> statistical/balance; Flow and Statistical -> statistical/flow. The one account
  without an AccountType, the root "Balance Sheet" (Assets minus Liabilities and Owners
  Equity, a check total), is statistical and takes the time behaviour of its first child
  (balance). ValueType Units -> unit "units", else currency.
- Entities: code = slug of OrganizationName ("adventureworks-cycle", "usa-operations",
  "canadian-division", ...): readable in URLs, formulas and the admin. ownership_pct =
  PercentageOfOwnership x 100; currency from DimCurrency (CurrencyKey -> CurrencyAlternateKey).
  Parents may come after their children in the file; parents are set in a second pass.
- Departments: code = slug of DepartmentGroupName. Side: Executive General and Administration
  -> finance; Inventory Management, Manufacturing, Quality Assurance -> operations; Research and
  Development, Sales and Marketing, Corporate and any other -> other.
- Scenarios: code = slug of ScenarioName ("actual", "budget", "forecast"), the same codes the
  demo company uses, so both sources share one scenario list; an existing scenario is reused
  as it is.
- Re-runs: the tree structure and the facts about an organization come from the file every
  time (parent, sort order, currency, ownership). Names, account type, time behaviour, unit,
  roll-up sign and department side are set when a row is created and then left to the analyst
  (for instance to subtract "Allowance for Bad Debt"); when the file disagrees with such a kept
  value the load says so in a warning. Dimensions no longer in the file are kept (facts
  protect them).
- Currency: amounts stay in each organization's local currency. FactCurrencyRate is daily and
  gives the value of one unit of the currency in US dollars (GBP 1.62, JPY 0.0095, SAR 0.267 =
  1 / 3.75, ARS 1.0 at its 2001 peg), the direction ``CurrencyRate`` uses. Rates go into
  ``CurrencyRate`` by calendar month: rates carry exact dates with no drift to correct, so the
  day's month is right whatever rule the finance periods use. average_rate = mean of the
  month's daily AverageRate, end_rate = EndOfDayRate on the month's last day in the file, both
  rounded to 10 decimal places (the column's precision).
- Call centre: FactCallCenter goes to operational facts on the root organization
  ("adventureworks-cycle"): the data does not say which division runs the call centre, so it
  is not attributed to one. Scenario actual, date = the row's date, dimension =
  "WageType/Shift". Series (created if missing, then left to the analyst): calls_offered,
  automatic_responses, phone_orders, issues_raised (value per shift, count 1); issue_minutes (value =
  AverageTimePerIssue x IssuesRaised, count = IssuesRaised, so value / count is the exact
  average minutes per issue at any grain); calls_abandoned (value = ServiceGrade x Calls, count
  = Calls, so value / count is the abandonment rate); operators (TotalOperators, count 1: a
  flow of operator-shifts).
- Validation, before anything is written: every file present, UTF-8 and not empty; every row
  with its file's number of columns; whole numbers, decimals parsed from the text (amounts
  with at most 4 decimal places, never rounded), ISO dates that agree with their DateKey, keys
  that exist in their dimension file, trees without unknown parents or cycles. All problems
  are reported together (ImportRejected, each with file, row, column and value).
- Warnings (``export_warnings``): two or more booking dates in one period (which dates, how many
  rows, how many keys are added up); a partial period, one with fewer rows than
  ``PARTIAL_PERIOD_SHARE`` (10 %) of its scenario's median rows per period (the last period,
  which holds only the 33 year-end rows); months without rows between a scenario's first and
  last period (what calendar months do to this data); a scenario without rows (Forecast);
  "Allowance for Bad Debt" adding to Current Assets; the calculated member Average Unit Price;
  the currencies in play; rate months with missing days; call-centre rows whose operator counts
  disagree, missing days, and no overlap with the finance periods.
- Not loaded: FactSalesQuota (per-employee quarterly quotas with no employee dimension in
  this export) and DimDate (dates are parsed from the facts' own Date column, which must
  agree with their DateKey).
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.db import models
from django.utils.text import slugify

from finops.errors import ImportRejected, RowError
from finops.loading import LoadResult, delete_facts_outside, load_financial_facts, load_operational_facts
from finops.models import (
    Account,
    CurrencyRate,
    DataSource,
    Department,
    Entity,
    FinancialFact,
    OperationalFact,
    OperationalSeries,
    Scenario,
    code_validator,
)
from finops.periods import PeriodRule, days_in_month, month_range, period_for_date
from finops.sources import Report

DEFAULT_PERIOD_RULE = PeriodRule.NEAREST_MONTH_START
# A period with fewer rows than this share of the scenario's median rows per period is partial.
PARTIAL_PERIOD_SHARE = 0.10
MAX_FILE_BYTES = 200 * 1024 * 1024
MONEY_PLACES = 4
MONEY_INTEGER_DIGITS = 16  # FinancialFact.amount: 20 digits, 4 after the point
RATE_QUANTUM = Decimal("1e-10")  # CurrencyRate: 10 decimal places
EQUITY_ROOT_CODE = "300"  # "Owners Equity"
CALL_COUNT_COLUMNS = (
    "LevelOneOperators",
    "LevelTwoOperators",
    "TotalOperators",
    "Calls",
    "AutomaticResponses",
    "Orders",
    "IssuesRaised",
)

COLUMNS: dict[str, tuple[str, ...]] = {
    "DimAccount.csv": (
        "AccountKey",
        "ParentAccountKey",
        "AccountCodeAlternateKey",
        "ParentAccountCodeAlternateKey",
        "AccountDescription",
        "AccountType",
        "Operator",
        "CustomMembers",
        "ValueType",
        "CustomMemberOptions",
    ),
    "DimOrganization.csv": (
        "OrganizationKey",
        "ParentOrganizationKey",
        "PercentageOfOwnership",
        "OrganizationName",
        "CurrencyKey",
    ),
    "DimDepartmentGroup.csv": ("DepartmentGroupKey", "ParentDepartmentGroupKey", "DepartmentGroupName"),
    "DimScenario.csv": ("ScenarioKey", "ScenarioName"),
    "DimCurrency.csv": ("CurrencyKey", "CurrencyAlternateKey", "CurrencyName"),
    "FactFinance.csv": (
        "FinanceKey",
        "DateKey",
        "OrganizationKey",
        "DepartmentGroupKey",
        "ScenarioKey",
        "AccountKey",
        "Amount",
        "Date",
    ),
    "FactCurrencyRate.csv": ("CurrencyKey", "DateKey", "AverageRate", "EndOfDayRate", "Date"),
    "FactCallCenter.csv": (
        "FactCallCenterID",
        "DateKey",
        "WageType",
        "Shift",
        "LevelOneOperators",
        "LevelTwoOperators",
        "TotalOperators",
        "Calls",
        "AutomaticResponses",
        "Orders",
        "IssuesRaised",
        "AverageTimePerIssue",
        "ServiceGrade",
        "Date",
    ),
}

ACCOUNT_TYPES: dict[str, tuple[str, str]] = {
    "Assets": (Account.Type.ASSET, Account.TimeBehaviour.BALANCE),
    "Liabilities": (Account.Type.LIABILITY, Account.TimeBehaviour.BALANCE),
    "Revenue": (Account.Type.REVENUE, Account.TimeBehaviour.FLOW),
    "Expenditures": (Account.Type.EXPENSE, Account.TimeBehaviour.FLOW),
    "Balances": (Account.Type.STATISTICAL, Account.TimeBehaviour.BALANCE),
    "Flow": (Account.Type.STATISTICAL, Account.TimeBehaviour.FLOW),
    "Statistical": (Account.Type.STATISTICAL, Account.TimeBehaviour.FLOW),
}
OPERATORS = {"+": 1, "-": -1, "~": 0}
VALUE_TYPES = {"Currency": Account.Unit.CURRENCY, "Units": Account.Unit.UNITS}
DEPARTMENT_SIDES = {
    "Executive General and Administration": Department.Side.FINANCE,
    "Inventory Management": Department.Side.OPERATIONS,
    "Manufacturing": Department.Side.OPERATIONS,
    "Quality Assurance": Department.Side.OPERATIONS,
}
SCENARIO_KINDS = {
    "actual": Scenario.Kind.ACTUAL,
    "budget": Scenario.Kind.BUDGET,
    "forecast": Scenario.Kind.FORECAST,
}


@dataclass(frozen=True, slots=True)
class CallSeries:
    code: str
    name: str
    unit: str
    description: str
    value: Callable[[CallRow], Decimal]
    count: Callable[[CallRow], int]


# --- what the files hold, once parsed and validated ---------------------------------------


@dataclass(frozen=True, slots=True)
class AccountRow:
    key: int
    parent_key: int | None
    code: str
    name: str
    account_type: str
    time_behaviour: str
    rollup_sign: int
    unit: str
    custom_members: str


@dataclass(frozen=True, slots=True)
class OrganizationRow:
    key: int
    parent_key: int | None
    code: str
    name: str
    ownership_pct: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class DepartmentRow:
    key: int
    parent_key: int | None
    code: str
    name: str
    side: str


@dataclass(frozen=True, slots=True)
class ScenarioRow:
    key: int
    code: str
    name: str
    kind: str


@dataclass(frozen=True, slots=True)
class FinanceRow:
    line: int
    day: date
    organization: int
    department: int
    scenario: int
    account: int
    amount: Decimal


@dataclass(frozen=True, slots=True)
class RateRow:
    currency: str
    day: date
    average: Decimal
    end: Decimal


@dataclass(frozen=True, slots=True)
class CallRow:
    line: int
    day: date
    wage_type: str
    shift: str
    level_one: int
    level_two: int
    total_operators: int
    calls: int
    automatic_responses: int
    orders: int
    issues_raised: int
    average_time_per_issue: Decimal
    service_grade: Decimal


@dataclass
class Export:
    """Every file of the export, parsed and validated; dimension dicts are keyed by AW keys."""

    folder: Path
    accounts: dict[int, AccountRow] = field(default_factory=dict)
    organizations: dict[int, OrganizationRow] = field(default_factory=dict)
    departments: dict[int, DepartmentRow] = field(default_factory=dict)
    scenarios: dict[int, ScenarioRow] = field(default_factory=dict)
    finance: list[FinanceRow] = field(default_factory=list)
    rates: list[RateRow] = field(default_factory=list)
    calls: list[CallRow] = field(default_factory=list)

    def call_centre_organization(self) -> OrganizationRow:
        """The root of the organization tree (the lowest key if there were several)."""
        return min(
            (row for row in self.organizations.values() if row.parent_key is None), key=lambda r: r.key
        )


CALL_SERIES: tuple[CallSeries, ...] = (
    CallSeries(
        "calls_offered",
        "Calls received",
        "calls",
        "Calls per shift; count = shifts.",
        lambda r: Decimal(r.calls),
        lambda r: 1,
    ),
    CallSeries(
        "automatic_responses",
        "Automatic responses",
        "calls",
        "Calls answered automatically per shift; count = shifts.",
        lambda r: Decimal(r.automatic_responses),
        lambda r: 1,
    ),
    CallSeries(
        "phone_orders",
        "Orders taken by phone",
        "orders",
        "Orders per shift; count = shifts.",
        lambda r: Decimal(r.orders),
        lambda r: 1,
    ),
    CallSeries(
        "issues_raised",
        "Issues raised",
        "issues",
        "Issues raised per shift; count = shifts.",
        lambda r: Decimal(r.issues_raised),
        lambda r: 1,
    ),
    CallSeries(
        "issue_minutes",
        "Minutes spent on issues",
        "minutes",
        "AverageTimePerIssue x IssuesRaised; count = issues raised, so value / count is the "
        "average minutes per issue at any grain.",
        lambda r: r.average_time_per_issue * r.issues_raised,
        lambda r: r.issues_raised,
    ),
    CallSeries(
        "calls_abandoned",
        "Calls abandoned",
        "calls",
        "ServiceGrade (share of calls abandoned) x Calls; count = calls, so value / count is "
        "the abandonment rate at any grain.",
        lambda r: r.service_grade * r.calls,
        lambda r: r.calls,
    ),
    CallSeries(
        "operators",
        "Operators on shift",
        "operator-shifts",
        "TotalOperators per shift; count = shifts, so value / count is the average staffing.",
        lambda r: Decimal(r.total_operators),
        lambda r: 1,
    ),
)


# --- reading and validating ----------------------------------------------------------------


class _Record:
    """One line of a file, with typed access to its columns that records (never raises) what is wrong."""

    def __init__(self, reader: _Reader, file: str, line: int, fields: dict[str, str]):
        self.errors, self.file_keys = reader.errors, reader.keys[file]
        self.file, self.line, self.fields = file, line, fields
        self.ok = True

    def error(self, column: str, reason: str, value: str | None = None) -> None:
        self.ok = False
        shown = self.fields.get(column, "") if value is None else value
        self.errors.append(RowError(self.file, self.line, column, shown, reason))

    def text(self, column: str, *, required: bool = False) -> str:
        text = self.fields[column].strip()
        if required and not text:
            self.error(column, "empty")
        return text

    def integer(self, column: str, *, optional: bool = False) -> int | None:
        text = self.text(column)
        if not text:
            if not optional:
                self.error(column, "empty; a whole number is required")
            return None
        try:
            return int(text)
        except ValueError:
            self.error(column, "not a whole number")
            return None

    def key(self, column: str, known: set[int], what: str, *, optional: bool = False) -> int | None:
        """An integer key that must be one of ``known`` (not checked when its file could not be read)."""
        value = self.integer(column, optional=optional)
        if value is not None and known and value not in known:
            self.error(column, f"unknown {what} key")
        return value

    def dimension_key(self, column: str) -> int | None:
        """The key of a dimension row, remembered for checking the facts' keys."""
        value = self.integer(column)
        if value is not None:
            self.file_keys.add(value)
        return value

    def number(self, column: str) -> Decimal | None:
        """A decimal parsed from the text itself, never through float."""
        try:
            value = Decimal(self.text(column))
        except InvalidOperation:
            self.error(column, "not a number")
            return None
        if not value.is_finite():
            self.error(column, "not a finite number")
            return None
        return value

    def money(self, column: str) -> Decimal | None:
        value = self.number(column)
        if value is None:
            return None
        if abs(value) >= Decimal(10) ** MONEY_INTEGER_DIGITS:
            self.error(column, f"more than {MONEY_INTEGER_DIGITS} digits before the point")
            return None
        if value != value.quantize(Decimal(1).scaleb(-MONEY_PLACES)):
            self.error(column, f"more than {MONEY_PLACES} decimal places; money is never rounded")
            return None
        return value

    def day(self) -> date | None:
        """The row's Date, which must agree with its DateKey (YYYYMMDD)."""
        try:
            day = date.fromisoformat(self.text("Date"))
        except ValueError:
            self.error("Date", "not a date in the form YYYY-MM-DD")
            return None
        if self.text("DateKey") != f"{day:%Y%m%d}":
            self.error("DateKey", f"does not match Date {day}")
            return None
        return day

    def code(self, column: str, code: str) -> str:
        if not code or len(code) > 40 or not code_validator.regex.match(code):
            self.error(column, "not usable as a code (letters, digits, '_', '-', '.'; 40 at most)")
        return code


class _Reader:
    """Reads the files of one folder and collects every problem instead of stopping at the first."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.errors: list[RowError] = []
        # Every key present in each dimension file, valid row or not: facts are checked against
        # these, so one bad dimension row is one error, not one per fact that uses it.
        self.keys: dict[str, set[int]] = defaultdict(set)

    def records(self, name: str) -> list[_Record]:
        """The file's records that have the right number of columns."""
        columns = COLUMNS[name]
        path = self.folder / name
        if not path.is_file():
            return self._file_error(name, f"file not found in {self.folder}")
        if path.stat().st_size > MAX_FILE_BYTES:
            return self._file_error(name, f"file larger than {MAX_FILE_BYTES // 2**20} MB; refused")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            reason = f"not UTF-8 text (byte 0x{raw[exc.start : exc.end].hex()}); export the file as UTF-8"
            return self._file_error(name, reason, line)
        records = []
        # The export has no quoting: a '|' always separates columns.
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="|", quoting=csv.QUOTE_NONE)
        try:
            for fields in reader:
                if not fields:  # a blank line, such as a trailing one
                    continue
                if len(fields) == len(columns):
                    records.append(
                        _Record(self, name, reader.line_num, dict(zip(columns, fields, strict=True)))
                    )
                else:
                    self._wrong_width(name, reader.line_num, fields, columns)
        except csv.Error as exc:
            return self._file_error(name, f"unreadable line: {exc}", reader.line_num)
        if not records and not any(error.file == name for error in self.errors):
            return self._file_error(name, "the file is empty (no data rows)")
        return records

    def _file_error(self, name: str, reason: str, line: int | None = None) -> list[_Record]:
        self.errors.append(RowError(name, line, None, None, reason))
        return []

    def _wrong_width(self, name: str, line: int, fields: list[str], columns: tuple[str, ...]) -> None:
        shown = "|".join(fields)
        shown = shown if len(shown) <= 120 else shown[:117] + "..."
        if len(fields) < len(columns):
            column, detail = columns[len(fields)], f"{columns[len(fields)]} and after are missing"
        else:
            column, detail = f"extra column {len(columns) + 1}", "too many '|' separators"
        reason = f"expected {len(columns)} columns, found {len(fields)}: {detail}"
        self.errors.append(RowError(name, line, column, shown, reason))

    def check_tree(self, nodes: dict[int, tuple[_Record, int | None]], column: str) -> bool:
        """Every parent exists and no node is its own ancestor; True when the tree is sound."""
        before = len(self.errors)
        for key, (record, parent) in nodes.items():
            if parent is not None and parent not in nodes:
                record.error(column, "unknown parent key")
                continue
            seen = {key}
            while parent is not None and parent in nodes:
                if parent in seen:
                    record.error(column, "the parent chain forms a cycle")
                    break
                seen.add(parent)
                parent = nodes[parent][1]
        return len(self.errors) == before


def _read_currencies(reader: _Reader) -> dict[int, str]:
    currencies: dict[int, str] = {}
    for record in reader.records("DimCurrency.csv"):
        key = record.dimension_key("CurrencyKey")
        code = record.text("CurrencyAlternateKey")
        if len(code) != 3 or not code.isalpha() or not code.isupper():
            record.error("CurrencyAlternateKey", "not a three-letter ISO 4217 code")
        if key in currencies:
            record.error("CurrencyKey", "duplicate key")
        if record.ok:
            currencies[key] = code
    return currencies


def _read_accounts(reader: _Reader) -> dict[int, AccountRow]:
    records: dict[int, _Record] = {}
    for record in reader.records("DimAccount.csv"):
        key = record.dimension_key("AccountKey")
        record.integer("ParentAccountKey", optional=True)
        code = record.code("AccountCodeAlternateKey", record.text("AccountCodeAlternateKey"))
        record.text("AccountDescription", required=True)
        if record.text("AccountType") and record.text("AccountType") not in ACCOUNT_TYPES:
            record.error("AccountType", f"unknown; expected one of {', '.join(ACCOUNT_TYPES)} or empty")
        if record.text("Operator") not in OPERATORS:
            record.error("Operator", "unknown; expected +, - or ~")
        if record.text("ValueType") not in VALUE_TYPES:
            record.error("ValueType", f"unknown; expected {' or '.join(VALUE_TYPES)}")
        if key in records:
            record.error("AccountKey", f"duplicate key (first on row {records[key].line})")
        elif any(other.text("AccountCodeAlternateKey") == code for other in records.values()):
            record.error("AccountCodeAlternateKey", "duplicate code")
        if record.ok:
            records[key] = record

    parents = {key: record.integer("ParentAccountKey", optional=True) for key, record in records.items()}
    if not reader.check_tree(
        {key: (records[key], parent) for key, parent in parents.items()}, "ParentAccountKey"
    ):
        return {}
    code_of = {key: record.text("AccountCodeAlternateKey") for key, record in records.items()}
    for key, record in records.items():
        if parents[key] is not None and record.text("ParentAccountCodeAlternateKey") != code_of[parents[key]]:
            record.error(
                "ParentAccountCodeAlternateKey", f"is not the code of ParentAccountKey {parents[key]}"
            )
    if not all(record.ok for record in records.values()):
        return {}

    children: dict[int, list[int]] = defaultdict(list)
    for key in sorted(records):
        if parents[key] is not None:
            children[parents[key]].append(key)

    def behaviour(key: int) -> str:
        # An account without a type (the "Balance Sheet" root) behaves like its first child.
        if records[key].text("AccountType"):
            return ACCOUNT_TYPES[records[key].text("AccountType")][1]
        return behaviour(children[key][0]) if children[key] else Account.TimeBehaviour.FLOW

    def in_equity(key: int | None) -> bool:
        while key is not None:
            if code_of[key] == EQUITY_ROOT_CODE:
                return True
            key = parents[key]
        return False

    accounts = {}
    for key, record in records.items():
        type_text = record.text("AccountType")
        if not type_text:
            account_type = Account.Type.STATISTICAL
        elif type_text == "Liabilities" and in_equity(key):
            account_type = Account.Type.EQUITY
        else:
            account_type = ACCOUNT_TYPES[type_text][0]
        accounts[key] = AccountRow(
            key=key,
            parent_key=parents[key],
            code=code_of[key],
            name=record.text("AccountDescription"),
            account_type=account_type,
            time_behaviour=behaviour(key),
            rollup_sign=OPERATORS[record.text("Operator")],
            unit=VALUE_TYPES[record.text("ValueType")],
            custom_members=record.text("CustomMembers"),
        )
    return accounts


def _read_organizations(reader: _Reader, currencies: dict[int, str]) -> dict[int, OrganizationRow]:
    organizations: dict[int, OrganizationRow] = {}
    nodes: dict[int, tuple[_Record, int | None]] = {}
    for record in reader.records("DimOrganization.csv"):
        key = record.dimension_key("OrganizationKey")
        parent = record.integer("ParentOrganizationKey", optional=True)
        share = record.number("PercentageOfOwnership")
        if share is not None and not 0 <= share <= 1:
            record.error("PercentageOfOwnership", "not a share between 0 and 1")
        name = record.text("OrganizationName", required=True)
        code = record.code("OrganizationName", slugify(name))
        currency_key = record.key("CurrencyKey", reader.keys["DimCurrency.csv"], "currency")
        if key in organizations:
            record.error("OrganizationKey", f"duplicate key (first on row {nodes[key][0].line})")
        elif any(other.code == code for other in organizations.values()):
            record.error("OrganizationName", "two organizations with this name")
        if record.ok and currencies:
            nodes[key] = (record, parent)
            organizations[key] = OrganizationRow(
                key=key,
                parent_key=parent,
                code=code,
                name=name,
                ownership_pct=(share * 100).quantize(Decimal("0.01")),
                currency=currencies.get(currency_key, ""),  # a bad currency row is reported already
            )
    return organizations if reader.check_tree(nodes, "ParentOrganizationKey") else {}


def _read_departments(reader: _Reader) -> dict[int, DepartmentRow]:
    departments: dict[int, DepartmentRow] = {}
    nodes: dict[int, tuple[_Record, int | None]] = {}
    for record in reader.records("DimDepartmentGroup.csv"):
        key = record.dimension_key("DepartmentGroupKey")
        parent = record.integer("ParentDepartmentGroupKey", optional=True)
        name = record.text("DepartmentGroupName", required=True)
        code = record.code("DepartmentGroupName", slugify(name))
        if key in departments:
            record.error("DepartmentGroupKey", f"duplicate key (first on row {nodes[key][0].line})")
        elif any(other.code == code for other in departments.values()):
            record.error("DepartmentGroupName", "two department groups with this name")
        if record.ok:
            nodes[key] = (record, parent)
            side = DEPARTMENT_SIDES.get(name, Department.Side.OTHER)
            departments[key] = DepartmentRow(key=key, parent_key=parent, code=code, name=name, side=side)
    return departments if reader.check_tree(nodes, "ParentDepartmentGroupKey") else {}


def _read_scenarios(reader: _Reader) -> dict[int, ScenarioRow]:
    scenarios: dict[int, ScenarioRow] = {}
    for record in reader.records("DimScenario.csv"):
        key = record.dimension_key("ScenarioKey")
        name = record.text("ScenarioName", required=True)
        code = record.code("ScenarioName", slugify(name))
        if key in scenarios:
            record.error("ScenarioKey", "duplicate key")
        elif any(other.code == code for other in scenarios.values()):
            record.error("ScenarioName", "two scenarios with this name")
        if record.ok:
            kind = SCENARIO_KINDS.get(code, Scenario.Kind.OTHER)
            scenarios[key] = ScenarioRow(key=key, code=code, name=name, kind=kind)
    return scenarios


def _read_finance(reader: _Reader) -> list[FinanceRow]:
    keys = reader.keys
    rows = []
    for record in reader.records("FactFinance.csv"):
        record.integer("FinanceKey")
        row = FinanceRow(
            line=record.line,
            day=record.day(),
            organization=record.key("OrganizationKey", keys["DimOrganization.csv"], "organization"),
            department=record.key("DepartmentGroupKey", keys["DimDepartmentGroup.csv"], "department group"),
            scenario=record.key("ScenarioKey", keys["DimScenario.csv"], "scenario"),
            account=record.key("AccountKey", keys["DimAccount.csv"], "account"),
            amount=record.money("Amount"),
        )
        if record.ok:
            rows.append(row)
    return rows


def _read_rates(reader: _Reader, currencies: dict[int, str]) -> list[RateRow]:
    rows = []
    seen: dict[tuple[int, date], int] = {}
    for record in reader.records("FactCurrencyRate.csv"):
        key = record.key("CurrencyKey", reader.keys["DimCurrency.csv"], "currency")
        day = record.day()
        average, end = record.number("AverageRate"), record.number("EndOfDayRate")
        for column, value in (("AverageRate", average), ("EndOfDayRate", end)):
            if value is not None and value <= 0:
                record.error(column, "a rate must be positive")
        if (key, day) in seen:
            record.error("Date", f"a second rate for this currency and day (first on row {seen[key, day]})")
        if record.ok and currencies:
            seen[key, day] = record.line
            rows.append(RateRow(currency=currencies.get(key, ""), day=day, average=average, end=end))
    return rows


def _read_calls(reader: _Reader) -> list[CallRow]:
    rows = []
    for record in reader.records("FactCallCenter.csv"):
        record.integer("FactCallCenterID")
        counts = {}
        for column in CALL_COUNT_COLUMNS:
            counts[column] = record.integer(column)
            if counts[column] is not None and counts[column] < 0:
                record.error(column, "a count cannot be negative")
        minutes = record.number("AverageTimePerIssue")
        if minutes is not None and minutes < 0:
            record.error("AverageTimePerIssue", "cannot be negative")
        grade = record.number("ServiceGrade")
        if grade is not None and not 0 <= grade <= 1:
            record.error("ServiceGrade", "a share of calls must be between 0 and 1")
        row = CallRow(
            line=record.line,
            day=record.day(),
            wage_type=record.text("WageType", required=True),
            shift=record.text("Shift", required=True),
            level_one=counts["LevelOneOperators"],
            level_two=counts["LevelTwoOperators"],
            total_operators=counts["TotalOperators"],
            calls=counts["Calls"],
            automatic_responses=counts["AutomaticResponses"],
            orders=counts["Orders"],
            issues_raised=counts["IssuesRaised"],
            average_time_per_issue=minutes,
            service_grade=grade,
        )
        if record.ok:
            rows.append(row)
    return rows


def read_export(folder: Path | str) -> Export:
    """Read and validate every file; raise ImportRejected listing every problem found."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImportRejected([RowError(str(folder), None, None, None, "folder not found")])
    reader = _Reader(folder)
    export = Export(folder=folder)
    currencies = _read_currencies(reader)
    export.accounts = _read_accounts(reader)
    export.organizations = _read_organizations(reader, currencies)
    export.departments = _read_departments(reader)
    export.scenarios = _read_scenarios(reader)
    export.finance = _read_finance(reader)
    export.rates = _read_rates(reader, currencies)
    export.calls = _read_calls(reader)
    if reader.errors:
        raise ImportRejected(reader.errors)
    return export


# --- what the analyst should know: periods, partial months, currencies ----------------------


@dataclass(frozen=True)
class DateMapping:
    day: date
    period: date
    rows_by_scenario: dict[str, int]


def period_by_day(export: Export, rule: PeriodRule | str) -> dict[date, date]:
    """Booking date -> period under ``rule`` for every date of FactFinance (a few dozen dates)."""
    return {day: period_for_date(day, rule) for day in {row.day for row in export.finance}}


def period_mapping(export: Export, rule: PeriodRule | str) -> list[DateMapping]:
    """Each booking date of FactFinance, the period it lands in under ``rule``, and its rows."""
    counts: dict[date, Counter] = defaultdict(Counter)
    for row in export.finance:
        counts[row.day][export.scenarios[row.scenario].code] += 1
    return [DateMapping(day, period_for_date(day, rule), dict(counts[day])) for day in sorted(counts)]


def rows_by_scenario_period(export: Export, rule: PeriodRule | str) -> dict[str, Counter]:
    """Scenario code -> Counter of finance rows per period under ``rule``."""
    result: dict[str, Counter] = defaultdict(Counter)
    for mapping in period_mapping(export, rule):
        for scenario, count in mapping.rows_by_scenario.items():
            result[scenario][mapping.period] += count
    return result


def _month(period: date) -> str:
    return period.strftime("%b %Y")


def _months(periods: Iterable[date]) -> str:
    return ", ".join(map(_month, periods))


def export_warnings(export: Export, rule: PeriodRule | str) -> list[str]:
    """Everything about the export a careful analyst would want to know before trusting it."""
    rule = PeriodRule(rule)
    return [
        *_date_warnings(export, rule),
        *_account_warnings(export),
        *_currency_warnings(export, rule),
        *_call_centre_warnings(export, rule),
    ]


def _date_warnings(export: Export, rule: PeriodRule) -> list[str]:
    warnings = []
    dates_by_period: dict[date, list[DateMapping]] = defaultdict(list)
    for item in period_mapping(export, rule):
        dates_by_period[item.period].append(item)
    period_of = period_by_day(export, rule)
    rows_per_key = Counter(
        (period_of[r.day], r.scenario, r.organization, r.department, r.account) for r in export.finance
    )
    shared_keys = Counter(key[0] for key, count in rows_per_key.items() if count > 1)
    for period, items in sorted(dates_by_period.items()):
        if len(items) > 1:
            dates = ", ".join(f"{item.day} ({sum(item.rows_by_scenario.values()):,} rows)" for item in items)
            warnings.append(
                f"{_month(period)}: {len(items)} booking dates fall in this period under the rule {rule}: "
                f"{dates}. All rows count: {shared_keys[period]:,} account/organization/department "
                "key(s) have more than one row in the period and are added up."
            )

    by_scenario = rows_by_scenario_period(export, rule)
    for scenario in sorted(export.scenarios.values(), key=lambda s: s.key):
        counts = by_scenario.get(scenario.code)
        if not counts:
            warnings.append(
                f"Scenario {scenario.name} is defined in DimScenario.csv but has no rows in "
                "FactFinance.csv; its values will be empty."
            )
            continue
        median = statistics.median(counts.values())
        for period, count in sorted(counts.items()):
            if count < PARTIAL_PERIOD_SHARE * median:
                items = dates_by_period[period]
                days = ", ".join(str(item.day) for item in items if scenario.code in item.rows_by_scenario)
                warnings.append(
                    f"{_month(period)} ({scenario.name}) is a partial period: only {count:,} rows, booked "
                    f"{days}, against a median of {median:,.0f} rows per period for this scenario (partial "
                    f"means below {PARTIAL_PERIOD_SHARE:.0%} of the median). Its totals are not comparable "
                    "with full months."
                )
        first, last = min(counts), max(counts)
        missing = [p for p in month_range(first, last) if p not in counts]
        if missing:
            warnings.append(
                f"{scenario.name}: no rows in {_months(missing)}, although they lie between its first and "
                f"last period ({_month(first)} to {_month(last)}) under the rule {rule}; check the rule."
            )
    return warnings


def _account_warnings(export: Export) -> list[str]:
    warnings = []
    totals = {a.parent_key for a in export.accounts.values() if a.parent_key is not None}
    on_totals = Counter(export.accounts[r.account].code for r in export.finance if r.account in totals)
    if on_totals:
        listed = ", ".join(f"{code} ({count:,} rows)" for code, count in sorted(on_totals.items()))
        warnings.append(f"Facts booked on total (non-leaf) accounts: {listed}; roll-ups add them as well.")
    for account in export.accounts.values():
        if account.name.lower().startswith("allowance") and account.rollup_sign == 1:
            amounts = [r.amount for r in export.finance if r.account == account.key]
            positive = sum(1 for amount in amounts if amount > 0)
            parent = export.accounts.get(account.parent_key)
            if positive and parent:
                warnings.append(
                    f"Account {account.code} {account.name}: {positive:,} of {len(amounts):,} rows are "
                    f"positive and it rolls up with '+', so it adds to {parent.name} although an allowance "
                    "normally reduces it. Loaded as in the source; set its roll-up sign to '-' in the admin "
                    "if it should be subtracted (re-imports keep that choice)."
                )
        if account.custom_members:
            # The cube formula names accounts by AccountKey, e.g. [Account Level 04].&[50].
            formula = re.sub(
                r"\[Account\]\.\[Accounts\]\.\[[^\]]*\]\.&\[(\d+)\]",
                lambda m: _account_label(export, int(m.group(1))),
                account.custom_members,
            )
            warnings.append(
                f"Account {account.code} {account.name} is a calculated member in the source ({formula}); "
                "the export has no facts for it. Define it as a KPI formula."
            )
    return warnings


def _account_label(export: Export, key: int) -> str:
    account = export.accounts.get(key)
    return f"{account.code} {account.name}" if account else f"AccountKey {key}"


def monthly_rates(export: Export) -> dict[tuple[str, date], tuple[Decimal, Decimal, int]]:
    """(currency, calendar month) -> (mean of the daily average rates, end-of-day rate on the
    month's last day in the file, number of days)."""
    months: dict[tuple[str, date], list[RateRow]] = defaultdict(list)
    for rate in export.rates:
        months[rate.currency, rate.day.replace(day=1)].append(rate)
    result = {}
    for key, rates in months.items():
        average = sum((rate.average for rate in rates), Decimal(0)) / len(rates)
        last = max(rates, key=lambda rate: rate.day)
        result[key] = (average.quantize(RATE_QUANTUM), last.end.quantize(RATE_QUANTUM), len(rates))
    return result


def _currency_warnings(export: Export, rule: PeriodRule) -> list[str]:
    warnings = []
    by_currency: dict[str, list[str]] = defaultdict(list)
    for key in sorted({r.organization for r in export.finance}):
        by_currency[export.organizations[key].currency].append(export.organizations[key].name)
    if len(by_currency) > 1:
        listed = "; ".join(
            f"{currency}: {', '.join(names)}" for currency, names in sorted(by_currency.items())
        )
        warnings.append(
            f"Amounts are in each organization's own currency ({listed}). Totals across currencies "
            "need a conversion with the loaded rates; they are never added as they are."
        )
    rates = monthly_rates(export)
    partial: dict[tuple[date, int], list[str]] = defaultdict(list)
    for (currency, month), (_average, _end, days) in sorted(rates.items()):
        if days < days_in_month(month):
            partial[month, days].append(currency)
    for (month, days), currencies in sorted(partial.items()):
        warnings.append(
            f"Currency rates for {_month(month)} rest on {days} of {days_in_month(month)} days "
            f"({', '.join(currencies)}): that month's average rate is partial."
        )
    periods = set(period_by_day(export, rule).values())
    for currency in sorted(set(by_currency) - {"USD"}):
        uncovered = sorted(p for p in periods if (currency, p) not in rates)
        if uncovered:
            warnings.append(
                f"No {currency} rate for {len(uncovered)} finance period(s) ({_months(uncovered)}): "
                f"{currency} amounts in those periods cannot be converted."
            )
    return warnings


def _call_centre_warnings(export: Export, rule: PeriodRule) -> list[str]:
    if not export.calls:
        return []
    warnings = []
    mismatched = [r for r in export.calls if r.level_one + r.level_two != r.total_operators]
    if mismatched:
        listed = ", ".join(
            f"row {r.line} ({r.day} {r.shift}: {r.level_one} + {r.level_two} != {r.total_operators})"
            for r in mismatched
        )
        warnings.append(
            "FactCallCenter: TotalOperators differs from LevelOneOperators + LevelTwoOperators in "
            f"{len(mismatched)} row(s): {listed}. The operators series uses TotalOperators as given."
        )
    days = {r.day for r in export.calls}
    first, last = min(days), max(days)
    months = month_range(first, last)
    absent = [
        date(month.year, month.month, day)
        for month in months
        for day in range(1, days_in_month(month) + 1)
        if date(month.year, month.month, day) not in days
    ]
    if absent:
        shown = ", ".join(map(str, absent[:10])) + (" ..." if len(absent) > 10 else "")
        warnings.append(
            f"FactCallCenter covers {first} to {last} but has no shifts on {len(absent)} day(s) of "
            f"those months ({shown}); its monthly totals are for {len(days)} days."
        )
    finance_periods = set(period_by_day(export, rule).values())
    if finance_periods and not finance_periods.intersection(months):
        warnings.append(
            f"FactCallCenter ({_months(months)}) does not overlap the finance periods "
            f"({_month(min(finance_periods))} to {_month(max(finance_periods))}): no KPI can combine the two."
        )
    return warnings


# --- writing -------------------------------------------------------------------------------


def _sync(
    model: type[models.Model],
    rows: dict[str, dict],
    parents: dict[str, str | None],
    *,
    always: tuple[str, ...],
    kept: tuple[str, ...],
    report: Report,
) -> dict[str, int]:
    """Upsert ``model`` rows on ``code``; return code -> id.

    ``always`` fields and the parent follow the file on every run; ``kept`` fields are set on
    creation and then belong to the analyst (a difference from the file is reported, not applied).
    """
    existing = {obj.code: obj for obj in model.objects.filter(code__in=list(rows))}
    model.objects.bulk_create(
        [model(code=code, **fields) for code, fields in rows.items() if code not in existing]
    )
    objects = {obj.code: obj for obj in model.objects.filter(code__in=list(rows))}
    changed, differences = [], []
    for code, fields in rows.items():
        obj = objects[code]
        dirty = False
        for name in always:
            if getattr(obj, name) != fields[name]:
                setattr(obj, name, fields[name])
                dirty = True
        parent_id = objects[parents[code]].id if parents.get(code) else None
        if obj.parent_id != parent_id:
            obj.parent_id = parent_id
            dirty = True
        if dirty:
            changed.append(obj)
        if code in existing:
            differences += [
                f"{code} {name} is {getattr(obj, name)!r}, the file says {fields[name]!r}"
                for name in kept
                if name != "name" and getattr(obj, name) != fields[name]
            ]
    if changed:
        model.objects.bulk_update(changed, [*always, "parent"])
    if differences:
        report.warn(
            f"{model._meta.verbose_name_plural.capitalize()}: kept as edited in the admin, although the file "
            f"differs: {'; '.join(differences)}."
        )
    return {code: obj.id for code, obj in objects.items()}


def _write_dimensions(export: Export, report: Report) -> dict[str, dict[int, int]]:
    """Upsert every dimension; return AW key -> database id per dimension."""
    accounts = export.accounts
    account_ids = _sync(
        Account,
        {
            a.code: {
                "name": a.name,
                "account_type": a.account_type,
                "time_behaviour": a.time_behaviour,
                "rollup_sign": a.rollup_sign,
                "unit": a.unit,
                "sort_order": a.key,
            }
            for a in accounts.values()
        },
        {a.code: accounts[a.parent_key].code if a.parent_key else None for a in accounts.values()},
        always=("sort_order",),
        kept=("name", "account_type", "time_behaviour", "rollup_sign", "unit"),
        report=report,
    )
    organizations = export.organizations
    entity_ids = _sync(
        Entity,
        {
            o.code: {"name": o.name, "currency": o.currency, "ownership_pct": o.ownership_pct}
            for o in organizations.values()
        },
        {o.code: organizations[o.parent_key].code if o.parent_key else None for o in organizations.values()},
        always=("currency", "ownership_pct"),
        kept=("name",),
        report=report,
    )
    departments = export.departments
    department_ids = _sync(
        Department,
        {d.code: {"name": d.name, "side": d.side} for d in departments.values()},
        {d.code: departments[d.parent_key].code if d.parent_key else None for d in departments.values()},
        always=(),
        kept=("name", "side"),
        report=report,
    )
    scenario_ids = {
        s.key: Scenario.objects.get_or_create(code=s.code, defaults={"name": s.name, "kind": s.kind})[0].id
        for s in export.scenarios.values()
    }
    return {
        "account": {key: account_ids[a.code] for key, a in accounts.items()},
        "entity": {key: entity_ids[o.code] for key, o in organizations.items()},
        "department": {key: department_ids[d.code] for key, d in departments.items()},
        "scenario": scenario_ids,
    }


def _write_rates(source: DataSource, export: Export) -> None:
    """Replace this source's monthly rates with the export's (insert, update, delete)."""
    incoming = monthly_rates(export)
    stored = {(rate.currency, rate.period): rate for rate in CurrencyRate.objects.filter(source=source)}
    new, changed = [], []
    for (currency, period), (average, end, _days) in incoming.items():
        rate = stored.pop((currency, period), None)
        if rate is None:
            new.append(
                CurrencyRate(
                    source=source, currency=currency, period=period, average_rate=average, end_rate=end
                )
            )
        elif rate.average_rate != average or rate.end_rate != end:
            rate.average_rate, rate.end_rate = average, end
            changed.append(rate)
    CurrencyRate.objects.bulk_create(new, batch_size=5000)
    CurrencyRate.objects.bulk_update(changed, ["average_rate", "end_rate"], batch_size=5000)
    CurrencyRate.objects.filter(id__in=[rate.id for rate in stored.values()]).delete()


def _config(source: DataSource) -> tuple[Path, PeriodRule]:
    config = source.config or {}
    where = f"data source {source.slug}"
    if not config.get("path"):
        raise ImportRejected([RowError(where, None, "path", None, "no folder configured")])
    rule = config.get("period_rule") or DEFAULT_PERIOD_RULE
    if rule not in {member.value for member in PeriodRule}:
        choices = ", ".join(PeriodRule)
        raise ImportRejected(
            [RowError(where, None, "period_rule", str(rule), f"unknown rule; use {choices}")]
        )
    return Path(config["path"]), PeriodRule(rule)


def load(source: DataSource, *, report: Report) -> LoadResult:
    """Read, validate and load the export at ``source.config["path"]`` (see the module docstring)."""
    folder, rule = _config(source)
    export = read_export(folder)
    for message in export_warnings(export, rule):
        report.warn(message)

    ids = _write_dimensions(export, report)
    _write_rates(source, export)

    account, entity, department, scenario = ids["account"], ids["entity"], ids["department"], ids["scenario"]
    period_of = period_by_day(export, rule)
    finance = [
        (
            period_of[r.day],
            entity[r.organization],
            department[r.department],
            scenario[r.scenario],
            account[r.account],
            r.amount,
        )
        for r in export.finance
    ]
    result = load_financial_facts(source=source, rows=finance)
    operational = list(_operational_rows(export, entity))
    result.add(load_operational_facts(source=source, rows=operational))

    # The export is a full snapshot: what this source holds outside the periods just loaded
    # (after a change of period rule, say) is gone from the source too.
    stale, months = delete_facts_outside(FinancialFact, source, {(row[3], row[0]) for row in finance})
    stale_operational, operational_months = delete_facts_outside(
        OperationalFact, source, {(row[2], row[0].replace(day=1)) for row in operational}
    )
    if stale or stale_operational:
        gone = months | operational_months
        report.warn(
            f"Deleted {stale + stale_operational:,} fact(s) of this source in {_months(sorted(gone))}, "
            "periods the export no longer covers: the export is a full snapshot (this happens when "
            "the period rule changes)."
        )
        result.rows_deleted += stale + stale_operational
        result.changed_periods |= gone  # the incremental recompute must redo those months
    return result


def _operational_rows(
    export: Export, entity: dict[int, int]
) -> Iterable[tuple[date, int, int, int, str, Decimal, int]]:
    """Seven series per call-centre shift, on the root organization, scenario actual."""
    if not export.calls:
        return
    actual = Scenario.objects.get_or_create(
        code="actual", defaults={"name": "Actual", "kind": Scenario.Kind.ACTUAL}
    )[0].id
    entity_id = entity[export.call_centre_organization().key]
    series_ids = {
        series.code: OperationalSeries.objects.get_or_create(
            code=series.code,
            defaults={"name": series.name, "unit": series.unit, "description": series.description},
        )[0].id
        for series in CALL_SERIES
    }
    for row in export.calls:
        dimension = f"{row.wage_type}/{row.shift}"
        for series in CALL_SERIES:
            yield (
                row.day,
                entity_id,
                actual,
                series_ids[series.code],
                dimension,
                series.value(row),
                series.count(row),
            )
