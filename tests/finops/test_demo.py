"""The built-in demo company: deterministic, realistic, consistent, and safe to load twice."""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import date
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError

from finops.errors import ImportRejected
from finops.models import Account, CurrencyRate, DataSource, FinancialFact, OperationalFact, RefreshRun
from finops.periods import days_in_month
from finops.roles import DEMO_PASSWORD, DEMO_USERS
from finops.sources import Report, demo
from tests import factories

CONFIG = demo.DemoConfig(seed=7, start=date(2023, 1, 1), months=36)


@pytest.fixture(scope="module")
def data() -> demo.DemoData:
    return demo.generate(CONFIG)


def amounts(data: demo.DemoData, scenario: str) -> dict[tuple[str, date, str], Decimal]:
    """(entity, period, account) -> amount, summed over departments."""
    totals: dict[tuple[str, date, str], Decimal] = defaultdict(Decimal)
    for period, entity, _department, row_scenario, account, amount in data.financial:
        if row_scenario == scenario:
            totals[(entity, period, account)] += amount
    return totals


def rollup(totals: dict, entity: str, period: date, node: str) -> Decimal:
    """A node of the chart of accounts for one entity and month, rolled up with the signs."""
    total = Decimal(0)
    for (row_entity, row_period, account), amount in totals.items():
        if (row_entity, row_period) == (entity, period) and node in ancestors(account):
            total += demo.sign_to(account, node) * amount
    return total


def ancestors(code: str) -> list[str]:
    by_code = {spec.code: spec for spec in demo.ACCOUNTS}
    chain = [code]
    while by_code[chain[-1]].parent:
        chain.append(by_code[chain[-1]].parent)
    return chain


def operations(data: demo.DemoData, scenario: str) -> dict[tuple[str, date, str, str], tuple[Decimal, int]]:
    """(entity, date, series, dimension) -> (value, count)."""
    return {
        (entity, day, series, dimension): (value, count)
        for day, entity, row_scenario, series, dimension, value, count in data.operational
        if row_scenario == scenario
    }


def ops_total(ops: dict, entity: str, day: date, series: str) -> tuple[Decimal, int]:
    value, count = Decimal(0), 0
    for (row_entity, row_day, row_series, _), (v, c) in ops.items():
        if (row_entity, row_day, row_series) == (entity, day, series):
            value, count = value + v, count + c
    return value, count


def month(number: int) -> date:
    """Month ``number`` of the series (1 = the start month)."""
    return CONFIG.periods[number - 1]


def median_except(values: dict[date, float], *skipped: date) -> float:
    return statistics.median(v for period, v in values.items() if period not in skipped)


# --- Generation (no database) -----------------------------------------------------------------


def test_the_same_config_generates_identical_facts(data):
    again = demo.generate(demo.DemoConfig(seed=7, start=date(2023, 1, 1), months=36))
    assert again.financial == data.financial
    assert again.operational == data.operational
    assert again.rates == data.rates


def test_a_different_seed_gives_different_numbers(data):
    other = demo.generate(demo.DemoConfig(seed=8, start=date(2023, 1, 1), months=36))
    keys = [row[:5] for row in data.financial]
    assert keys == [row[:5] for row in other.financial]  # same shape...
    changed = [
        a[5] != b[5] for a, b in zip(data.financial, other.financial, strict=True) if a[3] == demo.ACTUAL
    ]
    assert sum(changed) > len(changed) * 0.5  # ...different numbers
    # The budget is the plan, not a draw: it does not depend on the seed.
    budget = [row for row in data.financial if row[3] == demo.BUDGET]
    assert budget == [row for row in other.financial if row[3] == demo.BUDGET]


