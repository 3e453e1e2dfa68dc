"""The engine with numbers worked by hand: grains, flows and balances, the fiscal year,
currencies, division by zero, targets and statuses, lineage, incremental recompute."""

import csv
import json
from datetime import date
from decimal import Decimal

import pytest

from finops.models import CurrencyRate
from kpis.definitions import import_definitions
from kpis.engine import recompute
from kpis.models import KPI, KPIValue, MeasureValue, Target

JAN, FEB, MAR = date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1)


def value(code: str, period: date, *, grain: str = "month", entity: str = "US", scenario: str = "actual"):
    return KPIValue.objects.get(
        kpi__code=code, period=period, grain=grain, entity__code=entity, scenario__code=scenario
    )


def measure(code: str, period: date, *, grain: str = "month", entity: str = "US", scenario: str = "actual"):
    return MeasureValue.objects.get(
        measure__code=code, period=period, grain=grain, entity__code=entity, scenario__code=scenario
    )


def define(measures: list[dict], kpis: list[dict]) -> None:
    import_definitions({"version": 1, "measures": measures, "kpis": kpis})


@pytest.fixture
def sales(book):
    """Net sales = gross - returns; receivables; DSO and gross margin over Q1 2024."""
    book.account("4000")
    book.account("4100", parent="4000")
    book.account("4200", parent="4000", sign=-1)
    book.account("5000")
    book.account("1200", balance=True)
    book.book(
        [
            ("2024-01", "US", "4100", "1000"),
            ("2024-01", "US", "4200", "100"),
            ("2024-01", "US", "5000", "540"),
            ("2024-01", "US", "1200", "300"),
            ("2024-02", "US", "4100", "500"),
            ("2024-02", "US", "5000", "250"),
            ("2024-02", "US", "1200", "400"),
            ("2024-03", "US", "4100", "1100"),
            ("2024-03", "US", "4200", "100"),
            ("2024-03", "US", "5000", "700"),
            ("2024-03", "US", "1200", "600"),
            ("2024-01", "US", "4100", "1000", "budget"),
        ]
    )
    define(
        [
            {
                "code": "net_sales",
                "name": "Net sales",
                "kind": "account",
                "account": "4000",
                "time_behaviour": "flow",
            },
            {"code": "cost", "name": "Cost", "kind": "account", "account": "5000", "time_behaviour": "flow"},
            {
                "code": "receivables",
                "name": "AR",
                "kind": "account",
                "account": "1200",
                "time_behaviour": "balance",
            },
        ],
        [
            {"code": "revenue", "name": "Revenue", "unit": "currency", "formula": "net_sales"},
            {
                "code": "dso",
                "name": "DSO",
                "unit": "days",
                "direction": "lower",
                "formula": "receivables / revenue * days()",
            },
            {"code": "gm_pct", "name": "GM %", "unit": "percent", "formula": "(revenue - cost) / revenue"},
        ],
    )
    return book


def test_account_subtrees_roll_up_with_their_signs(sales):
    recompute()
    assert measure("net_sales", JAN).value == Decimal("900")  # 1000 gross - 100 returns
    assert measure("net_sales", FEB).value == Decimal("500")


def test_a_quarter_is_computed_from_its_own_measures_not_the_mean_of_months(sales):
    recompute()
    monthly = [value("dso", m).value for m in (JAN, FEB, MAR)]
    # 300/900*31 = 10.3333, 400/500*29 = 23.2, 600/1000*31 = 18.6
    assert [round(v, 4) for v in monthly] == [Decimal("10.3333"), Decimal("23.2000"), Decimal("18.6000")]
    quarter = value("dso", JAN, grain="quarter").value
    # quarter-end receivables 600 over quarter revenue 2400, times 91 days (2024 is a leap year)
    assert quarter == Decimal("22.750000")
    assert round(sum(monthly) / 3, 4) == Decimal("17.3778")  # what averaging months would wrongly give
    # gross margin % of the quarter: (2400 - 1490) / 2400
    assert value("gm_pct", JAN, grain="quarter").value == Decimal("0.379167")


