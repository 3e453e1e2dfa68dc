"""KPI definitions as code: `kpis export` / `kpis import` round-trip exactly; an import is all or
nothing, and every problem names its place in the file; the library installs once and keeps
an analyst's edits."""

from __future__ import annotations

from io import StringIO

import pytest
import yaml
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from finops.models import Account, Department, OperationalSeries
from kpis.definitions import (
    LIBRARY_DIR,
    MAX_FILE_BYTES,
    DefinitionsRejected,
    export_definitions,
    export_yaml,
    import_definitions,
    import_yaml,
    install_library,
)
from kpis.models import KPI, KPIChange, Measure
from kpis.services import kpi_save

MEASURES = [
    {
        "code": "net_sales",
        "name": "Net sales",
        "kind": "account",
        "account": "4000",
        "time_behaviour": "flow",
    },
    {
        "code": "cost_of_sales",
        "name": "Cost of sales",
        "kind": "account",
        "accounts": ["5000", "5100"],
        "department": "fin",
        "time_behaviour": "flow",
        "description": "Materials and freight.\nBooked by the plants.",
    },
    {
        "code": "receivables",
        "name": "Trade receivables",
        "kind": "account",
        "account": "1200",
        "time_behaviour": "balance",
    },
    {
        "code": "budget_net_sales",
        "name": "Net sales (budget)",
        "kind": "account",
        "account": "4000",
        "scenario": "budget",
        "time_behaviour": "flow",
        "multiplier": "-1.5",
    },
    {
        "code": "orders",
        "name": "Orders",
        "kind": "series_value",
        "series": "orders",
        "time_behaviour": "flow",
        "unit": "count",
    },
    {
        "code": "orders_on_time",
        "name": "Orders on time",
        "kind": "series_value",
        "series": "orders_on_time",
        "time_behaviour": "flow",
        "unit": "count",
    },
    {
        "code": "delivered_orders",
        "name": "Delivered orders",
        "kind": "series_count",
        "series": "orders",
        "time_behaviour": "flow",
        "unit": "count",
    },
]
KPIS = [
    {
        "code": "revenue",
        "name": "Revenue (net sales)",
        "unit": "currency",
        "formula": "net_sales",
        "decimals": 0,
        "owner_department": "fin",
        "owner": "ana",
        "sort_order": 1,
    },
    {
        "code": "gm_pct",
        "name": "Gross margin %",
        "unit": "percent",
        "formula": "(revenue - cost_of_sales) / revenue",
        "amber_tolerance_pct": 3,
        "green_tolerance_pct": 0.5,
        "description": "Share of each sale kept — après coût.",
        "convention": "Period totals, never the mean of monthly margins.",
        "sort_order": 2,
    },
    {
        "code": "dso",
        "name": "DSO",
        "unit": "days",
        "direction": "lower",
        "formula": "receivables / revenue * days()",
        "amber_tolerance_pct": 10,
        "sort_order": 3,
    },
    {
        "code": "current_band",
        "name": "Sales to budget",
        "unit": "ratio",
        "direction": "band",
        "band_low": 0.95,
        "band_high": 1.1,
        "decimals": 2,
        "formula": "revenue / budget_net_sales",
        "sort_order": 3,
    },
    {
        "code": "otd",
        "name": "On-time delivery",
        "unit": "percent",
        "formula": "orders_on_time / orders",
        "target_rule": "last_year_plus",
        "target_rule_pct": 2.5,
        "is_active": False,
        "is_library": True,
        "sort_order": 4,
    },
    {
        "code": "ttm_revenue",
        "name": "Revenue, trailing twelve months",
        "unit": "currency",
        "formula": "ttm(revenue)",
        "target_rule": "manual",
        "sort_order": 4,
    },
]


@pytest.fixture
def dims(book):
    """The dimensions the definitions point at (these are data, not definitions)."""
    for code in ("4000", "5000", "5100"):
        book.account(code)
    book.account("1200", balance=True)
    book.a_series("orders")
    book.a_series("orders_on_time")
    User.objects.create_user("ana")
    return book