def test_actual_and_budget_cover_every_month_and_the_forecast_the_last_three_and_six_more(data):
    periods = defaultdict(set)
    for row in data.financial:
        periods[row[3]].add(row[0])
    assert sorted(periods[demo.ACTUAL]) == CONFIG.periods
    assert sorted(periods[demo.BUDGET]) == CONFIG.periods
    assert len(CONFIG.periods) == 36
    assert sorted(periods[demo.FORECAST]) == CONFIG.periods[-3:] + [
        date(2026, 1, 1),
        date(2026, 2, 1),
        date(2026, 3, 1),
        date(2026, 4, 1),
        date(2026, 5, 1),
        date(2026, 6, 1),
    ]


def test_the_budget_is_smooth_optimistic_and_differs_from_actual_every_month(data):
    actual, budget = amounts(data, demo.ACTUAL), amounts(data, demo.BUDGET)
    for entity in (demo.US, demo.EU):
        actual_sales = [rollup(actual, entity, p, "NW-4000") for p in CONFIG.periods]
        budget_sales = [rollup(budget, entity, p, "NW-4000") for p in CONFIG.periods]
        assert all(a != b for a, b in zip(actual_sales, budget_sales, strict=True))
        assert sum(budget_sales) > sum(actual_sales)  # the plan was optimistic
        budget_margin = [
            rollup(budget, entity, p, "NW-GM") / s for p, s in zip(CONFIG.periods, budget_sales, strict=True)
        ]
        actual_margin = [
            rollup(actual, entity, p, "NW-GM") / s for p, s in zip(CONFIG.periods, actual_sales, strict=True)
        ]
        assert statistics.pstdev(budget_margin) < statistics.pstdev(actual_margin)


def test_the_chart_of_accounts_is_one_tree_per_statement():
    codes = [spec.code for spec in demo.ACCOUNTS]
    assert len(codes) == len(set(codes))
    assert all(code.startswith("NW-") for code in codes)  # never collides with another source
    roots = {spec.code for spec in demo.ACCOUNTS if spec.parent is None}
    assert roots == {"NW-BS", "NW-NI", "NW-STAT"}
    seen: set[str] = set()
    for spec in demo.ACCOUNTS:  # parents are listed before their children, so no cycles
        assert spec.parent is None or spec.parent in seen
        seen.add(spec.code)
    # Net Sales = Gross Sales - Returns - Discounts; Gross Margin = Net Sales - Cost of Sales.
    assert demo.sign_to(demo.PRODUCT_SALES, "NW-4000") == 1
    assert demo.sign_to(demo.RETURNS, "NW-4000") == -1
    assert demo.sign_to(demo.DISCOUNTS, "NW-4000") == -1
    assert demo.sign_to(demo.MATERIALS, "NW-GM") == -1
    assert demo.sign_to(demo.SALARIES, "NW-OI") == -1
    assert demo.sign_to(demo.INTEREST_EXPENSE, demo.NET_INCOME) == -1
    assert demo.sign_to(demo.INCOME_TAX, demo.NET_INCOME) == -1
    assert demo.sign_to(demo.PAYABLES, "NW-BS") == -1
    assert demo.sign_to(demo.ALLOWANCE, "NW-1100") == -1


def test_accounts_behave_as_flows_or_balances_by_type():
    for spec in demo.ACCOUNTS:
        if spec.account_type in (Account.Type.REVENUE, Account.Type.EXPENSE):
            assert spec.time_behaviour == Account.TimeBehaviour.FLOW, spec.code
        else:
            assert spec.time_behaviour == Account.TimeBehaviour.BALANCE, spec.code
    headcount = next(spec for spec in demo.ACCOUNTS if spec.code == demo.HEADCOUNT)
    assert (headcount.account_type, headcount.rollup_sign, headcount.unit) == ("statistical", 0, "units")


def test_facts_sit_on_leaves_only_and_every_leaf_has_facts(data):
    parents = {spec.parent for spec in demo.ACCOUNTS if spec.parent}
    leaves = {spec.code for spec in demo.ACCOUNTS} - parents
    booked = {row[4] for row in data.financial}
    assert booked == leaves