def test_flows_sum_and_balances_take_the_last_month(sales):
    recompute()
    assert measure("net_sales", JAN, grain="quarter").value == Decimal("2400")
    assert measure("receivables", JAN, grain="quarter").value == Decimal("600")
    assert measure("net_sales", JAN, grain="year").value == Decimal("2400")
    assert measure("receivables", JAN, grain="year").value == Decimal("600")
    assert "partial: 3 of 12 months" in measure("net_sales", JAN, grain="year").note


def test_the_fiscal_year_start_decides_quarters_and_years(book, settings):
    settings.FISCAL_YEAR_START_MONTH = 7
    book.account("4000")
    book.book(
        [("2024-06", "US", "4000", "10"), ("2024-07", "US", "4000", "20"), ("2024-08", "US", "4000", "5")]
    )
    define(
        [
            {
                "code": "net_sales",
                "name": "Net sales",
                "kind": "account",
                "account": "4000",
                "time_behaviour": "flow",
            }
        ],
        [{"code": "revenue", "name": "Revenue", "unit": "currency", "formula": "net_sales"}],
    )
    recompute()
    # June 2024 closes FY2024 (Jul 2023 - Jun 2024); July starts FY2025 and its first quarter.
    assert value("revenue", date(2023, 7, 1), grain="year").value == Decimal("10")
    assert value("revenue", date(2024, 7, 1), grain="year").value == Decimal("25")
    assert value("revenue", date(2024, 7, 1), grain="quarter").value == Decimal("25")
    assert value("revenue", date(2024, 4, 1), grain="quarter").value == Decimal("10")


def test_division_by_zero_gives_an_empty_value_with_a_reason(sales):
    sales.book(
        [("2024-02", "US", "4100", "0"), ("2024-02", "US", "5000", "250"), ("2024-02", "US", "1200", "400")]
    )
    recompute()
    feb = value("dso", FEB)
    assert feb.value is None
    assert "division by zero" in feb.empty_reason
    assert feb.status == "none"


def test_entities_roll_up_translating_other_currencies(book):
    book.account("4000")
    book.account("1200", balance=True)
    book.book(
        [
            ("2024-01", "US", "4000", "900"),
            ("2024-01", "EU", "4000", "100"),
            ("2024-01", "US", "1200", "300"),
            ("2024-01", "EU", "1200", "50"),
            ("2024-02", "EU", "4000", "10"),
        ]
    )
    CurrencyRate.objects.create(
        currency="EUR", period=JAN, average_rate=Decimal("1.10"), end_rate=Decimal("1.20"), source=book.source
    )
    define(
        [
            {
                "code": "net_sales",
                "name": "Net sales",
                "kind": "account",
                "account": "4000",
                "time_behaviour": "flow",
            },
            {
                "code": "receivables",
                "name": "AR",
                "kind": "account",
                "account": "1200",
                "time_behaviour": "balance",
            },
        ],
        [],
    )
    recompute()
    assert measure("net_sales", JAN, entity="EU").value == Decimal("100")  # in its own currency
    assert measure("net_sales", JAN, entity="G").value == Decimal("1010")  # 900 + 100 EUR x 1.10 (average)
    assert measure("receivables", JAN, entity="G").value == Decimal("360")  # 300 + 50 EUR x 1.20 (month end)
    feb = measure("net_sales", FEB, entity="G")
    assert feb.value is None and feb.note == "no EUR to USD rate for Feb 2024"


