"""The AdventureWorksDW import against the real export in ../shared/data (skipped without it).

Every expected number below was computed from the files themselves with one-off awk/Python
scripts (csv + Decimal, filtering rows by hand-listed AccountKeys, OrganizationKeys and booking
dates), never with the code under test. The import runs once for the module, inside a
transaction rolled back at the end of the module; each test's changes are rolled back too.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.db.models import Sum

from finops.currency import CurrencyMismatch, group_total
from finops.models import (
    Account,
    CurrencyRate,
    DataSource,
    Department,
    Entity,
    FinancialFact,
    OperationalFact,
    RefreshRun,
    Scenario,
)
from finops.periods import month_range
from finops.selectors import account_rollup_total
from finops.sources.adventureworks import read_export
from tests import factories

pytestmark = pytest.mark.django_db

AW_DIR = Path(settings.FINOPS_SHARED_DATA) / "adventureworks-dw"

# From the files: wc -l, and per-ScenarioKey counts and sums of the Amount column.
FINANCE_ROWS = 39_409
ACTUAL_ROWS, BUDGET_ROWS = 34_563, 4_846
ACTUAL_SUM, BUDGET_SUM = Decimal("1316228562.70"), Decimal("42411850.0")
# Six account/organization/department keys have two rows in one period (the year-end rows
# booked a day early), so the loader stores six fewer actual facts than it reads.
SHARED_KEYS = 6
CALL_ROWS, CALL_SERIES = 120, 7

US_DIVISIONS = [
    "northeast-division",
    "northwest-division",
    "central-division",
    "southeast-division",
    "southwest-division",
]
# Periods of 2012 under nearest_month_start: booked 2011-12-28/29, 2012-01-29 ... 2012-11-28.
YEAR_2012 = month_range(date(2012, 1, 1), date(2012, 12, 1))


@pytest.fixture(scope="module")
def imported(django_db_setup, django_db_blocker) -> str:
    """Import the real export once for the module; yield the command's output.

    The import runs in an outer transaction that is rolled back when the module is done (as
    Django's setUpTestData does); each test's own transaction nests in it as a savepoint.
    """
    if not (AW_DIR / "FactFinance.csv").exists():
        pytest.skip(f"AdventureWorksDW sample data not found at {AW_DIR} (set FINOPS_SHARED_DATA)")
    with django_db_blocker.unblock(), transaction.atomic():
        out = StringIO()
        call_command("import_adventureworks", str(AW_DIR), stdout=out)
        # Check the deferred foreign keys of the import now, once, rather than in every test's
        # teardown (PostgreSQL would otherwise re-check all 40,000 rows each time).
        connection.check_constraints()
        yield out.getvalue()
        transaction.set_rollback(True)


def source() -> DataSource:
    return DataSource.objects.get(slug="adventureworks")


def stored_sum(scenario: str) -> Decimal:
    # Summed in Python so the comparison is exact on SQLite too (its SUM goes through floats).
    facts = FinancialFact.objects.filter(source=source(), scenario__code=scenario)
    return sum(facts.values_list("amount", flat=True), Decimal(0))


def stored_periods(scenario: str) -> list[date]:
    facts = FinancialFact.objects.filter(source=source(), scenario__code=scenario)
    return sorted(set(facts.values_list("period", flat=True)))


def state() -> dict:
    """What an import may change; compared before and after a rejected import or a preview."""
    return {
        "facts": Counter(FinancialFact.objects.values_list("scenario__code", flat=True)),
        "operational": OperationalFact.objects.count(),
        "actual": stored_sum("actual"),
        "budget": stored_sum("budget"),
        "rates": sorted(CurrencyRate.objects.values_list("currency", "period", "average_rate", "end_rate")),
        "accounts": sorted(
            Account.objects.values_list("code", "parent__code", "rollup_sign", "account_type")
        ),
        "entities": sorted(Entity.objects.values_list("code", "parent__code", "currency", "ownership_pct")),
        "sources": list(DataSource.objects.values_list("slug", "config")),
    }


def last_run() -> RefreshRun:
    return RefreshRun.objects.latest("pk")


# --- reading and counting -------------------------------------------------------------------


def test_every_finance_row_is_read(aw_dir):
    export = read_export(aw_dir)
    by_scenario = Counter(export.scenarios[row.scenario].code for row in export.finance)
    assert len(export.finance) == FINANCE_ROWS
    assert by_scenario == {"actual": ACTUAL_ROWS, "budget": BUDGET_ROWS}
    assert len(export.calls) == CALL_ROWS


def test_the_import_stores_every_row_and_rows_sharing_a_key_add_up(imported):
    run = last_run()
    assert run.status == RefreshRun.Status.SUCCEEDED
    assert run.rows_read == FINANCE_ROWS + CALL_ROWS * CALL_SERIES
    facts = Counter(FinancialFact.objects.filter(source=source()).values_list("scenario__code", flat=True))
    assert facts == {"actual": ACTUAL_ROWS - SHARED_KEYS, "budget": BUDGET_ROWS}
    # The sums match the file's, so the six pairs were added up, not overwritten.
    assert stored_sum("actual") == ACTUAL_SUM
    assert stored_sum("budget") == BUDGET_SUM
    assert "Rows read 40,249; inserted 40,243; updated 0; deleted 0; unchanged 0." in imported


def test_a_year_end_key_holds_both_of_its_rows(imported):
    # FactFinance: OrganizationKey 12 (Germany), department 7, actual, AccountKey 43 (3020
    # Additional Paid In Capital): -475000.0 booked 2012-12-27 and 405246.24 booked 2012-12-28.
    fact = FinancialFact.objects.get(
        source=source(),
        period=date(2013, 1, 1),
        entity__code="germany",
        department__code="sales-and-marketing",
        scenario__code="actual",
        account__code="3020",
    )
    assert fact.amount == Decimal("-69753.76")


def test_periods_under_nearest_month_start(imported):
    assert stored_periods("actual") == month_range(date(2011, 1, 1), date(2014, 1, 1))
    assert len(stored_periods("actual")) == 37
    assert stored_periods("budget") == month_range(date(2011, 1, 1), date(2011, 12, 1))
    assert "finance, Actual: 37 period(s), Jan 2011 to Jan 2014" in imported
    assert "finance, Budget: 12 period(s), Jan 2011 to Dec 2011" in imported


def test_changing_the_rule_to_nearest_month_end_moves_every_period_and_leaves_none_behind(imported):
    out = StringIO()
    call_command("import_adventureworks", str(AW_DIR), "--period-rule", "nearest_month_end", stdout=out)
    assert stored_periods("actual") == month_range(date(2010, 12, 1), date(2013, 12, 1))
    assert stored_periods("budget") == month_range(date(2010, 12, 1), date(2011, 11, 1))
    # Jan 2014 (actual) and Dec 2011 (budget) existed only under the old rule: deleted, so the
    # totals are still exactly the file's.
    assert stored_sum("actual") == ACTUAL_SUM
    assert stored_sum("budget") == BUDGET_SUM
    assert "in Dec 2011, Jan 2014, periods the export no longer covers" in out.getvalue()
    factories.assert_ledger_totals_match_facts()  # the deleted months are gone from them too
    assert source().config["period_rule"] == "nearest_month_end"
    # Booked 2013-02-28, that month is Feb 2013 under this rule (Mar 2013 under the default).
    assert account_rollup_total(
        account_code="4100", scenario_code="actual", periods=[date(2013, 2, 1)], entity_codes=US_DIVISIONS
    ) == Decimal("2791972.0")


def test_two_dates_in_one_period_and_the_partial_period_are_reported(imported):
    warnings = [warning["message"] for warning in last_run().warnings]
    two_dates = [w for w in warnings if "booking dates fall in this period" in w]
    assert len(two_dates) == 2
    assert two_dates[0].startswith("Jan 2012: 2 booking dates")
    assert "2011-12-28 (18 rows), 2011-12-29 (1,015 rows)" in two_dates[0]
    assert two_dates[1].startswith("Jan 2013: 2 booking dates")
    assert "2012-12-27 (28 rows), 2012-12-28 (1,138 rows)" in two_dates[1]
    partial = [w for w in warnings if "partial period" in w]
    assert len(partial) == 1
    assert partial[0].startswith("Jan 2014 (Actual) is a partial period: only 33 rows, booked 2013-12-28")
    assert any("Scenario Forecast" in w and "no rows" in w for w in warnings)
    assert all(f"  - {w}" in imported for w in warnings)


def test_importing_again_changes_nothing(imported):
    before = state()
    out = StringIO()
    call_command("import_adventureworks", str(AW_DIR), stdout=out)
    step = next(step for step in last_run().steps if step["source"] == "adventureworks")
    assert (step["rows_inserted"], step["rows_updated"], step["rows_deleted"]) == (0, 0, 0)
    assert step["rows_unchanged"] == FINANCE_ROWS - SHARED_KEYS + CALL_ROWS * CALL_SERIES
    assert state() == before
    assert "inserted 0; updated 0; deleted 0; unchanged 40,243" in out.getvalue()


def test_an_analysts_edit_survives_a_reimport_and_the_difference_is_reported(imported):
    # The analyst decides that Allowance for Bad Debt should reduce Current Assets, and someone
    # mistypes a currency: the sign is the analyst's to keep, the currency is the file's.
    Account.objects.filter(code="1150").update(rollup_sign=-1)
    Entity.objects.filter(code="canadian-division").update(currency="USD")
    call_command("import_adventureworks", str(AW_DIR), stdout=StringIO())
    assert Account.objects.get(code="1150").rollup_sign == -1
    assert Entity.objects.get(code="canadian-division").currency == "CAD"
    assert any("1150 rollup_sign is -1, the file says 1" in w["message"] for w in last_run().warnings)
    # Current Assets of Canada, Dec 2012, now subtracts the allowance (24621.24, booked 2012-11-28).
    total = account_rollup_total(
        account_code="110",
        scenario_code="actual",
        periods=[date(2012, 12, 1)],
        entity_codes=["canadian-division"],
    )
    assert total == Decimal("3360631.88") - 2 * Decimal("24621.24")


# --- dimensions, rates and the call centre --------------------------------------------------


def test_the_chart_of_accounts(imported):
    accounts = {a.code: a for a in Account.objects.select_related("parent")}
    assert len([code for code in accounts if code.isdigit()]) >= 99
    assert accounts["4100"].parent.code == "400" and accounts["4100"].name == "Net Sales"
    assert (accounts["4130"].rollup_sign, accounts["4130"].account_type) == (-1, "expense")
    assert accounts["9510"].rollup_sign == 0
    assert (accounts["9510"].unit, accounts["9510"].time_behaviour) == ("units", "balance")
    # Owners Equity and its subtree are equity; the rest of "Liabilities" stays liability.
    assert {accounts[c].account_type for c in ("300", "3010", "3030", "3540", "3550")} == {"equity"}
    assert {accounts[c].account_type for c in ("20", "210", "2210", "2420")} == {"liability"}
    assert (accounts["1110"].account_type, accounts["1110"].time_behaviour) == ("asset", "balance")
    assert (accounts["6000"].account_type, accounts["6000"].time_behaviour) == ("expense", "flow")
    assert (accounts["1"].account_type, accounts["1"].time_behaviour) == ("statistical", "balance")
    assert accounts["2220"].parent.code == "2200" and accounts["2220"].sort_order == 100


def test_entities_departments_and_scenarios(imported):
    entities = {e.code: e for e in Entity.objects.select_related("parent")}
    assert entities["canadian-division"].currency == "CAD"
    assert entities["canadian-division"].ownership_pct == Decimal("75")
    assert entities["canadian-division"].parent.code == "north-america-operations"
    # Northeast Division's parent, USA Operations, comes after it in the file.
    assert entities["northeast-division"].parent.code == "usa-operations"
    assert (entities["germany"].currency, entities["germany"].ownership_pct) == ("EUR", Decimal("25"))
    assert entities["australia"].currency == "AUD"
    assert entities["adventureworks-cycle"].parent is None
    sides = dict(Department.objects.values_list("code", "side"))
    assert sides["executive-general-and-administration"] == "finance"
    assert {code: sides[code] for code in ("manufacturing", "inventory-management", "quality-assurance")} == {
        "manufacturing": "operations",
        "inventory-management": "operations",
        "quality-assurance": "operations",
    }
    assert {sides[code] for code in ("sales-and-marketing", "research-and-development", "corporate")} == {
        "other"
    }
    kinds = dict(Scenario.objects.values_list("code", "kind"))
    assert kinds == {"actual": "actual", "budget": "budget", "forecast": "forecast"}


def test_currency_rates_are_monthly_in_usd_per_unit(imported):
    rates = CurrencyRate.objects.filter(source=source())
    # 12 currencies with rates from 2010-12-29 to 2014-02-28 (39 months), DEM and FRF for 7.
    assert rates.count() == 12 * 39 + 2 * 7
    # EUR, January 2011: mean of the 31 daily AverageRate values, EndOfDayRate on 2011-01-31.
    eur = rates.get(currency="EUR", period=date(2011, 1, 1))
    assert (eur.average_rate, eur.end_rate) == (Decimal("1.0165224592"), Decimal("1.0082677959"))
    # CAD, December 2010: only 3 days (29 to 31) in the file.
    cad = rates.get(currency="CAD", period=date(2010, 12, 1))
    assert (cad.average_rate, cad.end_rate) == (Decimal("0.6822218356"), Decimal("0.6787023212"))
    assert rates.get(currency="GBP", period=date(2011, 1, 1)).average_rate > 1  # USD per pound


def test_call_centre_facts(imported):
    facts = OperationalFact.objects.filter(source=source())
    assert facts.count() == CALL_ROWS * CALL_SERIES
    assert set(facts.values_list("entity__code", "scenario__code", "period")) == {
        ("adventureworks-cycle", "actual", date(2014, 5, 1))
    }
    totals = {
        row["series__code"]: (row["value"], row["count"])
        for row in facts.values("series__code").annotate(value=Sum("value"), count=Sum("count"))
    }
    # Column sums of FactCallCenter.csv; issue minutes = sum of AverageTimePerIssue x IssuesRaised,
    # calls abandoned = sum of ServiceGrade x Calls.
    assert totals["calls_offered"] == (Decimal(43349), CALL_ROWS)
    assert totals["phone_orders"] == (Decimal(30217), CALL_ROWS)
    assert totals["automatic_responses"] == (Decimal(29834), CALL_ROWS)
    assert totals["issues_raised"] == (Decimal(162), CALL_ROWS)
    assert totals["issue_minutes"] == (Decimal(12861), 162)
    assert totals["calls_abandoned"] == (Decimal("4282.71"), 43349)
    assert totals["operators"] == (Decimal(1283), CALL_ROWS)
    weekday_am = facts.filter(series__code="calls_offered", dimension="weekday/AM")
    assert weekday_am.count() == 20
    assert weekday_am.aggregate(total=Sum("value"))["total"] == Decimal(6608)


# --- roll-ups worked by hand ----------------------------------------------------------------

# Leaf AccountKeys and the product of signs to the named total, listed by hand from DimAccount:
# Net Sales 4100 = +4200 (key 101) +4500 (52) -4130 (53) -4140 (54).
# Current Assets 110 = keys 4, 6, 7, 8, 10, 11, 12, 13, 14, 15, all '+'.
# Operating Expenses 60 = keys 60-63, 65-69, 71-74, 76-78, 80-85, 87, all '+'.
# Net Income 4 = Net Sales (+) - cost of sales 56, 57 - operating expenses (as above)
#                + 89 - 90 + 91 + 92 + 93 - 94.
ROLLUPS = [
    # Booked 2013-02-28 (20 rows), Mar 2013 under nearest_month_start.
    ("4100", "actual", [date(2013, 3, 1)], US_DIVISIONS, Decimal("2791972.0")),
    # Budget booked 2010-12-29 (15 rows), Jan 2011.
    ("4100", "budget", [date(2011, 1, 1)], US_DIVISIONS, Decimal("514850.0")),
    # Canadian Division (CAD), booked 2012-11-28 (8 rows): the closing balance of Dec 2012.
    ("110", "actual", [date(2012, 12, 1)], ["canadian-division"], Decimal("3360631.88")),
    # France and Germany (both EUR), 2012: 2,148 rows.
    ("60", "actual", YEAR_2012, ["france", "germany"], Decimal("1190121.58")),
    # The five US divisions, 2012 (5,083 rows, including the year-end rows booked 2011-12-28).
    ("4", "actual", YEAR_2012, US_DIVISIONS, Decimal("4606605.0")),
]


@pytest.mark.parametrize(("account", "scenario", "periods", "entities", "expected"), ROLLUPS)
def test_rollup_totals_match_the_hand_computed_ones(imported, account, scenario, periods, entities, expected):
    total = account_rollup_total(
        account_code=account, scenario_code=scenario, periods=periods, entity_codes=entities
    )
    assert total == expected


def test_a_rollup_across_currencies_is_refused(imported):
    with pytest.raises(CurrencyMismatch, match=r"canadian-division \(CAD\), central-division \(USD\)"):
        account_rollup_total(
            account_code="4100",
            scenario_code="actual",
            periods=[date(2013, 3, 1)],
            entity_codes=["central-division", "canadian-division"],
        )


def test_group_total_refuses_to_add_currencies_without_a_rate():
    with pytest.raises(CurrencyMismatch, match="no rate to USD for EUR"):
        group_total({"USD": Decimal("100"), "EUR": Decimal("50")}, rates={})
    amounts = {"USD": Decimal("100"), "EUR": Decimal("50")}
    assert group_total(amounts, {"EUR": Decimal("1.1")}) == Decimal("155.0")
    assert group_total({"USD": Decimal("100")}, rates={}) == Decimal("100")


# --- bad input ------------------------------------------------------------------------------


def copy_export(tmp_path: Path) -> Path:
    folder = tmp_path / "aw"
    folder.mkdir()
    for path in AW_DIR.glob("*.csv"):
        shutil.copyfile(path, folder / path.name)  # copyfile: the copies are writable
    return folder


def edit(name: str, line: int, change: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    """Corrupt one line (1-based) of one file of the copied export."""

    def apply(folder: Path) -> None:
        lines = (folder / name).read_text().split("\n")
        lines[line - 1] = "|".join(change(lines[line - 1].split("|")))
        (folder / name).write_text("\n".join(lines))

    return apply


def column(index: int, value: str) -> Callable[[list[str]], list[str]]:
    return lambda fields: [value if i == index else field for i, field in enumerate(fields)]


BAD_INPUTS = {
    "missing file": (
        lambda folder: (folder / "DimAccount.csv").unlink(),
        ("DimAccount.csv", None, None),
        "file not found",
    ),
    "wrong column count": (
        edit("FactFinance.csv", 100, lambda fields: fields[:-1]),
        ("FactFinance.csv", 100, "Date"),
        "expected 8 columns, found 7",
    ),
    "non-numeric amount": (
        edit("FactFinance.csv", 200, column(6, "12,5O")),
        ("FactFinance.csv", 200, "Amount"),
        "not a number",
    ),
    "unknown account key": (
        edit("FactFinance.csv", 300, column(5, "999")),
        ("FactFinance.csv", 300, "AccountKey"),
        "unknown account key",
    ),
    "bad date": (
        edit("FactFinance.csv", 400, column(7, "2011-02-30")),
        ("FactFinance.csv", 400, "Date"),
        "not a date",
    ),
    "empty file": (
        lambda folder: (folder / "FactCallCenter.csv").write_text(""),
        ("FactCallCenter.csv", None, None),
        "empty",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_rejected_whole_with_file_row_and_column(imported, tmp_path, case):
    corrupt, (file, row, column_name), reason = BAD_INPUTS[case]
    folder = copy_export(tmp_path)
    corrupt(folder)
    before = state()
    err = StringIO()
    with pytest.raises(CommandError, match=r"Import rejected: 1 problem\(s\); nothing was loaded"):
        call_command("import_adventureworks", str(folder), stdout=StringIO(), stderr=err)
    run = last_run()
    assert run.status == RefreshRun.Status.FAILED
    assert [(e["file"], e["row"], e["column"]) for e in run.errors] == [(file, row, column_name)]
    assert reason in run.errors[0]["reason"]
    where = file + (f", row {row}" if row else "") + (f", column {column_name}" if column_name else "")
    assert where in err.getvalue()
    # Nothing changed, and the source still points at the export that last loaded.
    assert state() == before


def test_every_problem_is_listed_not_just_the_first(imported, tmp_path):
    folder = copy_export(tmp_path)
    edit("FactFinance.csv", 200, column(6, "abc"))(folder)
    edit("FactFinance.csv", 39_000, column(2, "77"))(folder)
    edit("DimOrganization.csv", 3, column(4, "9999"))(folder)
    before = state()
    with pytest.raises(CommandError, match=r"3 problem\(s\)"):
        call_command("import_adventureworks", str(folder), stdout=StringIO(), stderr=StringIO())
    assert {(e["file"], e["row"], e["column"]) for e in last_run().errors} == {
        ("DimOrganization.csv", 3, "CurrencyKey"),
        ("FactFinance.csv", 200, "Amount"),
        ("FactFinance.csv", 39_000, "OrganizationKey"),
    }
    assert state() == before
    with pytest.raises(CommandError, match=r"3 problem\(s\)"):
        call_command("import_adventureworks", str(folder), "--preview", stdout=StringIO(), stderr=StringIO())


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(CommandError, match=f"Folder not found: {tmp_path / 'nowhere'}"):
        call_command("import_adventureworks", str(tmp_path / "nowhere"))


# --- preview --------------------------------------------------------------------------------


def test_preview_shows_the_mapping_and_warnings_and_writes_nothing(imported):
    before = state()
    runs = RefreshRun.objects.count()
    out = StringIO()
    call_command(
        "import_adventureworks", str(AW_DIR), "--preview", "--period-rule", "nearest_month_end", stdout=out
    )
    assert state() == before
    assert RefreshRun.objects.count() == runs
    text = out.getvalue()
    assert "2010-12-29 -> Dec 2010       728       402" in text
    assert "2011-03-01 -> Feb 2011" in text
    assert "2013-12-28 -> Dec 2013        33         0" in text
    assert "34,563     4,846" in text
    assert "Actual: 37 periods, Dec 2010 to Dec 2013" in text
    assert "Budget: 12 periods, Dec 2010 to Nov 2011" in text
    assert "Forecast: no rows" in text
    assert "Dec 2013 (Actual) is a partial period: only 33 rows" in text
    assert "Dec 2011: 2 booking dates fall in this period" in text
    assert text.rstrip().endswith("Preview only: nothing was written.")