def test_money_is_decimal_to_the_cent_and_counts_are_whole(data):
    for row in data.financial:
        amount = row[5]
        assert isinstance(amount, Decimal)
        if row[4] == demo.HEADCOUNT:
            assert amount == amount.to_integral_value() and amount > 0
        else:
            assert amount == amount.quantize(Decimal("0.01"))
    for row in data.operational:
        assert isinstance(row[5], Decimal) and isinstance(row[6], int) and row[6] >= 0


def test_the_balance_sheet_balances_to_the_cent_every_month(data):
    for scenario in (demo.ACTUAL, demo.BUDGET):
        totals = amounts(data, scenario)
        for entity in (demo.US, demo.EU):
            for period in CONFIG.periods:
                assert rollup(totals, entity, period, "NW-BS") == 0, (scenario, entity, period)
                assert totals[(entity, period, demo.CASH)] > 0


def test_current_year_earnings_are_the_year_to_date_net_income(data):
    totals = amounts(data, demo.ACTUAL)
    for entity in (demo.US, demo.EU):
        year_to_date = Decimal(0)
        for period in CONFIG.periods:
            if period.month == 1:
                year_to_date = Decimal(0)
            year_to_date += rollup(totals, entity, period, demo.NET_INCOME)
            assert totals[(entity, period, demo.CURRENT_YEAR_EARNINGS)] == year_to_date


def test_working_capital_follows_the_planted_day_counts(data):
    totals = amounts(data, demo.ACTUAL)
    for entity in (demo.US, demo.EU):
        for period in CONFIG.periods:
            days = days_in_month(period)
            net_sales = rollup(totals, entity, period, "NW-4000")
            cost_of_sales = rollup(totals, entity, period, "NW-5000")
            dso = totals[(entity, period, demo.RECEIVABLES)] / net_sales * days
            dio = rollup(totals, entity, period, "NW-1300") / cost_of_sales * days
            dpo = totals[(entity, period, demo.PAYABLES)] / cost_of_sales * days
            assert 38 < dso < 66 and 40 < dio < 95 and 30 < dpo < 65, (entity, period, dso, dio, dpo)


def test_operations_are_consistent_with_each_other(data):
    overload = next(a for a in demo.ANOMALIES if a.kind == "overload")
    for scenario in (demo.ACTUAL, demo.BUDGET):
        ops = operations(data, scenario)
        for (entity, day, series, dimension), (value, count) in ops.items():
            key = (entity, day, dimension)

            def v(name: str, key=key, ops=ops) -> Decimal:
                return ops[(key[0], key[1], name, key[2])][0]

            if series == "orders":
                orders = value
                assert count == orders > 0
                assert v("orders_perfect") <= v("orders_otif") <= v("orders_on_time") <= orders
                assert v("orders_otif") <= v("orders_in_full") <= orders
                assert v("orders_on_time") + v("orders_in_full") - orders <= v("orders_otif")
                for name in ("orders_on_time", "orders_in_full", "orders_otif", "orders_perfect"):
                    assert ops[(entity, day, name, dimension)][1] == orders
                assert v("order_lines") >= orders
                assert v("units_shipped") <= v("units_ordered")
            elif series == "calls_offered":
                assert v("calls_answered_in_sla") + v("calls_abandoned") <= value
            elif series == "survey_responses":
                assert v("csat_satisfied") <= value
                assert v("nps_promoters") + v("nps_detractors") <= value
            elif series == "units_produced":
                assert v("units_defective") <= value
            elif series == "capacity_hours":
                hours = v("production_hours")
                if scenario == demo.ACTUAL and entity == overload.entity and day == month(overload.month):
                    assert hours > value
                else:
                    assert hours <= value


