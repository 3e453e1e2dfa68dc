"""Benchmark of the metric engine against the quality bars in PRODUCT.md.

Builds a company in its own PostgreSQL database (``finops_bench``, dropped and recreated):
a group of five USD entities, 192 cost centres under four sides, a 44-leaf chart of accounts
covering every standard measure, actual and budget scenarios, 60 months, and operational
series for the operations KPIs. The ledger gets ``--rows`` facts (default 5,000,000), each
a distinct natural key, loaded with COPY (this bench measures recompute, not loading), after
which the ledger totals the loaders keep are built, timed and printed apart as load work. Every
KPI of the standard library is enabled through ``import_definitions``.

Measured in the same run, on the same table, each recompute inside a refresh run recorded as
succeeded (as the nightly refresh does; the definitions are dated long before, and the tables
are vacuumed and checkpointed between steps, as they are between nights). Every timing is the
best of five, as the scan's is (on a shared virtual machine the same one-month recompute took
77 to 126 ms in twelve runs in a row; slowdowns only add, so the fastest run is the measure):
each repetition does the same work from the same state.

- one ``SELECT period, account_id, SUM(amount) ... GROUP BY period, account_id`` (best of 5
  after a warm-up) against a full ``recompute()``, first over an empty value store (every
  value computed and inserted; the store is emptied and the refresh runs forgotten before
  each repetition) and then again with nothing changed: bar <= 1.5 x;
- ``recompute(months=[m])`` after one month's amounts changed (+1 %, again before each
  repetition), for the latest month (the nightly case) and for a month 2.5 years back (a
  restatement), against the full recompute of every KPI (the first run): bar <= 0.1 x. The
  same against the second run is printed for information: that run recomputes no KPI (it
  finds every month as stored), so it is no full recompute to hold the bar against;
- the peak RSS of a fresh process doing a full recompute at a fifth of the rows and at all
  of them: bar, it does not grow with the row count.

A worker keeps the definitions it read (``_Book``) while their fingerprint in the database
stays the same, so the repeated recomputes above read them once. The restated month is also
timed as a worker's first recompute, reading them (for information).

It also prints the engine's fact aggregation alone against the scan (the floor of a full
recompute) and each recompute's steps.

    python tests/bench/bench_engine.py [--rows N] [--keep] [--load-only]

It prints a skip message and exits 0 when DATABASE_URL is not PostgreSQL. At the bars' own
size (5 M rows) it exits 1 when a bar is missed; smaller runs are informational.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BAR_ROWS = 5_000_000
MONTHS = 60
FIRST_MONTH = date(2020, 1, 1)
BENCH_DB = "finops_bench"
BAR_FULL = 1.5  # full recompute / GROUP BY scan
BAR_INCREMENTAL = 0.1  # one-month recompute / full recompute
BAR_MEMORY = 1.10  # peak RSS at N rows / at N/5 rows: flat, within noise
REPEATS = 5  # every timing is the best of this many runs

# --- the company ----------------------------------------------------------------------------

ENTITIES = [  # code, name; every one a child of the group and in USD
    ("BN-US", "Bench North America"),
    ("BN-CA", "Bench Canada"),
    ("BN-MX", "Bench Mexico"),
    ("BN-BR", "Bench Brazil"),
    ("BN-CL", "Bench Chile"),
]
SIDES = [("BN-FIN", "Finance", "finance"), ("BN-OPS", "Operations", "operations")]
SIDES += [("BN-COM", "Commercial", "other"), ("BN-GA", "General and Administration", "other")]
DIVISIONS_PER_SIDE, CENTRES_PER_DIVISION = 6, 8  # 4 x 6 x 8 = 192 cost centres

# code, name, parent, type, roll-up sign, monthly base amount per cost centre (None: a subtotal)
CHART: list[tuple[str, str, str | None, str, int, float | None]] = [
    ("BN-BS", "Balance Sheet", None, "asset", 0, None),
    ("BN-1000", "Assets", "BN-BS", "asset", 1, None),
    ("BN-1100", "Current Assets", "BN-1000", "asset", 1, None),
    ("BN-1110", "Cash and Cash Equivalents", "BN-1100", "asset", 1, 40_000),
    ("BN-1200", "Receivables", "BN-1100", "asset", 1, None),
    ("BN-1210", "Trade Receivables", "BN-1200", "asset", 1, 95_000),
    ("BN-1220", "Allowance for Doubtful Accounts", "BN-1200", "asset", -1, 2_000),
    ("BN-1300", "Inventory", "BN-1100", "asset", 1, None),
    ("BN-1310", "Raw Materials", "BN-1300", "asset", 1, 20_000),
    ("BN-1320", "Work in Progress", "BN-1300", "asset", 1, 8_000),
    ("BN-1330", "Finished Goods", "BN-1300", "asset", 1, 15_000),
    ("BN-1400", "Prepaid Expenses", "BN-1100", "asset", 1, 3_000),
    ("BN-1500", "Non-current Assets", "BN-1000", "asset", 1, None),
    ("BN-1510", "Property, Plant and Equipment", "BN-1500", "asset", 1, 200_000),
    ("BN-1520", "Accumulated Depreciation", "BN-1500", "asset", -1, 60_000),
    ("BN-1600", "Intangible Assets", "BN-1500", "asset", 1, 25_000),
    ("BN-LE", "Liabilities and Equity", "BN-BS", "liability", -1, None),
    ("BN-2000", "Liabilities", "BN-LE", "liability", 1, None),
    ("BN-2100", "Current Liabilities", "BN-2000", "liability", 1, None),
    ("BN-2110", "Accounts Payable", "BN-2100", "liability", 1, 26_000),
    ("BN-2120", "Accrued Expenses", "BN-2100", "liability", 1, 8_000),
    ("BN-2130", "Short-term Borrowings", "BN-2100", "liability", 1, 10_000),
    ("BN-2500", "Non-current Liabilities", "BN-2000", "liability", 1, None),
    ("BN-2510", "Long-term Debt", "BN-2500", "liability", 1, 80_000),
    ("BN-3000", "Equity", "BN-LE", "equity", 1, None),
    ("BN-3100", "Share Capital", "BN-3000", "equity", 1, 50_000),
    ("BN-3200", "Retained Earnings", "BN-3000", "equity", 1, 60_000),
    ("BN-3300", "Current Year Earnings", "BN-3000", "equity", 1, 10_000),
    ("BN-NI", "Net Income", None, "revenue", 1, None),
    ("BN-PBT", "Profit Before Tax", "BN-NI", "revenue", 1, None),
    ("BN-OI", "Operating Income", "BN-PBT", "revenue", 1, None),
    ("BN-GM", "Gross Margin", "BN-OI", "revenue", 1, None),
    ("BN-4000", "Net Sales", "BN-GM", "revenue", 1, None),
    ("BN-4100", "Gross Sales", "BN-4000", "revenue", 1, None),
    ("BN-4110", "Product Sales", "BN-4100", "revenue", 1, 60_000),
    ("BN-4120", "Spare Parts and Service", "BN-4100", "revenue", 1, 8_000),
    ("BN-4130", "Licences and Subscriptions", "BN-4100", "revenue", 1, 3_000),
    ("BN-4200", "Returns and Allowances", "BN-4000", "expense", -1, 1_500),
    ("BN-4300", "Discounts and Rebates", "BN-4000", "expense", -1, 1_200),
    ("BN-5000", "Cost of Sales", "BN-GM", "expense", -1, None),
    ("BN-5100", "Materials", "BN-5000", "expense", 1, 20_000),
    ("BN-5200", "Direct Labour", "BN-5000", "expense", 1, 9_000),
    ("BN-5300", "Manufacturing Overhead", "BN-5000", "expense", 1, 5_000),
    ("BN-5400", "Freight Out", "BN-5000", "expense", 1, 2_000),
    ("BN-5500", "Royalties", "BN-5000", "expense", 1, 800),
    ("BN-6000", "Operating Expenses", "BN-OI", "expense", -1, None),
    ("BN-6100", "Personnel Expenses", "BN-6000", "expense", 1, None),
    ("BN-6110", "Salaries and Wages", "BN-6100", "expense", 1, 7_000),
    ("BN-6120", "Payroll Taxes and Benefits", "BN-6100", "expense", 1, 1_800),
    ("BN-6200", "Sales and Marketing Expenses", "BN-6000", "expense", 1, None),
    ("BN-6210", "Advertising and Trade Shows", "BN-6200", "expense", 1, 1_500),
    ("BN-6220", "Sales Commissions", "BN-6200", "expense", 1, 1_200),
    ("BN-6230", "Travel", "BN-6200", "expense", 1, 600),
    ("BN-6300", "Rent and Facilities", "BN-6000", "expense", 1, 1_500),
    ("BN-6400", "IT and Software", "BN-6000", "expense", 1, 900),
    ("BN-6500", "Professional Fees", "BN-6000", "expense", 1, 500),
    ("BN-6600", "Warehousing", "BN-6000", "expense", 1, 700),
    ("BN-6700", "Recruiting and Training", "BN-6000", "expense", 1, 200),
    ("BN-6800", "Depreciation", "BN-6000", "expense", 1, 1_000),
    ("BN-6900", "Other Operating Expenses", "BN-6000", "expense", 1, 400),
    ("BN-6950", "Insurance", "BN-6000", "expense", 1, 300),
    ("BN-7000", "Net Interest", "BN-PBT", "revenue", 1, None),
    ("BN-7100", "Interest Income", "BN-7000", "revenue", 1, 100),
    ("BN-7200", "Interest Expense", "BN-7000", "expense", -1, 400),
    ("BN-8000", "Income Tax Expense", "BN-NI", "expense", -1, 2_000),
    ("BN-STAT", "Statistical Accounts", None, "statistical", 0, None),
    ("BN-9100", "Headcount", "BN-STAT", "statistical", 0, 5),
]
FLOW_TYPES = {"revenue", "expense"}

# standard measure code -> (account subtree, flow or balance, unit)
ACCOUNT_MEASURES = {
    "net_sales": ("BN-4000", "flow", "currency"),
    "cost_of_sales": ("BN-5000", "flow", "currency"),
    "operating_expenses": ("BN-6000", "flow", "currency"),
    "profit_after_tax": ("BN-NI", "flow", "currency"),
    "receivables": ("BN-1210", "balance", "currency"),
    "inventory": ("BN-1300", "balance", "currency"),
    "payables": ("BN-2110", "balance", "currency"),
    "cash": ("BN-1110", "balance", "currency"),
    "current_assets": ("BN-1100", "balance", "currency"),
    "current_liabilities": ("BN-2100", "balance", "currency"),
    "total_assets": ("BN-1000", "balance", "currency"),
    "employees": ("BN-9100", "balance", "count"),
}
BUDGET_MEASURES = {"budget_net_sales": "BN-4000", "budget_operating_expenses": "BN-6000"}

# series code -> (monthly value per entity, count it is measured over, or None: count = value)
SERIES = {
    "orders": (2_000, None),
    "orders_on_time": (1_840, 2_000),
    "orders_in_full": (1_900, 2_000),
    "orders_otif": (1_780, 2_000),
    "orders_perfect": (1_700, 2_000),
    "delivery_days": (8_400, 2_000),
    "units_shipped": (50_000, 51_000),
    "units_returned": (600, 50_000),
    "units_produced": (52_000, None),
    "units_defective": (900, 52_000),
    "capacity_hours": (4_000, 21),
    "production_hours": (3_400, 21),
    "calls_offered": (9_000, None),
    "calls_answered_in_sla": (7_600, 9_000),
    "calls_abandoned": (350, 9_000),
    "survey_responses": (1_200, None),
    "csat_satisfied": (1_030, 1_200),
    "nps_promoters": (640, 1_200),
    "nps_detractors": (170, 1_200),
}


@dataclass
class Shape:
    source_id: int
    entity_ids: list[int]
    centre_ids: list[int]
    scenario_ids: dict[str, int]
    leaf_ids: list[int]
    leaf_base: np.ndarray  # monthly base amount of each leaf, same order
    leaf_balance: np.ndarray  # True for balance accounts
    departments: int = 0
    pairs: np.ndarray = field(default_factory=lambda: np.empty((0, 2), dtype=np.int64))

    @property
    def cells(self) -> int:  # (scenario, month, entity) combinations
        return len(self.scenario_ids) * MONTHS * len(self.entity_ids)


def months() -> list[date]:
    return [date(FIRST_MONTH.year + i // 12, i % 12 + 1, 1) for i in range(MONTHS)]


# --- database -------------------------------------------------------------------------------


def bench_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def recreate_database(url: str, name: str) -> None:
    import psycopg2

    connection = psycopg2.connect(bench_url(url, "postgres"))
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()


def drop_database(url: str, name: str) -> None:
    import psycopg2

    connection = psycopg2.connect(bench_url(url, "postgres"))
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    connection.close()


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ["FINOPS_ENV"] = "test"
    os.environ["DEBUG"] = "false"  # DEBUG would keep every query in memory
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "finops.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def build_shape() -> Shape:
    from finops.models import Account, DataSource, Department, Entity, OperationalSeries, Scenario

    source = DataSource.objects.create(slug="ledger", name="Bench ledger", kind=DataSource.Kind.FILE)
    group = Entity.objects.create(code="BN", name="Bench Group", currency="USD")
    entities = [
        Entity.objects.create(code=code, name=name, currency="USD", parent=group) for code, name in ENTITIES
    ]
    centres = []
    for side_code, side_name, side in SIDES:
        top = Department.objects.create(code=side_code, name=side_name, side=side)
        for d in range(DIVISIONS_PER_SIDE):
            division = Department.objects.create(
                code=f"{side_code}-{d + 1}", name=f"{side_name} division {d + 1}", parent=top, side=side
            )
            for c in range(CENTRES_PER_DIVISION):
                centres.append(
                    Department.objects.create(
                        code=f"{division.code}-{c + 1:02d}",
                        name=f"{division.name}, cost centre {c + 1}",
                        parent=division,
                        side=side,
                    )
                )
    scenarios = {
        "actual": Scenario.objects.create(code="actual", name="Actual", kind=Scenario.Kind.ACTUAL),
        "budget": Scenario.objects.create(code="budget", name="Budget", kind=Scenario.Kind.BUDGET),
    }
    accounts: dict[str, Account] = {}
    leaves, base, balance = [], [], []
    for order, (code, name, parent, kind, sign, amount) in enumerate(CHART):
        accounts[code] = Account.objects.create(
            code=code,
            name=name,
            parent=accounts[parent] if parent else None,
            account_type=kind,
            time_behaviour="flow" if kind in FLOW_TYPES else "balance",
            rollup_sign=sign,
            unit="units" if kind == "statistical" else "currency",
            sort_order=order,
        )
        if amount is not None:
            leaves.append(accounts[code].pk)
            base.append(amount)
            balance.append(kind not in FLOW_TYPES)
    for code in SERIES:
        OperationalSeries.objects.create(code=code, name=code.replace("_", " ").capitalize())
    return Shape(
        source_id=source.pk,
        entity_ids=[e.pk for e in entities],
        centre_ids=[c.pk for c in centres],
        scenario_ids={code: s.pk for code, s in scenarios.items()},
        leaf_ids=leaves,
        leaf_base=np.array(base, dtype=float),
        leaf_balance=np.array(balance),
        departments=Department.objects.count(),
    )


def define_kpis() -> int:
    """The standard measures mapped onto the bench chart, and every standard library KPI."""
    import yaml

    from kpis.definitions import LIBRARY_DIR, import_definitions
    from kpis.models import KPI

    measures = [
        {
            "code": code,
            "name": code,
            "kind": "account",
            "account": account,
            "time_behaviour": how,
            "unit": unit,
        }
        for code, (account, how, unit) in ACCOUNT_MEASURES.items()
    ]
    measures += [
        {
            "code": code,
            "name": code,
            "kind": "account",
            "account": account,
            "scenario": "budget",
            "time_behaviour": "flow",
        }
        for code, account in BUDGET_MEASURES.items()
    ]
    measures += [
        {"code": code, "name": code, "kind": "series_value", "series": code, "time_behaviour": "flow"}
        for code in SERIES
    ]
    measures.append(
        {
            "code": "delivered_orders",
            "name": "Delivered orders",
            "kind": "series_count",
            "series": "delivery_days",
            "time_behaviour": "flow",
        }
    )
    standard = yaml.safe_load((LIBRARY_DIR / "standard.yaml").read_text())
    for order, row in enumerate(standard["kpis"]):
        row.setdefault("sort_order", order)
    report = import_definitions({"version": 1, "measures": measures, "kpis": standard["kpis"]}, library=True)
    if report.skipped:
        raise SystemExit(f"library KPIs skipped: {report.skipped}")
    return KPI.objects.filter(is_active=True).count()


# --- facts ----------------------------------------------------------------------------------

FACT_COLUMNS = "source_id, period, entity_id, department_id, scenario_id, account_id, amount"


def plan_pairs(shape: Shape, rows: int) -> None:
    """The (cost centre, account) pairs each (scenario, month, entity) books, in a fixed order:
    a load of more rows books more pairs, so a smaller ledger is the start of a larger one."""
    per_cell = -(-rows // shape.cells)
    available = len(shape.centre_ids) * len(shape.leaf_ids)
    if per_cell > available:
        raise SystemExit(f"--rows {rows:,} is more than this company's {available * shape.cells:,} keys")
    rng = np.random.default_rng(11)
    order = rng.permutation(available)
    shape.pairs = np.stack([order // len(shape.leaf_ids), order % len(shape.leaf_ids)], axis=1)


def cell_rows(total: int, cell: int, cells: int) -> int:
    """Rows of cell number ``cell`` when ``total`` rows are spread over ``cells`` cells."""
    return total // cells + (1 if cell < total % cells else 0)


def fact_rows(shape: Shape, previous: int, total: int) -> int:
    """COPY the facts that grow a ledger of ``previous`` rows to ``total`` rows: in every
    (scenario, month, entity) cell, the next pairs of the plan. Returns the rows written."""
    from django.db import connection

    from finops.models import FinancialFact

    table = FinancialFact._meta.db_table
    copy = f"COPY {table} ({FACT_COLUMNS}) FROM STDIN WITH (FORMAT csv)"
    rng = np.random.default_rng(previous)
    centre_weight = np.random.default_rng(3).lognormal(0, 0.5, len(shape.centre_ids))
    entity_weight = np.linspace(1.6, 0.6, len(shape.entity_ids))
    centre_ids, leaf_ids = np.asarray(shape.centre_ids), np.asarray(shape.leaf_ids)
    raw = connection.cursor().cursor  # psycopg2's own cursor, for copy_expert
    written, cell = 0, 0
    for scenario, scenario_id in shape.scenario_ids.items():
        noise = 0.02 if scenario == "budget" else 0.15
        for m, period in enumerate(months()):
            season = 1 + 0.12 * np.sin(2 * np.pi * (m % 12) / 12) + 0.004 * m
            lines = []
            for e, entity_id in enumerate(shape.entity_ids):
                lo, hi = cell_rows(previous, cell, shape.cells), cell_rows(total, cell, shape.cells)
                cell += 1
                centre, leaf = shape.pairs[lo:hi, 0], shape.pairs[lo:hi, 1]
                amount = (
                    shape.leaf_base[leaf]
                    * centre_weight[centre]
                    * entity_weight[e]
                    * np.where(shape.leaf_balance[leaf], 1.0, season)
                    * rng.lognormal(0, noise, len(leaf))
                )
                prefix = f"{shape.source_id},{period.isoformat()},{entity_id},"
                lines.extend(
                    f"{prefix}{dep},{scenario_id},{acc},{amt:.2f}\n"
                    for dep, acc, amt in zip(
                        centre_ids[centre].tolist(), leaf_ids[leaf].tolist(), amount.tolist(), strict=True
                    )
                )
            if lines:
                raw.copy_expert(copy, io.StringIO("".join(lines)))
                written += len(lines)
    return written


def operational_rows(shape: Shape) -> int:
    from django.db import connection

    from finops.models import OperationalFact, OperationalSeries

    series_ids = dict(OperationalSeries.objects.values_list("code", "pk"))
    rng = np.random.default_rng(5)
    lines = []
    for scenario, scenario_id in shape.scenario_ids.items():
        for period in months():
            for e, entity_id in enumerate(shape.entity_ids):
                scale = 1.4 - 0.2 * e
                for code, (value, count) in SERIES.items():
                    noise = 1.0 if scenario == "budget" else rng.lognormal(0, 0.03)
                    amount = round(value * scale * noise, 2)
                    observed = int(count * scale) if count else max(1, int(amount))
                    lines.append(
                        f"{shape.source_id},{period},{period},{entity_id},{scenario_id},"
                        f"{series_ids[code]},,{amount:.2f},{observed}\n"
                    )
    table = OperationalFact._meta.db_table
    columns = "source_id, period, date, entity_id, scenario_id, series_id, dimension, value, count"
    connection.cursor().cursor.copy_expert(
        f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv, FORCE_NOT_NULL (dimension))",
        io.StringIO("".join(lines)),
    )
    return len(lines)


class FactIndexes:
    """Drops the fact table's indexes and foreign keys for a bulk load and puts them back."""

    def __init__(self) -> None:
        from finops.models import FinancialFact

        self.table = FinancialFact._meta.db_table
        self.constraints: list[tuple[str, str]] = []
        self.indexes: list[tuple[str, str]] = []

    def drop(self) -> None:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = %s::regclass AND contype IN ('f', 'u')",
                [self.table],
            )
            self.constraints = cursor.fetchall()
            cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s "
                "AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass)",
                [self.table, self.table],
            )
            self.indexes = cursor.fetchall()
            for name, _ in self.constraints:
                cursor.execute(f'ALTER TABLE {self.table} DROP CONSTRAINT "{name}"')
            for name, _ in self.indexes:
                cursor.execute(f'DROP INDEX "{name}"')

    def restore(self) -> None:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SET maintenance_work_mem = '512MB'")
            for _, definition in self.indexes:
                cursor.execute(definition)
            for name, definition in self.constraints:
                cursor.execute(f'ALTER TABLE {self.table} ADD CONSTRAINT "{name}" {definition}')


