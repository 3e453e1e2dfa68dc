"""The built-in demo company, generated: Northwind Components.

``python manage.py demo`` creates the data source ``demo`` (kind ``demo``) with a config such as
``{"seed": 7, "start": "2023-01", "months": 36}``, and this loader turns that config into
monthly finance and operations facts. The command picks the start once (the months then end
with the last complete month) and stores it; from then on the same config always gives the same
facts to the cent (numpy's ``default_rng`` seeded from the config), so loading it again changes
nothing. Random draws are taken month by month, so a longer series begins with the same months.

The company
-----------
Northwind Components makes industrial components (valves, actuators, fittings) and sells them
direct to OEMs, through distributors and online.

- ``NW``     Northwind Components Group, USD: the group; it carries no facts of its own.
- ``NW-US``  Northwind Components Inc., USD: main plant, about three quarters of sales.
- ``NW-EU``  Northwind Components Europe B.V., EUR: smaller plant; sales dip every August.

Amounts are in each entity's own currency. The source also writes ``CurrencyRate`` rows for
EUR in USD for every generated month (average rate for flows, end-of-month rate for balances;
months after the last actual month hold the last rate, as a planning rate).

Every demo code starts with ``NW-`` so that the demo never collides with another source's
dimensions (the AdventureWorks chart uses plain numbers such as 1110 or 4100). The scenario
codes ``actual``, ``budget`` and ``forecast`` are shared with the other sources.

Departments (side): Finance (finance) > Accounting, FP&A; Operations (operations) >
Production, Logistics, Customer Service; Commercial (other) > Sales, Marketing; General and
Administration (other) > Human Resources, IT, Facilities. Facts are booked on the leaves:
sales lines and commissions on Sales; materials, direct labour and overhead on Production;
freight and warehousing on Logistics; salaries and payroll taxes on every department but
Production (whose pay is direct labour); headcount on every department; advertising on
Marketing; rent and depreciation on Facilities; IT costs on IT; recruiting on HR; the balance
sheet, professional fees, interest and tax on Accounting.

Chart of accounts
-----------------
See ``ACCOUNTS``. Amounts are stored with their natural sign (costs, returns, liabilities
and accumulated depreciation positive) and the roll-up signs do the subtracting: Net Sales =
Gross Sales - Returns and Allowances - Discounts and Rebates; Gross Margin = Net Sales - Cost
of Sales; Net Income = Profit Before Tax - Income Tax. Facts sit on leaf accounts only.
The subtrees a KPI library needs: Net Sales ``NW-4000``, Cost of Sales ``NW-5000``, Gross
Margin ``NW-GM``, Operating Expenses ``NW-6000``, Operating Income ``NW-OI``, Net Income
``NW-NI``; Cash ``NW-1110``, Trade Receivables ``NW-1210``, Inventory ``NW-1300``, Current
Assets ``NW-1100``, Accounts Payable ``NW-2110``, Current Liabilities ``NW-2100``, Equity
``NW-3000``; Headcount ``NW-9100`` (statistical, a balance, left out of every roll-up).
The balance sheet balances to the cent every month (Balance Sheet = Assets - Liabilities and
Equity = 0): cash is what an indirect cash flow leaves (profit, depreciation, working capital,
capex, debt, an April dividend of half of last year's profit), with a revolving credit line
drawn when cash would fall below a floor. Current Year Earnings is the year-to-date net
income and moves into Retained Earnings each January.

Working capital follows day counts on the month's own figures, so the monthly KPIs come out at
the planted values: trade receivables = net sales x DSO / days in month (DSO about 46 in the US
and falling from 58 towards 48 in Europe), inventory = cost of sales x DIO / days, payables =
cost of sales x DPO / days.

Scenarios
---------
- ``actual``: every month, with noise, trends and the anomalies below.
- ``budget``: every month; smooth, slightly optimistic (more growth, 2 % more volume), a flat
  and lower materials cost, tighter working capital, operations at their target rates.
- ``forecast``: profit and loss and headcount only, for the last 3 actual months and the 6
  months after: the expected path of the actual model without noise, levelled on the net
  sales of the 6 actual months before it.

Operations
----------
Per entity and month (dated the first of the month). ``value`` is the quantity summed and
``count`` the population it is measured over, so ``value / count`` is the series' natural
rate or average: ``orders_on_time`` is on-time orders over orders, ``delivery_days`` is the
sum of order-to-delivery days over orders (the average cycle time, exact at any grain),
``csat_satisfied`` is 4-5 ratings over survey responses. Order series are split by channel in
``dimension`` (``direct``, ``distributors``, ``online``); the others have an empty dimension.
By construction orders_perfect <= orders_otif <= orders_on_time, orders_in_full <= orders;
calls_answered_in_sla + calls_abandoned <= calls_offered; csat_satisfied and nps_promoters +
nps_detractors <= survey_responses; production_hours <= capacity_hours except in the
overload month.

Anomalies (actual scenario; month N of the series, month 1 being ``start``)
-------------------------------------------------------------------------
See ``ANOMALIES`` for the exact sizes:

- month 9, NW-US, revenue dip: demand 20 % below normal (the largest OEM customer idles its
  plant for retooling); the plant keeps producing, so inventory builds (DIO +25 days).
- month 16, NW-US, capex: a new automated line, USD 3.5 M capex financed by USD 3 M of new
  long-term debt; from month 17 labour hours per unit are 10 % lower.
- month 18, both entities, materials spike: materials cost 25 % above normal (steel and resin
  prices), gross margin about 8 to 9 points down.
- month 23, NW-US, late-delivery crisis (carrier strike during a warehouse system cutover):
  on-time delivery about 65 %, in-full 90 %, cycle time x 1.7, expedited freight x 1.8,
  calls x 1.45 with a 50 % service level and about 15 % abandoned, CSAT down to about 74 %,
  customers hold payments: DSO +12 days, and +5 days in month 24.
- month 24, NW-US, CSAT drop (fallout of the crisis): CSAT about 60 %, NPS promoters 30 %,
  detractors about 38 % of responses (normally about 12 %).
- month 29, NW-EU, quality problem (a bad batch of seals): defect rate x 4, units returned x 3,
  returns and allowances x 3, rework adds 4 % of product sales to manufacturing overhead.
- month 34, NW-US, overload (a rush order): production hours 7 % above capacity, paid as
  overtime in direct labour.

With fewer than N months an anomaly is simply not generated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from typing import NamedTuple

import numpy as np
from django.utils import timezone

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
)
from finops.periods import add_months, days_in_month, month_start
from finops.sources import Report

SOURCE_SLUG = "demo"
SOURCE_NAME = "Demo company (generated)"
DEFAULT_SEED = 7
DEFAULT_MONTHS = 36
MIN_MONTHS, MAX_MONTHS = 12, 120
FORECAST_PAST_MONTHS = 3
FORECAST_FUTURE_MONTHS = 6

ACTUAL, BUDGET, FORECAST = "actual", "budget", "forecast"
SCENARIOS = {
    ACTUAL: ("Actual", Scenario.Kind.ACTUAL),
    BUDGET: ("Budget", Scenario.Kind.BUDGET),
    FORECAST: ("Forecast", Scenario.Kind.FORECAST),
}

# --- Who the company is ---------------------------------------------------------------------


class EntitySpec(NamedTuple):
    code: str
    name: str
    parent: str | None
    currency: str


GROUP, US, EU = "NW", "NW-US", "NW-EU"
ENTITIES = (
    EntitySpec(GROUP, "Northwind Components Group", None, "USD"),
    EntitySpec(US, "Northwind Components Inc.", GROUP, "USD"),
    EntitySpec(EU, "Northwind Components Europe B.V.", GROUP, "EUR"),
)
GROUP_CURRENCY = "USD"


class DepartmentSpec(NamedTuple):
    code: str
    name: str
    parent: str | None
    side: str


ACCOUNTING, FPA = "NW-ACC", "NW-FPA"
PRODUCTION, LOGISTICS, SERVICE = "NW-PRD", "NW-LOG", "NW-CS"
SALES, MARKETING = "NW-SAL", "NW-MKT"
HR, IT, FACILITIES = "NW-HR", "NW-IT", "NW-FAC"

_FIN, _OPS, _OTHER = Department.Side.FINANCE, Department.Side.OPERATIONS, Department.Side.OTHER
DEPARTMENTS = (
    DepartmentSpec("NW-FIN", "Finance", None, _FIN),
    DepartmentSpec(ACCOUNTING, "Accounting", "NW-FIN", _FIN),
    DepartmentSpec(FPA, "FP&A", "NW-FIN", _FIN),
    DepartmentSpec("NW-OPS", "Operations", None, _OPS),
    DepartmentSpec(PRODUCTION, "Production", "NW-OPS", _OPS),
    DepartmentSpec(LOGISTICS, "Logistics", "NW-OPS", _OPS),
    DepartmentSpec(SERVICE, "Customer Service", "NW-OPS", _OPS),
    DepartmentSpec("NW-COM", "Commercial", None, _OTHER),
    DepartmentSpec(SALES, "Sales", "NW-COM", _OTHER),
    DepartmentSpec(MARKETING, "Marketing", "NW-COM", _OTHER),
    DepartmentSpec("NW-GA", "General and Administration", None, _OTHER),
    DepartmentSpec(HR, "Human Resources", "NW-GA", _OTHER),
    DepartmentSpec(IT, "IT", "NW-GA", _OTHER),
    DepartmentSpec(FACILITIES, "Facilities", "NW-GA", _OTHER),
)
# Departments whose people are paid from operating expenses; Production's pay is direct labour.
OPEX_STAFF = (ACCOUNTING, FPA, LOGISTICS, SERVICE, SALES, MARKETING, HR, IT, FACILITIES)


class AccountSpec(NamedTuple):
    code: str
    name: str
    parent: str | None
    account_type: str
    rollup_sign: int
    time_behaviour: str
    unit: str


def _account(code: str, name: str, parent: str | None, account_type: str, sign: int = 1) -> AccountSpec:
    flows = (Account.Type.REVENUE, Account.Type.EXPENSE)
    behaviour = Account.TimeBehaviour.FLOW if account_type in flows else Account.TimeBehaviour.BALANCE
    unit = Account.Unit.UNITS if account_type == Account.Type.STATISTICAL else Account.Unit.CURRENCY
    return AccountSpec(code, name, parent, account_type, sign, behaviour, unit)


_A, _L, _E = Account.Type.ASSET, Account.Type.LIABILITY, Account.Type.EQUITY
_R, _X, _S = Account.Type.REVENUE, Account.Type.EXPENSE, Account.Type.STATISTICAL

CASH, RECEIVABLES, ALLOWANCE = "NW-1110", "NW-1210", "NW-1220"
RAW_MATERIALS, WIP, FINISHED_GOODS, PREPAID = "NW-1310", "NW-1320", "NW-1330", "NW-1400"
PPE, ACCUMULATED_DEPRECIATION = "NW-1510", "NW-1520"
PAYABLES, ACCRUED, SHORT_TERM_DEBT, LONG_TERM_DEBT = "NW-2110", "NW-2120", "NW-2130", "NW-2510"
SHARE_CAPITAL, RETAINED_EARNINGS, CURRENT_YEAR_EARNINGS = "NW-3100", "NW-3200", "NW-3300"
PRODUCT_SALES, SPARES, RETURNS, DISCOUNTS = "NW-4110", "NW-4120", "NW-4200", "NW-4300"
MATERIALS, DIRECT_LABOUR, OVERHEAD, FREIGHT = "NW-5100", "NW-5200", "NW-5300", "NW-5400"
SALARIES, PAYROLL_TAXES = "NW-6110", "NW-6120"
ADVERTISING, COMMISSIONS, TRAVEL = "NW-6210", "NW-6220", "NW-6230"
RENT, IT_COSTS, PROFESSIONAL_FEES, WAREHOUSING = "NW-6300", "NW-6400", "NW-6500", "NW-6600"
RECRUITING, DEPRECIATION, OTHER_OPEX = "NW-6700", "NW-6800", "NW-6900"
INTEREST_INCOME, INTEREST_EXPENSE, INCOME_TAX = "NW-7100", "NW-7200", "NW-8000"
HEADCOUNT = "NW-9100"
BALANCE_SHEET, NET_INCOME, PROFIT_BEFORE_TAX = "NW-BS", "NW-NI", "NW-PBT"

ACCOUNTS = (
    _account(BALANCE_SHEET, "Balance Sheet", None, _A, 0),
    _account("NW-1000", "Assets", BALANCE_SHEET, _A),
    _account("NW-1100", "Current Assets", "NW-1000", _A),
    _account(CASH, "Cash and Cash Equivalents", "NW-1100", _A),
    _account("NW-1200", "Receivables", "NW-1100", _A),
    _account(RECEIVABLES, "Trade Receivables", "NW-1200", _A),
    _account(ALLOWANCE, "Allowance for Doubtful Accounts", "NW-1200", _A, -1),
    _account("NW-1300", "Inventory", "NW-1100", _A),
    _account(RAW_MATERIALS, "Raw Materials", "NW-1300", _A),
    _account(WIP, "Work in Progress", "NW-1300", _A),
    _account(FINISHED_GOODS, "Finished Goods", "NW-1300", _A),
    _account(PREPAID, "Prepaid Expenses", "NW-1100", _A),
    _account("NW-1500", "Non-current Assets", "NW-1000", _A),
    _account(PPE, "Property, Plant and Equipment at Cost", "NW-1500", _A),
    _account(ACCUMULATED_DEPRECIATION, "Accumulated Depreciation", "NW-1500", _A, -1),
    _account("NW-LE", "Liabilities and Equity", BALANCE_SHEET, _L, -1),
    _account("NW-2000", "Liabilities", "NW-LE", _L),
    _account("NW-2100", "Current Liabilities", "NW-2000", _L),
    _account(PAYABLES, "Accounts Payable", "NW-2100", _L),
    _account(ACCRUED, "Accrued Expenses", "NW-2100", _L),
    _account(SHORT_TERM_DEBT, "Short-term Borrowings", "NW-2100", _L),
    _account("NW-2500", "Non-current Liabilities", "NW-2000", _L),
    _account(LONG_TERM_DEBT, "Long-term Debt", "NW-2500", _L),
    _account("NW-3000", "Equity", "NW-LE", _E),
    _account(SHARE_CAPITAL, "Share Capital", "NW-3000", _E),
    _account(RETAINED_EARNINGS, "Retained Earnings", "NW-3000", _E),
    _account(CURRENT_YEAR_EARNINGS, "Current Year Earnings", "NW-3000", _E),
    _account(NET_INCOME, "Net Income", None, _R),
    _account(PROFIT_BEFORE_TAX, "Profit Before Tax", NET_INCOME, _R),
    _account("NW-OI", "Operating Income", PROFIT_BEFORE_TAX, _R),
    _account("NW-GM", "Gross Margin", "NW-OI", _R),
    _account("NW-4000", "Net Sales", "NW-GM", _R),
    _account("NW-4100", "Gross Sales", "NW-4000", _R),
    _account(PRODUCT_SALES, "Product Sales", "NW-4100", _R),
    _account(SPARES, "Spare Parts and Service", "NW-4100", _R),
    _account(RETURNS, "Returns and Allowances", "NW-4000", _X, -1),
    _account(DISCOUNTS, "Discounts and Rebates", "NW-4000", _X, -1),
    _account("NW-5000", "Cost of Sales", "NW-GM", _X, -1),
    _account(MATERIALS, "Materials", "NW-5000", _X),
    _account(DIRECT_LABOUR, "Direct Labour", "NW-5000", _X),
    _account(OVERHEAD, "Manufacturing Overhead", "NW-5000", _X),
    _account(FREIGHT, "Freight Out", "NW-5000", _X),
    _account("NW-6000", "Operating Expenses", "NW-OI", _X, -1),
    _account("NW-6100", "Personnel Expenses", "NW-6000", _X),
    _account(SALARIES, "Salaries and Wages", "NW-6100", _X),
    _account(PAYROLL_TAXES, "Payroll Taxes and Benefits", "NW-6100", _X),
    _account("NW-6200", "Sales and Marketing Expenses", "NW-6000", _X),
    _account(ADVERTISING, "Advertising and Trade Shows", "NW-6200", _X),
    _account(COMMISSIONS, "Sales Commissions", "NW-6200", _X),
    _account(TRAVEL, "Travel", "NW-6200", _X),
    _account(RENT, "Rent and Facilities", "NW-6000", _X),
    _account(IT_COSTS, "IT and Software", "NW-6000", _X),
    _account(PROFESSIONAL_FEES, "Professional Fees", "NW-6000", _X),
    _account(WAREHOUSING, "Warehousing", "NW-6000", _X),
    _account(RECRUITING, "Recruiting and Training", "NW-6000", _X),
    _account(DEPRECIATION, "Depreciation", "NW-6000", _X),
    _account(OTHER_OPEX, "Other Operating Expenses", "NW-6000", _X),
    _account("NW-7000", "Net Interest", PROFIT_BEFORE_TAX, _R),
    _account(INTEREST_INCOME, "Interest Income", "NW-7000", _R),
    _account(INTEREST_EXPENSE, "Interest Expense", "NW-7000", _X, -1),
    _account(INCOME_TAX, "Income Tax Expense", NET_INCOME, _X, -1),
    _account("NW-STAT", "Statistical Accounts", None, _S, 0),
    _account(HEADCOUNT, "Headcount", "NW-STAT", _S, 0),
)
_ACCOUNT_BY_CODE = {spec.code: spec for spec in ACCOUNTS}


def sign_to(code: str, ancestor: str) -> int:
    """How a leaf's amount counts in ``ancestor``: the product of the roll-up signs on the way up."""
    sign = 1
    while code != ancestor:
        spec = _ACCOUNT_BY_CODE[code]
        if spec.parent is None:
            raise ValueError(f"{ancestor} is not an ancestor of {code}")
        sign *= spec.rollup_sign
        code = spec.parent
    return sign