@pytest.fixture
def defined(dims):
    report = import_definitions({"version": 1, "measures": MEASURES, "kpis": KPIS})
    assert len(report.measures_created) == len(MEASURES) and len(report.kpis_created) == len(KPIS)
    return dims


def state():
    """Everything an import could change: the definitions, their versions and their history."""
    return (
        Measure.objects.count(),
        KPI.objects.count(),
        KPIChange.objects.count(),
        export_definitions(),
        sorted(KPI.objects.values_list("code", "formula_version")),
        list(KPIChange.objects.order_by("pk").values_list("kpi__code", "formula_version", "changes")),
    )


def refused(data: dict | str) -> str:
    """Import ``data`` (a mapping or YAML text), expect it refused, check nothing changed."""
    before = state()
    with pytest.raises(DefinitionsRejected) as caught:
        if isinstance(data, str):
            import_yaml(data)
        else:
            import_definitions(data)
    assert state() == before
    message = str(caught.value)
    assert message.startswith("Definitions rejected, nothing was changed")
    return message


def with_good_changes(*, kpis: list[dict] = (), measures: list[dict] = ()) -> dict:
    """A file whose other rows are valid changes (a renamed KPI, a new KPI, a new measure), so a
    refusal shows that none of the good rows were written either."""
    return {
        "version": 1,
        "measures": [
            {
                "code": "cash",
                "name": "Cash",
                "kind": "account",
                "account": "1200",
                "time_behaviour": "balance",
            },
            *measures,
        ],
        "kpis": [
            {**KPIS[0], "name": "Revenue, renamed"},
            {"code": "cash_kpi", "name": "Cash", "unit": "currency", "formula": "cash"},
            *kpis,
        ],
    }


# --- round trip -----------------------------------------------------------------------------


def test_export_then_import_into_an_empty_database_recreates_identical_definitions(defined, tmp_path):
    first = tmp_path / "kpis.yaml"
    call_command("kpis", "export", str(first), stdout=StringIO())
    exported = export_definitions()
    assert yaml.safe_load(first.read_text(encoding="utf-8")) == exported

    KPI.objects.all().delete()  # and their history
    Measure.objects.all().delete()
    assert (KPI.objects.count(), Measure.objects.count(), KPIChange.objects.count()) == (0, 0, 0)

    out = StringIO()
    call_command("kpis", "import", str(first), stdout=out)
    assert out.getvalue().strip() == (
        f"Measures: {len(MEASURES)} created, 0 updated. KPIs: {len(KPIS)} created, 0 updated."
    )
    assert export_definitions() == exported
    second = tmp_path / "again.yaml"
    call_command("kpis", "export", str(second), stdout=StringIO())
    assert second.read_bytes() == first.read_bytes()


def test_the_export_keeps_every_field_of_a_definition(defined):
    exported = export_definitions()
    measures = {m["code"]: m for m in exported["measures"]}
    kpis = {k["code"]: k for k in exported["kpis"]}
    assert measures["cost_of_sales"]["accounts"] == ["5000", "5100"]
    assert measures["cost_of_sales"]["department"] == "fin"
    assert measures["cost_of_sales"]["description"] == "Materials and freight.\nBooked by the plants."
    assert (measures["budget_net_sales"]["scenario"], measures["budget_net_sales"]["multiplier"]) == (
        "budget",
        "-1.5",
    )
    assert measures["delivered_orders"]["kind"] == "series_count"
    assert (kpis["revenue"]["owner"], kpis["revenue"]["owner_department"]) == ("ana", "fin")
    assert kpis["gm_pct"]["green_tolerance_pct"] == "0.5"
    assert kpis["gm_pct"]["description"] == "Share of each sale kept — après coût."
    assert (kpis["current_band"]["band_low"], kpis["current_band"]["band_high"]) == ("0.95", "1.1")
    assert (kpis["otd"]["target_rule_pct"], kpis["otd"]["is_active"], kpis["otd"]["is_library"]) == (
        "2.5",
        False,
        True,
    )
    # KPIs in the order the admin lists them: sort order, then code.
    assert [k["code"] for k in exported["kpis"]] == [
        "revenue",
        "gm_pct",
        "current_band",
        "dso",
        "otd",
        "ttm_revenue",
    ]