def load_ledger(shape: Shape, previous: int, total: int) -> tuple[int, float]:
    from django.db import connection, transaction

    from finops.loading import rebuild_ledger_totals

    started = time.perf_counter()
    indexes = FactIndexes()
    with transaction.atomic():
        indexes.drop()
        written = fact_rows(shape, previous, total)
        indexes.restore()
        # What the loaders keep for the months they change: the ledger totals the engine reads.
        totals_started = time.perf_counter()
        rebuild_ledger_totals()
        TOTALS_SECONDS.append(time.perf_counter() - totals_started)
    settle_tables(connection)
    return written, time.perf_counter() - started


TOTALS_SECONDS: list[float] = []  # building the ledger totals after each bulk load


SETTLED = (
    "finops_financialfact",
    "finops_ledgertotal",
    "finops_operationalfact",
    "kpis_measurevalue",
    "kpis_kpivalue",
)


def settle_tables(connection) -> None:
    """What a database is like between nightly runs: hint bits set, visibility maps and
    statistics up to date, no checkpoint due (else autovacuum and the checkpointer would work
    during the next measurement)."""
    with connection.cursor() as cursor:
        for table in SETTLED:
            cursor.execute(f"VACUUM (ANALYZE) {table}")
        cursor.execute("CHECKPOINT")