class SeriesSpec(NamedTuple):
    code: str
    name: str
    unit: str
    description: str


SERIES = (
    SeriesSpec("orders", "Orders", "orders", "Customer orders due for delivery; value = count = orders."),
    SeriesSpec(
        "orders_on_time", "Orders on time", "orders", "Orders delivered by the promised date; count = orders."
    ),
    SeriesSpec("orders_in_full", "Orders in full", "orders", "Orders delivered complete; count = orders."),
    SeriesSpec(
        "orders_otif", "Orders on time in full", "orders", "Orders both on time and in full; count = orders."
    ),
    SeriesSpec(
        "orders_perfect",
        "Perfect orders",
        "orders",
        "On time, in full, undamaged and with correct documents; count = orders.",
    ),
    SeriesSpec("order_lines", "Order lines", "lines", "Order lines; count = orders (lines per order)."),
    SeriesSpec(
        "delivery_days",
        "Order-to-delivery days",
        "days",
        "Sum of days from order to delivery; count = orders, so value / count is the average cycle time.",
    ),
    SeriesSpec("units_ordered", "Units ordered", "units", "Units ordered; count = order lines."),
    SeriesSpec(
        "units_shipped", "Units shipped", "units", "Units shipped; count = units ordered (unit fill rate)."
    ),
    SeriesSpec(
        "units_returned", "Units returned", "units", "Units returned by customers; count = units shipped."
    ),
    SeriesSpec("units_produced", "Units produced", "units", "Good and defective units; value = count."),
    SeriesSpec(
        "units_defective",
        "Units defective",
        "units",
        "Units failing final inspection; count = units produced.",
    ),
    SeriesSpec(
        "capacity_hours",
        "Capacity hours",
        "hours",
        "Staffed production hours available (scheduled shifts x availability); count = working days.",
    ),
    SeriesSpec(
        "production_hours",
        "Production hours",
        "hours",
        "Hours the lines actually ran; count = working days. Utilisation = production / capacity hours.",
    ),
    SeriesSpec("calls_offered", "Calls offered", "calls", "Calls reaching customer service; value = count."),
    SeriesSpec(
        "calls_answered_in_sla",
        "Calls answered in SLA",
        "calls",
        "Calls answered within 20 seconds; count = calls offered (service level).",
    ),
    SeriesSpec(
        "calls_abandoned", "Calls abandoned", "calls", "Callers who hung up waiting; count = calls offered."
    ),
    SeriesSpec("survey_responses", "Survey responses", "responses", "Post-delivery surveys; value = count."),
    SeriesSpec(
        "csat_satisfied",
        "Satisfied customers (CSAT 4-5)",
        "responses",
        "Responses rating 4 or 5 out of 5; count = responses, so value / count is CSAT.",
    ),
    SeriesSpec(
        "nps_promoters", "NPS promoters", "responses", "Responses scoring 9-10 out of 10; count = responses."
    ),
    SeriesSpec(
        "nps_detractors", "NPS detractors", "responses", "Responses scoring 0-6 out of 10; count = responses."
    ),
)