def test_export_to_stdout_prints_the_same_yaml(defined):
    out = StringIO()
    call_command("kpis", "export", "-", stdout=out)
    assert out.getvalue() == export_yaml()


def test_importing_the_same_file_again_changes_nothing(defined):
    before = state()
    report = import_yaml(export_yaml())
    assert (report.measures_created, report.measures_updated) == ([], [])
    assert (report.kpis_created, report.kpis_updated) == ([], [])
    assert state() == before


def test_an_import_updates_by_code_and_records_the_change_in_the_kpi_history(defined):
    analyst = User.objects.get(username="ana")
    data = export_definitions()
    dso = next(k for k in data["kpis"] if k["code"] == "dso")
    dso["formula"] = "avg_balance(receivables) / revenue * days()"
    dso["amber_tolerance_pct"] = "12.5"
    report = import_definitions(data, user=analyst)
    assert report.kpis_updated == ["dso"] and report.kpis_created == []
    kpi = KPI.objects.get(code="dso")
    assert kpi.formula_version == 2
    change = kpi.changes.first()
    assert change.changed_by == analyst and change.formula_version == 2
    assert change.changes == {
        "formula": ["receivables / revenue * days()", "avg_balance(receivables) / revenue * days()"],
        "amber_tolerance_pct": ["10.00", "12.5"],
    }


def test_an_empty_optional_field_takes_its_default(dims):
    import_yaml(
        """
measures:
  - {code: net_sales, name: Net sales, kind: account, account: "4000", time_behaviour: flow, multiplier: ~}
kpis:
  - {code: revenue, name: Revenue, unit: currency, formula: net_sales, decimals: ~, is_active: ~,
     sort_order: ~, amber_tolerance_pct: ~}
"""
    )
    kpi = KPI.objects.get(code="revenue")
    assert (kpi.decimals, kpi.is_active, kpi.sort_order, kpi.amber_tolerance_pct) == (1, True, 0, 5)
    assert Measure.objects.get(code="net_sales").multiplier == 1


# --- all or nothing, with the place of each problem -----------------------------------------


def test_the_valid_rows_used_below_would_change_the_database_on_their_own(defined):
    # So each refusal below shows that nothing at all was written, not even these rows.
    report = import_definitions(with_good_changes())
    assert (report.measures_created, report.kpis_created, report.kpis_updated) == (
        ["cash"],
        ["cash_kpi"],
        ["revenue"],
    )


def test_it_refuses_invalid_yaml_with_the_line_and_column(defined):
    message = refused("kpis:\n  - code: a\n    name: [unclosed\n  - code: b\n")
    assert "file: not valid YAML at line 4, column 9: expected ',' or ']', but got ':'" in message


def test_it_refuses_a_file_that_is_not_a_mapping(defined):
    assert "file: expected a mapping with 'measures' and 'kpis'" in refused("- revenue\n- dso\n")


def test_it_refuses_an_unknown_section(defined):
    data = with_good_changes()
    data["goals"] = [{"code": "grow"}]
    assert "goals: unknown section" in refused(data)


def test_it_refuses_an_unsupported_format_version(defined):
    data = with_good_changes()
    data["version"] = 2
    assert "version: 2 is not supported (expected 1)" in refused(data)


def test_it_refuses_an_unknown_field_listing_the_known_ones(defined):
    message = refused(with_good_changes(kpis=[{**KPIS[2], "colour": "red"}]))
    assert "kpis[2].colour: unknown field (known: code, name, description" in message


