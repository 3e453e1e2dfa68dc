"""Recomputing in proportion to what changed.

After a successful refresh the engine trusts the stored values: it re-derives, evaluates and
writes only what the changed months can reach. Whatever it skips must be what a full
recompute from scratch would have stored anyway, to the last field: these tests compare the
two after every kind of change (facts, formulas, targets, and none).
"""

from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finops.loading import load_financial_facts, rebuild_ledger_totals, update_ledger_totals
from finops.models import Account, Department, Entity, FinancialFact, RefreshRun, Scenario
from kpis import engine
from kpis.definitions import import_definitions
from kpis.engine import EngineResult, _delete_keys, _insert_rows, recompute
from kpis.models import KPI, KPIChange, KPIValue, Measure, MeasureValue, StoredKPIState, StoredSeries, Target
from kpis.services import kpi_save
from tests.kpis.conftest import Book

MONTHS = [date(2023 + (m - 1) // 12, (m - 1) % 12 + 1, 1) for m in range(1, 25)]  # 2023 and 2024
ACCOUNTS = ("4100", "4200", "5000", "1200", "1900")

MEASURES = [
    {"code": "net_sales", "name": "n", "kind": "account", "account": "4000", "time_behaviour": "flow"},
    {"code": "cost", "name": "c", "kind": "account", "account": "5000", "time_behaviour": "flow"},
    {"code": "receivables", "name": "r", "kind": "account", "account": "1200", "time_behaviour": "balance"},
    {"code": "assets", "name": "a", "kind": "account", "account": "1900", "time_behaviour": "balance"},
    {
        "code": "budget_sales",
        "name": "b",
        "kind": "account",
        "account": "4000",
        "scenario": "budget",
        "time_behaviour": "flow",
    },
]
KPIS = [
    {"code": "revenue", "name": "Revenue", "unit": "currency", "formula": "net_sales"},
    {"code": "margin", "name": "Margin", "unit": "percent", "formula": "(revenue - cost) / revenue"},
    {
        "code": "dso",
        "name": "DSO",
        "unit": "days",
        "direction": "lower",
        "formula": "receivables / revenue * days()",
    },
    {
        "code": "return_on_assets",
        "name": "ROA",
        "unit": "percent",
        "formula": "ttm(revenue - cost) / avg_balance(assets)",
        "target_rule": "last_year_plus",
        "target_rule_pct": 5,
    },
    {"code": "growth", "name": "Growth", "unit": "percent", "formula": "revenue / prev(revenue) - 1"},
    {"code": "vs_budget", "name": "Vs budget", "unit": "currency", "formula": "revenue - budget_sales"},
    {
        "code": "yoy",
        "name": "Year on year",
        "unit": "currency",
        "formula": "ytd(net_sales) - last_year(ytd(net_sales))",
        "target_rule": "manual",
    },
]


@pytest.fixture
def company(book: Book) -> Book:
    book.account("4000")
    book.account("4100", parent="4000")
    book.account("4200", parent="4000", sign=-1)
    book.account("5000")
    book.account("1200", balance=True)
    book.account("1900", balance=True)
    import_definitions({"version": 1, "measures": MEASURES, "kpis": KPIS})
    return book


def facts(seed: int, months: list[date] = MONTHS) -> list[tuple]:
    """Actual for every month and entity, budget for net sales; a few zero sales (division by zero)."""
    rows = []
    for n, month in enumerate(months):
        for entity in ("US", "EU"):
            for k, account in enumerate(ACCOUNTS):
                amount = (seed * 7919 + n * 104729 + k * 1299709 + len(entity) * 15485863) % 1000
                if account == "4100" and amount < 60:
                    amount = 0
                rows.append((f"{month:%Y-%m}", entity, account, str(amount)))
            rows.append((f"{month:%Y-%m}", entity, "4100", str(500 + n), "budget"))
    return rows


def finish(run: RefreshRun) -> None:
    run.status, run.finished_at = RefreshRun.Status.SUCCEEDED, timezone.now()
    run.save()


def settle() -> None:
    """Definitions made long before the runs (as they are in a running system)."""
    old = timezone.now() - timedelta(days=1)
    KPIChange.objects.update(changed_at=old)
    Measure.objects.update(updated_at=old)


def refreshed(**kwargs) -> EngineResult:
    """recompute() inside a successful run, as the refresh pipeline does it."""
    run = RefreshRun.objects.create(status=RefreshRun.Status.RUNNING)
    result = recompute(run=run, **kwargs)
    finish(run)
    return result


def snapshot() -> tuple[list, list]:
    kpis = sorted(
        (v.kpi.code, v.scenario_id, v.entity_id, v.grain, v.period, v.value, v.empty_reason, v.target)
        + (v.target_origin, v.variance, v.variance_pct, v.status, v.status_reason, v.formula_version)
        + (sorted(v.inputs.items()), v.partial)
        for v in KPIValue.objects.select_related("kpi")
    )
    measures = sorted(
        MeasureValue.objects.values_list(
            "measure__code", "scenario_id", "entity_id", "grain", "period", "value", "note"
        )
    )
    return kpis, measures


def from_scratch() -> tuple[list, list]:
    """What a full recompute without any stored values gives."""
    KPIValue.objects.all().delete()
    MeasureValue.objects.all().delete()
    RefreshRun.objects.all().delete()
    recompute()
    return snapshot()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(min_value=0, max_value=10_000),
    changes=st.lists(
        st.tuples(
            st.sampled_from(MONTHS), st.sampled_from(ACCOUNTS), st.integers(min_value=-1, max_value=999)
        ),
        min_size=1,
        max_size=4,
    ),
    told=st.booleans(),
)
def test_recomputing_what_changed_gives_what_a_full_recompute_gives(company, seed, changes, told):
    """Facts of a few months change (an amount, or a row removed with -1); the refresh is told
    which months, or finds them itself in a full recompute."""
    FinancialFact.objects.all().delete()
    rebuild_ledger_totals()  # as the loaders keep them
    RefreshRun.objects.all().delete()
    company.book(facts(seed))
    refreshed()
    settle()
    months = sorted({month for month, _, _ in changes})
    amounts = {(f"{month:%Y-%m}", account): value for month, account, value in changes}
    rows = []
    for row in facts(seed):
        month, entity, account, amount = row[:4]
        if date.fromisoformat(month + "-01") not in months:
            continue
        if len(row) == 4 and (month, account) in amounts:
            if amounts[(month, account)] < 0:
                continue
            amount = str(amounts[(month, account)])
        rows.append((month, entity, account, amount, *row[4:]))
    company.book(rows)
    refreshed(months=months if told else None)
    assert snapshot() == from_scratch()


def test_a_full_recompute_of_unchanged_facts_writes_nothing_and_keeps_each_values_run(company):
    company.book(facts(1))
    refreshed()
    settle()
    first = KPIValue.objects.values_list("refresh_run_id", flat=True).distinct()
    again = refreshed()
    assert (again.kpi_inserted, again.kpi_updated, again.kpi_deleted, again.kpi_values) == (0, 0, 0, 0)
    assert list(KPIValue.objects.values_list("refresh_run_id", flat=True).distinct()) == list(first)


def test_one_changed_month_writes_only_what_it_reaches(company):
    company.book(facts(2))
    refreshed()
    settle()
    march = date(2023, 3, 1)
    company.book(facts(3, [march]))
    result = refreshed(months=[march])
    written = set(
        KPIValue.objects.filter(refresh_run=RefreshRun.objects.latest("started_at")).values_list(
            "kpi__code", "grain", "period"
        )
    )
    assert ("revenue", "month", march) in written and ("revenue", "quarter", date(2023, 1, 1)) in written
    assert {code for code, grain, period in written if grain == "month" and period != march} <= {
        "return_on_assets",  # twelve months of ttm, and last year's value as next year's target
        "growth",  # next month's prev()
        "yoy",  # the rest of the fiscal year to date, and next year's last_year()
    }
    assert result.kpi_values < KPIValue.objects.count() / 2
    assert snapshot() == from_scratch()


def test_a_changed_months_quarter_and_year_move_by_its_change_without_reading_their_other_months(
    company, monkeypatch
):
    """Sales (a flow) and receivables (a balance) of the US change in February and March 2023:
    the first quarter and the year move by the changes from their stored values (the
    quarter's balance is March's, the year's December's, which did not change), without the
    year's other months being read, and as a full recompute finds."""
    company.book(facts(4))
    refreshed()
    settle()
    february, march = date(2023, 2, 1), date(2023, 3, 1)

    def us_actual() -> dict[tuple[str, str, date], Decimal]:
        rows = MeasureValue.objects.filter(
            measure__code__in=["net_sales", "receivables"], entity__code="US", scenario__code="actual"
        ).values_list("measure__code", "grain", "period", "value")
        return {(code, grain, period): value for code, grain, period, value in rows}

    old = us_actual()
    read: list[tuple[str, date]] = []
    real_get = engine._StoredMeasures.get

    def get(self, pairs):
        pairs = set(pairs)
        read.extend(pairs)
        return real_get(self, pairs)

    monkeypatch.setattr(engine._StoredMeasures, "get", get)
    rows = []
    for row in facts(4):
        month, entity, account, amount = row[:4]
        if month not in ("2023-02", "2023-03"):
            continue
        if len(row) == 4 and entity == "US" and account in ("4100", "1200"):
            amount = str(int(amount) + 100)
        rows.append((month, entity, account, amount, *row[4:]))
    company.book(rows)
    refreshed(months=[february, march])
    assert ("month", date(2023, 1, 1)) not in read and ("month", date(2023, 12, 1)) not in read
    new = us_actual()
    start = date(2023, 1, 1)  # of the first quarter and of the (calendar) fiscal year
    assert new[("net_sales", "month", march)] == old[("net_sales", "month", march)] + 100
    assert new[("net_sales", "quarter", start)] == old[("net_sales", "quarter", start)] + 200
    assert new[("net_sales", "year", start)] == old[("net_sales", "year", start)] + 200
    assert new[("receivables", "quarter", start)] == old[("receivables", "quarter", start)] + 100
    assert new[("receivables", "year", start)] == old[("receivables", "year", start)]  # December's
    monkeypatch.setattr(engine._StoredMeasures, "get", real_get)
    assert snapshot() == from_scratch()


def test_a_changed_formula_is_recomputed_for_every_period(company):
    company.book(facts(4))
    refreshed()
    settle()
    kpi = KPI.objects.get(code="revenue")
    kpi.formula = "net_sales * 2"
    kpi_save(kpi=kpi)
    refreshed(months=[])
    assert snapshot() == from_scratch()
    assert KPIValue.objects.filter(kpi__code="margin", formula_version=1).exists()


def test_a_changed_measure_definition_is_recomputed_for_every_period(company):
    """A measure saved since the last run (here: net sales now reads one account of the
    subtree) may change every month's values: the next refresh (a full one, as the pipeline
    runs it then) recomputes them all."""
    company.book(facts(15))
    refreshed()
    settle()
    measure = Measure.objects.get(code="net_sales")
    measure.accounts.set([company.accounts["4100"]])
    measure.save()  # its updated_at
    actual = KPIValue.objects.filter(kpi__code="revenue", scenario__code="actual")
    before = dict(actual.exclude(value=None).values_list("id", "value"))
    refreshed()
    after = dict(actual.values_list("id", "value"))
    assert before and sum(before[pk] != after[pk] for pk in before) > 0.9 * len(before)
    assert snapshot() == from_scratch()


def test_a_changed_threshold_rewrites_the_statuses_of_every_period(company):
    """A KPI change that keeps its formula (here: its direction and tolerances) changes
    statuses everywhere; the next refresh writes them, no fact having changed."""
    company.book(facts(16))
    refreshed()
    settle()
    kpi = KPI.objects.get(code="revenue")
    kpi.direction, kpi.green_tolerance_pct, kpi.amber_tolerance_pct = "lower", Decimal("1"), Decimal("2")
    kpi_save(kpi=kpi)
    before = dict(KPIValue.objects.filter(kpi=kpi).exclude(status="none").values_list("id", "status"))
    refreshed(months=[])
    after = dict(KPIValue.objects.filter(kpi=kpi).exclude(status="none").values_list("id", "status"))
    assert before and sum(before[pk] != after[pk] for pk in before) > len(before) // 4
    assert snapshot() == from_scratch()


def test_a_new_typed_target_is_applied_without_any_fact_changing(company):
    company.book(facts(5))
    refreshed()
    settle()
    Target.objects.create(
        kpi=KPI.objects.get(code="revenue"), grain="year", period=date(2024, 1, 1), value=Decimal("9000")
    )
    refreshed(months=[])
    stored = KPIValue.objects.get(
        kpi__code="revenue",
        grain="month",
        period=date(2024, 2, 1),
        entity__code="US",
        scenario__code="actual",
    )
    assert stored.target_origin == "typed"
    assert snapshot() == from_scratch()


def test_a_deactivated_kpi_loses_its_values(company):
    company.book(facts(6))
    refreshed()
    settle()
    kpi = KPI.objects.get(code="yoy")
    kpi.is_active = False
    kpi_save(kpi=kpi)
    refreshed(months=[])
    assert not KPIValue.objects.filter(kpi=kpi).exists()
    assert snapshot() == from_scratch()


@pytest.mark.parametrize("told", [True, False])
def test_a_new_month_extends_the_data_range_as_a_full_recompute_does(company, told):
    company.book(facts(8, MONTHS[:-2]))  # up to Oct 2024: the fourth quarter and 2024 are partial
    refreshed()
    settle()
    november = MONTHS[-2]
    company.book(facts(8, [november]))
    refreshed(months=[november] if told else None)
    quarter = MeasureValue.objects.get(
        measure__code="net_sales",
        grain="quarter",
        period=date(2024, 10, 1),
        entity__code="US",
        scenario__code="actual",
    )
    assert quarter.note == "partial: 2 of 3 months loaded"
    assert snapshot() == from_scratch()


def test_a_month_whose_facts_are_all_removed_leaves_the_data_range(company):
    company.book(facts(9))
    refreshed()
    settle()
    last = MONTHS[-1]
    FinancialFact.objects.filter(period=last).delete()
    update_ledger_totals([last])  # what the loaders do when they delete facts
    refreshed(months=[last])
    assert not MeasureValue.objects.filter(grain="month", period=last).exists()
    assert snapshot() == from_scratch()


def test_a_deleted_measure_empties_the_kpis_that_read_it(company):
    company.book(facts(10))
    refreshed()
    settle()
    Measure.objects.filter(code="assets").delete()
    refreshed(months=[])
    roa = KPIValue.objects.filter(kpi__code="return_on_assets", grain="month")
    assert roa.exists() and not roa.exclude(value=None).exists()
    assert snapshot() == from_scratch()


def test_without_a_successful_previous_run_everything_is_recomputed(company):
    company.book(facts(7))
    recompute()
    settle()
    run = RefreshRun.objects.create(status=RefreshRun.Status.FAILED, finished_at=timezone.now())
    MeasureValue.objects.filter(grain="month", period=date(2023, 5, 1)).update(value=Decimal("1"))
    result = recompute(run=None)  # the last run failed: nothing stored is trusted
    assert result.kpi_values == KPIValue.objects.count()
    assert run.pk and snapshot() == from_scratch()


def test_a_kpi_that_reads_no_changed_measure_is_not_recomputed(company, monkeypatch):
    """Only ledger facts of one month change: a KPI over an operational series is neither
    evaluated nor written again (its values keep their run), a KPI over the ledger is
    rewritten for the periods it reaches."""
    from kpis import engine

    evaluated: set[str] = set()
    store = engine._store_kpis

    def spy(results, book, run, scope=None, **kwargs):
        code_of = {kpi.pk: kpi.code for kpi in book.kpis}
        evaluated.update(code_of[key[0]] for key in results)
        return store(results, book, run, scope, **kwargs)

    monkeypatch.setattr(engine, "_store_kpis", spy)
    company.a_series("orders")
    import_definitions(
        {
            "version": 1,
            "measures": [
                {
                    "code": "orders",
                    "name": "o",
                    "kind": "series_value",
                    "series": "orders",
                    "time_behaviour": "flow",
                }
            ],
            "kpis": [{"code": "order_count", "name": "Orders", "unit": "count", "formula": "orders"}],
        }
    )
    company.book(facts(11))
    company.observe(
        [(f"{month:%Y-%m}", entity, "orders", "40", 40) for month in MONTHS for entity in ("US", "EU")]
    )
    refreshed()
    settle()
    before = dict(KPIValue.objects.filter(kpi__code="order_count").values_list("pk", "refresh_run_id"))
    march = date(2023, 3, 1)
    company.book(facts(12, [march]))
    evaluated.clear()
    result = refreshed(months=[march])
    assert "revenue" in evaluated and "order_count" not in evaluated
    latest = RefreshRun.objects.latest("started_at")
    written = set(KPIValue.objects.filter(refresh_run=latest).values_list("kpi__code", flat=True))
    assert "revenue" in written and "margin" in written
    assert "order_count" not in written
    assert (
        dict(KPIValue.objects.filter(kpi__code="order_count").values_list("pk", "refresh_run_id")) == before
    )
    assert 0 < result.measure_values < MeasureValue.objects.count() / 10  # only what changed
    assert snapshot() == from_scratch()


def test_a_new_month_of_other_facts_rewrites_every_kpi_it_reaches(company):
    """When a month gains values, every KPI gets a value there, even one over measures that
    did not change (its inputs are missing there)."""
    company.a_series("orders")
    import_definitions(
        {
            "version": 1,
            "measures": [
                {
                    "code": "orders",
                    "name": "o",
                    "kind": "series_value",
                    "series": "orders",
                    "time_behaviour": "flow",
                }
            ],
            "kpis": [{"code": "order_count", "name": "Orders", "unit": "count", "formula": "orders"}],
        }
    )
    company.book(facts(13, MONTHS[:-1]))
    company.observe([(f"{month:%Y-%m}", "US", "orders", "40", 40) for month in MONTHS[:-1]])
    refreshed()
    settle()
    last = MONTHS[-1]
    company.book(facts(13, [last]))
    refreshed(months=[last])
    assert KPIValue.objects.filter(kpi__code="order_count", grain="month", period=last, value=None).exists()
    assert snapshot() == from_scratch()


def in_month(rows: list[tuple], month: date) -> list[tuple]:
    return [row for row in rows if row[0] == f"{month:%Y-%m}"]


def eu_cost(row: tuple) -> bool:
    return row[1] == "EU" and row[2] == "5000"


APRIL = MONTHS[3]
# change -> (the rows loaded first, the month then reloaded, its rows): each moves the first
# month of the EU series or adds or removes one of its measures.
SHAPE_CHANGES = {
    "history starts earlier": (
        lambda rows: [r for r in rows if r[1] != "EU" or r[0] >= "2023-07"],
        MONTHS[0],
        lambda rows: in_month(rows, MONTHS[0]),
    ),
    "history starts later": (
        lambda rows: rows,
        MONTHS[0],
        lambda rows: [r for r in in_month(rows, MONTHS[0]) if r[1] != "EU"],
    ),
    "gains a measure": (
        lambda rows: [r for r in rows if not eu_cost(r)],
        APRIL,
        lambda rows: in_month(rows, APRIL),
    ),
    "loses its only month of a measure": (
        lambda rows: [r for r in rows if not eu_cost(r) or r[0] == f"{APRIL:%Y-%m}"],
        APRIL,
        lambda rows: [r for r in in_month(rows, APRIL) if not eu_cost(r)],
    ),
}


@pytest.mark.parametrize("told", [True, False])
@pytest.mark.parametrize("change", list(SHAPE_CHANGES))
def test_a_series_that_changes_shape_explains_its_empty_values_as_a_full_recompute_does(
    company, change, told
):
    """Empty values say why: "not enough history for prev" before a series' first month, "cost is
    not in the data" when it has no cost at all. A change in one month that moves the first
    month of a series, or adds or removes one of its measures, changes those reasons in every
    period, beyond what the month itself reaches."""
    first, month, reloaded = SHAPE_CHANGES[change]
    rows = facts(12)
    company.book(first(rows))
    refreshed()
    settle()
    company.book(reloaded(rows))
    refreshed(months=[month] if told else None)
    assert snapshot() == from_scratch()


def test_a_budget_scenario_without_values_does_not_stop_the_stored_values_being_trusted(company):
    """A company that has a budget scenario but has loaded no budget yet: the next refresh of
    unchanged facts still finds nothing to recompute (no formula is evaluated)."""
    company.book([row for row in facts(13) if len(row) == 4])  # actuals only
    refreshed()
    settle()
    again = refreshed(months=[])
    assert "formulas" not in again.seconds and again.kpi_updated == 0
    assert snapshot() == from_scratch()


def test_a_scenario_made_the_budget_is_recomputed_in_full(company):
    company.book(facts(14))
    refreshed()
    settle()
    company.actual.kind, company.budget.kind = company.budget.kind, company.actual.kind  # swapped
    company.actual.save()
    company.budget.save()
    again = refreshed(months=[])
    assert "formulas" in again.seconds
    assert snapshot() == from_scratch()


# --- what the engine keeps of the stored values -----------------------------------------------


def test_the_engine_keeps_the_shape_of_the_stored_values_with_them(company):
    """Each series' months and partial periods, and each KPI's kinds of value per scenario:
    what a trusted refresh reads instead of scanning every stored value."""
    company.book(facts(4, MONTHS[:14]))  # 2024 has two months: its quarter and year are partial
    refreshed()
    net_sales = {"measure__code": "net_sales", "scenario__code": "actual", "entity": company.us}
    series = StoredSeries.objects.get(**net_sales)
    first, last = (m.year * 12 + m.month - 1 for m in (MONTHS[0], MONTHS[13]))
    assert series.months == [[first, last]]
    assert series.partial == [["quarter", last - 1], ["year", last - 1]]
    kinds = set(StoredKPIState.objects.values_list("kpi__code", "scenario__code", "typed", "budget"))
    assert ("revenue", "actual", False, False) in kinds and ("revenue", "budget", False, True) in kinds
    settle()
    company.book(facts(5, MONTHS[14:16]))  # two more months: the kept shape follows
    refreshed(months=MONTHS[14:16])
    series = StoredSeries.objects.get(**net_sales)
    assert series.months == [[first, last + 2]] and series.partial == [
        ["quarter", last + 2],
        ["year", last - 1],
    ]
    assert snapshot() == from_scratch()


def test_stored_values_without_the_kept_shape_are_recomputed_in_full(company):
    """Values stored before the engine kept their shape (or with it lost) are not trusted: the
    next refresh recomputes everything and keeps the shape again."""
    company.book(facts(6))
    refreshed()
    settle()
    StoredSeries.objects.all().delete()
    StoredKPIState.objects.all().delete()
    result = refreshed(months=[MONTHS[20]])
    assert result.kpi_values == KPIValue.objects.count()  # every value evaluated again
    assert StoredSeries.objects.exists() and StoredKPIState.objects.exists()
    assert snapshot() == from_scratch()


def test_deleting_a_measure_deletes_its_kept_shape(company):
    company.book(facts(8))
    refreshed()
    settle()
    assets = Measure.objects.get(code="assets")
    assert StoredSeries.objects.filter(measure=assets).exists()
    assets.delete()
    assert not StoredSeries.objects.filter(measure_id=assets.pk).exists()
    refreshed(months=[MONTHS[5]])  # the engine's self-check compares the kept shape with the values
    assert snapshot() == from_scratch()


def test_the_self_check_finds_a_kept_shape_that_is_wrong(company, settings):
    company.book(facts(9))
    refreshed()
    settle()
    series = StoredSeries.objects.first()
    series.months = series.months[:-1] + [[series.months[-1][0], series.months[-1][1] - 1]]
    series.save()
    with pytest.raises(AssertionError, match="summary of the stored measure values is wrong"):
        refreshed(months=[MONTHS[5]])
    settings.FINOPS_ENGINE_SELF_CHECK = False
    RefreshRun.objects.filter(status=RefreshRun.Status.RUNNING).update(status=RefreshRun.Status.FAILED)
    refreshed(months=[MONTHS[5]])  # without the check, the refresh runs (a failed run: in full)


@pytest.mark.postgres
def test_value_tables_leave_room_for_values_rewritten_in_place(db):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, reloptions FROM pg_class WHERE relname IN ('kpis_kpivalue', 'kpis_measurevalue')"
        )
        assert dict(cursor.fetchall()) == {
            "kpis_kpivalue": ["fillfactor=80"],
            "kpis_measurevalue": ["fillfactor=80"],
        }