# --- The planted anomalies --------------------------------------------------------------------


@dataclass(frozen=True)
class Anomaly:
    month: int  # 1-based month of the series
    entity: str  # an entity code, or "*" for every entity
    kind: str
    size: float
    description: str


ANOMALIES = (
    Anomaly(9, US, "revenue_dip", 0.80, "Demand 20 % below normal: the largest OEM customer retools."),
    Anomaly(16, US, "capex", 3_500_000.0, "New automated line: USD 3.5 M capex, USD 3 M new long-term debt."),
    Anomaly(18, "*", "materials_spike", 1.25, "Materials cost 25 % above normal (steel and resin prices)."),
    Anomaly(23, US, "late_deliveries", 0.65, "Carrier strike and warehouse cutover: on-time about 65 %."),
    Anomaly(24, US, "csat_drop", 0.60, "Fallout of the late deliveries: CSAT about 60 %."),
    Anomaly(29, EU, "quality", 4.0, "Bad batch of seals: defect rate x 4, returns x 3."),
    Anomaly(34, US, "overload", 1.07, "Rush order: production hours 7 % above capacity (overtime)."),
)
CAPEX_NEW_DEBT = 3_000_000.0

# --- How each company behaves -----------------------------------------------------------------


@dataclass(frozen=True)
class Rates:
    """Operational rates of one month: the process as it runs (actual) or as planned (budget)."""

    on_time: float
    in_full: float
    perfect: float  # share of OTIF orders that are also damage-free with correct documents
    unit_fill: float
    cycle_factor: float
    calls_per_order: float
    sla: float
    abandon: float  # share of the calls not answered in SLA that hang up
    response_rate: float
    csat: float
    promoters: float
    detractors: float  # share of the non-promoters
    defects: float
    unit_returns: float