def test_operations_move_with_finance(data):
    """Units shipped times the price list is product sales, so ops and finance tell one story."""
    totals, ops = amounts(data, demo.ACTUAL), operations(data, demo.ACTUAL)
    for profile in demo.PROFILES:
        for period in CONFIG.periods:
            shipped = ops_total(ops, profile.entity, period, "units_shipped")[0]
            price = Decimal(str(profile.unit_price * 1.025 ** (period.year - CONFIG.start.year)))
            sales = totals[(profile.entity, period, demo.PRODUCT_SALES)]
            assert abs(sales - shipped * price) < 1


def test_the_planted_anomalies_are_there(data):
    actual, budget = amounts(data, demo.ACTUAL), amounts(data, demo.BUDGET)
    ops = operations(data, demo.ACTUAL)
    us, eu = demo.US, demo.EU

    def per_month(function) -> dict[date, float]:
        return {period: float(function(period)) for period in CONFIG.periods}

    # Month 9: US demand 20 % down, measured against the budget to take out seasonality.
    vs_budget = per_month(lambda p: actual[(us, p, demo.PRODUCT_SALES)] / budget[(us, p, demo.PRODUCT_SALES)])
    assert vs_budget[month(9)] < median_except(vs_budget, month(9)) - 0.12

    # Month 16: USD 3.5 M capex and USD 3 M of new debt.
    ppe_step = actual[(us, month(16), demo.PPE)] - actual[(us, month(15), demo.PPE)]
    debt_step = actual[(us, month(16), demo.LONG_TERM_DEBT)] - actual[(us, month(15), demo.LONG_TERM_DEBT)]
    assert ppe_step > Decimal("3500000") and debt_step > Decimal("2800000")

    # Month 18: materials 25 % above normal in both companies.
    for entity in (us, eu):
        materials = per_month(
            lambda p, e=entity: actual[(e, p, demo.MATERIALS)] / actual[(e, p, demo.PRODUCT_SALES)]
        )
        assert materials[month(18)] > median_except(materials, month(18)) * 1.15

    # Month 23: US late-delivery crisis, with expedited freight and customers paying late.
    def rate(series: str, over: str, entity: str = us) -> dict[date, float]:
        return per_month(lambda p: ops_total(ops, entity, p, series)[0] / ops_total(ops, entity, p, over)[0])

    on_time = rate("orders_on_time", "orders")
    assert on_time[month(23)] < 0.75 < min(v for p, v in on_time.items() if p != month(23))
    cycle = rate("delivery_days", "orders")
    assert cycle[month(23)] > median_except(cycle, month(23)) * 1.4
    abandoned = rate("calls_abandoned", "calls_offered")
    assert abandoned[month(23)] > 0.10 > max(v for p, v in abandoned.items() if p != month(23))
    freight = per_month(lambda p: actual[(us, p, demo.FREIGHT)] / actual[(us, p, demo.PRODUCT_SALES)])
    assert freight[month(23)] > median_except(freight, month(23)) * 1.5
    dso = per_month(
        lambda p: actual[(us, p, demo.RECEIVABLES)] / rollup(actual, us, p, "NW-4000") * days_in_month(p)
    )
    assert dso[month(23)] > median_except(dso, month(23), month(24)) + 8

    # Month 24: US CSAT drop after the crisis, NPS detractors up.
    csat = rate("csat_satisfied", "survey_responses")
    assert csat[month(24)] < 0.68 < min(v for p, v in csat.items() if p not in (month(23), month(24)))
    detractors = rate("nps_detractors", "survey_responses")
    assert detractors[month(24)] > 2 * median_except(detractors, month(24))

    # Month 29: EU quality problem.
    defects = rate("units_defective", "units_produced", eu)
    assert defects[month(29)] > 3 * median_except(defects, month(29))
    returns = per_month(lambda p: actual[(eu, p, demo.RETURNS)] / actual[(eu, p, demo.PRODUCT_SALES)])
    assert returns[month(29)] > 2 * median_except(returns, month(29))

    # Month 34: US production hours above capacity (the invariant test checks it is the only one).
    hours = ops_total(ops, us, month(34), "production_hours")[0]
    assert hours > ops_total(ops, us, month(34), "capacity_hours")[0] * Decimal("1.05")


