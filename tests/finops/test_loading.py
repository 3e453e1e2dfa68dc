from datetime import date
from decimal import Decimal

import pytest
from django.db.models import ProtectedError

from finops.loading import load_financial_facts, load_operational_facts, record_coverage
from finops.models import FinancialFact, OperationalFact, PeriodCoverage
from tests import factories

pytestmark = pytest.mark.django_db

JAN, FEB, MAR = date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1)


@pytest.fixture
def dims():
    return factories.dimensions()


def amounts(source=None) -> dict:
    factories.assert_ledger_totals_match_facts()
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


# --- the PostgreSQL COPY path gives exactly what the portable path gives ---------------------

APR = date(2024, 4, 1)


def _facts_by_key(src) -> dict:
    financial = {
        ("fin", f.period, f.entity_id, f.department_id, f.scenario_id, f.account_id): f.amount
        for f in FinancialFact.objects.filter(source=src)
    }
    operational = {
        ("op", f.period, f.date, f.entity_id, f.scenario_id, f.series_id, f.dimension): (f.value, f.count)
        for f in OperationalFact.objects.filter(source=src)
    }
    return financial | operational


def _figures(result) -> tuple:
    return (
        result.rows_read,
        result.rows_inserted,
        result.rows_updated,
        result.rows_deleted,
        result.rows_unchanged,
        sorted(result.changed_periods),
    )


def _both_paths(settings, loads) -> tuple[list, list]:
    """Run the same loads on a source through each path; (results, facts after each load)."""
    from finops import loading

    got = {}
    for path, threshold in (("portable", 10**9), ("copy", 1)):
        settings.FINOPS_LOAD_COPY_MIN_ROWS = threshold
        src = factories.source(f"src-{path}")
        steps = []
        for kind, rows in loads:
            assert loading.use_copy(len(rows)) == (path == "copy")
            load = load_financial_facts if kind == "fin" else load_operational_facts
            steps.append((_figures(load(source=src, rows=rows)), _facts_by_key(src)))
            factories.assert_ledger_totals_match_facts()
        got[path] = steps
    assert got["copy"] == got["portable"]
    return got["copy"]


@pytest.mark.postgres
def test_copy_path_matches_the_portable_path_on_financial_loads(settings, dims):
    row = lambda *args, **kw: factories.fin_row(dims, *args, **kw)  # noqa: E731
    first = [
        row(JAN, "100.10"),
        row(JAN, "-0.10"),  # adds up with the row above: 100.00
        row(JAN, "5", account="cash"),
        row(FEB, "20"),
        row(FEB, "25", scenario="budget"),
        row(MAR, "7", account="cash"),
    ]
    corrected = [
        row(JAN, "100.00"),  # same amount: unchanged
        row(JAN, "6", account="cash"),  # corrected
        row(FEB, "1", account="cash"),  # new; FEB revenue actual removed at the source
        row(APR, "3"),  # a new period
    ]
    steps = _both_paths(
        settings,
        [("fin", first), ("fin", first), ("fin", corrected), ("fin", corrected), ("fin", [row(JAN, "100")])],
    )
    figures = [figures for figures, _facts in steps]
    assert figures[0] == (6, 5, 0, 0, 0, [JAN, FEB, MAR])
    assert figures[1] == (6, 0, 0, 0, 5, [])  # the same data again changes nothing
    assert figures[2] == (4, 2, 1, 1, 1, [JAN, FEB, APR])
    assert figures[3] == (4, 0, 0, 0, 4, [])
    assert figures[4] == (1, 0, 0, 1, 1, [JAN])  # 100 == 100.00; JAN cash removed
    facts = steps[2][1]
    # FEB budget (a scenario the corrected load does not cover) and MAR are left alone.
    assert (
        facts[("fin", FEB, dims["entity"].pk, dims["department"].pk, dims["budget"].pk, dims["revenue"].pk)]
        == 25
    )
    assert (
        facts[("fin", MAR, dims["entity"].pk, dims["department"].pk, dims["actual"].pk, dims["cash"].pk)] == 7
    )