def test_a_new_fiscal_year_start_is_recomputed_in_full(company, settings):
    """Quarters and years kept from another fiscal year start are not trusted."""
    company.book(facts(11))
    refreshed()
    settle()
    settings.FISCAL_YEAR_START_MONTH = 7
    result = refreshed(months=[MONTHS[5]])
    assert result.kpi_values == KPIValue.objects.count()  # every value evaluated again
    assert set(StoredSeries.objects.values_list("fiscal_start", flat=True)) == {7}
    assert set(MeasureValue.objects.filter(grain="year").values_list("period__month", flat=True)) == {7}
    assert snapshot() == from_scratch()


def test_deleting_an_entity_deletes_the_kinds_of_its_kpi_values(company):
    """An entity retired (its facts removed, then itself): what the engine keeps of its values
    goes with it (found by review: the kinds of KPI value had no entity and outlived it)."""
    retired = Entity.objects.create(code="X", name="X", currency="USD")
    forecast = Scenario.objects.create(code="fc", name="Forecast", kind=Scenario.Kind.FORECAST)
    company.book(facts(3))
    account = company.accounts["4100"].pk
    rows = [(m, retired.pk, company.dept.pk, forecast.pk, account, Decimal("10")) for m in MONTHS[:3]]
    load_financial_facts(source=company.source, rows=rows)
    refreshed()
    settle()
    assert StoredKPIState.objects.filter(entity=retired, scenario=forecast).exists()
    FinancialFact.objects.filter(entity=retired).delete()
    update_ledger_totals(MONTHS[:3])
    retired.delete()
    assert not StoredKPIState.objects.filter(entity_id=retired.pk).exists()
    refreshed(months=MONTHS[:3])  # the self-check compares the kept kinds with the values
    assert snapshot() == from_scratch()