def test_the_budget_is_the_target_and_status_follows_direction(sales):
    recompute()
    jan = value("revenue", JAN)
    assert (jan.value, jan.target, jan.target_origin) == (Decimal("900"), Decimal("1000"), "budget")
    assert jan.variance == Decimal("-100") and jan.variance_pct == pytest.approx(-0.1)
    assert jan.status == "red"  # 10 % short, amber only up to 5 %
    assert "10.0%" in jan.status_reason and "below the target" in jan.status_reason
    assert value("revenue", JAN, scenario="budget").status == "none"


def test_a_typed_target_wins_and_a_year_target_is_pro_rated_by_days(sales):
    kpi = KPI.objects.get(code="revenue")
    Target.objects.create(kpi=kpi, grain="month", period=FEB, value=Decimal("480"))
    Target.objects.create(kpi=kpi, grain="year", period=JAN, value=Decimal("3660"))
    recompute()
    feb = value("revenue", FEB)
    assert (feb.target, feb.target_origin, feb.status) == (Decimal("480"), "typed", "green")
    # the year's 3,660 over 366 days: March gets 31 days' worth = 310
    assert value("revenue", MAR).target == Decimal("310")
    assert value("revenue", JAN, grain="year").target == Decimal("3660")


def test_last_year_plus_a_percentage(book):
    book.account("4000")
    book.book([("2023-01", "US", "4000", "800"), ("2024-01", "US", "4000", "900")])
    define(
        [
            {
                "code": "net_sales",
                "name": "Net sales",
                "kind": "account",
                "account": "4000",
                "time_behaviour": "flow",
            }
        ],
        [
            {
                "code": "revenue",
                "name": "Revenue",
                "unit": "currency",
                "formula": "net_sales",
                "target_rule": "last_year_plus",
                "target_rule_pct": 10,
            }
        ],
    )
    recompute()
    jan = value("revenue", JAN)
    assert (jan.target, jan.status) == (Decimal("880"), "green")
    assert jan.target_origin == "last year +10%"


def test_every_value_knows_its_run_formula_version_and_inputs(sales):
    from finops.models import RefreshRun

    run = RefreshRun.objects.create(status="succeeded")
    recompute(run=run)
    jan = value("dso", JAN)
    assert jan.inputs == {"receivables": 300.0, "revenue": 900.0}
    assert jan.formula_version == 1 and jan.refresh_run == run


def test_recomputing_one_changed_month_gives_the_same_values_as_a_full_recompute(sales):
    recompute()
    sales.book(
        [("2024-02", "US", "4100", "650"), ("2024-02", "US", "5000", "250"), ("2024-02", "US", "1200", "400")]
    )
    result = recompute(months=[FEB])
    incremental = _snapshot()
    assert result.kpi_updated > 0
    KPIValue.objects.all().delete()
    MeasureValue.objects.all().delete()
    recompute()
    assert _snapshot() == incremental
    assert value("revenue", FEB).value == Decimal("650")


def test_kpi_values_are_written_a_period_after_another(sales):
    """Stored in period order (ids follow the writes), a KPI's values of one month sit
    together: recomputing one month then changes a few pages of the table, not one row on
    each page. Written series by series, the budget's January would come after March."""
    recompute()
    for grain in ("month", "quarter"):
        written = list(
            KPIValue.objects.filter(kpi__code="revenue", grain=grain)
            .order_by("id")
            .values_list("period", "scenario__code")
        )
        assert {scenario for _, scenario in written} == {"actual", "budget"}
        assert [period for period, _ in written] == sorted(period for period, _ in written)


def test_recomputing_with_nothing_changed_writes_nothing(sales):
    recompute()
    again = recompute(months=[])
    assert (again.kpi_inserted, again.kpi_updated, again.kpi_deleted) == (0, 0, 0)


def _snapshot():
    return sorted(
        KPIValue.objects.values_list(
            "kpi__code", "scenario__code", "entity__code", "grain", "period", "value", "target", "status"
        )
    )