def test_the_forecast_follows_the_latest_actuals(data):
    actual, forecast, budget = (amounts(data, s) for s in (demo.ACTUAL, demo.FORECAST, demo.BUDGET))
    for entity in (demo.US, demo.EU):
        last_quarter = CONFIG.periods[-3:]
        actual_sales = sum(rollup(actual, entity, p, "NW-4000") for p in last_quarter)
        forecast_sales = sum(rollup(forecast, entity, p, "NW-4000") for p in last_quarter)
        budget_sales = sum(rollup(budget, entity, p, "NW-4000") for p in last_quarter)
        assert abs(forecast_sales / actual_sales - 1) < abs(budget_sales / actual_sales - 1)
        assert abs(forecast_sales / actual_sales - 1) < Decimal("0.05")
    # The forecast has profit and loss and headcount, no balance sheet.
    assert not any(row[4] == demo.CASH for row in data.financial if row[3] == demo.FORECAST)


def test_euro_rates_cover_every_month_generated(data):
    assert {row[1] for row in data.rates} == set(CONFIG.periods) | set(CONFIG.forecast_periods)
    assert all(row[0] == "EUR" and Decimal("0.9") < row[2] < Decimal("1.3") for row in data.rates)


def test_fewer_months_leave_out_the_anomalies_beyond_them():
    short = demo.generate(demo.DemoConfig(seed=7, start=date(2023, 1, 1), months=12))
    ops = operations(short, demo.ACTUAL)
    periods = sorted({row[0] for row in short.financial if row[3] == demo.ACTUAL})
    assert len(periods) == 12
    on_time = [
        ops_total(ops, demo.US, p, "orders_on_time")[0] / ops_total(ops, demo.US, p, "orders")[0]
        for p in periods
    ]
    assert min(on_time) > Decimal("0.85")  # the month-23 crisis is beyond the series


@pytest.mark.parametrize(
    ("config", "column"),
    [
        ({"seed": 7, "start": "2023-13", "months": 36}, "start"),
        ({"seed": 7, "start": "January 2023", "months": 36}, "start"),
        ({"seed": 7, "start": "0000-01", "months": 36}, "start"),
        ({"seed": -1, "start": "2023-01", "months": 36}, "seed"),
        ({"seed": "7", "start": "2023-01", "months": 36}, "seed"),
        ({"seed": 7, "start": "2023-01", "months": 6}, "months"),
        ({"seed": 7, "start": "2023-01", "months": 36.5}, "months"),
    ],
)
def test_a_bad_config_is_rejected_naming_the_key(config, column):
    with pytest.raises(ImportRejected) as rejected:
        demo.parse_config(config)
    assert [error.column for error in rejected.value.errors] == [column]


# --- Loading and the command (database) -------------------------------------------------------