# --- measurements ---------------------------------------------------------------------------

BASELINE_SQL = "SELECT period, account_id, SUM(amount) FROM finops_financialfact GROUP BY period, account_id"


def baseline_scan() -> tuple[float, int]:
    """Best of ``REPEATS`` after a warm-up: one GROUP BY month, account over the whole ledger."""
    from django.db import connection

    times, groups = [], 0
    for attempt in range(REPEATS + 1):
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(BASELINE_SQL)
            groups = len(cursor.fetchall())
        if attempt:
            times.append(time.perf_counter() - started)
    return min(times), groups


def aggregation_alone() -> tuple[float, float]:
    """Best of three, alternating: the engine's fact aggregation (the financial GROUP BY by
    month, entity, scenario and account with its measure mapping, and the operational one) and
    the GROUP BY scan. What no recompute can go below."""
    from django.db import connection

    from kpis.aggregate import financial_totals, operational_totals
    from kpis.models import Measure

    measures = list(Measure.objects.prefetch_related("accounts"))
    engine, scan = [], []
    for attempt in range(REPEATS + 1):
        started = time.perf_counter()
        financial_totals(measures)
        operational_totals(measures)
        middle = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(BASELINE_SQL)
            cursor.fetchall()
        if attempt:
            engine.append(middle - started)
            scan.append(time.perf_counter() - middle)
    return min(engine), min(scan)


