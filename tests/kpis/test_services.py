"""Writes to KPI definitions: every save is checked and recorded (who, when, {field: [old, new]});
the formula version goes up only when the formula changes."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from kpis.definitions import import_definitions
from kpis.formula import FormulaError
from kpis.models import KPI, KPIChange
from kpis.services import kpi_formula_check, kpi_save

MEASURES = [
    {"code": "net_sales", "name": "Net sales", "kind": "account", "account": "4000"},
    {"code": "cost", "name": "Cost", "kind": "account", "account": "5000"},
    {
        "code": "delivery_days",
        "name": "Delivery days",
        "kind": "series_value",
        "series": "delivery",
        "unit": "days",
    },
    {"code": "orders", "name": "Orders", "kind": "series_count", "series": "delivery", "unit": "count"},
]


@pytest.fixture
def measures(book):
    """net_sales and cost (currency), delivery_days (days), orders (count)."""
    book.account("4000")
    book.account("5000")
    book.a_series("delivery")
    rows = [{**m, "time_behaviour": "flow"} for m in MEASURES]
    import_definitions({"version": 1, "measures": rows, "kpis": []})
    return book


@pytest.fixture
def analyst(db):
    return User.objects.create_user("ana")


def new_kpi(code: str = "gm", formula: str = "net_sales - cost", **fields) -> KPI:
    return KPI(
        code=code,
        name=fields.pop("name", code.upper()),
        unit=fields.pop("unit", "currency"),
        formula=formula,
        **fields,
    )


# --- kpi_save -------------------------------------------------------------------------------


def test_saving_a_new_kpi_records_who_when_and_every_field_set(measures, analyst):
    before = timezone.now()
    change = kpi_save(kpi=new_kpi(), user=analyst)
    kpi = KPI.objects.get(code="gm")
    assert change.kpi == kpi and change.changed_by == analyst
    assert before <= change.changed_at <= timezone.now() + timedelta(seconds=1)
    assert change.formula_version == kpi.formula_version == 1
    assert change.changes == {
        "code": [None, "gm"],
        "name": [None, "GM"],
        "unit": [None, "currency"],
        "direction": [None, "higher"],
        "formula": [None, "net_sales - cost"],
        "decimals": [None, 1],
        "is_active": [None, True],
        "target_rule": [None, "budget"],
        "green_tolerance_pct": [None, "0"],
        "amber_tolerance_pct": [None, "5"],
    }


def test_an_edit_records_each_changed_field_with_its_old_and_new_value(measures, analyst):
    kpi_save(kpi=new_kpi())
    kpi = KPI.objects.get(code="gm")
    kpi.name = "Gross margin"
    kpi.amber_tolerance_pct = Decimal("3")
    kpi.band_low = Decimal("0.5")
    change = kpi_save(kpi=kpi, user=analyst)
    assert change.changed_by == analyst
    assert change.changes == {
        "name": ["GM", "Gross margin"],
        "amber_tolerance_pct": ["5.00", "3"],
        "band_low": [None, "0.5"],
    }
    assert list(kpi.changes.values_list("pk", flat=True)) == [change.pk, KPIChange.objects.earliest("pk").pk]


def test_the_formula_version_goes_up_only_when_the_formula_changes(measures):
    kpi_save(kpi=new_kpi())
    kpi = KPI.objects.get(code="gm")
    kpi.name = "Gross margin"
    assert kpi_save(kpi=kpi).formula_version == 1
    kpi.formula = "net_sales - cost * 1.1"
    assert kpi_save(kpi=kpi).formula_version == 2
    kpi.direction = "lower"
    kpi.decimals = 0
    assert kpi_save(kpi=kpi).formula_version == 2
    kpi.formula = "net_sales - cost"
    change = kpi_save(kpi=kpi)
    assert change.formula_version == 3 and change.changes == {
        "formula": ["net_sales - cost * 1.1", "net_sales - cost"]
    }
    kpi.refresh_from_db()
    assert kpi.formula_version == 3
    assert list(kpi.changes.order_by("pk").values_list("formula_version", flat=True)) == [1, 1, 2, 2, 3]


def test_saving_with_nothing_changed_records_nothing(measures):
    kpi_save(kpi=new_kpi(description="Revenue left after cost."))
    kpi = KPI.objects.get(code="gm")
    assert kpi_save(kpi=kpi) is None
    # The same values written differently are no change: 5 is 5.00, None is an empty text.
    kpi.amber_tolerance_pct = Decimal("5")
    kpi.convention = None
    assert kpi_save(kpi=kpi) is None
    assert KPIChange.objects.count() == 1
    assert KPI.objects.get(code="gm").formula_version == 1


def test_it_refuses_to_save_a_formula_that_does_not_check(measures):
    with pytest.raises(FormulaError, match="Unknown name 'net_sale'"):
        kpi_save(kpi=new_kpi(formula="net_sale - cost"))
    assert (KPI.objects.count(), KPIChange.objects.count()) == (0, 0)
    kpi_save(kpi=new_kpi())
    kpi = KPI.objects.get(code="gm")
    kpi.formula = "net_sales - (cost"
    with pytest.raises(FormulaError, match="Unexpected end of formula"):
        kpi_save(kpi=kpi)
    kpi.refresh_from_db()
    assert (kpi.formula, kpi.formula_version, KPIChange.objects.count()) == ("net_sales - cost", 1, 1)


# --- kpi_formula_check ----------------------------------------------------------------------


def test_it_refuses_a_kpi_that_refers_to_itself(measures):
    with pytest.raises(FormulaError) as caught:
        kpi_formula_check(code="gm", formula_text="net_sales - gm")
    assert "forms a cycle: gm → gm" in str(caught.value)


def test_it_refuses_an_indirect_cycle_with_the_cycle_in_the_message(measures):
    kpi_save(kpi=new_kpi("a", "net_sales"))
    kpi_save(kpi=new_kpi("b", "a * 2"))
    a = KPI.objects.get(code="a")
    with pytest.raises(FormulaError) as caught:
        kpi_formula_check(code="a", formula_text="b + 1", exclude_pk=a.pk)
    assert "The formula forms a cycle: a → b → a" in str(caught.value)
    # The same without exclude_pk: the formula being checked replaces the stored one.
    with pytest.raises(FormulaError, match="a → b → a"):
        kpi_formula_check(code="a", formula_text="b + 1")
    # And through kpi_save, which refuses it and keeps the stored formula.
    a.formula = "b + 1"
    with pytest.raises(FormulaError, match="a → b → a"):
        kpi_save(kpi=a)
    assert KPI.objects.get(code="a").formula == "net_sales"


def test_a_chain_without_a_loop_is_accepted(measures):
    kpi_save(kpi=new_kpi("a", "net_sales"))
    kpi_save(kpi=new_kpi("b", "a * 2"))
    formula = kpi_formula_check(code="c", formula_text="a + b")
    assert formula.names == {"a", "b"}


def test_it_refuses_an_unknown_name_with_its_position_and_a_suggestion(measures):
    with pytest.raises(FormulaError) as caught:
        kpi_formula_check(code="gm", formula_text="net_sales - costs")
    error = caught.value
    assert (error.position, error.line, error.column) == (12, 1, 13)
    assert str(error) == "Unknown name 'costs' at column 13: did you mean 'cost'?"


def test_it_refuses_adding_currency_and_days(measures):
    with pytest.raises(FormulaError) as caught:
        kpi_formula_check(code="mix", formula_text="net_sales + delivery_days")
    assert str(caught.value) == "Cannot add currency and days at column 11"
    assert caught.value.position == 10


def test_units_follow_the_kpis_a_formula_names(measures):
    kpi_save(kpi=new_kpi("cycle_time", "delivery_days / orders", unit="days"))
    with pytest.raises(FormulaError, match="Cannot subtract days from currency"):
        kpi_formula_check(code="mix", formula_text="net_sales - cycle_time")
    assert kpi_formula_check(code="ok", formula_text="cycle_time * 2 - delivery_days")


def test_it_refuses_a_kpi_code_that_is_a_measure_code(measures):
    with pytest.raises(FormulaError, match="'cost' is already the code of a measure"):
        kpi_formula_check(code="cost", formula_text="net_sales")
