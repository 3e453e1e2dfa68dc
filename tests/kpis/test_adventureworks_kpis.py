"""KPIs on the real AdventureWorksDW export, against totals computed independently from the
files (csv + Decimal, nearest-first-of-month periods, signs read off DimAccount by hand)."""

from datetime import date
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import transaction

from kpis.models import KPIValue
from tests.conftest import AW_DIR

US = "usa-operations"  # the five US divisions, all in US dollars
YEAR_2011 = date(2011, 1, 1)


@pytest.fixture(scope="module")
def imported(django_db_setup, django_db_blocker):
    """Import once for the module inside a transaction rolled back at the end."""
    if not (AW_DIR / "FactFinance.csv").exists():
        pytest.skip(f"AdventureWorksDW sample data not found at {AW_DIR} (set FINOPS_SHARED_DATA)")
    with django_db_blocker.unblock(), transaction.atomic():
        out = StringIO()
        call_command("import_adventureworks", str(AW_DIR), stdout=out)
        yield out.getvalue()
        transaction.set_rollback(True)


def kpi(code: str, period: date, grain: str, scenario: str = "actual", entity: str = US) -> KPIValue:
    return KPIValue.objects.get(
        kpi__code=code, period=period, grain=grain, scenario__code=scenario, entity__code=entity
    )


@pytest.mark.django_db
def test_us_net_sales_2011_against_budget(imported):
    revenue = kpi("revenue", YEAR_2011, "year")
    assert revenue.value == Decimal("16099612")
    assert revenue.target == Decimal("17785650") and revenue.target_origin == "budget"
    assert revenue.status == "red"  # 9.5 % short of budget
    assert kpi("revenue", YEAR_2011, "year", scenario="budget").value == Decimal("17785650")


@pytest.mark.django_db
def test_us_gross_margin_2011_against_budget(imported):
    margin = kpi("gross_margin", YEAR_2011, "year")
    assert (margin.value, margin.target) == (Decimal("10714186"), Decimal("11848650"))
    assert kpi("gross_margin_pct", YEAR_2011, "year").value == Decimal("0.665493")
    assert kpi("cogs", YEAR_2011, "year").value == Decimal("5385426")


@pytest.mark.django_db
def test_us_operating_expenses_2011_against_budget(imported):
    opex = kpi("opex", YEAR_2011, "year")
    assert (opex.value, opex.target) == (Decimal("6420621"), Decimal("6264750"))
    assert opex.status == "amber"  # 2.5 % over budget, lower is better
    assert kpi("opex_vs_budget", YEAR_2011, "year").value == Decimal("155871")


@pytest.mark.django_db
def test_current_ratio_at_a_period_end(imported):
    # Dec 2012: current assets 9,511,641 over current liabilities 2,573,782
    assert kpi("current_ratio", date(2012, 12, 1), "month").value == Decimal("3.695589")
    # a year takes its closing balances: the same as December's
    assert kpi("current_ratio", date(2012, 1, 1), "year").value == Decimal("3.695589")


@pytest.mark.django_db
def test_the_group_total_translates_foreign_currencies(imported):
    year = date(2012, 1, 1)
    group = kpi("revenue", year, "year", entity="adventureworks-cycle")
    north_america = kpi("revenue", year, "year", entity="north-america-operations")
    europe = kpi("revenue", year, "year", entity="european-operations")  # France + Germany, both EUR
    assert europe.value is not None and group.value is not None
    # The group adds Europe and the Pacific translated to US dollars, never as raw euros.
    assert group.value > north_america.value
    assert group.value - north_america.value != europe.value
