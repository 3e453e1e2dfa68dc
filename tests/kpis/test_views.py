"""The KPI detail page and the drill-down from a measure value to its facts.

A small company with numbers checked by hand (tests/kpis/conftest.py: Group > US, EU; EU is made
to report in USD here so the group can be reconciled in one currency):

    Net Sales (NS)
      Gross Sales (GS, +)
        4110 Product sales (+)
        4120 Service (+)
      RET Returns (-)
      STAT Statistical units (~, left out)

    Q1 2024, US:   Jan  4110 1,000.00  4120 200.00  RET 50.00  STAT 999
                   Feb  4110   800.00               RET 30.00
                   Mar  4110 1,200.50  4120 100.00  RET 20.25
    net sales US = (1,000 + 200 - 50) + (800 - 30) + (1,200.50 + 100 - 20.25)
                 = 1,150.00 + 770.00 + 1,280.25 = 3,200.25
    Q1 2024, EU:   Jan  4110 500.00  RET 10.00            -> 490.00
    net sales G  = 3,200.25 + 490.00 = 3,690.25

    AR (balance), US: Jan 300, Feb 400, Mar 600 -> Q1 takes March: 600.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from alignment.models import Goal, GoalKPI, KPIDriver
from finops.loading import load_financial_facts, load_operational_facts, update_ledger_totals
from finops.models import Account, Department, Entity, FinancialFact, RefreshRun
from kpis.definitions import import_definitions
from kpis.engine import recompute
from kpis.models import KPI, KPIValue, MeasureValue
from tests import factories

pytestmark = pytest.mark.django_db

US_Q1 = [
    ("2024-01", "4110", "1000.00"),
    ("2024-01", "4120", "200.00"),
    ("2024-01", "RET", "50.00"),
    ("2024-01", "STAT", "999"),
    ("2024-02", "4110", "800.00"),
    ("2024-02", "RET", "30.00"),
    ("2024-03", "4110", "1200.50"),
    ("2024-03", "4120", "100.00"),
    ("2024-03", "RET", "20.25"),
]
EU_Q1 = [("2024-01", "4110", "500.00"), ("2024-01", "RET", "10.00")]
AR = [("2024-01", "300"), ("2024-02", "400"), ("2024-03", "600")]
Q1 = {"grain": "quarter", "period": "2024-01-01"}


def measure(code: str, account: str, behaviour: str = "flow", **extra) -> dict:
    return {
        "code": code,
        "name": code.replace("_", " ").title(),
        "kind": "account",
        "account": account,
        "time_behaviour": behaviour,
        **extra,
    }


class Company:
    """The book above, loaded and computed; ``extra`` adds KPIs and measures first."""

    def __init__(self, book, *, extra_accounts: int = 0, extra_rows: int = 0) -> None:
        self.book = book
        Entity.objects.filter(code="EU").update(currency="USD")
        self.sales = Department.objects.create(code="sales", name="Sales", side="operations")
        self.retail = Department.objects.create(code="retail", name="Retail", parent=self.sales)
        book.account("NS")
        book.account("GS", parent="NS")
        book.account("4110", parent="GS")
        book.account("4120", parent="GS")
        book.account("RET", parent="NS", sign=-1)
        book.account("STAT", parent="NS", sign=0)
        book.account("AR", balance=True)
        Account.objects.filter(code="4110").update(name="Product sales")
        for i in range(extra_accounts):
            book.account(f"X{i:03}", parent="GS")
        self.extra_rows = extra_rows

    def load(self, more: list[tuple] = ()) -> None:
        """Every fact in one load (a load replaces the source's periods)."""
        ids = {e.code: e.pk for e in Entity.objects.all()}
        rows = []

        def add(month, entity, account, amount, department=None, scenario=None):
            rows.append(
                (
                    date.fromisoformat(month + "-01"),
                    ids[entity],
                    (department or self.book.dept).pk,
                    (scenario or self.book.actual).pk,
                    self.book.accounts[account].pk,
                    Decimal(amount),
                )
            )

        for month, account, amount in US_Q1:
            add(month, "US", account, amount)
        for month, account, amount in EU_Q1:
            add(month, "EU", account, amount)
        for month, amount in AR:
            add(month, "US", "AR", amount)
        # A budget of 1,000 a month for US: the target of the revenue KPI.
        for month in ("2024-01", "2024-02", "2024-03"):
            add(month, "US", "4110", "1000", scenario=self.book.budget)
        # Extra rows on extra accounts, in Sales and Retail, each 1.00: they add to net sales.
        for i in range(self.extra_rows):
            account = f"X{i // 2:03}"
            add("2024-02", "US", account, "1.00", department=self.sales if i % 2 else self.retail)
        for row in more:
            add(*row)
        load_financial_facts(source=self.book.source, rows=rows)

    def define(self, kpis: list[dict] = (), measures: list[dict] = ()) -> None:
        import_definitions(
            {
                "version": 1,
                "measures": [
                    measure("net_sales", "NS"),
                    measure("receivables", "AR", "balance"),
                    measure("retail_sales", "NS", department="retail"),
                    *measures,
                ],
                "kpis": [
                    {
                        "code": "revenue",
                        "name": "Revenue",
                        "unit": "currency",
                        "decimals": 0,
                        "formula": "net_sales",
                        "description": "Sales after returns.",
                    },
                    {
                        "code": "dso",
                        "name": "DSO",
                        "unit": "days",
                        "direction": "lower",
                        "formula": "receivables / revenue * days()",
                    },
                    *kpis,
                ],
            }
        )


@pytest.fixture
def company(book) -> Company:
    company = Company(book)
    company.load()
    company.define()
    recompute(run=RefreshRun.objects.create(status=RefreshRun.Status.SUCCEEDED, finished_at=timezone.now()))
    return company


@pytest.fixture
def cfo(client):
    client.force_login(factories.leadership_user())
    return client


def detail(client, code: str = "revenue", **params):
    return client.get(reverse("kpi-detail", args=[code]), {**Q1, "entity": "US", **params})


def facts(client, code: str = "revenue", measure_code: str = "net_sales", **params):
    return client.get(
        reverse("kpi-facts", args=[code]), {**Q1, "entity": "US", "measure": measure_code, **params}
    )


def text(response) -> str:
    """The page's words, without tags, scripts or repeated spaces."""
    body = re.sub(r"<script.*?</script>", " ", response.content.decode(), flags=re.S)
    body = re.sub(r"<[^>]+>", " ", body)
    return re.sub(r"\s+", " ", body.replace("&nbsp;", " ").replace("&#x27;", "'"))


def stored_value(
    code: str, entity: str = "US", grain: str = "quarter", period: str = "2024-01-01"
) -> Decimal:
    return MeasureValue.objects.get(
        measure__code=code, scenario__code="actual", entity__code=entity, grain=grain, period=period
    ).value


# --- access and bad input -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kpi-detail", "kpi-facts"])
def test_the_kpi_pages_require_login(client, company, name):
    response = client.get(reverse(name, args=["revenue"]))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


@pytest.mark.parametrize("name", ["kpi-detail", "kpi-facts"])
def test_an_unknown_kpi_code_is_a_404_page_that_says_what_to_do(cfo, company, name):
    response = cfo.get(reverse(name, args=["no_such_kpi"]))
    assert response.status_code == 404
    assert "There is no KPI “no_such_kpi”" in text(response)
    assert reverse("scorecard") in response.content.decode()


@pytest.mark.parametrize("name", ["kpi-detail", "kpi-facts"])
def test_bad_filter_values_give_a_clear_message_not_an_error(cfo, company, name):
    params = {"grain": "weekly", "period": "last-tuesday", "entity": "MARS", "measure": "net_sales"}
    response = cfo.get(reverse(name, args=["revenue"]), params)
    assert response.status_code == 200
    words = text(response)
    assert "Unknown grain 'weekly'; showing months." in words
    assert "'last-tuesday' is not a date (use YYYY-MM-DD)" in words
    assert "Unknown entity 'MARS'" in words


def test_a_period_without_values_is_explained_and_the_latest_shown(cfo, company):
    response = detail(cfo, period="2023-07-01")  # before the data
    assert response.status_code == 200
    words = text(response)
    assert "No values for 2023-07-01 at this grain; showing the latest period." in words
    assert "2024 Q1 · US" in words


# --- the KPI detail page --------------------------------------------------------------------


def test_the_detail_page_shows_the_definition_value_status_and_lineage(cfo, company):
    kpi = KPI.objects.get(code="revenue")
    value = KPIValue.objects.get(
        kpi=kpi, entity__code="US", grain="quarter", period=date(2024, 1, 1), scenario__code="actual"
    )
    response = detail(cfo)
    assert response.status_code == 200
    words = text(response)
    assert "Revenue" in words and "Sales after returns." in words
    assert "revenue = net_sales" in words and "Formula version 1" in words
    # 3,200.25 against a budget of 3,000 (no decimals: money below 10k is written in full), green.
    assert "Actual 3,200 Target 3,000 from the budget scenario Variance +200" in words
    assert "On target" in words and value.status_reason in words
    # The input measure with its value and a link to its facts; the run it came from.
    assert "Net Sales net_sales measure 3,200" in words
    body = response.content.decode()
    assert (
        reverse("kpi-facts", args=["revenue"])
        + "?grain=quarter&amp;period=2024-01-01&amp;entity=US&amp;measure=net_sales"
        in body
    )
    assert reverse("run-detail", args=[value.refresh_run_id]) in body
    # The chart is embedded for charts.js, with the stored numbers, and the table repeats them.
    assert 'data-figure-id="fig-kpi"' in body and 'id="fig-kpi"' in body
    assert "3200.25" in body  # the actual in the figure's JSON
    assert "vendor/plotly/plotly-basic.min.js" in body and "js/charts.js" in body


def test_the_detail_page_lists_goals_and_driver_links_both_ways(cfo, company):
    revenue, dso = KPI.objects.get(code="revenue"), KPI.objects.get(code="dso")
    goal = Goal.objects.create(
        code="grow", title="Grow sales", period_start=date(2024, 1, 1), period_end=date(2024, 12, 1)
    )
    GoalKPI.objects.create(goal=goal, kpi=revenue, role="outcome")
    KPIDriver.objects.create(driver=dso, outcome=revenue, explanation="Slow collection starves sales.")
    words = text(detail(cfo))
    assert "Grow sales financial outcome" in words
    assert "What drives it DSO" in words and "Slow collection starves sales." in words
    words = text(detail(cfo, "dso"))
    assert "What it drives Revenue" in words and "Slow collection starves sales." in words
    assert "No driver is linked to DSO." in words


def test_a_kpi_input_links_to_that_kpis_page(cfo, company):
    response = detail(cfo, "dso")
    body = response.content.decode()
    assert reverse("kpi-detail", args=["revenue"]) + "?grain=quarter" in body
    assert "Receivables receivables measure 600" in text(response)


def test_a_period_without_a_value_says_why(cfo, company):
    KPIValue.objects.filter(kpi__code="revenue", grain="quarter", entity__code="US").delete()
    words = text(detail(cfo))
    assert "No value for 2024 Q1." in words
    assert "has no stored values for US at this grain yet" in words and "run a refresh" in words


def test_an_empty_value_shows_its_reason(cfo, company):
    KPIValue.objects.filter(kpi__code="dso", grain="quarter", entity__code="US").update(
        value=None, empty_reason="division by zero: revenue is 0", status="none"
    )
    assert "No value for 2024 Q1. division by zero: revenue is 0" in text(detail(cfo, "dso"))


def test_with_no_values_yet_the_pages_say_to_connect_a_source_and_refresh(cfo, book):
    company = Company(book)
    company.define()  # definitions, but no facts and no refresh
    for response in (detail(cfo), facts(cfo)):
        assert response.status_code == 200
        assert "No KPI values yet. Connect a data source and run a refresh" in text(response)


def many_inputs(company: Company, count: int) -> None:
    """A KPI adding ``count`` measures (one per account of the book)."""
    accounts = ["4110", "4120", "RET", "GS", "NS", "AR", "STAT"][:count]
    company.define(
        measures=[measure(f"m{i}", account) for i, account in enumerate(accounts)],
        kpis=[
            {
                "code": "wide",
                "name": "Wide",
                "unit": "currency",
                "formula": " + ".join(f"m{i}" for i in range(len(accounts))),
            }
        ],
    )


@pytest.mark.parametrize("inputs,links", [(1, 0), (7, 3)])
def test_the_detail_page_makes_a_fixed_number_of_queries(cfo, book, django_assert_num_queries, inputs, links):
    company = Company(book)
    company.load()
    many_inputs(company, inputs)
    others = [
        KPI.objects.create(code=f"k{i}", name=f"K{i}", unit="count", formula="net_sales")
        for i in range(links)
    ]
    recompute()
    wide = KPI.objects.get(code="wide")
    for other in others:
        KPIDriver.objects.create(driver=other, outcome=wide, explanation="x")
        goal = Goal.objects.create(
            code=f"g{other.pk}", title="G", period_start=date(2024, 1, 1), period_end=date(2024, 12, 1)
        )
        GoalKPI.objects.create(goal=goal, kpi=wide, role="outcome")
    # session, user, KPI, filter options, periods, goals, driver links, values (own and linked),
    # input names, user's groups (menu)
    with django_assert_num_queries(10):
        response = detail(cfo, "wide", grain="month", period="2024-03-01")
    assert response.status_code == 200
    assert text(response).count("facts behind it") == inputs


# --- the drill-down to facts ----------------------------------------------------------------


def test_the_accounts_add_up_to_the_stored_measure_value_with_their_signs(cfo, company):
    assert stored_value("net_sales") == Decimal("3200.25")  # the engine agrees with the hand sum
    response = facts(cfo)
    assert response.status_code == 200
    drill = response.context["drill"]
    lines = {line.node.code: line for line in drill.accounts}
    assert set(lines) == {"4110", "4120", "RET"}  # STAT is left out (sign 0); GS is not a leaf
    assert (lines["4110"].amounts[""], lines["4110"].node.factor) == (Decimal("3000.50"), 1)
    assert (lines["4120"].amounts[""], lines["4120"].node.factor) == (Decimal("300.00"), 1)
    assert (lines["RET"].amounts[""], lines["RET"].node.factor) == (Decimal("100.25"), -1)
    assert drill.totals[""] == Decimal("3200.25") == drill.expected == drill.stored
    assert drill.agrees is True
    words = text(response)
    assert "Stored value 3,200.25" in words and "as the engine adds them 3,200.25" in words
    assert "The facts add up to the stored value exactly." in words
    assert "RET RET NS − subtracts 100.25 -100.25" in words  # path: NS (the root)
    assert "All 8 rows" in words  # 3 + 2 + 3 rows; STAT's row is not read
    assert "Jan 2024, Feb 2024, Mar 2024" in words


def test_a_group_entity_reads_its_subtree_and_checks_each_entity(cfo, company):
    assert stored_value("net_sales", entity="G") == Decimal("3690.25")
    response = facts(cfo, entity="G")
    drill = response.context["drill"]
    assert drill.expected == drill.stored == Decimal("3690.25")
    assert {check.code: (check.expected, check.stored) for check in drill.entities} == {
        "US": (Decimal("3200.25"), Decimal("3200.25")),
        "EU": (Decimal("490.00"), Decimal("490.00")),
    }
    assert "Group and the 2 entities under it" in text(response)


def test_a_balance_reads_the_last_month_of_the_quarter(cfo, company):
    response = facts(cfo, "dso", "receivables")
    drill = response.context["drill"]
    assert drill.months == [date(2024, 3, 1)]
    assert drill.expected == drill.stored == Decimal("600") == stored_value("receivables")
    assert "a quarter takes its last month with data; this value reads Mar 2024" in text(response)
    assert drill.row_count == 1


def test_a_department_measure_reads_only_its_department_subtree(cfo, book):
    company = Company(book, extra_accounts=2, extra_rows=4)  # X000, X001: 2 rows in Sales, 2 in Retail
    company.load()
    company.define(kpis=[{"code": "retail", "name": "Retail", "unit": "currency", "formula": "retail_sales"}])
    recompute()
    assert stored_value("net_sales") == Decimal("3204.25")  # every department: + 4 x 1.00
    assert stored_value("retail_sales") == Decimal("2.00")  # only Retail's two rows
    drill = facts(cfo, "retail", "retail_sales").context["drill"]
    assert drill.expected == drill.stored == Decimal("2.00")
    assert drill.row_count == 2 and {row["department__code"] for row in drill.rows} == {"retail"}


def test_a_series_measure_shows_its_operational_facts_by_dimension_and_date(cfo, company):
    book = company.book
    series = book.a_series("orders")
    ids = {e.code: e.pk for e in Entity.objects.all()}
    rows = [
        (date(2024, 1, 5), ids["US"], book.actual.pk, series.pk, "web", Decimal("10"), 2),
        (date(2024, 1, 5), ids["US"], book.actual.pk, series.pk, "shop", Decimal("4"), 1),
        (date(2024, 2, 9), ids["US"], book.actual.pk, series.pk, "web", Decimal("6.5"), 3),
    ]
    load_operational_facts(source=factories.source("ops"), rows=rows)
    company.define(
        measures=[
            {
                "code": "orders",
                "name": "Orders",
                "kind": "series_value",
                "series": "orders",
                "time_behaviour": "flow",
                "unit": "count",
            },
            {
                "code": "order_lines",
                "name": "Order lines",
                "kind": "series_count",
                "series": "orders",
                "time_behaviour": "flow",
                "unit": "count",
            },
        ],
        kpis=[{"code": "per_line", "name": "Per line", "unit": "ratio", "formula": "orders / order_lines"}],
    )
    recompute()
    drill = facts(cfo, "per_line", "orders").context["drill"]
    assert drill.expected == drill.stored == Decimal("20.5")  # 10 + 4 + 6.5
    assert [(d, v, c, n) for d, v, c, n in drill.dimensions] == [
        ("shop", Decimal("4"), 1, 1),
        ("web", Decimal("16.5"), 5, 2),
    ]
    assert [(row["date"], row["dimension"]) for row in drill.rows] == [
        (date(2024, 1, 5), "shop"),
        (date(2024, 1, 5), "web"),
        (date(2024, 2, 9), "web"),
    ]
    drill = facts(cfo, "per_line", "order_lines").context["drill"]
    assert drill.expected == drill.stored == Decimal("6")  # 2 + 1 + 3 observations


def test_facts_changed_since_the_refresh_are_reported_as_a_difference(cfo, company):
    FinancialFact.objects.filter(account__code="4120", period=date(2024, 3, 1)).update(amount=Decimal("150"))
    update_ledger_totals([date(2024, 3, 1)])  # as a load that changed the facts does
    response = facts(cfo)
    drill = response.context["drill"]
    assert (drill.stored, drill.expected, drill.agrees) == (Decimal("3200.25"), Decimal("3250.25"), False)
    assert "The facts and the stored value differ by -50.000000" in text(response)


def test_source_rows_are_capped_with_a_clear_message_and_totals_include_every_row(cfo, book):
    company = Company(book, extra_accounts=260, extra_rows=520)
    company.load()
    company.define()
    recompute()
    response = facts(cfo)
    drill = response.context["drill"]
    assert drill.row_count == 528 and len(drill.rows) == 500 and drill.capped
    assert drill.expected == drill.stored == Decimal("3720.25")  # 3,200.25 + 520 x 1.00
    assert "Showing the first 500 of 528 rows" in text(response)


@pytest.mark.parametrize("extra_rows", [0, 520])
def test_the_facts_page_makes_a_fixed_number_of_queries(cfo, book, django_assert_num_queries, extra_rows):
    company = Company(book, extra_accounts=260, extra_rows=extra_rows)
    company.load()
    company.define()
    recompute()
    # session, user, KPI, filter options, periods, measure, stored values, measure's accounts,
    # chart of accounts, totals by account, fact rows, fact count, user's groups (menu)
    with django_assert_num_queries(13):
        response = facts(cfo)
    assert response.context["drill"].agrees is True


def test_the_facts_page_for_a_series_makes_a_fixed_number_of_queries(cfo, company, django_assert_num_queries):
    book = company.book
    series = book.a_series("calls")
    ids = {e.code: e.pk for e in Entity.objects.all()}
    rows = [
        (date(2024, 1, d), ids["US"], book.actual.pk, series.pk, f"d{d % 3}", Decimal(d), 1)
        for d in range(1, 29)
    ]
    load_operational_facts(source=factories.source("ops"), rows=rows)
    company.define(
        measures=[
            {
                "code": "calls",
                "name": "Calls",
                "kind": "series_value",
                "series": "calls",
                "time_behaviour": "flow",
            }
        ],
        kpis=[{"code": "calls_k", "name": "Calls", "unit": "count", "formula": "calls"}],
    )
    recompute()
    # session, user, KPI, filter options, periods, measure, stored values, totals by entity and
    # month, totals by dimension, fact rows, fact count, user's groups (menu)
    with django_assert_num_queries(12):
        response = facts(cfo, "calls_k", "calls")
    assert (
        response.context["drill"].expected == response.context["drill"].stored == Decimal(sum(range(1, 29)))
    )


def test_without_a_measure_the_page_offers_the_formulas_measures(cfo, company):
    response = cfo.get(reverse("kpi-facts", args=["dso"]), Q1)
    assert response.status_code == 200
    words = text(response)
    assert "Choose one of the measures in the formula" in words
    body = response.content.decode()
    assert "measure=receivables" in body
    assert reverse("kpi-detail", args=["revenue"]) in body  # revenue is a KPI: its own page


@pytest.mark.parametrize(
    "code,message",
    [
        ("net_sales", "'net_sales' is not a name in the formula of DSO"),
        ("revenue", "'revenue' is not a measure (it may be a KPI"),
        ("<script>", "is not a name in the formula of DSO"),
    ],
)
def test_a_measure_that_is_not_in_the_formula_is_refused_with_a_message(cfo, company, code, message):
    response = facts(cfo, "dso", code)
    assert response.status_code == 200
    assert message in text(response)
    assert "<script>" not in response.content.decode().split("<main", 1)[1].split("</main>")[0]