def clear_values() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE kpis_kpivalue, kpis_measurevalue")


def timed_refresh(**kwargs) -> tuple[float, object]:
    """``recompute()`` as the nightly refresh runs it: inside a run recorded as succeeded."""
    from django.db import connection
    from django.utils import timezone

    from finops.models import RefreshRun
    from kpis.engine import recompute

    run = RefreshRun.objects.create(status=RefreshRun.Status.RUNNING)
    started = time.perf_counter()
    result = recompute(run=run, **kwargs)
    seconds = time.perf_counter() - started
    run.status, run.finished_at = RefreshRun.Status.SUCCEEDED, timezone.now()
    run.save()
    settle_tables(connection)
    return seconds, result


def settle_definitions() -> None:
    """The measures and KPIs were defined long before the nightly runs measured here (the
    engine recomputes every period of a KPI changed since the previous run)."""
    from datetime import timedelta

    from django.utils import timezone

    from kpis.models import KPIChange, Measure

    long_ago = timezone.now() - timedelta(days=30)
    KPIChange.objects.update(changed_at=long_ago)
    Measure.objects.update(updated_at=long_ago)


def first_refresh() -> tuple[float, object]:
    """A full recompute over an empty value store, with no earlier refresh run to trust."""
    from django.db import connection

    from finops.models import RefreshRun

    clear_values()
    RefreshRun.objects.all().delete()
    settle_definitions()
    settle_tables(connection)
    return timed_refresh()