def test_kept_rows_are_deleted_a_few_hundred_keys_at_a_time(db):
    """SQLite refuses a condition of a thousand terms: a refresh of a company with more series
    than that must still delete the kept rows it replaces (found by review)."""
    keys = [(measure, 1, entity) for measure in range(1, 41) for entity in range(1, 31)]  # 1,200
    StoredSeries.objects.bulk_create(
        StoredSeries(measure_id=m, scenario_id=s, entity_id=e, months=[[1, 2]], partial=[], fiscal_start=1)
        for m, s, e in keys
    )
    _delete_keys(StoredSeries, ("measure_id", "scenario_id", "entity_id"), keys[:1100])
    assert set(StoredSeries.objects.values_list("measure_id", "scenario_id", "entity_id")) == set(keys[1100:])


def test_a_failed_write_of_the_kept_rows_raises_djangos_error(company):
    """Database errors writing the kept rows come out as Django's (the refresh task retries the
    transient ones), also where PostgreSQL gets them in one statement (found by review)."""
    from django.db import IntegrityError, transaction

    company.book(facts(2))
    refreshed()
    kept = StoredSeries.objects.first()
    with pytest.raises(IntegrityError), transaction.atomic():
        _insert_rows(
            StoredSeries,
            ("measure_id", "scenario_id", "entity_id", "months", "partial", "fiscal_start"),
            [(kept.measure_id, kept.scenario_id, kept.entity_id, "[]", "[]", 1)],
            json_fields={"months", "partial"},
        )