def test_it_refuses_a_missing_required_field(defined):
    row = {key: value for key, value in KPIS[2].items() if key != "formula"}
    assert "kpis[2].formula: required" in refused(with_good_changes(kpis=[row]))
    measure = {key: value for key, value in MEASURES[0].items() if key != "time_behaviour"}
    assert "measures[1].time_behaviour: required" in refused(with_good_changes(measures=[measure]))


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("name", 12, "kpis[2].name: expected text, got 12"),
        ("decimals", "two", "kpis[2].decimals: expected a whole number, got 'two'"),
        ("decimals", True, "kpis[2].decimals: expected a whole number, got True"),
        ("is_active", "yes", "kpis[2].is_active: expected true or false, got 'yes'"),
        ("amber_tolerance_pct", "lots", "kpis[2].amber_tolerance_pct: expected a number, got 'lots'"),
        ("band_low", "nan", "kpis[2].band_low: expected a finite number, got 'nan'"),
        ("unit", "dollars", "kpis[2] (dso).unit: 'dollars' is not one of currency, percent"),
        ("direction", "up", "kpis[2] (dso).direction: 'up' is not one of higher, lower, band"),
        ("target_rule", "guess", "kpis[2] (dso).target_rule: 'guess' is not one of budget"),
        ("decimals", -1, "kpis[2] (dso).decimals: Ensure this value is greater than or equal to 0."),
        ("code", "Days Sales", "kpis[2] (Days Sales).code: Use lower-case letters, digits and '_'"),
        ("name", "x" * 201, "kpis[2] (dso).name: Ensure this value has at most 200 characters"),
        ("amber_tolerance_pct", "2.555", "kpis[2] (dso).amber_tolerance_pct: Ensure that there are no more"),
    ],
)
def test_it_refuses_a_kpi_field_of_the_wrong_type_or_value(defined, field, value, expected):
    assert expected in refused(with_good_changes(kpis=[{**KPIS[2], field: value}]))


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("accounts", "4000", "measures[1].accounts: expected a list of codes, got '4000'"),
        ("multiplier", "x", "measures[1].multiplier: expected a number, got 'x'"),
        ("kind", "average", "measures[1] (receivables).kind: 'average' is not one of account"),
        ("time_behaviour", "stock", "measures[1] (receivables).time_behaviour: use flow or balance"),
        ("code", "AR", "measures[1] (AR).code: Use lower-case letters"),
    ],
)
def test_it_refuses_a_measure_field_of_the_wrong_type_or_value(defined, field, value, expected):
    assert expected in refused(with_good_changes(measures=[{**MEASURES[2], field: value}]))


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("account", "9999", "measures[1] (net_sales).accounts: no account with code '9999'"),
        ("department", "ops", "measures[1] (net_sales).department: no department with code 'ops'"),
        ("scenario", "plan", "measures[1] (net_sales).scenario: no scenario with code 'plan'"),
    ],
)
def test_it_refuses_an_unknown_account_department_or_scenario(defined, field, value, expected):
    assert expected in refused(with_good_changes(measures=[{**MEASURES[0], field: value}]))


def test_it_refuses_an_unknown_series(defined):
    message = refused(with_good_changes(measures=[{**MEASURES[4], "series": "parcels"}]))
    assert "measures[1] (orders).series: no operational series with code 'parcels'" in message


def test_it_refuses_an_unknown_owner_department_or_user(defined):
    message = refused(with_good_changes(kpis=[{**KPIS[2], "owner_department": "ops", "owner": "bob"}]))
    assert "kpis[2] (dso).owner_department: no department with code 'ops'" in message
    assert "kpis[2] (dso).owner: no user 'bob'" in message


def test_it_refuses_a_formula_with_a_syntax_error_naming_the_kpi_and_column(defined):
    message = refused(with_good_changes(kpis=[{**KPIS[2], "formula": "receivables / (revenue * days()"}]))
    assert "kpis[2] (dso).formula: Unexpected end of formula at column 32" in message
    assert "the '(' at column 15 is not closed" in message


def test_it_refuses_an_unknown_name_suggesting_the_nearest_one(defined):
    message = refused(with_good_changes(kpis=[{**KPIS[2], "formula": "receivables / revenu * days()"}]))
    assert "kpis[2] (dso).formula: Unknown name 'revenu' at column 15: did you mean 'revenue'?" in message


