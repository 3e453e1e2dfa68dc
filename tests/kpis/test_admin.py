"""KPI definitions in the admin: a formula that doesn't check is refused with its place, nothing
is saved; a valid save is recorded in the KPI's change history; leadership can only look."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils.html import escape

from finops.models import Account, Entity, Scenario
from finops.roles import LEADERSHIP
from kpis.definitions import import_definitions
from kpis.models import KPI, KPIChange, KPIValue, Measure, MeasureValue
from kpis.services import kpi_save
from tests.factories import analyst_user, user_in


@pytest.fixture
def defined(book):
    book.account("4000")
    book.account("5000")
    Account.objects.filter(code="4000").update(name="Gross sales")
    Account.objects.filter(code="5000").update(name="Cost of sales")
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
                    "code": "cost",
                    "name": "Cost",
                    "kind": "account",
                    "account": "5000",
                    "time_behaviour": "flow",
                },
            ],
            "kpis": [{"code": "revenue", "name": "Revenue", "unit": "currency", "formula": "net_sales"}],
        }
    )
    return book


@pytest.fixture
def analyst(client, defined):
    user = analyst_user()
    client.force_login(user)
    return user


def form(**fields) -> dict:
    """What the KPI add/change form posts, with empty Targets and Change history inlines."""
    data = {
        "code": "gm_pct",
        "name": "Gross margin %",
        "description": "",
        "convention": "",
        "owner_department": "",
        "owner": "",
        "is_active": "on",
        "formula": "(revenue - cost) / revenue",
        "unit": "percent",
        "decimals": "1",
        "direction": "higher",
        "target_rule": "budget",
        "target_rule_pct": "",
        "green_tolerance_pct": "0",
        "amber_tolerance_pct": "5",
        "band_low": "",
        "band_high": "",
        "sort_order": "0",
    }
    for prefix in ("targets", "changes"):
        data |= {
            f"{prefix}-TOTAL_FORMS": "0",
            f"{prefix}-INITIAL_FORMS": "0",
            f"{prefix}-MIN_NUM_FORMS": "0",
            f"{prefix}-MAX_NUM_FORMS": "1000",
        }
    return data | fields


ADD = reverse("admin:kpis_kpi_add")


def change_url(code: str) -> str:
    return reverse("admin:kpis_kpi_change", args=[KPI.objects.get(code=code).pk])


def definitions() -> tuple:
    return (
        list(KPI.objects.order_by("pk").values()),
        list(KPIChange.objects.order_by("pk").values("kpi_id", "formula_version", "changes")),
    )


def refused(client, url: str, data: dict) -> str:
    """Post the form, expect it shown again with a formula error, and nothing saved."""
    before = definitions()
    response = client.post(url, data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["formula"], errors
    assert definitions() == before
    message = errors["formula"][0]
    assert escape(message) in response.content.decode()  # shown on the page, next to the field
    return message


# --- refusals -------------------------------------------------------------------------------


def test_it_refuses_a_syntax_error_showing_the_column_and_a_pointer(client, analyst):
    message = refused(client, ADD, form(formula="(revenue - cost / revenue"))
    assert message == (
        "Unexpected end of formula at column 26: expected ')' (the '(' at column 1 is not closed)"
        " — (revenue - cost / revenue⟶"
    )
    message = refused(client, ADD, form(formula="revenue cost"))
    assert message.startswith("Unexpected name 'cost' at column 9")
    assert message.endswith(" — revenue ⟶cost")


def test_it_refuses_an_unknown_name_with_a_suggestion(client, analyst):
    message = refused(client, ADD, form(formula="(revenue - costs) / revenue"))
    assert message == (
        "Unknown name 'costs' at column 12: did you mean 'cost'? — (revenue - ⟶costs) / revenue"
    )


def test_it_refuses_a_cycle(client, analyst):
    kpi_save(kpi=KPI(code="gm", name="GM", unit="currency", formula="revenue - cost"))
    message = refused(
        client, change_url("revenue"), form(code="revenue", formula="gm + cost", unit="currency")
    )
    assert "The formula forms a cycle: revenue → gm → revenue" in message
    assert KPI.objects.get(code="revenue").formula == "net_sales"


@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        ("__import__('os')", "Quotes are not allowed at column 12"),
        ("__import__(os)", "Unknown function '__import__' at column 1"),
        ("a.b", "Unexpected '.' at column 2: names cannot contain '.'"),
        ("revenue; cost", "Unexpected ';' at column 8"),
        ("x" * 5_000, "Formula is too long: 5,000 characters (the limit is 2,000)"),
        ("revenue" + " + revenue" * 600, "Formula is too long"),
    ],
)
def test_it_refuses_hostile_input_with_a_clear_message(client, analyst, formula, expected):
    assert expected in refused(client, ADD, form(formula=formula))


def test_it_refuses_a_band_kpi_without_bounds(client, analyst):
    response = client.post(ADD, form(direction="band", band_low="0.2"))
    assert response.status_code == 200
    assert "needs its low and high bounds" in response.context["adminform"].form.errors["band_low"][0]
    assert not KPI.objects.filter(code="gm_pct").exists()


# --- valid saves ----------------------------------------------------------------------------


def test_a_valid_save_is_recorded_and_shown_in_the_change_history(client, analyst):
    response = client.post(ADD, form())
    assert response.status_code == 302
    kpi = KPI.objects.get(code="gm_pct")
    change = kpi.changes.get()
    assert change.changed_by == analyst and change.formula_version == 1
    assert change.changes["formula"] == [None, "(revenue - cost) / revenue"]

    page = client.get(change_url("gm_pct")).content.decode()
    assert "Change history" in page
    assert "<dt>Formula</dt><dd><del>—</del> → <ins>(revenue - cost) / revenue</ins></dd>" in page
    assert analyst.username in page


def test_editing_the_formula_bumps_the_version(client, analyst):
    client.post(ADD, form())
    response = client.post(change_url("gm_pct"), form(formula="(revenue - cost * 1.02) / revenue"))
    assert response.status_code == 302
    kpi = KPI.objects.get(code="gm_pct")
    assert kpi.formula_version == 2
    assert kpi.changes.first().changes == {
        "formula": ["(revenue - cost) / revenue", "(revenue - cost * 1.02) / revenue"]
    }
    # A change of name alone keeps the version.
    client.post(change_url("gm_pct"), form(formula="(revenue - cost * 1.02) / revenue", name="GM %"))
    kpi.refresh_from_db()
    assert (kpi.name, kpi.formula_version, kpi.changes.count()) == ("GM %", 2, 3)
    page = client.get(change_url("gm_pct")).content.decode()
    assert page.count("<dt>Formula</dt>") == 2 and "<dt>Name</dt>" in page


def test_the_change_history_names_fields_departments_and_choices_as_the_form_does(client, analyst, book):
    client.post(ADD, form())
    response = client.post(change_url("gm_pct"), form(owner_department=str(book.dept.pk), direction="lower"))
    assert response.status_code == 302
    page = client.get(change_url("gm_pct")).content.decode()
    assert "<dt>Owner department</dt><dd><del>—</del> → <ins>Finance</ins></dd>" in page
    assert "<dt>Direction</dt><dd><del>Higher is better</del> → <ins>Lower is better</ins></dd>" in page
    assert "owner_department_id" not in page


def test_saving_an_unchanged_form_records_nothing(client, analyst):
    client.post(ADD, form())
    assert client.post(change_url("gm_pct"), form()).status_code == 302
    assert KPIChange.objects.filter(kpi__code="gm_pct").count() == 1


# --- other admin pages ----------------------------------------------------------------------


def test_the_measure_list_shows_each_measures_accounts(client, analyst):
    page = client.get(reverse("admin:kpis_measure_changelist")).content.decode()
    assert "4000 Gross sales" in page and "5000 Cost of sales" in page
    assert Measure.objects.count() == 2


def test_computed_values_are_read_only(client, analyst):
    entity = Entity.objects.get(code="US")
    actual = Scenario.objects.get(code="actual")
    kpi_value = KPIValue.objects.create(
        kpi=KPI.objects.get(code="revenue"),
        scenario=actual,
        entity=entity,
        grain="month",
        period=date(2024, 1, 1),
        value=Decimal("900"),
        formula_version=1,
    )
    measure_value = MeasureValue.objects.create(
        measure=Measure.objects.get(code="net_sales"),
        scenario=actual,
        entity=entity,
        grain="month",
        period=date(2024, 1, 1),
        value=Decimal("900"),
    )
    for model, obj in (("kpivalue", kpi_value), ("measurevalue", measure_value)):
        assert client.get(reverse(f"admin:kpis_{model}_add")).status_code == 403
        listing = client.get(reverse(f"admin:kpis_{model}_changelist"))
        assert listing.status_code == 200
        assert reverse(f"admin:kpis_{model}_add") not in listing.content.decode()
        url = reverse(f"admin:kpis_{model}_change", args=[obj.pk])
        page = client.get(url)
        assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
        assert client.post(url, {"value": "1"}).status_code == 403
        # Nor deleted by hand: the engine keeps what it knows of the values with them.
        assert (
            client.post(reverse(f"admin:kpis_{model}_delete", args=[obj.pk]), {"post": "yes"}).status_code
            == 403
        )
    kpi_value.refresh_from_db()
    measure_value.refresh_from_db()
    assert kpi_value.value == measure_value.value == Decimal("900")


def test_leadership_can_view_kpis_but_not_change_them(client, defined):
    client.force_login(user_in(LEADERSHIP, "ceo", is_staff=True))
    before = definitions()
    listing = client.get(reverse("admin:kpis_kpi_changelist"))
    assert listing.status_code == 200 and "Revenue" in listing.content.decode()
    page = client.get(change_url("revenue"))
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    edit = form(code="revenue", formula="net_sales * 2", unit="currency")
    assert client.post(change_url("revenue"), edit).status_code == 403
    assert client.get(ADD).status_code == 403
    assert client.post(ADD, form()).status_code == 403
    assert definitions() == before