# --- the definitions a worker keeps between recomputes ----------------------------------------

DEFINITION_CHANGES = {
    "a KPI's formula, not through the services": lambda: KPI.objects.filter(code="revenue").update(
        formula="net_sales * 2"
    ),
    "a measure's accounts": lambda: Measure.objects.get(code="cost").accounts.add(
        Account.objects.get(code="4100")
    ),
    "an account's roll-up sign": lambda: Account.objects.filter(code="4200").update(rollup_sign=1),
    "an entity's currency": lambda: Entity.objects.filter(code="EU").update(currency="GBP"),
    "a new department": lambda: Department.objects.create(code="ops", name="Operations"),
    "a scenario's kind": lambda: Scenario.objects.filter(code="budget").update(kind=Scenario.Kind.FORECAST),
    "a deleted measure": lambda: Measure.objects.filter(code="assets").delete(),
}


@pytest.mark.postgres
def test_a_worker_reads_the_definitions_once_while_they_stay_the_same(company):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    company.book(facts(1))
    refreshed()
    kept = engine._Book.load()
    company.book(facts(2, [MONTHS[3]]))
    with CaptureQueriesContext(connection) as queries:
        refreshed(months=[MONTHS[3]])
    read = [query["sql"] for query in queries.captured_queries]
    for table in ("kpis_kpi", "kpis_measure", "finops_entity", "finops_account", "finops_scenario"):
        assert not [sql for sql in read if f'FROM "{table}"' in sql], table
    assert engine._Book.load() is kept