ACTUAL_RATES = Rates(
    on_time=0.935,
    in_full=0.965,
    perfect=0.975,
    unit_fill=0.988,
    cycle_factor=1.0,
    calls_per_order=0.55,
    sla=0.82,
    abandon=0.22,
    response_rate=0.06,
    csat=0.86,
    promoters=0.50,
    detractors=0.25,
    defects=0.012,
    unit_returns=0.006,
)
BUDGET_RATES = Rates(
    on_time=0.95,
    in_full=0.975,
    perfect=0.98,
    unit_fill=0.99,
    cycle_factor=0.95,
    calls_per_order=0.52,
    sla=0.85,
    abandon=0.20,
    response_rate=0.06,
    csat=0.88,
    promoters=0.52,
    detractors=0.22,
    defects=0.010,
    unit_returns=0.005,
)


class Channel(NamedTuple):
    code: str
    unit_share: float  # share of the units ordered at the start; online gains 1 point a year
    units_per_order: float
    lines_per_order: float
    cycle_days: float
    on_time_factor: float


CHANNELS = (
    Channel("direct", 0.45, 24.0, 4.2, 6.0, 1.01),
    Channel("distributors", 0.40, 11.0, 3.1, 4.0, 1.02),
    Channel("online", 0.15, 3.0, 1.3, 3.0, 0.97),
)


@dataclass(frozen=True)
class Profile:
    """One subsidiary's parameters, in its own currency; per month unless marked yearly."""

    entity: str
    base_units: float  # units demanded in an average month at the start
    unit_price: float  # rises 2.5 % each January
    growth: float  # yearly volume growth
    budget_growth: float
    season: tuple[float, ...]  # demand factor by calendar month, mean 1
    headcount: dict[str, int]
    salary: dict[str, float]  # yearly; 3.5 % raise each January
    payroll_rate: float
    tax_rate: float
    materials_pct: float  # of product sales
    materials_drift: float  # per year
    budget_materials_pct: float
    fixed_overhead: float
    rent: float
    it: float
    professional_fees: float
    hours_per_unit: float
    dso: float
    dso_drift: float  # per year
    budget_dso: float
    dio: float
    budget_dio: float
    dpo: float
    ppe_cost: float
    ppe_depreciated: float  # share already depreciated at the start
    long_term_debt: float
    debt_repayment: float
    debt_rate: float  # yearly
    revolver_rate: float
    share_capital: float
    opening_cash: float
    minimum_cash: float


PROFILES = (
    Profile(
        entity=US,
        base_units=50_000,
        unit_price=120.0,
        growth=0.08,
        budget_growth=0.10,
        season=(0.92, 0.94, 1.02, 1.00, 1.01, 0.98, 0.93, 0.95, 1.03, 1.06, 1.10, 1.06),
        headcount={
            ACCOUNTING: 9,
            FPA: 4,
            PRODUCTION: 180,
            LOGISTICS: 34,
            SERVICE: 16,
            SALES: 24,
            MARKETING: 8,
            HR: 5,
            IT: 8,
            FACILITIES: 6,
        },
        salary={
            ACCOUNTING: 82_000,
            FPA: 105_000,
            PRODUCTION: 52_000,
            LOGISTICS: 48_000,
            SERVICE: 46_000,
            SALES: 92_000,
            MARKETING: 88_000,
            HR: 78_000,
            IT: 112_000,
            FACILITIES: 50_000,
        },
        payroll_rate=0.24,
        tax_rate=0.25,
        materials_pct=0.38,
        materials_drift=0.01,
        budget_materials_pct=0.375,
        fixed_overhead=350_000,
        rent=140_000,
        it=85_000,
        professional_fees=40_000,
        hours_per_unit=0.43,
        dso=46.0,
        dso_drift=-0.7,
        budget_dso=43.0,
        dio=62.0,
        budget_dio=58.0,
        dpo=42.0,
        ppe_cost=36_000_000,
        ppe_depreciated=0.40,
        long_term_debt=12_000_000,
        debt_repayment=100_000,
        debt_rate=0.055,
        revolver_rate=0.07,
        share_capital=10_000_000,
        opening_cash=4_000_000,
        minimum_cash=1_500_000,
    ),
    Profile(
        entity=EU,
        base_units=22_000,
        unit_price=115.0,
        growth=0.05,
        budget_growth=0.07,
        season=(0.94, 0.98, 1.04, 1.02, 1.03, 1.00, 0.92, 0.80, 1.04, 1.07, 1.10, 1.06),
        headcount={
            ACCOUNTING: 5,
            FPA: 2,
            PRODUCTION: 76,
            LOGISTICS: 18,
            SERVICE: 9,
            SALES: 14,
            MARKETING: 4,
            HR: 3,
            IT: 4,
            FACILITIES: 3,
        },
        salary={
            ACCOUNTING: 70_000,
            FPA: 90_000,
            PRODUCTION: 46_000,
            LOGISTICS: 42_000,
            SERVICE: 40_000,
            SALES: 78_000,
            MARKETING: 75_000,
            HR: 66_000,
            IT: 95_000,
            FACILITIES: 43_000,
        },
        payroll_rate=0.32,
        tax_rate=0.258,
        materials_pct=0.40,
        materials_drift=0.007,
        budget_materials_pct=0.395,
        fixed_overhead=160_000,
        rent=60_000,
        it=35_000,
        professional_fees=20_000,
        hours_per_unit=0.41,
        dso=58.0,
        dso_drift=-3.5,
        budget_dso=50.0,
        dio=50.0,
        budget_dio=48.0,
        dpo=55.0,
        ppe_cost=12_000_000,
        ppe_depreciated=0.45,
        long_term_debt=4_000_000,
        debt_repayment=40_000,
        debt_rate=0.045,
        revolver_rate=0.055,
        share_capital=5_000_000,
        opening_cash=1_500_000,
        minimum_cash=600_000,
    ),
)

# --- The config -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoConfig:
    seed: int
    start: date
    months: int

    @property
    def periods(self) -> list[date]:
        """The months of the actual and budget scenarios."""
        return [add_months(self.start, i) for i in range(self.months)]

    @property
    def forecast_periods(self) -> list[date]:
        """The last actual months and the months after them."""
        first = add_months(self.start, self.months - FORECAST_PAST_MONTHS)
        return [add_months(first, i) for i in range(FORECAST_PAST_MONTHS + FORECAST_FUTURE_MONTHS)]

    def as_json(self) -> dict:
        return {"seed": self.seed, "start": f"{self.start:%Y-%m}", "months": self.months}


def default_start(today: date, months: int) -> date:
    """Start so that the months end with the last complete month before ``today``."""
    return add_months(month_start(today), -months)


