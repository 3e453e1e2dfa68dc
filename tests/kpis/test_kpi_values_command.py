"""`manage.py kpi_values CODE`: the stored values, with target and status, exactly as stored."""

from __future__ import annotations

import csv
import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from finops.models import Entity
from kpis.definitions import import_definitions
from kpis.engine import recompute
from kpis.management.commands.kpi_values import COLUMNS
from kpis.models import KPIValue


@pytest.fixture
def computed(book):
    """Q1 2024 for US: net sales 900 / 500 / 1,000, receivables 300 / 400 / 600; a budget."""
    Entity.objects.filter(code="US").update(name="United States")
    book.account("4000")
    book.account("1200", balance=True)
    actual = [("2024-01", "900", "300"), ("2024-02", "500", "400"), ("2024-03", "1000", "600")]
    budget = [("2024-01", "1000", "300"), ("2024-02", "1000", "400"), ("2024-03", "1000", "500")]
    rows = []
    for scenario, months in (("actual", actual), ("budget", budget)):
        for month, sales, receivables in months:
            rows += [(month, "US", "4000", sales, scenario), (month, "US", "1200", receivables, scenario)]
    book.book(rows)
    import_definitions(
        {
            "version": 1,
            "measures": [
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
            "kpis": [
                {
                    "code": "revenue",
                    "name": "Revenue",
                    "unit": "currency",
                    "decimals": 0,
                    "formula": "net_sales",
                },
                {
                    "code": "dso",
                    "name": "DSO",
                    "unit": "days",
                    "direction": "lower",
                    "amber_tolerance_pct": 10,
                    "formula": "receivables / revenue * days()",
                },
            ],
        }
    )
    recompute()
    return book


def run(*args: str) -> str:
    out = StringIO()
    call_command("kpi_values", *args, stdout=out)
    return out.getvalue()


def stored(code: str, grain: str, scenario: str = "actual", entity: str = "G") -> list[KPIValue]:
    return list(
        KPIValue.objects.filter(
            kpi__code=code, grain=grain, scenario__code=scenario, entity__code=entity
        ).order_by("period")
    )


def as_printed(value: KPIValue) -> tuple:
    none_or_str = lambda d: None if d is None else str(d)  # noqa: E731
    return (
        value.period.isoformat(),
        value.scenario.code,
        value.entity.code,
        none_or_str(value.value),
        none_or_str(value.target),
        none_or_str(value.variance),
        value.status,
        value.status_reason,
        value.formula_version,
    )


def printed(row: dict) -> tuple:
    keys = ("period", "scenario", "entity", "value", "target", "variance", "status", "status_reason")
    return (*(row[k] for k in keys), row["formula_version"])


def test_json_prints_the_stored_quarter_values_with_target_and_status(computed):
    rows = json.loads(run("dso", "--grain", "quarter", "--format", "json"))
    values = stored("dso", "quarter")
    assert len(rows) == len(values) == 1
    assert [printed(r) for r in rows] == [as_printed(v) for v in values]
    (q1,) = rows
    # Quarter-end receivables over the quarter's sales times its 91 days: 600 / 2,400 x 91;
    # the budget's DSO is the target: 500 / 3,000 x 91.
    assert (q1["kpi"], q1["grain"], q1["period"]) == ("dso", "quarter", "2024-01-01")
    assert (q1["value"], q1["target"]) == ("22.750000", "15.166667")
    assert q1["status"] == "red" and "above the target" in q1["status_reason"]
    assert q1["formatted"] == "22.8 days"
    assert (q1["partial"], q1["empty_reason"]) == (False, "")


def test_the_default_is_monthly_values_of_the_top_entity_in_the_actual_scenario(computed):
    rows = json.loads(run("dso", "--format", "json"))
    assert [printed(r) for r in rows] == [as_printed(v) for v in stored("dso", "month")]
    assert [r["period"] for r in rows] == ["2024-01-01", "2024-02-01", "2024-03-01"]
    assert {(r["grain"], r["scenario"], r["entity"]) for r in rows} == {("month", "actual", "G")}


def test_csv_has_the_header_and_one_row_per_period(computed):
    text = run("revenue", "--grain", "month")
    lines = text.splitlines()
    assert lines[0] == ",".join(COLUMNS)
    rows = list(csv.DictReader(StringIO(text)))
    assert [(r["period"], r["value"], r["target"], r["status"]) for r in rows] == [
        (v.period.isoformat(), str(v.value), str(v.target), v.status) for v in stored("revenue", "month")
    ]
    assert [r["value"] for r in rows] == ["900.000000", "500.000000", "1000.000000"]
    assert [r["status"] for r in rows] == ["red", "red", "green"]


def test_a_scenario_is_chosen_by_code_or_name(computed):
    by_code = json.loads(run("dso", "--grain", "quarter", "--scenario", "budget", "--format", "json"))
    assert [printed(r) for r in by_code] == [as_printed(v) for v in stored("dso", "quarter", "budget")]
    assert by_code[0]["value"] == "15.166667" and by_code[0]["status"] == "none"
    assert json.loads(run("dso", "--grain", "quarter", "--scenario", "Budget", "--format", "json")) == by_code


def test_an_entity_is_chosen_by_code_or_name(computed):
    by_code = json.loads(run("revenue", "--entity", "US", "--format", "json"))
    assert [printed(r) for r in by_code] == [as_printed(v) for v in stored("revenue", "month", entity="US")]
    assert {r["entity"] for r in by_code} == {"US"}
    assert json.loads(run("revenue", "--entity", "united states", "--format", "json")) == by_code


def test_an_unknown_kpi_lists_the_known_ones(computed):
    with pytest.raises(CommandError, match=r"No KPI 'dsoo'\. Known: dso, revenue\."):
        run("dsoo")


def test_an_unknown_scenario_lists_the_known_ones(computed):
    with pytest.raises(CommandError, match=r"No scenario 'plan'\. Known: actual, budget\."):
        run("dso", "--scenario", "plan")


def test_an_unknown_entity_lists_the_known_ones(computed):
    with pytest.raises(CommandError, match=r"No entity 'Mars'\. Known: EU, G, US\."):
        run("dso", "--entity", "Mars")


def test_a_kpi_without_values_prints_only_the_header(computed):
    KPIValue.objects.filter(kpi__code="dso").delete()
    assert run("dso").splitlines() == [",".join(COLUMNS)]
    assert json.loads(run("dso", "--format", "json")) == []


def test_a_year_with_months_still_to_come_is_printed_as_partial(computed):
    (year,) = json.loads(run("revenue", "--grain", "year", "--entity", "US", "--format", "json"))
    assert (year["period"], year["value"], year["partial"]) == ("2024-01-01", "2400.000000", True)
    assert "Partial period" in year["status_reason"]
    assert [printed(year)] == [as_printed(v) for v in stored("revenue", "year", entity="US")]