def test_it_refuses_a_cycle_between_two_kpis_in_the_file(defined):
    loop = [
        {"code": "a", "name": "A", "unit": "currency", "formula": "b + 1"},
        {"code": "b", "name": "B", "unit": "currency", "formula": "a * 2"},
    ]
    assert "kpis[2] (a).formula: the formulas form a cycle: a → b → a" in refused(
        with_good_changes(kpis=loop)
    )


def test_it_refuses_a_cycle_through_a_kpi_already_in_the_database(defined):
    # The file makes the stored `dso` depend on a new KPI that depends on `dso`.
    data = with_good_changes(
        kpis=[
            {**KPIS[2], "formula": "receivables / revenue * days() + lag"},
            {"code": "lag", "name": "Lag", "unit": "days", "formula": "dso / 10"},
        ]
    )
    message = refused(data)
    assert "the formulas form a cycle: dso → lag → dso" in message
    assert "kpis[2] (dso).formula:" in message


def test_it_refuses_a_kpi_whose_code_is_a_measure_code(defined):
    kpi = {"code": "receivables", "name": "AR", "unit": "currency", "formula": "net_sales"}
    message = refused(with_good_changes(kpis=[kpi]))
    assert "kpis[2].code: 'receivables' is already a measure's code" in message


def test_it_refuses_a_band_kpi_without_its_bounds(defined):
    row = {**KPIS[3], "band_high": None}
    message = refused(with_good_changes(kpis=[row]))
    assert "kpis[2] (current_band): a 'band' KPI needs band_low and band_high" in message


def test_it_refuses_the_same_code_twice(defined):
    message = refused(with_good_changes(kpis=[KPIS[2], {**KPIS[2], "name": "DSO again"}]))
    assert "kpis[3].code: 'dso' appears twice" in message


def test_it_reports_every_problem_at_once(defined):
    message = refused(
        with_good_changes(
            kpis=[
                {**KPIS[2], "formula": "receivables / revenu * days()"},
                {**KPIS[1], "decimals": "one"},
            ],
            measures=[{**MEASURES[0], "account": "9999"}],
        )
    )
    assert "(3 problem(s))" in message
    assert "kpis[2] (dso).formula" in message and "kpis[3].decimals" in message
    assert "measures[1] (net_sales).accounts" in message


def test_it_refuses_a_file_over_the_size_limit(defined, tmp_path):
    text = export_yaml() + "#" * MAX_FILE_BYTES
    assert "file: larger than 5 MB" in refused(text)
    big = tmp_path / "big.yaml"
    big.write_text(text, encoding="utf-8")
    before = state()
    with pytest.raises(CommandError, match=r"big\.yaml: larger than 5 MB"):
        call_command("kpis", "import", str(big), stdout=StringIO())
    assert state() == before