@pytest.mark.postgres
def test_copy_path_matches_the_portable_path_on_operational_loads(settings, dims):
    def row(day, dimension, value, count=1):
        return (
            day,
            dims["entity"].pk,
            dims["actual"].pk,
            dims["orders"].pk,
            dimension,
            Decimal(value),
            count,
        )

    odd = "tab\there, back\\slash\nnew line\r"  # text that COPY must escape
    first = [
        row(date(2024, 1, 5), "web", "3", 3),
        row(date(2024, 1, 5), "web", "2.5", 2),  # adds up: 5.5 / 5
        row(date(2024, 1, 6), odd, "1"),
        row(date(2024, 2, 1), "", "4"),
    ]
    second = [row(date(2024, 1, 5), "web", "5.5", 5), row(date(2024, 1, 6), odd, "1", 2)]
    steps = _both_paths(settings, [("op", first), ("op", first), ("op", second)])
    figures = [figures for figures, _facts in steps]
    assert figures[0] == (4, 3, 0, 0, 0, [JAN, FEB])
    assert figures[1] == (4, 0, 0, 0, 3, [])
    assert figures[2] == (2, 0, 1, 0, 1, [JAN])  # count corrected; FEB not covered, kept
    assert (
        "op",
        JAN,
        date(2024, 1, 6),
        dims["entity"].pk,
        dims["actual"].pk,
        dims["orders"].pk,
        odd,
    ) in steps[2][1]


@pytest.mark.postgres
def test_copy_path_writes_nothing_when_the_callers_transaction_rolls_back(settings, dims):
    from django.db import transaction

    settings.FINOPS_LOAD_COPY_MIN_ROWS = 1
    src = factories.source()
    load_financial_facts(source=src, rows=[factories.fin_row(dims, JAN, "1")])
    with pytest.raises(RuntimeError), transaction.atomic():
        result = load_financial_facts(source=src, rows=[factories.fin_row(dims, FEB, "2")])
        assert result.rows_inserted == 1
        raise RuntimeError("a later step of the run failed")
    assert amounts() == {(JAN, "4000", "actual"): Decimal("1")}
    # a second COPY load in the same transaction reuses the staging table's name
    load_financial_facts(source=src, rows=[factories.fin_row(dims, MAR, "3")])
    assert amounts() == {(JAN, "4000", "actual"): Decimal("1"), (MAR, "4000", "actual"): Decimal("3")}


def test_small_loads_and_sqlite_take_the_portable_path(settings):
    from django.db import connection

    from finops import loading

    settings.FINOPS_LOAD_COPY_MIN_ROWS = 20_000
    assert not loading.use_copy(19_999)
    assert loading.use_copy(20_000) == (connection.vendor == "postgresql")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_dimension_cannot_change_under_a_load_until_it_commits(dims):
    """Facts keep their references without per-row foreign-key triggers: a load holds the
    dimension tables in SHARE mode, so deleting or renaming an entity waits for its commit."""
    from django.db import transaction

    src = factories.source()
    entity = dims["entity"]
    with transaction.atomic():
        load_financial_facts(source=src, rows=[factories.fin_row(dims, JAN, "10")])
        assert (
            factories.other_connection_tries("DELETE FROM finops_entity WHERE id = %s", [entity.pk])
            == "waited"
        )
        assert (
            factories.other_connection_tries("UPDATE finops_entity SET code = 'x' WHERE id = %s", [entity.pk])
            == "waited"
        )
        # Reading them is not held up.
        assert factories.other_connection_tries("SELECT count(*) FROM finops_entity", []) == "done"
    # After the commit the tables are free again (the delete is refused by PROTECT in the ORM).
    assert factories.other_connection_tries("SELECT count(*) FROM finops_entity", []) == "done"
    with pytest.raises(ProtectedError):
        entity.delete()


def test_the_ledger_totals_command_rebuilds_them_from_the_facts(dims):
    from io import StringIO

    from django.core.management import call_command

    load_financial_facts(source=factories.source(), rows=[factories.fin_row(dims, JAN, "10")])
    FinancialFact.objects.update(amount=Decimal("12"))  # changed by hand, behind the loaders' back
    out = StringIO()
    call_command("ledger_totals", stdout=out)
    assert "1 ledger totals recomputed" in out.getvalue()
    factories.assert_ledger_totals_match_facts()
