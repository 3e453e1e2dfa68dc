"""Every KPI of the standard library against numbers worked out by hand (February 2024, 29 days)."""

from datetime import date
from decimal import Decimal

import pytest
import yaml

from kpis.definitions import LIBRARY_DIR, import_definitions
from kpis.engine import recompute
from kpis.models import KPI, KPIValue

FEB = date(2024, 2, 1)

FINANCE_MEASURES = {  # measure code -> (flow or balance, February amount)
    "net_sales": ("flow", "2000"),
    "cost_of_sales": ("flow", "1200"),
    "operating_expenses": ("flow", "500"),
    "profit_after_tax": ("flow", "200"),
    "receivables": ("balance", "1500"),
    "inventory": ("balance", "900"),
    "payables": ("balance", "600"),
    "cash": ("balance", "400"),
    "current_assets": ("balance", "3000"),
    "current_liabilities": ("balance", "1500"),
    "total_assets": ("balance", "10000"),
    "employees": ("balance", "50"),
}
SERIES = {  # measure code -> February (value, count)
    "orders": ("200", 200),
    "orders_on_time": ("180", 200),
    "orders_in_full": ("190", 200),
    "orders_otif": ("175", 200),
    "orders_perfect": ("170", 200),
    "delivery_days": ("800", 200),
    "units_shipped": ("1000", 1000),
    "units_returned": ("10", 1000),
    "units_produced": ("1100", 1100),
    "units_defective": ("22", 1100),
    "capacity_hours": ("500", 20),
    "production_hours": ("420", 20),
    "calls_offered": ("1000", 1000),
    "calls_answered_in_sla": ("850", 1000),
    "calls_abandoned": ("40", 1000),
    "survey_responses": ("300", 300),
    "csat_satisfied": ("255", 300),
    "nps_promoters": ("150", 300),
    "nps_detractors": ("45", 300),
}

EXPECTED = {
    "revenue": "2000",
    "cogs": "1200",
    "gross_margin": "800",
    "gross_margin_pct": "0.4",
    "opex": "500",
    "operating_income": "300",
    "operating_margin": "0.15",
    "net_income": "200",
    "roi": "0.136842",  # twelve months of profit 11 x 100 + 200 = 1300 over average assets (9000 + 10000) / 2
    "working_capital": "1500",
    "current_ratio": "2",
    "quick_ratio": "1.4",  # (3000 - 900) / 1500
    "dso": "21.75",  # 1500 / 2000 x 29
    "dio": "21.75",  # 900 / 1200 x 29
    "dpo": "14.5",  # 600 / 1200 x 29
    "cash_conversion_cycle": "29",  # 21.75 + 21.75 - 14.5
    "inventory_turnover": "18.87931",  # 1200 / ((700 + 900) / 2) x 365 / 29
    "headcount": "50",
    "revenue_vs_budget": "-100",  # 2000 - 2100
    "revenue_vs_budget_pct": "-0.047619",  # -100 / 2100
    "opex_vs_budget": "50",  # 500 - 450
    "opex_vs_budget_pct": "0.111111",  # 50 / 450
    "on_time_delivery": "0.9",
    "in_full": "0.95",
    "otif": "0.875",
    "perfect_order_rate": "0.85",
    "order_cycle_time": "4",  # 800 days over 200 delivered orders
    "capacity_utilisation": "0.84",
    "defect_rate": "0.02",
    "return_rate": "0.01",
    "cost_per_unit": "1.090909",  # 1200 / 1100
    "service_level": "0.85",
    "abandonment_rate": "0.04",
    "csat": "0.85",
    "nps": "35",  # (150 - 45) / 300 x 100
}


@pytest.fixture
def library(book):
    measures = []
    for code, (behaviour, _) in FINANCE_MEASURES.items():
        book.account(code, balance=behaviour == "balance")
        measures.append(
            {"code": code, "name": code, "kind": "account", "account": code, "time_behaviour": behaviour}
        )
    for code in ("budget_net_sales", "budget_operating_expenses"):
        measures.append(
            {
                "code": code,
                "name": code,
                "kind": "account",
                "account": code.removeprefix("budget_"),
                "scenario": "budget",
                "time_behaviour": "flow",
            }
        )
    for code in SERIES:
        book.a_series(code)
        kind = "series_value"
        measures.append({"code": code, "name": code, "kind": kind, "series": code, "time_behaviour": "flow"})
    measures.append(
        {
            "code": "delivered_orders",
            "name": "Delivered orders",
            "kind": "series_count",
            "series": "delivery_days",
            "time_behaviour": "flow",
        }
    )
    rows = [("2024-02", "US", code, amount) for code, (_, amount) in FINANCE_MEASURES.items()]
    rows += [("2024-01", "US", "inventory", "700"), ("2024-01", "US", "total_assets", "9000")]
    rows += [(f"{year}-{month:02d}", "US", "profit_after_tax", "100") for year, month in _months(2023, 3, 11)]
    rows += [
        ("2024-02", "US", "net_sales", "2100", "budget"),
        ("2024-02", "US", "operating_expenses", "450", "budget"),
    ]
    book.book(rows)
    book.observe([("2024-02", "US", code, value, count) for code, (value, count) in SERIES.items()])
    standard = yaml.safe_load((LIBRARY_DIR / "standard.yaml").read_text())
    report = import_definitions({"version": 1, "measures": measures, "kpis": standard["kpis"]}, library=True)
    assert report.skipped == []
    recompute()
    return book


def _months(year: int, month: int, count: int):
    for _ in range(count):
        yield year, month
        month += 1
        if month == 13:
            year, month = year + 1, 1


def test_the_library_covers_every_kpi_of_the_brief():
    codes = {row["code"] for row in yaml.safe_load((LIBRARY_DIR / "standard.yaml").read_text())["kpis"]}
    assert codes == set(EXPECTED)


def test_every_library_kpi_matches_the_hand_computed_value(library):
    stored = KPIValue.objects.filter(period=FEB, grain="month", entity__code="US", scenario__code="actual")
    got = {v.kpi.code: v for v in stored.select_related("kpi")}
    wrong = {}
    for code, expected in EXPECTED.items():
        found = got.get(code)
        if found is None or found.value is None or abs(found.value - Decimal(expected)) > Decimal("0.000001"):
            wrong[code] = (expected, found and found.value, found and found.empty_reason)
    assert wrong == {}


def test_every_library_kpi_documents_its_meaning(library):
    for kpi in KPI.objects.filter(is_library=True):
        assert kpi.description, kpi.code
        assert kpi.owner_department is None or kpi.owner_department.side in ("finance", "operations")


def test_ttm_without_a_full_year_is_empty_with_the_reason(library):
    early = KPIValue.objects.get(kpi__code="roi", period=date(2023, 3, 1), grain="month", entity__code="US")
    assert early.value is None and "12 months" in early.empty_reason