def test_kpi_inputs_are_written_as_json_dumps_would_write_them():
    from kpis.engine import _json_field

    for value in (
        {"revenue": 1234.5, "cost": None, "days": 31.0},
        {"tiny": 1e-07, "big": 1.5e16, "negative": -0.25},
        {},
        {"not finite": float("nan")},
        {"x": 1},
        [1, 2],
    ):
        assert _json_field(value) == '"' + json.dumps(value).replace('"', '""') + '"'
        assert next(csv.reader([_json_field(value)])) == [json.dumps(value)]


def test_stored_numbers_compare_by_their_postgresql_text():
    from kpis.engine import _numeric_text

    assert _numeric_text(None) is None
    assert _numeric_text(Decimal("12.500000")) == "12.500000"
    assert _numeric_text(Decimal("-0.000000")) == "0.000000"  # PostgreSQL has no negative zero
    assert _numeric_text(Decimal("0E-6")) == "0.000000"
    assert _numeric_text(Decimal("-1234567.000001")) == "-1234567.000001"


def test_values_are_rounded_to_six_places_halves_away_from_zero_on_every_database(book):
    """A KPI's float is stored rounded to six places, a half away from zero: as PostgreSQL
    rounds the text COPY gives it, and as the ORM path (SQLite) rounds it before writing."""
    from kpis.engine import _decimal

    book.account("4000")
    book.book([("2024-01", "US", "4000", "1")])
    define(
        [{"code": "sales", "name": "Sales", "kind": "account", "account": "4000", "time_behaviour": "flow"}],
        [
            {"code": "up", "name": "Up", "unit": "ratio", "formula": "sales / 400000"},  # 2.5e-06
            {"code": "down", "name": "Down", "unit": "ratio", "formula": "-sales / 400000"},
            {"code": "odd", "name": "Odd", "unit": "ratio", "formula": "sales * 3 / 2000000"},  # 1.5e-06
        ],
    )
    recompute()
    assert value("up", JAN).value == Decimal("0.000003")  # half-even would give 0.000002
    assert value("down", JAN).value == Decimal("-0.000003")
    assert value("odd", JAN).value == Decimal("0.000002")
    assert _decimal(2.5e-06) == Decimal("0.000003")
    assert _decimal(Decimal("1.5")) == Decimal("1.5")  # decimals are already rounded
    recompute()  # the second run finds the stored values equal to the computed ones
    assert value("up", JAN).value == Decimal("0.000003")


def test_kpi_values_are_copied_in_chunks_of_columns_as_postgresql_reads_csv():
    """The COPY file: every column as COPY reads it back (text quoted, NULL empty, booleans
    t/f, dates ISO, inputs as JSON), chunk after chunk until an empty read ends it."""
    import csv
    import io

    from kpis.engine import KPI_FIELDS, KPI_KEY, _CsvRows

    kinds = [KPIValue._meta.get_field(name) for name in (*KPI_KEY, *KPI_FIELDS)]
    rows = {
        (1, 2, 3, "month", date(2024, 1, 1)): (
            1234.5,
            "",
            None,
            "",
            None,
            None,
            "none",
            'No "target", set.',
            2,
            {"revenue": 1234.5, "cost": None},
            False,
        ),
        (1, 2, 3, "quarter", date(2024, 1, 1)): (
            None,
            "revenue has no value\nat all",
            1e-07,
            "budget",
            -0.25,
            -0.5,
            "red",
            "",
            2,
            {},
            True,
        ),
    }
    source = _CsvRows(rows, kinds, tail=(None,))
    source.CHUNK_ROWS = 1
    chunks = []
    while chunk := source.read(8192):
        chunks.append(chunk)
    assert len(chunks) == 2
    read = list(csv.reader(io.StringIO("".join(chunks))))
    key = ["1", "2", "3"]
    assert read[0] == [
        *key,
        "month",
        "2024-01-01",
        "1234.5",
        "",
        "",
        "",
        "",
        "",
        "none",
        'No "target", set.',
    ] + ["2", '{"revenue": 1234.5, "cost": null}', "f", ""]
    assert read[1] == [
        *key,
        "quarter",
        "2024-01-01",
        "",
        "revenue has no value\nat all",
        "1e-07",
        "budget",
    ] + ["-0.25", "-0.5", "red", "", "2", "{}", "t", ""]
    assert len(read) == 2