def test_the_command_refuses_a_file_that_is_not_utf8(defined, tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("kpis:\n  - {code: dso, name: Délai, unit: days, formula: dso}\n".encode("latin-1"))
    before = state()
    with pytest.raises(CommandError) as caught:
        call_command("kpis", "import", str(latin1), stdout=StringIO())
    assert f"{latin1}: not UTF-8 text (invalid continuation byte at byte 29)" in str(caught.value)
    assert state() == before


def test_the_command_lists_every_problem_and_changes_nothing(defined, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(with_good_changes(kpis=[{**KPIS[2], "formula": "receivables / revenu * days()"}])),
        encoding="utf-8",
    )
    before = state()
    with pytest.raises(CommandError) as caught:
        call_command("kpis", "import", str(path), stdout=StringIO())
    assert "Definitions rejected, nothing was changed (1 problem(s))" in str(caught.value)
    assert "kpis[2] (dso).formula: Unknown name 'revenu'" in str(caught.value)
    assert state() == before


def test_the_command_refuses_a_missing_file(db, tmp_path):
    with pytest.raises(CommandError, match="No such file"):
        call_command("kpis", "import", str(tmp_path / "nowhere.yaml"))


# --- the standard library -------------------------------------------------------------------


@pytest.fixture
def demo_dimensions(book):
    """The accounts, series and departments demo.yaml maps (no facts: installing needs none)."""
    measures = yaml.safe_load((LIBRARY_DIR / "demo.yaml").read_text())["measures"]
    for code in sorted({m["account"] for m in measures if m.get("account")}):
        Account.objects.create(code=code, name=code, account_type="asset", time_behaviour="flow")
    for code in sorted({m["series"] for m in measures if m.get("series")}):
        OperationalSeries.objects.create(code=code, name=code)
    Department.objects.create(code="ops", name="Operations", side=Department.Side.OPERATIONS)
    return book


def test_installing_the_demo_library_without_the_demo_accounts_is_refused_clearly(book):
    with pytest.raises(DefinitionsRejected) as caught:
        install_library("demo")
    message = str(caught.value)
    assert message.startswith("Definitions rejected, nothing was changed")
    assert "measures[0] (net_sales).accounts: no account with code 'NW-4000'" in message
    assert "measures[14] (orders).series: no operational series with code 'orders'" in message
    assert (Measure.objects.count(), KPI.objects.count(), KPIChange.objects.count()) == (0, 0, 0)


def test_installing_an_unknown_dataset_lists_the_known_ones(db):
    known = sorted(p.stem for p in LIBRARY_DIR.glob("*.yaml") if p.stem != "standard")
    assert "demo" in known
    with pytest.raises(DefinitionsRejected) as caught:
        install_library("nope")
    assert f"no measure file for dataset 'nope' (known: {', '.join(known)})" in str(caught.value)
    with pytest.raises(CommandError, match="known: .*demo"):
        call_command("kpis", "install", "nope")


def test_installing_the_library_enables_every_standard_kpi_the_dataset_supports(demo_dimensions):
    report = install_library("demo")
    standard = yaml.safe_load((LIBRARY_DIR / "standard.yaml").read_text())["kpis"]
    assert sorted(report.kpis_created) == sorted(k["code"] for k in standard)
    assert report.skipped == []
    assert set(KPI.objects.values_list("is_library", flat=True)) == {True}
    gm = KPI.objects.get(code="gross_margin_pct")
    assert (gm.owner_department.code, gm.amber_tolerance_pct) == ("fin", 3)
    assert KPI.objects.get(code="otif").owner_department.code == "ops"
    # Library order is kept for the scorecards.
    assert list(KPI.objects.values_list("code", flat=True)[:3]) == ["revenue", "cogs", "gross_margin"]


def test_installing_the_library_twice_changes_nothing_and_keeps_an_analysts_edits(demo_dimensions):
    install_library("demo")
    kpi = KPI.objects.get(code="gross_margin_pct")
    kpi.amber_tolerance_pct = 7
    kpi.name = "Gross margin % (group)"
    kpi_save(kpi=kpi)
    before = state()
    out = StringIO()
    call_command("kpis", "install", "demo", stdout=out)
    assert out.getvalue().strip() == "Measures: 0 created, 0 updated. KPIs: 0 created, 0 updated."
    assert state() == before
    kpi.refresh_from_db()
    assert (kpi.amber_tolerance_pct, kpi.name) == (7, "Gross margin % (group)")


def test_installing_skips_the_kpis_whose_measures_the_dataset_lacks(book, tmp_path, monkeypatch):
    book.account("4000")
    (tmp_path / "standard.yaml").write_text((LIBRARY_DIR / "standard.yaml").read_text())
    (tmp_path / "tiny.yaml").write_text(
        "version: 1\nmeasures:\n"
        "  - {code: net_sales, name: Net sales, kind: account, account: '4000', time_behaviour: flow}\n"
    )
    monkeypatch.setattr("kpis.definitions.LIBRARY_DIR", tmp_path)
    report = install_library("tiny")
    assert report.kpis_created == ["revenue"]
    # A KPI over a skipped KPI is skipped too, instead of failing the whole install.
    assert {"cogs: needs cost_of_sales", "gross_margin: needs cogs"} <= set(report.skipped)
    assert len(report.skipped) == len(yaml.safe_load((tmp_path / "standard.yaml").read_text())["kpis"]) - 1