@pytest.mark.postgres
@pytest.mark.parametrize("change", DEFINITION_CHANGES.values(), ids=DEFINITION_CHANGES.keys())
def test_any_change_to_the_definitions_is_read_by_the_next_recompute(company, change):
    company.book(facts(1))
    refreshed()
    kept = engine._Book.load()
    assert engine._Book.load() is kept
    change()
    assert engine._Book.load() is not kept


@pytest.mark.postgres
def test_an_account_sign_changed_behind_the_engines_back_is_in_the_next_recompute(company):
    """No KPI change is recorded and no measure is saved: only the fingerprint of the
    definitions tells the worker that the book it keeps is out of date."""
    march = date(2023, 3, 1)
    company.book([(f"{march:%Y-%m}", "US", "4100", "1000"), (f"{march:%Y-%m}", "US", "4200", "100")])
    refreshed()
    assert measure_value("net_sales", march) == Decimal("900")  # 4100 less the returns in 4200
    Account.objects.filter(code="4200").update(rollup_sign=1)
    refreshed()
    assert measure_value("net_sales", march) == Decimal("1100")


@pytest.mark.postgres
def test_definitions_read_in_a_transaction_that_is_rolled_back_are_not_used_after_it(company):
    from django.db import transaction

    formula = {kpi.code: kpi.formula for kpi in engine._Book.load().kpis}["revenue"]

    class Undone(Exception):
        pass

    with pytest.raises(Undone), transaction.atomic():
        KPI.objects.filter(code="revenue").update(formula="net_sales * 2")
        assert {kpi.code: kpi.formula for kpi in engine._Book.load().kpis}["revenue"] == "net_sales * 2"
        raise Undone
    assert {kpi.code: kpi.formula for kpi in engine._Book.load().kpis}["revenue"] == formula


def measure_value(code: str, period: date, entity: str = "US") -> Decimal:
    return MeasureValue.objects.get(
        measure__code=code, period=period, grain="month", entity__code=entity, scenario__code="actual"
    ).value