@pytest.mark.postgres
def test_a_sync_never_applies_rows_an_earlier_failed_sync_left_in_the_stage(db, monkeypatch):
    """The staging table stays for the session: a sync that failed after its COPY (its error
    caught, the transaction going on) must not have its rows written by the next one, nor kept
    as present by its anti-join."""
    from finops.models import Entity, Scenario
    from kpis import engine
    from kpis.engine import MEASURE_FIELDS, MEASURE_KEY, _Scope, _sync
    from kpis.models import Measure

    measure = Measure.objects.create(code="m", name="M", kind="account")
    scenario = Scenario.objects.get_or_create(code="actual", defaults={"name": "Actual"})[0]
    entity = Entity.objects.create(code="E", name="E", currency="USD")

    def key(month: int) -> tuple:
        return (measure.pk, scenario.pk, entity.pk, "month", date(2024, month, 1))

    def stored() -> dict:
        rows = MeasureValue.objects.values_list(*MEASURE_KEY, "value")
        return {tuple(row[:5]): row[5] for row in rows}

    _sync(
        MeasureValue, MEASURE_KEY, MEASURE_FIELDS, {key(1): (Decimal(1), ""), key(2): (Decimal(2), "")}, None
    )

    def failing(*args, **kwargs):
        raise RuntimeError("after the COPY")

    monkeypatch.setattr(engine, "_delete_missing", failing)
    with pytest.raises(RuntimeError):
        _sync(MeasureValue, MEASURE_KEY, MEASURE_FIELDS, {key(9): (Decimal(9), "")}, None)
    monkeypatch.undo()
    _sync(MeasureValue, MEASURE_KEY, MEASURE_FIELDS, {key(1): (Decimal(5), "")}, None)
    assert stored() == {key(1): Decimal(5)}
    _sync(MeasureValue, MEASURE_KEY, MEASURE_FIELDS, {}, None, _Scope(("measure_id",), whole={measure.pk}))
    assert stored() == {}


@pytest.mark.postgres
def test_the_formulas_run_on_a_second_thread_that_never_uses_the_database(sales, monkeypatch):
    """On PostgreSQL a full recompute evaluates the formulas on a second thread while this one
    writes the measure values: only this thread may use the connection (a time limit raised in
    it must find nothing else on it), so the other never opens one of its own."""
    import threading

    from django.db.backends.base.base import BaseDatabaseWrapper

    from kpis import engine

    threads: set[str] = set()
    ensure = BaseDatabaseWrapper.ensure_connection

    def recording(self):
        threads.add(threading.current_thread().name)
        return ensure(self)

    evaluate = engine._evaluate_kpis
    evaluated_on: list[str] = []

    def evaluating(*args, **kwargs):
        evaluated_on.append(threading.current_thread().name)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(BaseDatabaseWrapper, "ensure_connection", recording)
    monkeypatch.setattr(engine, "_evaluate_kpis", evaluating)
    recompute()
    assert evaluated_on == ["recompute-formulas"]
    assert threads == {threading.main_thread().name}
    assert value("dso", MAR).value is not None


@pytest.mark.postgres
def test_a_failed_write_of_the_measure_values_fails_the_recompute_and_keeps_the_stored_values(
    sales, monkeypatch
):
    """A database error while the formulas run on the other thread fails the recompute, rolls
    it back and leaves the connection usable."""
    from django.db import DataError, connection

    from kpis import engine

    recompute()
    stored = sorted(KPIValue.objects.values_list("id", "value"))
    MeasureValue.objects.update(value=None)  # so a recompute would write every measure value

    def failing(values, run, scope=None):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")

    monkeypatch.setattr(engine, "_store_measures", failing)
    monkeypatch.setattr(engine._Trust, "find", classmethod(lambda cls, book, run: None))  # a full run
    with pytest.raises(DataError, match="division by zero"):
        recompute()
    assert sorted(KPIValue.objects.values_list("id", "value")) == stored
    assert not MeasureValue.objects.exclude(value=None).exists()