def parse_config(raw: dict) -> DemoConfig:
    """Validate a demo source's config; raise ImportRejected naming every bad key."""
    where = "demo source config"
    errors = []
    seed = raw.get("seed", DEFAULT_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        errors.append(RowError(where, None, "seed", repr(seed), "must be a whole number >= 0"))
    months = raw.get("months", DEFAULT_MONTHS)
    if isinstance(months, bool) or not isinstance(months, int) or not MIN_MONTHS <= months <= MAX_MONTHS:
        errors.append(
            RowError(where, None, "months", repr(months), f"must be a whole number {MIN_MONTHS}-{MAX_MONTHS}")
        )
    start = raw.get("start")
    match = re.fullmatch(r"(\d{4})-(\d{2})", start) if isinstance(start, str) else None
    if not match or not 1900 <= int(match.group(1)) <= 2200 or not 1 <= int(match.group(2)) <= 12:
        errors.append(RowError(where, None, "start", repr(start), "must be a month written YYYY-MM"))
    if errors:
        raise ImportRejected(errors)
    return DemoConfig(seed=seed, start=date(int(match.group(1)), int(match.group(2)), 1), months=months)


# --- The generator (pure: no database) --------------------------------------------------------

FinancialRow = tuple[date, str, str, str, str, Decimal]  # period, entity, department, scenario, account
OperationalRow = tuple[date, str, str, str, str, Decimal, int]  # date, entity, scenario, series, dimension
RateRow = tuple[str, date, Decimal, Decimal]  # currency, period, average rate, end rate


@dataclass
class DemoData:
    financial: list[FinancialRow]
    operational: list[OperationalRow]
    rates: list[RateRow]


@dataclass
class _Month:
    period: date
    pnl: dict[tuple[str, str], float]  # (department, account) -> amount, rounded to cents
    balances: dict[str, float]  # account -> amount, booked on Accounting
    headcount: dict[str, int]  # department -> people
    ops: list[tuple[str, str, float, int]]  # (series, dimension, value, count)


def _cents(value: float) -> float:
    return round(float(value), 2)


class _Simulation:
    """One subsidiary month by month, in one scenario.

    ``mode`` is ACTUAL (noise and anomalies), BUDGET (the plan: smooth, plan parameters) or
    FORECAST (the actual process's expected path: no noise, no one-off anomalies, times ``level``).
    """

    def __init__(
        self,
        profile: Profile,
        periods: list[date],
        mode: str,
        rng: np.random.Generator | None = None,
        level: float = 1.0,
    ):
        self.p = profile
        self.periods = periods
        self.mode = mode
        self.rng = rng if mode == ACTUAL else None
        self.level = level
        self.rates = BUDGET_RATES if mode == BUDGET else ACTUAL_RATES
        # Balances carried from month to month.
        self.ppe_cost = profile.ppe_cost
        self.accumulated_depreciation = _cents(profile.ppe_cost * profile.ppe_depreciated)
        self.long_term_debt = profile.long_term_debt
        self.short_term_debt = 0.0
        self.retained = 0.0
        self.current_year = 0.0
        self.last_year_income = 0.0
        self.cash = profile.opening_cash
        self.previous_headcount: dict[str, int] = dict(profile.headcount)

    def run(self) -> list[_Month]:
        return [self._month(index, period) for index, period in enumerate(self.periods)]

    # Randomness: none outside the actual scenario, so budget and forecast are smooth.

    def _jitter(self, sigma: float) -> float:
        return 1.0 + float(self.rng.normal(0.0, sigma)) if self.rng else 1.0

    def _normal(self, sigma: float) -> float:
        return float(self.rng.normal(0.0, sigma)) if self.rng else 0.0

    def _binomial(self, n: int, p: float) -> int:
        p = min(max(p, 0.0), 1.0)
        return int(self.rng.binomial(n, p)) if self.rng else round(n * p)

    def _anomaly(self, index: int, kind: str) -> Anomaly | None:
        if self.mode != ACTUAL:
            return None
        for anomaly in ANOMALIES:
            if anomaly.kind == kind and anomaly.month == index + 1 and anomaly.entity in ("*", self.p.entity):
                return anomaly
        return None

    def _after(self, index: int, kind: str) -> bool:
        """A lasting change (the new line) applies after its month, except in the budget."""
        if self.mode == BUDGET:
            return False
        return any(
            a.kind == kind and a.entity in ("*", self.p.entity) and index + 1 > a.month for a in ANOMALIES
        )

    def _month(self, index: int, period: date) -> _Month:
        p = self.p
        budget = self.mode == BUDGET
        years = index / 12
        year_index = period.year - self.periods[0].year  # raises and price lists change in January
        days = days_in_month(period)
        working_days = int(np.busday_count(period, add_months(period, 1)))
        growth = p.budget_growth if budget else p.growth
        trend = (1 + growth) ** years
        rates = self._month_rates(index)

        headcount = self._headcount(trend, years)

        # Demand and orders, by channel.
        dip = self._anomaly(index, "revenue_dip")
        demand = p.base_units * trend * p.season[period.month - 1] * self.level * self._jitter(0.03)
        if budget:
            demand *= 1.02  # the plan is a little optimistic
        if dip:
            demand *= dip.size
        ops: list[tuple[str, str, float, int]] = []
        shipped_total = orders_total = 0
        late = self._anomaly(index, "late_deliveries")
        for channel in CHANNELS:
            share = channel.unit_share + (0.01 * years if channel.code == "online" else 0.0)
            share -= 0.01 * years if channel.code == "distributors" else 0.0
            units_ordered = round(demand * share * self._jitter(0.02))
            orders = max(1, round(units_ordered / channel.units_per_order * self._jitter(0.03)))
            lines = max(orders, round(orders * channel.lines_per_order * self._jitter(0.02)))
            on_time = self._binomial(orders, rates.on_time * channel.on_time_factor)
            otif = self._binomial(on_time, rates.in_full)
            in_full = otif + self._binomial(orders - on_time, rates.in_full * 0.97)
            perfect = self._binomial(otif, rates.perfect)
            shipped = min(units_ordered, round(units_ordered * rates.unit_fill * self._jitter(0.002)))
            delivery_days = round(orders * channel.cycle_days * rates.cycle_factor * self._jitter(0.04))
            ops += [
                ("orders", channel.code, orders, orders),
                ("orders_on_time", channel.code, on_time, orders),
                ("orders_in_full", channel.code, in_full, orders),
                ("orders_otif", channel.code, otif, orders),
                ("orders_perfect", channel.code, perfect, orders),
                ("order_lines", channel.code, lines, orders),
                ("delivery_days", channel.code, delivery_days, orders),
                ("units_ordered", channel.code, units_ordered, lines),
                ("units_shipped", channel.code, shipped, units_ordered),
            ]
            shipped_total += shipped
            orders_total += orders
        returned = self._binomial(shipped_total, rates.unit_returns)
        ops.append(("units_returned", "", returned, shipped_total))

        # Production: follows shipments, except that the plant kept running through the dip.
        hours_per_unit = p.hours_per_unit * (0.9 if self._after(index, "capex") else 1.0)
        produced = shipped_total * self._jitter(0.02)
        if dip:
            produced = shipped_total / dip.size * 0.95
        capacity = round(headcount[PRODUCTION] * working_days * 7.5 * 0.85, 1)
        hours = produced * hours_per_unit * self._jitter(0.015)
        overload = self._anomaly(index, "overload")
        if overload:
            hours = capacity * overload.size
        elif hours > 0.98 * capacity:
            hours = 0.98 * capacity  # the plant runs flat out; the rest waits for next month
        hours = round(hours, 1)
        produced = round(hours / hours_per_unit)
        utilisation = hours / capacity
        defective = self._binomial(produced, rates.defects)
        ops += [
            ("units_produced", "", produced, produced),
            ("units_defective", "", defective, produced),
            ("capacity_hours", "", capacity, working_days),
            ("production_hours", "", hours, working_days),
        ]

        # Customer service and surveys.
        offered = round(orders_total * rates.calls_per_order * self._jitter(0.05))
        in_sla = self._binomial(offered, rates.sla)
        abandoned = self._binomial(offered - in_sla, rates.abandon)
        responses = self._binomial(orders_total, rates.response_rate)
        satisfied = self._binomial(responses, rates.csat)
        promoters = self._binomial(responses, rates.promoters)
        detractors = self._binomial(responses - promoters, rates.detractors)
        ops += [
            ("calls_offered", "", offered, offered),
            ("calls_answered_in_sla", "", in_sla, offered),
            ("calls_abandoned", "", abandoned, offered),
            ("survey_responses", "", responses, responses),
            ("csat_satisfied", "", satisfied, responses),
            ("nps_promoters", "", promoters, responses),
            ("nps_detractors", "", detractors, responses),
        ]

        # Profit and loss.
        quality = self._anomaly(index, "quality")
        spike = self._anomaly(index, "materials_spike")
        price = p.unit_price * 1.025**year_index
        raise_factor = 1.035**year_index
        product_sales = _cents(shipped_total * price)
        spares = _cents(p.base_units * p.unit_price * 0.12 * trend * self.level * self._jitter(0.05))
        gross = product_sales + spares
        returns = _cents(gross * 0.012 * self._jitter(0.12) * (3.0 if quality else 1.0))
        year_end_rebates = 0.01 if period.month in (11, 12) else 0.0
        discounts = _cents(gross * (0.025 + year_end_rebates) * self._jitter(0.08))
        net_sales = gross - returns - discounts

        materials_pct = p.budget_materials_pct if budget else p.materials_pct + p.materials_drift * years
        materials = _cents(
            product_sales * materials_pct * self._jitter(0.02) * (spike.size if spike else 1.0)
        )
        overtime = 1.0 + 1.5 * max(0.0, utilisation - 0.95)
        direct_labour = _cents(
            headcount[PRODUCTION] * p.salary[PRODUCTION] / 12 * raise_factor * (1 + p.payroll_rate) * overtime
        )
        overhead = _cents(
            p.fixed_overhead * 1.03**years
            + product_sales * 0.03 * self._jitter(0.05)
            + (product_sales * 0.04 if quality else 0.0)
        )
        freight = _cents(gross * 0.028 * self._jitter(0.05) * (1.8 if late else 1.0))
        cost_of_sales = materials + direct_labour + overhead + freight

        pnl: dict[tuple[str, str], float] = {
            (SALES, PRODUCT_SALES): product_sales,
            (SALES, SPARES): spares,
            (SALES, RETURNS): returns,
            (SALES, DISCOUNTS): discounts,
            (PRODUCTION, MATERIALS): materials,
            (PRODUCTION, DIRECT_LABOUR): direct_labour,
            (PRODUCTION, OVERHEAD): overhead,
            (LOGISTICS, FREIGHT): freight,
        }
        personnel = 0.0
        for department in OPEX_STAFF:
            salaries = _cents(headcount[department] * p.salary[department] / 12 * raise_factor)
            payroll = _cents(salaries * p.payroll_rate)
            pnl[(department, SALARIES)] = salaries
            pnl[(department, PAYROLL_TAXES)] = payroll
            personnel += salaries + payroll
        trade_show = 2.0 if period.month == 4 else 1.0  # the big trade fair every April
        hires = sum(max(0, headcount[d] - self.previous_headcount[d]) for d in headcount)
        staff = sum(headcount.values())
        rent = _cents(p.rent * 1.03**year_index)
        it_costs = _cents(p.it * 1.06**years * self._jitter(0.04))
        audit = 2.5 if period.month in (2, 3) else 1.0  # year-end audit fees
        depreciation = _cents(self.ppe_cost / 120)  # ten years, straight line
        pnl |= {
            (MARKETING, ADVERTISING): _cents(gross * 0.025 * trade_show * self._jitter(0.2)),
            (SALES, COMMISSIONS): _cents(product_sales * 0.015),
            (SALES, TRAVEL): _cents(headcount[SALES] * 1_500 * self._jitter(0.15)),
            (FACILITIES, RENT): rent,
            (IT, IT_COSTS): it_costs,
            (ACCOUNTING, PROFESSIONAL_FEES): _cents(p.professional_fees * audit * self._jitter(0.2)),
            (LOGISTICS, WAREHOUSING): _cents(gross * 0.012 * self._jitter(0.05)),
            (HR, RECRUITING): _cents((hires + staff * 0.01) * 4_000 * raise_factor),
            (FACILITIES, DEPRECIATION): depreciation,
            (ACCOUNTING, OTHER_OPEX): _cents(gross * 0.004 * self._jitter(0.3)),
            (ACCOUNTING, INTEREST_INCOME): _cents(max(self.cash, 0.0) * 0.02 / 12),
            (ACCOUNTING, INTEREST_EXPENSE): _cents(
                (self.long_term_debt * p.debt_rate + self.short_term_debt * p.revolver_rate) / 12
            ),
        }
        profit_before_tax = _cents(
            sum(sign_to(acc, PROFIT_BEFORE_TAX) * amount for (_, acc), amount in pnl.items())
        )
        tax = _cents(max(profit_before_tax, 0.0) * p.tax_rate)
        pnl[(ACCOUNTING, INCOME_TAX)] = tax
        net_income = _cents(profit_before_tax - tax)

        balances = self._balance_sheet(
            index=index,
            period=period,
            days=days,
            net_sales=net_sales,
            cost_of_sales=cost_of_sales,
            personnel=personnel + direct_labour,
            prepaid_base=rent + it_costs,
            depreciation=depreciation,
            net_income=net_income,
            late=bool(late),
            dip=bool(dip),
        )
        self.previous_headcount = headcount
        return _Month(period=period, pnl=pnl, balances=balances, headcount=headcount, ops=ops)

    def _month_rates(self, index: int) -> Rates:
        rates = self.rates
        if self.rng:
            # The process itself wobbles a little from month to month, on top of sampling noise.
            rates = replace(
                rates,
                on_time=min(0.99, rates.on_time * self._jitter(0.01)),
                in_full=min(0.99, rates.in_full * self._jitter(0.005)),
                sla=min(0.97, rates.sla * self._jitter(0.02)),
                csat=min(0.97, rates.csat * self._jitter(0.015)),
            )
        if self._anomaly(index, "late_deliveries"):
            rates = replace(
                rates,
                on_time=0.65,
                in_full=0.90,
                unit_fill=0.95,
                cycle_factor=1.7,
                calls_per_order=rates.calls_per_order * 1.45,
                sla=0.50,
                abandon=0.30,
                csat=0.74,
            )
        if csat_drop := self._anomaly(index, "csat_drop"):
            rates = replace(rates, csat=csat_drop.size, promoters=0.30, detractors=0.55)
        if quality := self._anomaly(index, "quality"):
            rates = replace(
                rates, defects=rates.defects * quality.size, unit_returns=rates.unit_returns * 3, csat=0.78
            )
        return rates

    def _headcount(self, trend: float, years: float) -> dict[str, int]:
        headcount = {}
        for department, base in self.p.headcount.items():
            if department in (PRODUCTION, LOGISTICS):
                target = base * trend**0.9  # staffed with volume
            elif department == SERVICE:
                target = base * trend**0.5
            else:
                target = base * 1.02**years
            headcount[department] = max(1, round(target + self._normal(max(0.4, 0.01 * target))))
        return headcount

    def _balance_sheet(
        self,
        *,
        index: int,
        period: date,
        days: int,
        net_sales: float,
        cost_of_sales: float,
        personnel: float,
        prepaid_base: float,
        depreciation: float,
        net_income: float,
        late: bool,
        dip: bool,
    ) -> dict[str, float]:
        p = self.p
        budget = self.mode == BUDGET
        years = index / 12

        dso = p.budget_dso if budget else p.dso + p.dso_drift * years + self._normal(1.5)
        if late:
            dso += 12  # customers hold payment until their orders are complete
        elif index > 0 and self._anomaly(index - 1, "late_deliveries"):
            dso += 5
        dio = (p.budget_dio if budget else p.dio + self._normal(2.0)) + (25 if dip else 0)
        dpo = p.dpo + self._normal(2.0)
        receivables = _cents(net_sales * dso / days)
        allowance = _cents(receivables * 0.025)
        inventory = cost_of_sales * dio / days
        raw_materials, wip = _cents(inventory * 0.40), _cents(inventory * 0.15)
        finished_goods = _cents(inventory - raw_materials - wip)
        prepaid = _cents(prepaid_base * 1.5)
        payables = _cents(cost_of_sales * dpo / days)
        accrued = _cents(personnel * 0.5)

        capex = net_sales * (0.015 if budget else 0.012) * self._jitter(0.3)
        if new_line := self._anomaly(index, "capex"):
            capex += new_line.size
            self.long_term_debt += CAPEX_NEW_DEBT
        self.ppe_cost = _cents(self.ppe_cost + capex)
        self.accumulated_depreciation = _cents(self.accumulated_depreciation + depreciation)
        self.long_term_debt = _cents(max(0.0, self.long_term_debt - p.debt_repayment))

        # Earnings: the year's profit moves to retained earnings each January; half of last
        # year's profit is paid out as a dividend in April.
        if index == 0:
            self.current_year = _cents(net_income * period.month)  # the months before the start
            self.last_year_income = _cents(net_income * 12 * 0.9)
        else:
            if period.month == 1:
                self.retained = _cents(self.retained + self.current_year)
                self.last_year_income, self.current_year = self.current_year, 0.0
            self.current_year = _cents(self.current_year + net_income)
        if period.month == 4 and index > 0:
            self.retained = _cents(self.retained - max(self.last_year_income, 0.0) * 0.5)

        non_cash_assets = (receivables - allowance + raw_materials + wip + finished_goods + prepaid) + (
            self.ppe_cost - self.accumulated_depreciation
        )
        liabilities = payables + accrued + self.long_term_debt
        equity_before_retained = p.share_capital + self.current_year
        if index == 0:
            # Opening retained earnings are whatever gives the opening cash.
            self.retained = _cents(
                p.opening_cash + non_cash_assets - liabilities - self.short_term_debt - equity_before_retained
            )
        cash = _cents(
            liabilities + self.short_term_debt + equity_before_retained + self.retained - non_cash_assets
        )
        # The revolving credit line keeps cash above its floor, and is repaid from surplus cash.
        if cash < p.minimum_cash:
            draw = _cents(p.minimum_cash - cash)
            self.short_term_debt = _cents(self.short_term_debt + draw)
            cash = _cents(cash + draw)
        elif self.short_term_debt > 0 and cash > 2 * p.minimum_cash:
            repay = _cents(min(self.short_term_debt, cash - 2 * p.minimum_cash))
            self.short_term_debt = _cents(self.short_term_debt - repay)
            cash = _cents(cash - repay)
        self.cash = cash

        return {
            CASH: cash,
            RECEIVABLES: receivables,
            ALLOWANCE: allowance,
            RAW_MATERIALS: raw_materials,
            WIP: wip,
            FINISHED_GOODS: finished_goods,
            PREPAID: prepaid,
            PPE: self.ppe_cost,
            ACCUMULATED_DEPRECIATION: self.accumulated_depreciation,
            PAYABLES: payables,
            ACCRUED: accrued,
            SHORT_TERM_DEBT: self.short_term_debt,
            LONG_TERM_DEBT: self.long_term_debt,
            SHARE_CAPITAL: p.share_capital,
            RETAINED_EARNINGS: self.retained,
            CURRENT_YEAR_EARNINGS: self.current_year,
        }


def _money(value: float) -> Decimal:
    return Decimal(f"{value:.2f}") + 0  # "+ 0" turns a -0.00 into 0.00


def _quantity(value: float) -> Decimal:
    """Counts stay whole numbers; hours keep one decimal."""
    return Decimal(value) if isinstance(value, int) else Decimal(f"{value:.1f}") + 0


def _financial_rows(
    entity: str, scenario: str, months: list[_Month], *, balances: bool
) -> list[FinancialRow]:
    rows: list[FinancialRow] = []
    for month in months:
        for (department, account), amount in month.pnl.items():
            rows.append((month.period, entity, department, scenario, account, _money(amount)))
        if balances:
            for account, amount in month.balances.items():
                rows.append((month.period, entity, ACCOUNTING, scenario, account, _money(amount)))
        for department, people in month.headcount.items():
            rows.append((month.period, entity, department, scenario, HEADCOUNT, Decimal(people)))
    return rows


def _operational_rows(entity: str, scenario: str, months: list[_Month]) -> list[OperationalRow]:
    return [
        (month.period, entity, scenario, series, dimension, _quantity(value), int(count))
        for month in months
        for series, dimension, value, count in month.ops
    ]


def _net_sales(months: list[_Month]) -> float:
    return sum(
        sign_to(account, "NW-4000") * amount
        for month in months
        for (_, account), amount in month.pnl.items()
        if account in (PRODUCT_SALES, SPARES, RETURNS, DISCOUNTS)
    )


def _currency_rates(config: DemoConfig) -> list[RateRow]:
    """EUR in USD: a random walk around 1.08 for the actual months, then held at the last rate."""
    rng = np.random.default_rng([config.seed, 1000])
    rows: list[RateRow] = []
    end = 1.08
    for period in config.periods:
        opening = end
        end = end * float(np.exp(rng.normal(0.0, 0.015)))
        average = (opening + end) / 2 * (1 + float(rng.normal(0.0, 0.002)))
        rows.append(("EUR", period, Decimal(f"{average:.6f}"), Decimal(f"{end:.6f}")))
    last = Decimal(f"{end:.6f}")
    for period in config.forecast_periods[FORECAST_PAST_MONTHS:]:
        rows.append(("EUR", period, last, last))
    return rows


def generate(config: DemoConfig) -> DemoData:
    """All of the demo company's facts for ``config``; the same config gives the same data."""
    periods = config.periods
    forecast_periods = config.forecast_periods
    extended = periods + forecast_periods[FORECAST_PAST_MONTHS:]
    financial: list[FinancialRow] = []
    operational: list[OperationalRow] = []
    for number, profile in enumerate(PROFILES):
        # One random stream per entity, so that changing one company leaves the other alone.
        rng = np.random.default_rng([config.seed, number])
        actual = _Simulation(profile, periods, ACTUAL, rng).run()
        budget = _Simulation(profile, periods, BUDGET).run()
        # The forecast is the expected path, levelled on the latest actuals before it.
        window = slice(len(periods) - FORECAST_PAST_MONTHS - 6, len(periods) - FORECAST_PAST_MONTHS)
        expected = _Simulation(profile, extended, FORECAST).run()
        level = _net_sales(actual[window]) / _net_sales(expected[window])
        forecast = _Simulation(profile, extended, FORECAST, level=level).run()[-len(forecast_periods) :]

        financial += _financial_rows(profile.entity, ACTUAL, actual, balances=True)
        financial += _financial_rows(profile.entity, BUDGET, budget, balances=True)
        financial += _financial_rows(profile.entity, FORECAST, forecast, balances=False)
        operational += _operational_rows(profile.entity, ACTUAL, actual)
        operational += _operational_rows(profile.entity, BUDGET, budget)
    return DemoData(financial=financial, operational=operational, rates=_currency_rates(config))


# --- Loading ----------------------------------------------------------------------------------


def _upsert(model: type, code: str, fields: dict, existing: dict) -> object:
    """Create or update one dimension row by code; save only what changed, so re-runs write nothing."""
    obj = existing.get(code)
    if obj is None:
        obj = model.objects.create(code=code, **fields)
    elif any(getattr(obj, name) != value for name, value in fields.items()):
        for name, value in fields.items():
            setattr(obj, name, value)
        obj.save(update_fields=list(fields))
    existing[code] = obj
    return obj


def upsert_dimensions() -> dict[str, dict[str, int]]:
    """Create or update the demo's entities, departments, accounts, series and scenarios.

    Returns ids by code for each kind. Specs list parents before children.
    """
    entities = {obj.code: obj for obj in Entity.objects.filter(code__in=[s.code for s in ENTITIES])}
    for spec in ENTITIES:
        parent = entities[spec.parent].pk if spec.parent else None
        fields = {"name": spec.name, "parent_id": parent, "currency": spec.currency}
        _upsert(Entity, spec.code, fields, entities)

    departments = {obj.code: obj for obj in Department.objects.filter(code__in=[s.code for s in DEPARTMENTS])}
    for spec in DEPARTMENTS:
        parent = departments[spec.parent].pk if spec.parent else None
        fields = {"name": spec.name, "parent_id": parent, "side": spec.side}
        _upsert(Department, spec.code, fields, departments)

    accounts = {obj.code: obj for obj in Account.objects.filter(code__in=[s.code for s in ACCOUNTS])}
    for order, spec in enumerate(ACCOUNTS):
        fields = {
            "name": spec.name,
            "parent_id": accounts[spec.parent].pk if spec.parent else None,
            "account_type": spec.account_type,
            "time_behaviour": spec.time_behaviour,
            "rollup_sign": spec.rollup_sign,
            "unit": spec.unit,
            "sort_order": 10 * (order + 1),
        }
        _upsert(Account, spec.code, fields, accounts)

    series = {obj.code: obj for obj in OperationalSeries.objects.filter(code__in=[s.code for s in SERIES])}
    for spec in SERIES:
        fields = {
            "name": spec.name,
            "unit": spec.unit,
            "description": spec.description,
            "time_behaviour": Account.TimeBehaviour.FLOW,
        }
        _upsert(OperationalSeries, spec.code, fields, series)

    scenarios = {obj.code: obj for obj in Scenario.objects.filter(code__in=list(SCENARIOS))}
    for code, (name, kind) in SCENARIOS.items():
        _upsert(Scenario, code, {"name": name, "kind": kind}, scenarios)

    def ids(objects: dict) -> dict[str, int]:
        return {code: obj.pk for code, obj in objects.items()}

    return {
        "entity": ids(entities),
        "department": ids(departments),
        "account": ids(accounts),
        "series": ids(series),
        "scenario": ids(scenarios),
    }


def _write_rates(source: DataSource, rates: list[RateRow]) -> None:
    stored = {(r.currency, r.period): r for r in CurrencyRate.objects.filter(source=source)}
    for currency, period, average, end in rates:
        rate = stored.pop((currency, period), None)
        if rate is None:
            CurrencyRate.objects.create(
                source=source, currency=currency, period=period, average_rate=average, end_rate=end
            )
        elif rate.average_rate != average or rate.end_rate != end:
            rate.average_rate, rate.end_rate = average, end
            rate.save(update_fields=["average_rate", "end_rate"])
    if stored:
        CurrencyRate.objects.filter(pk__in=[r.pk for r in stored.values()]).delete()


def _delete_outside(source: DataSource, config: DemoConfig, scenario_ids: dict[str, int]) -> LoadResult:
    """Delete the source's facts outside the generated months (after a config change)."""
    scope = {
        (scenario_ids[code], period)
        for code, periods in (
            (ACTUAL, config.periods),
            (BUDGET, config.periods),
            (FORECAST, config.forecast_periods),
        )
        for period in periods
    }
    result = LoadResult()
    for model in (FinancialFact, OperationalFact):
        deleted, months = delete_facts_outside(model, source, scope)
        result.rows_deleted += deleted
        result.changed_periods |= months  # the incremental recompute must redo those months
    return result


def load(source: DataSource, *, report: Report) -> LoadResult:
    """Generate the demo company from ``source.config`` and load it (in the caller's transaction)."""
    raw = dict(source.config or {})
    if "start" not in raw:
        # A start that moved with the calendar would change the data on every run: fix it now.
        months = raw.get("months", DEFAULT_MONTHS)
        months = months if isinstance(months, int) and MIN_MONTHS <= months <= MAX_MONTHS else DEFAULT_MONTHS
        raw["start"] = f"{default_start(timezone.localdate(), months):%Y-%m}"
        report.warn(f"The demo config had no start month; it is now fixed at {raw['start']}.")
    config = parse_config(raw)
    if source.config != config.as_json():
        source.config = config.as_json()
        source.save(update_fields=["config"])
    if config.periods[-1] >= month_start(timezone.localdate()):
        report.warn(
            f"The demo's actual months run to {config.periods[-1]:%Y-%m}, past the last complete month."
        )

    data = generate(config)
    ids = upsert_dimensions()
    _write_rates(source, data.rates)
    entity, department, scenario = ids["entity"], ids["department"], ids["scenario"]
    account, series = ids["account"], ids["series"]
    result = load_financial_facts(
        source=source,
        rows=(
            (period, entity[e], department[d], scenario[s], account[a], amount)
            for period, e, d, s, a, amount in data.financial
        ),
    )
    result.add(
        load_operational_facts(
            source=source,
            rows=(
                (day, entity[e], scenario[s], series[code], dimension, value, count)
                for day, e, s, code, dimension, value, count in data.operational
            ),
        )
    )
    result.add(_delete_outside(source, config, scenario))
    return result


def demo_source_ensure(
    *, seed: int | None = None, months: int | None = None, today: date | None = None
) -> DataSource:
    """Create or update the demo data source. An existing source keeps its start month (and its
    seed and months unless given), so running the demo again loads the same data."""
    source = DataSource.objects.filter(slug=SOURCE_SLUG).first()
    old = dict(source.config) if source and isinstance(source.config, dict) else {}
    seed = seed if seed is not None else old.get("seed", DEFAULT_SEED)
    months = months if months is not None else old.get("months", DEFAULT_MONTHS)
    start = old.get("start") or f"{default_start(today or timezone.localdate(), months):%Y-%m}"
    config = parse_config({"seed": seed, "start": start, "months": months}).as_json()
    if source is None:
        return DataSource.objects.create(
            slug=SOURCE_SLUG, name=SOURCE_NAME, kind=DataSource.Kind.DEMO, config=config
        )
    if (source.name, source.kind, source.config) != (SOURCE_NAME, DataSource.Kind.DEMO, config):
        source.name, source.kind, source.config = SOURCE_NAME, DataSource.Kind.DEMO, config
        source.save(update_fields=["name", "kind", "config"])
    return source