def best_of(measure) -> tuple[float, object, list[float]]:
    """The fastest of ``REPEATS`` runs of ``measure()`` (which returns seconds and a result),
    its result, and every run's seconds."""
    runs = [measure() for _ in range(REPEATS)]
    seconds, result = min(runs, key=lambda run: run[0])
    return seconds, result, [run[0] for run in runs]


def change_month(period: date) -> int:
    from django.db import connection

    from finops.loading import update_ledger_totals

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE finops_financialfact SET amount = round(amount * 1.01, 2) WHERE period = %s", [period]
        )
        changed = cursor.rowcount
    update_ledger_totals([period])  # as the load that changed the month does
    settle_tables(connection)
    return changed


def memory_child() -> None:
    """In a fresh process: a full recompute over an empty value store; prints peak RSS as JSON."""
    setup_django(os.environ["DATABASE_URL"])
    clear_values()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from kpis.engine import recompute

    started = time.perf_counter()
    result = recompute()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {"before_kb": before, "peak_kb": peak, "seconds": seconds, "kpi_values": result.kpi_values}
        )
    )


def measure_memory(url: str) -> dict:
    env = dict(os.environ, DATABASE_URL=url)
    done = subprocess.run(
        [sys.executable, __file__, "--memory-child"], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"memory child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- report ---------------------------------------------------------------------------------


def mb(kb: int) -> str:
    return f"{kb / 1024:,.0f} MB"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=BAR_ROWS, help="ledger rows (default 5,000,000)")
    parser.add_argument("--keep", action="store_true", help=f"keep the {BENCH_DB} database afterwards")
    parser.add_argument(
        "--load-only", action="store_true", help=f"build and load {BENCH_DB}, keep it, measure nothing"
    )
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child()
        return 0

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        print("bench_engine: SKIPPED - needs PostgreSQL; set DATABASE_URL=postgres://... (make bench does)")
        return 0
    url = bench_url(url, BENCH_DB)
    recreate_database(os.environ["DATABASE_URL"], BENCH_DB)
    setup_django(url)
    from django.core.management import call_command
    from django.db import connection

    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    shape = build_shape()
    kpi_count = define_kpis()
    ops_rows = operational_rows(shape)
    plan_pairs(shape, args.rows)
    small = max(args.rows // 5, 1)
    print(
        f"bench_engine: {args.rows:,} ledger rows over {MONTHS} months, {kpi_count} active KPIs; "
        f"{len(shape.entity_ids) + 1} entities, {shape.departments} departments "
        f"({len(shape.centre_ids)} cost centres), {len(shape.leaf_ids)} leaf accounts, "
        f"{len(shape.scenario_ids)} scenarios, {ops_rows:,} operational facts",
        flush=True,
    )

    # Fresh-process memory at a fifth of the rows, then load the rest and measure everything.
    if args.load_only:
        loaded, load_seconds = load_ledger(shape, 0, args.rows)
        print(f"  loaded {loaded:,} rows in {load_seconds:.1f} s into {BENCH_DB} (kept)")
        return 0
    loaded, load_seconds = load_ledger(shape, 0, small)
    memory_small = measure_memory(url)
    print(f"  loaded {loaded:,} rows in {load_seconds:.1f} s; memory run done", flush=True)
    more, more_seconds = load_ledger(shape, small, args.rows)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), count(DISTINCT period) FROM finops_financialfact")
        total_rows, total_months = cursor.fetchone()
    print(f"  loaded {more:,} more rows in {more_seconds:.1f} s: {total_rows:,} rows", flush=True)
    memory_large = measure_memory(url)

    scan_seconds, groups = baseline_scan()
    first_seconds, first, first_runs = best_of(first_refresh)
    second_seconds, second, second_runs = best_of(timed_refresh)
    restated, latest = months()[MONTHS // 2], months()[-1]
    one_month = {}
    for month in (latest, restated):
        changed_facts = []

        def changed_then_refreshed(month=month, changed_facts=changed_facts):
            changed_facts.append(change_month(month))
            return timed_refresh(months=[month])

        one_month[month] = (changed_facts, *best_of(changed_then_refreshed))

    def first_in_a_worker(month=restated):
        from kpis.engine import forget_kept_definitions

        change_month(month)
        forget_kept_definitions()  # its definitions are read, as in a worker's first recompute
        return timed_refresh(months=[month])

    first_month_seconds, _, first_month_runs = best_of(first_in_a_worker)
    check_seconds, check = timed_refresh()  # a full run after them must find nothing to change

    memory_ratio = memory_large["peak_kb"] / memory_small["peak_kb"]

    def runs(seconds: list[float]) -> str:
        return "runs " + ", ".join(f"{s:.3f}" for s in seconds)

    rows = [
        (f"GROUP BY period, account scan, best of {REPEATS} ({groups:,} groups)", f"{scan_seconds:.3f} s"),
        (
            f"full recompute, first run ({first.kpi_inserted:,} KPI values inserted; {runs(first_runs)})",
            f"{first_seconds:.3f} s",
        ),
        (
            f"full recompute, second run ({second.kpi_updated:,} KPI values updated; {runs(second_runs)})",
            f"{second_seconds:.3f} s",
        ),
    ]
    for month, (facts, seconds, result, month_runs) in one_month.items():
        which = "latest month" if month == latest else "a restated month"
        rows.append(
            (
                f"one-month recompute, {which}, {month:%b %Y} ({facts[0]:,} facts +1%, "
                f"{result.kpi_updated:,} KPI values updated; {runs(month_runs)})",
                f"{seconds:.3f} s",
            )
        )
    rows += [
        (
            f"the same restated month in a worker's first recompute (definitions read; "
            f"{runs(first_month_runs)})",
            f"{first_month_seconds:.3f} s",
        ),
        (f"full recompute after them ({check.kpi_updated:,} updated: must be 0)", f"{check_seconds:.3f} s"),
        (f"peak RSS, fresh full recompute, {small:,} rows", mb(memory_small["peak_kb"])),
        (f"peak RSS, fresh full recompute, {args.rows:,} rows", mb(memory_large["peak_kb"])),
        ("  (RSS of that process before the recompute)", mb(memory_large["before_kb"])),
    ]
    print()
    print(f"FinOps Review engine benchmark - {total_rows:,} ledger rows, {total_months} months")
    versions = f"PostgreSQL {connection.pg_version // 10000}, Python {platform.python_version()}"
    print(f"{versions}, {os.cpu_count()} CPUs")
    width = max(len(label) for label, _ in rows) + 2
    for label, figure in rows:
        print(f"  {label:<{width}}{figure:>12}")
    engine_alone, scan_again = aggregation_alone()
    print(
        f"  the engine's aggregation alone (ledger totals and operational facts): {engine_alone:.3f} s "
        f"= {engine_alone / scan_again:.2f} x the GROUP BY scan ({scan_again:.3f} s), "
        f"best of {REPEATS} alternating"
    )
    print(
        f"  building the ledger totals at load (a load's work, not the recompute's): "
        f"{' + '.join(f'{seconds:.3f} s' for seconds in TOTALS_SECONDS)} for the two bulk loads; "
        f"the last = {TOTALS_SECONDS[-1] / scan_again:.2f} x the GROUP BY scan"
    )
    print(f"  engine steps, first run:  {first.seconds}")
    print(f"  engine steps, second run: {second.seconds}")
    for month, (_, _, result, _) in one_month.items():
        print(f"  engine steps, {month:%b %Y}:  {result.seconds}")
    print()
    bars = [
        ("full recompute, first run / GROUP BY scan", first_seconds / scan_seconds, BAR_FULL),
        ("full recompute, second run / GROUP BY scan", second_seconds / scan_seconds, BAR_FULL),
    ]
    for month, (_, seconds, _, _) in one_month.items():
        bars.append((f"{month:%b %Y} recompute / full recompute", seconds / first_seconds, BAR_INCREMENTAL))
    bars.append((f"peak RSS at {args.rows:,} / at {small:,} rows", memory_ratio, BAR_MEMORY))
    verdicts = [ratio <= bar for _, ratio, bar in bars]
    width = max(len(text) for text, _, _ in bars) + 2
    for (text, ratio, bar), ok in zip(bars, verdicts, strict=True):
        print(f"  {text:<{width}} = {ratio:6.3f} x   (bar <= {bar})   {verdict(ok)}")
    for month, (_, seconds, _, _) in one_month.items():
        text = f"{month:%b %Y} recompute / second run"
        print(f"  {text:<{width}} = {seconds / second_seconds:6.3f} x   (information: it recomputes no KPI)")
    text = f"{restated:%b %Y} in a worker's first recompute / full recompute"
    print(
        f"  {text:<{width}} = {first_month_seconds / first_seconds:6.3f} x   "
        "(information: a worker reads the definitions once, then keeps them while they stay the same)"
    )
    unchanged = check.kpi_updated == 0 and check.kpi_inserted == 0 and check.kpi_deleted == 0
    verdicts.append(unchanged)
    print(f"  {'full recompute after the one-month ones writes nothing':<{width}}   {verdict(unchanged)}")
    print(f"\n  total bench time {time.perf_counter() - started:.0f} s")
    connection.close()
    if not args.keep:
        drop_database(os.environ["DATABASE_URL"], BENCH_DB)
    failed = not all(verdicts)
    if args.rows < BAR_ROWS:
        print(f"  (the bars are set for {BAR_ROWS:,} rows; at {args.rows:,} the verdicts are informational)")
        return 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