@pytest.mark.postgres
def test_an_error_in_the_formulas_on_the_other_thread_fails_the_recompute(sales, monkeypatch):
    from kpis import engine

    def broken(values, book, *args, **kwargs):
        raise RuntimeError("formula trouble")

    monkeypatch.setattr(engine, "_evaluate_kpis", broken)
    with pytest.raises(RuntimeError, match="formula trouble"):
        recompute()
    assert not MeasureValue.objects.exists() and not KPIValue.objects.exists()


@pytest.mark.postgres
def test_a_time_limit_while_the_formulas_run_stops_them_and_leaves_a_usable_connection(sales, monkeypatch):
    """A Celery soft time limit arrives as an exception raised by a signal handler in the main
    thread, here while it waits for the formulas: the recompute is rolled back, nothing was
    written, the connection serves the next query (nothing else was using it), and the
    evaluation on the other thread stops instead of running on for nobody."""
    import signal
    import threading
    import time

    from django.db import connection

    from kpis import engine

    class TimeLimit(Exception):
        pass

    evaluate = engine._evaluate_kpis
    ended: list[str] = []

    def slow(*args, **kwargs):
        time.sleep(0.6)
        try:
            out = evaluate(*args, **kwargs)
        except BaseException as error:
            ended.append(type(error).__name__)
            raise
        ended.append("finished")
        return out

    def interrupt(signum, frame):
        raise TimeLimit

    monkeypatch.setattr(engine, "_evaluate_kpis", slow)
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(TimeLimit):
            recompute()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    for thread in threading.enumerate():
        if thread.name == "recompute-formulas":
            thread.join(timeout=10)
    assert ended == ["_Stopped"]
    assert not MeasureValue.objects.exists() and not KPIValue.objects.exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM kpis_measurevalue")
        assert cursor.fetchone() == (0,)


@pytest.mark.postgres
@pytest.mark.parametrize("error", [TypeError, KeyboardInterrupt])
def test_an_error_making_the_rows_to_copy_is_raised_as_itself(sales, monkeypatch, error):
    """Rows are made as COPY reads them; a bug there (or a Ctrl-C) is raised as itself, not as
    the database error psycopg2 ends the COPY with (which a refresh task would retry)."""
    from kpis import engine

    def broken(self, key, result):
        raise error("a status that cannot be worked out")

    monkeypatch.setattr(engine._Targets, "attach", broken)
    with pytest.raises(error, match="cannot be worked out"):
        recompute()
    assert not KPIValue.objects.exists()


@pytest.mark.postgres
def test_a_value_the_column_cannot_hold_fails_the_recompute_with_djangos_error(book):
    from django.db import DataError

    book.account("4000")
    book.book([("2024-01", "US", "4000", "1")])
    define(
        [{"code": "sales", "name": "Sales", "kind": "account", "account": "4000", "time_behaviour": "flow"}],
        [{"code": "huge", "name": "Huge", "unit": "ratio", "formula": "sales * 1000000000000000000000000"}],
    )
    with pytest.raises(DataError, match="numeric field overflow"):
        recompute()
    assert not KPIValue.objects.exists() and not MeasureValue.objects.exists()


def test_kpi_rows_answer_membership_without_making_a_row():
    from kpis.engine import _KPIRows

    rows = _KPIRows({}, {}, None)
    assert (1, 2, 3, "month", JAN) not in rows
    assert len(rows) == 0 and list(rows) == []


