from datetime import date
from decimal import Decimal

import pytest

from finops.loading import load_financial_facts, load_operational_facts, record_coverage
from finops.models import FinancialFact, OperationalFact, PeriodCoverage
from tests import factories

pytestmark = pytest.mark.django_db

JAN, FEB, MAR = date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1)


@pytest.fixture
def dims():
    return factories.dimensions()


def amounts(source=None) -> dict:
    facts = FinancialFact.objects.all() if source is None else FinancialFact.objects.filter(source=source)
    return {
        (f.period, f.account.code, f.scenario.code): f.amount
        for f in facts.select_related("account", "scenario")
    }


def test_it_adds_up_rows_that_share_a_key(dims):
    src = factories.source()
    result = load_financial_facts(
        source=src, rows=[factories.fin_row(dims, JAN, "100.10"), factories.fin_row(dims, JAN, "-0.10")]
    )
    assert result.rows_read == 2
    assert result.rows_inserted == 1
    assert amounts() == {(JAN, "4000", "actual"): Decimal("100.00")}


def test_loading_the_same_rows_again_changes_nothing(dims):
    src = factories.source()
    rows = [factories.fin_row(dims, JAN, "10"), factories.fin_row(dims, FEB, "20", account="cash")]
    load_financial_facts(source=src, rows=rows)
    before = list(FinancialFact.objects.order_by("pk").values_list("pk", "amount"))
    again = load_financial_facts(source=src, rows=rows)
    assert (again.rows_inserted, again.rows_updated, again.rows_deleted, again.rows_unchanged) == (0, 0, 0, 2)
    assert list(FinancialFact.objects.order_by("pk").values_list("pk", "amount")) == before


def test_a_corrected_row_is_updated_and_a_removed_row_deleted(dims):
    src = factories.source()
    load_financial_facts(
        source=src,
        rows=[factories.fin_row(dims, JAN, "10"), factories.fin_row(dims, JAN, "5", account="cash")],
    )
    result = load_financial_facts(source=src, rows=[factories.fin_row(dims, JAN, "12")])
    assert (result.rows_updated, result.rows_deleted) == (1, 1)
    assert amounts() == {(JAN, "4000", "actual"): Decimal("12")}


def test_periods_and_scenarios_not_in_the_load_are_left_alone(dims):
    src = factories.source()
    load_financial_facts(
        source=src,
        rows=[
            factories.fin_row(dims, JAN, "10"),
            factories.fin_row(dims, FEB, "20"),
            factories.fin_row(dims, FEB, "25", scenario="budget"),
        ],
    )
    load_financial_facts(source=src, rows=[factories.fin_row(dims, FEB, "21")])
    assert amounts() == {
        (JAN, "4000", "actual"): Decimal("10"),
        (FEB, "4000", "actual"): Decimal("21"),
        (FEB, "4000", "budget"): Decimal("25"),
    }


def test_another_sources_facts_are_never_touched(dims):
    ledger, other = factories.source("ledger"), factories.source("other")
    load_financial_facts(source=other, rows=[factories.fin_row(dims, MAR, "7")])
    load_financial_facts(source=ledger, rows=[factories.fin_row(dims, MAR, "3")])
    load_financial_facts(source=ledger, rows=[factories.fin_row(dims, MAR, "4")])
    assert amounts(other) == {(MAR, "4000", "actual"): Decimal("7")}
    assert amounts(ledger) == {(MAR, "4000", "actual"): Decimal("4")}


def test_operational_facts_keep_sum_and_count_and_derive_the_period(dims):
    src = factories.source()
    row = (date(2024, 2, 17), dims["entity"].pk, dims["actual"].pk, dims["orders"].pk, "web", Decimal("3"), 3)
    load_operational_facts(source=src, rows=[row, row])
    fact = OperationalFact.objects.get()
    assert (fact.period, fact.value, fact.count) == (FEB, Decimal("6"), 6)
    assert load_operational_facts(source=src, rows=[row, row]).rows_unchanged == 1


def test_coverage_counts_rows_per_scenario_and_month(dims):
    src = factories.source()
    load_financial_facts(
        source=src,
        rows=[
            factories.fin_row(dims, JAN, "1"),
            factories.fin_row(dims, JAN, "1", account="cash"),
            factories.fin_row(dims, FEB, "1", scenario="budget"),
        ],
    )
    record_coverage(source=src)
    record_coverage(source=src)  # recounting replaces, never duplicates
    got = sorted(PeriodCoverage.objects.values_list("scenario__code", "fact_kind", "period", "rows"))
    assert got == [("actual", "financial", JAN, 2), ("budget", "financial", FEB, 1)]