def run_demo(*args: str) -> str:
    out = StringIO()
    call_command("demo", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_demo_loads_the_company_and_prints_what_it_loaded():
    output = run_demo("--months", "24")

    source = DataSource.objects.get(slug="demo")
    assert source.kind == DataSource.Kind.DEMO and source.name == "Demo company (generated)"
    config = demo.parse_config(source.config)
    assert (config.seed, config.months) == (7, 24)
    load, recompute = RefreshRun.objects.order_by("pk")  # the load, then a recompute with the KPI library
    assert load.status == RefreshRun.Status.SUCCEEDED and load.rows_inserted > 5000
    assert recompute.status == RefreshRun.Status.SUCCEEDED and recompute.steps[-1]["kpi_values"] > 1000

    facts = FinancialFact.objects.filter(source=source)
    assert facts.filter(scenario__code="actual").values("period").distinct().count() == 24
    assert facts.filter(scenario__code="budget").values("period").distinct().count() == 24
    assert facts.filter(scenario__code="forecast").values("period").distinct().count() == 9
    assert not facts.filter(account__children__isnull=False).exists()  # leaves only
    assert not facts.exclude(entity__parent__isnull=False).exists()  # the group has no facts of its own
    for amount in facts.values_list("amount", flat=True):
        assert amount == amount.quantize(Decimal("0.01"))
    assert OperationalFact.objects.filter(source=source, series__code="orders_on_time").exists()
    assert CurrencyRate.objects.filter(source=source, currency="EUR").count() == 24 + 6

    assert "Northwind Components Group (USD) > Northwind Components Inc. (USD)" in output
    assert f"password '{DEMO_PASSWORD}'" in output
    for username in DEMO_USERS:
        assert username in output


@pytest.mark.django_db
def test_running_demo_again_changes_nothing():
    run_demo()
    facts = sorted(FinancialFact.objects.values_list("id", "amount"))
    accounts = list(Account.objects.values_list("id", "code", "parent_id", "rollup_sign", "sort_order"))

    output = run_demo()

    run = RefreshRun.objects.order_by("-pk").first()
    step = run.steps[0]
    assert (step["rows_inserted"], step["rows_updated"], step["rows_deleted"]) == (0, 0, 0)
    assert step["rows_unchanged"] == step["rows_read"] > 0
    assert sorted(FinancialFact.objects.values_list("id", "amount")) == facts
    assert (
        list(Account.objects.values_list("id", "code", "parent_id", "rollup_sign", "sort_order")) == accounts
    )
    assert "0 inserted, 0 updated, 0 deleted" in output


@pytest.mark.django_db
def test_demo_keeps_its_start_month_and_drops_months_no_longer_generated():
    source = demo.demo_source_ensure(today=date(2025, 3, 15))
    assert source.config == {"seed": 7, "start": "2022-03", "months": 36}
    demo.load(source, report=Report())

    source = demo.demo_source_ensure(months=24, today=date(2026, 1, 1))
    assert source.config == {"seed": 7, "start": "2022-03", "months": 24}
    result = demo.load(source, report=Report())

    # The first 24 months are the same draws as before; the forecast moves to months 22-30.
    assert result.rows_updated == 0 and result.rows_deleted > 0
    last = FinancialFact.objects.filter(source=source, scenario__code="actual").latest("period").period
    assert last == date(2024, 2, 1)
    assert not OperationalFact.objects.filter(source=source, period__gt=date(2024, 2, 1)).exists()
    assert CurrencyRate.objects.filter(source=source).count() == 24 + 6
    # The months dropped are gone from the ledger totals too, and the recompute is told of them.
    factories.assert_ledger_totals_match_facts()
    assert date(2025, 2, 1) in result.changed_periods


@pytest.mark.django_db
def test_a_demo_source_without_start_gets_one_fixed_with_a_warning():
    source = DataSource.objects.create(
        slug="demo", name="Demo", kind=DataSource.Kind.DEMO, config={"months": 12}
    )
    report = Report()
    demo.load(source, report=report)
    source.refresh_from_db()
    assert set(source.config) == {"seed", "start", "months"}
    assert any("no start month" in warning for warning in report.warnings)


@pytest.mark.django_db
def test_demo_creates_the_demo_users_with_their_groups():
    run_demo("--months", "12")
    for username, (_full_name, groups, is_staff) in DEMO_USERS.items():
        user = User.objects.get(username=username)
        assert sorted(user.groups.values_list("name", flat=True)) == sorted(groups)
        assert user.is_staff == is_staff
        assert user.check_password(DEMO_PASSWORD)


@pytest.mark.django_db
def test_demo_refuses_in_production(settings):
    settings.PRODUCTION = True
    with pytest.raises(CommandError, match="production"):
        run_demo()
    assert not DataSource.objects.exists()
    assert not User.objects.exists()