def test_a_measure_of_one_department_sums_its_subtree_only(book):
    """Costs of the finance department (and the team under it) against every department's."""
    from finops.loading import load_financial_facts
    from finops.models import Department

    book.account("5000")
    team = Department.objects.create(code="fin-ap", name="Payables team", parent=book.dept, side="finance")
    ops = Department.objects.create(code="ops", name="Operations", side="operations")
    load_financial_facts(
        source=book.source,
        rows=[
            (JAN, book.us.pk, department.pk, book.actual.pk, book.accounts["5000"].pk, Decimal(amount))
            for department, amount in ((book.dept, "100.25"), (team, "20"), (ops, "1000"))
        ],
    )
    define(
        [
            {"code": "cost", "name": "c", "kind": "account", "account": "5000", "time_behaviour": "flow"},
            {
                "code": "finance_cost",
                "name": "f",
                "kind": "account",
                "account": "5000",
                "department": "fin",
                "time_behaviour": "flow",
            },
        ],
        [{"code": "finance_share", "name": "Share", "unit": "percent", "formula": "finance_cost / cost"}],
    )
    recompute()
    assert measure("cost", JAN).value == Decimal("1120.25")
    assert measure("finance_cost", JAN).value == Decimal("120.25")
    assert measure("finance_cost", JAN, entity="G").value == Decimal("120.25")
    assert float(value("finance_share", JAN).value) == pytest.approx(120.25 / 1120.25, abs=1e-6)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_definitions_cannot_change_under_a_recompute_until_it_commits(sales):
    """Stored values keep their references without per-row foreign-key triggers: a recompute
    holds the KPI, measure, entity and scenario tables in SHARE mode until it commits, so an
    edit or delete made meanwhile waits; a KPI deleted afterwards takes its values with it."""
    from django.db import transaction

    from tests.factories import other_connection_tries

    kpi = KPI.objects.get(code="dso")
    with transaction.atomic():
        recompute()
        assert other_connection_tries("DELETE FROM kpis_kpi WHERE id = %s", [kpi.pk]) == "waited"
        assert other_connection_tries("UPDATE kpis_measure SET name = 'x'", []) == "waited"
        assert other_connection_tries("SELECT count(*) FROM kpis_kpi", []) == "done"
    assert KPIValue.objects.filter(kpi=kpi).exists()
    kpi.delete()
    assert not KPIValue.objects.filter(kpi_id=kpi.pk).exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_deleting_a_kpi_in_the_admin_waits_for_a_recompute_before_touching_its_values(sales, rf):
    """A recompute holds the KPI table in SHARE mode. The admin's delete first waits for the
    table, holding nothing yet; had it deleted the KPI's values first, the recompute writing
    those values and the delete waiting for the table would deadlock."""
    import psycopg2
    from django.contrib import admin as django_admin
    from django.db import OperationalError, connection, transaction

    recompute()
    kpi = KPI.objects.get(code="dso")
    values = KPIValue.objects.filter(kpi=kpi).count()
    recomputing = psycopg2.connect(**connection.get_connection_params())  # holds the lock
    try:
        with recomputing.cursor() as cursor:
            cursor.execute("BEGIN; LOCK TABLE kpis_kpi IN SHARE MODE")
        model_admin = django_admin.site._registry[KPI]
        statements = []

        def record(execute, sql, params, many, context):
            statements.append(sql)
            return execute(sql, params, many, context)

        with pytest.raises(OperationalError, match="lock timeout"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '200ms'")
            with connection.execute_wrapper(record):
                model_admin.delete_model(rf.post("/"), kpi)
    finally:
        recomputing.rollback()
        recomputing.close()
    # It waited first, before deleting anything (so it held no value rows while waiting).
    assert statements == ["LOCK TABLE kpis_kpi IN ROW EXCLUSIVE MODE"]
    assert KPIValue.objects.filter(kpi=kpi).count() == values
