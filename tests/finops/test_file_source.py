"""The file data source: CSV and XLSX mapped onto facts, all or nothing, with a row-level report.

Every fixture file is built here in code; totals are checked by hand in the comments.
"""

from __future__ import annotations

import io
import zipfile
from datetime import date, datetime
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from openpyxl import Workbook

from finops.errors import ImportRejected
from finops.models import (
    Account,
    DataSource,
    Entity,
    FinancialFact,
    OperationalFact,
    OperationalSeries,
    PeriodCoverage,
    RefreshRun,
    SourceFile,
)
from finops.refresh import refresh
from finops.sources import LOADERS, Report, bulk, files, loader_for
from finops.sources.mapping import (
    ConfigInvalid,
    Lookups,
    Problems,
    map_rows,
    validate_config,
)
from tests import factories

pytestmark = pytest.mark.django_db

JAN, FEB, MAR = date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1)

LEDGER_MAPPING = {
    "fact_kind": "financial",
    "columns": {"date": "Date", "entity": "Entity", "account": "Account", "amount": "Amount"},
    "constants": {"department": "sales", "scenario": "actual"},
    "thousands_separator": ",",
}

# Jan 4000: 1,200.50 + 300 (same key: they add up) = 1,500.50; Feb 4000: 999.99; Feb 1000: 5,000.
GOOD_CSV = (
    "Date,Entity,Account,Amount\n"
    '2024-01-15,acme,4000,"1,200.50"\n'
    "2024-01-20,acme,4000,300\n"
    "2024-02-03,acme,4000,999.99\n"
    '2024-02-29,acme,1000,"5,000"\n'
)
GOOD_FACTS = {
    (JAN, "4000", "actual"): Decimal("1500.50"),
    (FEB, "4000", "actual"): Decimal("999.99"),
    (FEB, "1000", "actual"): Decimal("5000"),
}


@pytest.fixture(autouse=True)
def folders(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.FINOPS_SOURCE_FILES_DIR = tmp_path / "sources"
    (tmp_path / "sources").mkdir()
    return tmp_path


@pytest.fixture(autouse=True)
def real_file_loader(monkeypatch):
    monkeypatch.setitem(LOADERS, DataSource.Kind.FILE, "finops.sources.files")


@pytest.fixture(autouse=True, params=["rows", "bulk", "columnar"])
def load_path(request, settings):
    """Every test runs through each path of a file load: row by row; (on PostgreSQL) the bulk
    path that COPYs the file and checks it in SQL, giving way to the row path for any file it
    does not read with certainty; and the columnar path that Arrow reads and groups first,
    giving way to the bulk path. All must give the same facts and reports."""
    if request.param in ("bulk", "columnar"):
        if not bulk.copy_available():
            pytest.skip(f"the {request.param} path needs PostgreSQL (DATABASE_URL); the row path is tested")
        settings.FINOPS_LOAD_BULK_MIN_BYTES = 0
        settings.FINOPS_LOAD_COLUMNAR = request.param == "columnar"
    else:
        settings.FINOPS_LOAD_BULK_MIN_BYTES = 10**12
    return request.param


@pytest.fixture
def dims():
    found = factories.dimensions()
    found["other"] = Entity.objects.create(code="beta", name="Beta GmbH", currency="EUR")
    found["revenue_parent"] = Account.objects.create(
        code="4", name="Income", account_type="revenue", time_behaviour="flow"
    )
    found["revenue"].parent = found["revenue_parent"]
    found["revenue"].save()
    return found


def file_source(slug: str = "ledger", mapping: dict | None = None, **config) -> DataSource:
    return DataSource.objects.create(
        slug=slug,
        name=slug.title(),
        kind=DataSource.Kind.FILE,
        config={"mapping": mapping or LEDGER_MAPPING, **config},
    )


def upload(source: DataSource, content: bytes | str, name: str = "ledger.csv") -> SourceFile:
    data = content.encode() if isinstance(content, str) else content
    return files.store_upload(source, SimpleUploadedFile(name, data))


def load(source: DataSource):
    return loader_for(source)(source, report=Report())


def facts(source: DataSource | None = None) -> dict:
    factories.assert_ledger_totals_match_facts()  # whichever path loaded them
    rows = FinancialFact.objects.select_related("account", "scenario")
    if source is not None:
        rows = rows.filter(source=source)
    return {(f.period, f.account.code, f.scenario.code): f.amount for f in rows}


def snapshot() -> list:
    """Every fact row with its id: equal before and after means the database did not change."""
    financial = list(FinancialFact.objects.order_by("pk").values_list("pk", "period", "account_id", "amount"))
    operational = list(OperationalFact.objects.order_by("pk").values_list("pk", "date", "value", "count"))
    return financial + operational


def xlsx(rows: list[list], *, sheet: str = "Ledger") -> bytes:
    book = Workbook()
    ws = book.active
    ws.title = sheet
    for row in rows:
        ws.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


# --- good files -----------------------------------------------------------------------------


def test_a_good_csv_loads_with_the_totals_checked_by_hand(dims):
    source = file_source()
    upload(source, GOOD_CSV)
    result = load(source)
    assert facts() == GOOD_FACTS
    assert result.rows_read == 4  # rows in the file
    assert result.rows_inserted == 3  # two January rows share a key
    assert result.changed_periods == {JAN, FEB}


def test_a_good_xlsx_loads_dates_numbers_and_numeric_codes(dims):
    # A title above the header, a named sheet, real date cells, float amounts, accounts typed as
    # numbers (Excel keeps 4000 as 4000.0), a blank row. Jan 4000: 1200.5 + 0.1 + 0.2 = 1200.80
    # (read at Excel's 15 digits: 0.1 + 0.2 is never 0.30000000000000004); Mar 1000: -250.
    content = xlsx(
        [
            ["Ledger export FY2024", None, None, None],
            ["Date", "Entity", "Account", "Amount"],
            [datetime(2024, 1, 31), "acme", 4000, 1200.5],
            [datetime(2024, 1, 2), "acme", 4000.0, 0.1],
            [None, None, None, None],
            [datetime(2024, 1, 3), "acme", 4000, 0.2],
            [datetime(2024, 3, 15), "acme", 1000, -250],
        ]
    )
    source = file_source(header_row=2, sheet="Ledger")
    upload(source, content, "ledger.xlsx")
    load(source)
    assert facts() == {(JAN, "4000", "actual"): Decimal("1200.80"), (MAR, "1000", "actual"): Decimal("-250")}


def test_operational_facts_with_european_numbers_and_a_period_rule(dims, load_path):
    # Semicolons, decimal commas, thousands points, day.month.year dates, the nearest month end:
    # 02.02.2024 belongs to January (stored on Jan 31), 30.01.2024 to January.
    mapping = {
        "fact_kind": "operational",
        "columns": {
            "date": "Tag",
            "series": "Reihe",
            "value": "Wert",
            "count": "Anzahl",
            "dimension": "Kanal",
        },
        "constants": {"entity": "acme", "scenario": "actual"},
        "date_format": "%d.%m.%Y",
        "decimal_separator": ",",
        "thousands_separator": ".",
        "period_rule": "nearest_month_end",
    }
    text = (
        "Tag;Reihe;Wert;Anzahl;Kanal\n"
        "30.01.2024;orders;1.234,5;10;web\n"
        "02.02.2024;orders;0,5;1;web\n"
        "15.02.2024;orders;7;2;\n"
    )
    source = file_source(mapping=mapping, delimiter=";")
    upload(source, text)
    report = Report()
    assert files.load(source, report=report).method == method_for(load_path, True)
    stored = {
        (f.period, f.date, f.dimension): (f.value, f.count)
        for f in OperationalFact.objects.filter(series__code="orders")
    }
    assert stored == {
        (JAN, date(2024, 1, 30), "web"): (Decimal("1234.5"), 10),
        (JAN, date(2024, 1, 31), "web"): (Decimal("0.5"), 1),
        (FEB, date(2024, 2, 15), ""): (Decimal("7"), 2),
    }
    assert "1 row(s) are dated in another month" in report.warnings[0]


def test_a_period_column_and_a_file_without_a_header(dims):
    mapping = {**LEDGER_MAPPING, "columns": {**LEDGER_MAPPING["columns"]}}
    mapping["columns"].pop("date")
    mapping["columns"]["period"] = "Month"
    mapping["date_format"] = "%m/%Y"
    source = file_source(
        mapping=mapping, header_row=0, columns=["Month", "Entity", "Account", "Amount"], delimiter="|"
    )
    upload(source, "01/2024|acme|4000|10\n02/2024|acme|4000|20\n")
    load(source)
    assert facts() == {(JAN, "4000", "actual"): Decimal("10"), (FEB, "4000", "actual"): Decimal("20")}


def test_a_file_read_from_a_configured_path(dims, folders):
    (folders / "sources" / "gl").mkdir()
    (folders / "sources" / "gl" / "2024.csv").write_text(GOOD_CSV)
    source = file_source(path="gl/2024.csv")
    load(source)
    assert facts() == GOOD_FACTS


# --- idempotence, corrections, removals -----------------------------------------------------


def test_loading_the_same_file_three_times_leaves_the_same_rows(dims):
    source = file_source()
    upload(source, GOOD_CSV)
    load(source)
    first = snapshot()
    for _ in range(2):
        result = load(source)
        assert (result.rows_inserted, result.rows_updated, result.rows_deleted) == (0, 0, 0)
        assert result.rows_unchanged == 3
        assert snapshot() == first
    assert facts() == GOOD_FACTS


def test_a_corrected_row_is_corrected_and_a_removed_row_removed_on_reload(dims):
    source = file_source()
    upload(source, GOOD_CSV)
    load(source)
    # The February revenue is corrected; the February cash row is gone; January is unchanged.
    corrected = "Date,Entity,Account,Amount\n2024-01-15,acme,4000,1200.50\n2024-01-20,acme,4000,300\n"
    corrected += "2024-02-03,acme,4000,1000.01\n"
    upload(source, corrected)
    result = load(source)
    assert (result.rows_updated, result.rows_deleted, result.rows_unchanged) == (1, 1, 1)
    assert facts() == {
        (JAN, "4000", "actual"): Decimal("1500.50"),
        (FEB, "4000", "actual"): Decimal("1000.01"),
    }


def test_a_snapshot_file_removes_the_periods_it_no_longer_has(dims):
    source = file_source(mapping={**LEDGER_MAPPING, "snapshot": True})
    upload(source, GOOD_CSV)
    load(source)
    upload(source, "Date,Entity,Account,Amount\n2024-01-15,acme,4000,7\n")
    result = load(source)
    assert facts() == {(JAN, "4000", "actual"): Decimal("7")}
    assert FEB in result.changed_periods


def test_rows_sharing_a_key_add_up_and_other_sources_are_left_alone(dims):
    other = file_source(
        "budget-file", mapping={**LEDGER_MAPPING, "constants": {"department": "sales", "scenario": "budget"}}
    )
    upload(other, "Date,Entity,Account,Amount\n2024-01-01,acme,4000,999\n")
    load(other)
    source = file_source()
    upload(
        source,
        "Date,Entity,Account,Amount\n2024-01-01,acme,4000,1\n2024-01-31,acme,4000,2\n2024-01-15,acme,4000,-0.5\n",
    )
    load(source)
    assert facts(source) == {(JAN, "4000", "actual"): Decimal("2.5")}
    assert facts(other) == {(JAN, "4000", "budget"): Decimal("999")}


# --- bad input: one test each; the run says what, where; the database is unchanged -----------


@pytest.fixture
def loaded(dims):
    """A source loaded with the good file: every bad file after it must leave these facts."""
    source = file_source()
    upload(source, GOOD_CSV)
    run = refresh(source_slug="ledger")
    assert run.status == RefreshRun.Status.SUCCEEDED, run.errors
    return source


def refresh_bad(source: DataSource, content: bytes | str, name: str = "ledger.csv") -> RefreshRun:
    before = snapshot()
    upload(source, content, name)
    run = refresh(source_slug=source.slug)
    run.refresh_from_db()
    assert run.status == RefreshRun.Status.FAILED
    assert run.steps[0]["status"] == "rejected"
    assert snapshot() == before, "a rejected file changed the facts"
    assert facts() == GOOD_FACTS
    return run


def test_a_missing_column_is_named_with_the_columns_the_file_has(loaded):
    run = refresh_bad(loaded, "Date,Entity,Acct,Amount\n2024-01-15,acme,4000,1\n")
    error = run.errors[0]
    assert (error["file"], error["row"], error["column"]) == ("ledger.csv", 1, "Account")
    assert "column 'Account' (mapped to account) is not in the file" in error["reason"]
    assert "Date, Entity, Acct, Amount" in error["reason"]


def test_a_row_with_too_many_or_too_few_cells(loaded):
    run = refresh_bad(loaded, "Date,Entity,Account,Amount\n2024-01-15,acme,4000,1,surplus\n2024-01-16,acme\n")
    assert [(e["row"], e["value"], e["reason"]) for e in run.errors] == [
        (2, "surplus", "5 cells but the header has 4 columns"),
        (3, None, "2 cells but the header has 4 columns"),
    ]


def test_a_non_numeric_amount(loaded):
    run = refresh_bad(
        loaded, 'Date,Entity,Account,Amount\n2024-01-15,acme,4000,12.x\n2024-01-16,acme,4000,"1,2345"\n'
    )
    assert [(e["row"], e["column"], e["value"]) for e in run.errors] == [
        (2, "Amount", "12.x"),
        (3, "Amount", "1,2345"),  # thousands must group by three
    ]
    assert (
        "not a number in the configured format (decimal separator '.', thousands separator ','"
        in (run.errors[0]["reason"])
    )
    assert run.rows_rejected == 2
    assert "ledger.csv, row 2, column Amount: '12.x' not a number" in run.errors[0]["message"]


def test_amounts_that_do_not_fit_are_refused_never_rounded(loaded):
    run = refresh_bad(
        loaded, "Date,Entity,Account,Amount\n2024-01-15,acme,4000,1.23456\n2024-01-15,acme,4000,1e5\n"
    )
    assert "more than 4 decimal places" in run.errors[0]["reason"]
    assert "scientific notation" in run.errors[1]["reason"]


def test_an_unparseable_date(loaded):
    run = refresh_bad(loaded, "Date,Entity,Account,Amount\n15/01/2024,acme,4000,1\n2024-02-30,acme,4000,1\n")
    assert [(e["row"], e["column"], e["value"]) for e in run.errors] == [
        (2, "Date", "15/01/2024"),
        (3, "Date", "2024-02-30"),
    ]
    assert run.errors[0]["reason"] == "not a date in the form YYYY-MM-DD"


def test_an_empty_file_is_refused(loaded):
    with pytest.raises(ImportRejected, match="empty"):  # an empty upload is refused at once
        upload(loaded, b"")
    loaded.files.all().delete()
    before = snapshot()
    # Written to disk empty (or emptied after the upload): the refresh refuses it.
    source_file = upload(loaded, GOOD_CSV)
    with open(source_file.file.path, "wb"):
        pass
    SourceFile.objects.filter(pk=source_file.pk).update(size=0)
    run = refresh(source_slug="ledger")
    assert run.errors[0]["reason"] == "the file is empty (0 bytes)"
    assert snapshot() == before


def test_a_file_with_only_a_header_is_refused(loaded):
    run = refresh_bad(loaded, "Date,Entity,Account,Amount\n\n")
    assert run.errors[0]["reason"] == "the file has a header but no data rows"


def test_a_file_in_another_encoding_names_the_encoding_and_the_byte(loaded):
    content = "Date,Entity,Account,Amount\n2024-01-15,acme,4000,1\n2024-01-16,Société,4000,2\n".encode(
        "latin-1"
    )
    run = refresh_bad(loaded, content)
    error = run.errors[0]
    assert (error["row"], error["value"]) == (3, "0xe9")
    position = content.index(b"\xe9") + 1
    assert error["reason"].startswith(
        f"not UTF-8 text: byte 0xe9 at byte position {position} (line 3) cannot be decoded as UTF-8"
    )
    assert "latin-1" in error["reason"]


def test_the_declared_encoding_reads_the_same_file(dims):
    content = "Date,Entity,Account,Amount\n2024-01-16,acme,4000,2\n".encode("latin-1")
    source = file_source(encoding="latin-1")
    upload(source, "Dätum".encode("latin-1")[:0] + content)
    load(source)
    assert facts() == {(JAN, "4000", "actual"): Decimal("2")}


def test_an_xlsx_that_is_not_a_workbook(loaded):
    run = refresh_bad(loaded, b"Date,Entity\nthis is not a zip", "ledger.xlsx")
    assert run.errors[0]["reason"] == "not an XLSX workbook (not a zip archive)"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "a zip, but no workbook")
    run = refresh_bad(loaded, buffer.getvalue(), "ledger.xlsx")
    assert run.errors[0]["reason"] == "not an XLSX workbook (a zip archive without a workbook in it)"
    run = refresh_bad(loaded, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 500, "ledger.xlsx")
    assert "old binary Excel (.xls)" in run.errors[0]["reason"]


def test_an_xlsx_bomb_is_refused_unopened(loaded, settings):
    settings.FINOPS_SOURCE_XLSX_MAX_UNCOMPRESSED_BYTES = 100_000
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "<workbook/>")
        archive.writestr("xl/worksheets/sheet1.xml", "0" * 5_000_000)  # 5 MB in about 5 KB
    assert len(buffer.getvalue()) < 20_000
    run = refresh_bad(loaded, buffer.getvalue(), "bomb.xlsx")
    assert (
        "would expand to 4.8 MB, more than the limit of 97.7 KB" in run.errors[0]["reason"]
        and "refused unopened" in run.errors[0]["reason"]
    )


def test_an_oversized_file_is_refused_unread(loaded, settings, folders):
    settings.FINOPS_SOURCE_FILE_MAX_BYTES = 1000
    (folders / "sources" / "big.csv").write_text(GOOD_CSV + "2024-01-15,acme,4000,1\n" * 100)
    before = snapshot()
    loaded.config = {**loaded.config, "path": "big.csv"}
    loaded.save()
    run = refresh(source_slug="ledger")
    assert run.status == RefreshRun.Status.FAILED
    reason = run.errors[0]["reason"]
    assert reason.startswith("the file is 2.4 KB, larger than the limit of 1,000 bytes")
    assert snapshot() == before
    with pytest.raises(ImportRejected, match="larger than the limit"):  # and uploads are refused
        upload(loaded, GOOD_CSV + "x" * 1000)


def test_unknown_entity_account_and_scenario_codes(loaded):
    mapping = {**LEDGER_MAPPING, "columns": {**LEDGER_MAPPING["columns"], "scenario": "Scenario"}}
    mapping["constants"] = {"department": "sales"}
    loaded.config = {**loaded.config, "mapping": mapping}
    loaded.save()
    run = refresh_bad(
        loaded,
        "Date,Entity,Account,Amount,Scenario\n"
        "2024-01-15,ACME,4000,1,actual\n"
        "2024-01-15,acme,9999,1,actual\n"
        "2024-01-15,acme,4,1,actual\n"
        "2024-01-15,acme,4000,1,plan\n",
    )
    assert [(e["row"], e["column"], e["value"]) for e in run.errors] == [
        (2, "Entity", "ACME"),
        (3, "Account", "9999"),
        (4, "Account", "4"),
        (5, "Scenario", "plan"),
    ]
    reasons = [e["reason"] for e in run.errors]
    assert reasons[0] == "no entity with this code (codes are matched exactly: did you mean 'acme'?)"
    assert reasons[1] == "no account with this code"
    assert reasons[2] == "the account has sub-accounts; facts are booked on leaf accounts only"
    assert reasons[3] == "no scenario with this code"


def test_an_unknown_fixed_code_is_one_problem_not_one_per_row(loaded):
    loaded.config = {
        **loaded.config,
        "mapping": {**LEDGER_MAPPING, "constants": {"department": "nope", "scenario": "actual"}},
    }
    loaded.save()
    run = refresh_bad(loaded, GOOD_CSV)
    assert [(e["row"], e["column"], e["value"], e["reason"]) for e in run.errors] == [
        (None, "department (fixed value)", "nope", "no department with this code")
    ]


def test_many_problems_are_capped_with_the_total_counted(loaded):
    rows = "".join(f"2024-01-15,acme,4000,x{i}\n" for i in range(1000))
    rows += "".join(f"2024-01-15,zz{i},4000,1\n" for i in range(300))
    run = refresh_bad(loaded, "Date,Entity,Account,Amount\n" + rows)
    # "not a number" in Amount is listed 5 times, then counted; each unknown code is its own kind
    assert len(run.errors) == 201
    assert sum(1 for e in run.errors if e["column"] == "Amount") == 5
    assert "1,100 more problem(s) not listed (1,300 in all, in 1,300 row(s))" in run.errors[-1]["reason"]
    assert run.rows_rejected == 1300  # every refused row is counted, not only those listed


def test_a_bad_config_is_reported_per_setting_on_the_run(dims):
    source = file_source(mapping={"fact_kind": "financial", "columns": {"amount": "Amount"}}, delimiter="ab")
    upload(source, GOOD_CSV)
    run = refresh(source_slug=source.slug)
    columns = {e["column"] for e in run.errors}
    assert {
        "delimiter",
        "mapping.columns.date",
        "mapping.columns.entity",
        "mapping.columns.department",
    } <= columns


def test_a_path_outside_the_source_folder_is_refused(dims, folders):
    (folders / "secret.csv").write_text(GOOD_CSV)
    (folders / "sources" / "link.csv").symlink_to(folders / "secret.csv")
    for path in ("../secret.csv", str(folders / "secret.csv"), "link.csv", "/etc/passwd"):
        with pytest.raises(ConfigInvalid, match="outside the source files folder"):
            files.validate_file_config({"path": path, "mapping": LEDGER_MAPPING})
    source = file_source(path="../secret.csv")
    run = refresh(source_slug=source.slug)
    assert run.status == RefreshRun.Status.FAILED
    assert "outside the source files folder" in run.errors[0]["reason"]
    assert not FinancialFact.objects.exists()


# --- the shared mapping layer ---------------------------------------------------------------


def test_validate_config_lists_every_problem():
    with pytest.raises(ConfigInvalid) as invalid:
        validate_config(
            {
                "fact_kind": "financial",
                "columns": {"date": "D", "period": "P", "amount": "A", "series": "S"},
                "constants": {"amount": "5", "entity": "bad code!", "scenario": "actual"},
                "date_format": "%d",
                "decimal_separator": ",",
                "thousands_separator": ",",
                "period_rule": "fortnightly",
                "colour": "blue",
            }
        )
    where = [name for name, _ in invalid.value.problems]
    assert where == [
        "mapping.colour",
        "mapping.columns.series",
        "mapping.constants.amount",
        "mapping.columns.period",
        "mapping.columns.department",
        "mapping.columns.account",
        "mapping.constants.entity",
        "mapping.date_format",
        "mapping.thousands_separator",
        "mapping.period_rule",
    ]
    assert "does not hold a full date" in dict(invalid.value.problems)["mapping.date_format"]


def test_map_rows_takes_dicts_as_json_and_sql_sources_will(dims):
    config = validate_config(
        {
            "fact_kind": "financial",
            "columns": {"period": "month", "account": "gl", "amount": "amt"},
            "constants": {"entity": "acme", "department": "sales", "scenario": "budget"},
        }
    )
    rows, problems = map_rows(
        [
            {"month": "2024-01", "gl": "4000", "amt": "10.5"},
            {"month": "2024-01-31", "gl": "4000", "amt": "-0.5"},
        ],
        config,
        Lookups.from_db(),
    )
    assert problems == []
    assert rows == [
        (
            JAN,
            dims["entity"].pk,
            dims["department"].pk,
            dims["budget"].pk,
            dims["revenue"].pk,
            Decimal("10.0"),
        )
    ]
    rows, problems = map_rows([{"month": "2024-01", "amt": "x"}], config, Lookups.from_db(), file="api")
    assert rows == []
    assert [(p.file, p.row, p.column, p.reason) for p in problems] == [
        ("api", 1, "gl", "missing field"),
        (
            "api",
            1,
            "amt",
            "not a number in the configured format (decimal separator '.', no thousands separator)",
        ),
    ]


@pytest.mark.parametrize(
    "text,decimal,thousands,expected",
    [
        ("1234.5", ".", "", "1234.5"),
        ("-1,234,567.891", ".", ",", "-1234567.891"),
        ("1.234.567,5", ",", ".", "1234567.5"),
        ("1 234,50", ",", " ", "1234.50"),
        ("1\u00a0234,50", ",", " ", "1234.50"),
        ("1'234.50", ".", "'", "1234.50"),
        ("(1,234.50)", ".", ",", "-1234.50"),
        ("1234.50-", ".", "", "-1234.50"),
        (".5", ".", "", "0.5"),
        ("+7", ".", "", "7"),
    ],
)
def test_numbers_are_read_as_decimals_in_the_configured_format(dims, text, decimal, thousands, expected):
    config = validate_config(
        {
            "fact_kind": "financial",
            "columns": {"period": "p", "amount": "a"},
            "constants": {"entity": "acme", "department": "sales", "account": "1000", "scenario": "actual"},
            "decimal_separator": decimal,
            "thousands_separator": thousands,
        }
    )
    rows, problems = map_rows([{"p": "2024-01", "a": text}], config, Lookups.from_db())
    assert problems == []
    assert rows[0][-1] == Decimal(expected) and isinstance(rows[0][-1], Decimal)


@pytest.mark.parametrize(
    "rule,day,period",
    [
        ("calendar_month", "2024-01-31", JAN),
        ("calendar_month", "2024-02-01", FEB),
        ("nearest_month_start", "2024-01-30", FEB),
        ("nearest_month_start", "2024-01-10", JAN),
        ("nearest_month_end", "2024-02-03", JAN),
        ("nearest_month_end", "2024-02-20", FEB),
    ],
)
def test_period_rules_map_dates_to_months(dims, rule, day, period):
    config = validate_config({**LEDGER_MAPPING, "period_rule": rule})
    rows, problems = map_rows(
        [{"Date": day, "Entity": "acme", "Account": "4000", "Amount": "1"}], config, Lookups.from_db()
    )
    assert problems == [] and rows[0][0] == period


def test_problems_keep_a_few_examples_of_each_kind_and_count_the_rest():
    problems = Problems("f.csv", limit=3, examples=2)
    for row in range(2, 12):
        problems.add(row, "Amount", "x", "not a number")
    problems.add(12, "Date", "y", "not a date")
    assert [(p.row, p.column) for p in problems.items] == [(2, "Amount"), (3, "Amount"), (12, "Date")]
    assert problems.total == 11 and problems.rows == 11
    assert "8 more problem(s) not listed (11 in all" in problems.as_errors()[-1].reason


# --- the refresh, end to end ------------------------------------------------------------------


def test_a_refresh_loads_a_file_source_end_to_end(dims):
    source = file_source()
    upload(source, GOOD_CSV)
    operational = file_source(
        "orders-file",
        mapping={
            "fact_kind": "operational",
            "columns": {"date": "day", "value": "orders"},
            "constants": {"entity": "acme", "series": "orders", "scenario": "actual"},
        },
    )
    upload(operational, "day,orders\n2024-01-02,5\n2024-01-02,6\n2024-01-03,1\n", "orders.csv")
    run = refresh()
    run.refresh_from_db()
    assert run.status == RefreshRun.Status.SUCCEEDED, run.errors
    steps = {step["source"]: step for step in run.steps}
    assert (steps["ledger"]["rows_read"], steps["ledger"]["rows_inserted"]) == (4, 3)
    assert (steps["orders-file"]["rows_read"], steps["orders-file"]["rows_inserted"]) == (3, 2)
    assert "recompute" in steps
    assert facts() == GOOD_FACTS
    assert {(f.date, f.value, f.count) for f in OperationalFact.objects.all()} == {
        (date(2024, 1, 2), Decimal("11"), 2),
        (date(2024, 1, 3), Decimal("1"), 1),
    }
    assert set(PeriodCoverage.objects.filter(source=source).values_list("period", "rows")) == {
        (JAN, 1),
        (FEB, 2),
    }
    again = refresh()
    assert again.rows_inserted == 0 and again.rows_updated == 0 and again.rows_deleted == 0


def test_the_run_page_shows_the_row_level_report(loaded, client):
    run = refresh_bad(loaded, "Date,Entity,Account,Amount\n2024-01-15,acme,4000,12.x\n")
    client.force_login(factories.analyst_user())
    page = client.get(reverse("run-detail", args=[run.pk])).content.decode()
    assert "ledger.csv" in page and "12.x" in page and "not a number in the configured format" in page


# --- the admin --------------------------------------------------------------------------------


def form_data(**changes) -> dict:
    data = {
        "name": "Ledger",
        "slug": "ledger",
        "kind": "file",
        "is_active": "on",
        "config": "{}",
        "file_format": "auto",
        "delimiter": ",",
        "encoding": "utf-8",
        "header_row": "1",
        "fact_kind": "financial",
        "date_column": "Date",
        "date_format": "iso",
        "period_rule": "calendar_month",
        "decimal_separator": ".",
        "thousands_separator": ",",
        "amount_column": "Amount",
        "entity_column": "Entity",
        "account_column": "Account",
        "department_value": "sales",
        "scenario_value": "actual",
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def test_an_analyst_creates_a_file_source_in_the_admin_form_with_an_upload(dims, client):
    client.force_login(factories.analyst_user())
    add = reverse("admin:finops_datasource_add")
    assert client.get(add).status_code == 200
    response = client.post(add, form_data(upload=SimpleUploadedFile("ledger.csv", GOOD_CSV.encode())))
    assert response.status_code == 302, response.context["adminform"].form.errors
    source = DataSource.objects.get(slug="ledger")
    assert source.config["mapping"]["columns"] == {
        "date": "Date",
        "amount": "Amount",
        "entity": "Entity",
        "account": "Account",
    }
    assert source.config["mapping"]["constants"] == {"department": "sales", "scenario": "actual"}
    stored = source.files.get()
    assert (stored.original_name, stored.size) == ("ledger.csv", len(GOOD_CSV))
    page = client.get(reverse("admin:finops_datasource_change", args=[source.pk])).content.decode()
    assert "Test connection / preview" in page and "ledger.csv" in page and 'value="Amount"' in page


def test_the_admin_form_puts_each_config_problem_on_its_field(dims, client):
    client.force_login(factories.analyst_user())
    response = client.post(
        reverse("admin:finops_datasource_add"),
        form_data(
            date_column="", date_format="%d", thousands_separator=".", decimal_separator=".", path="../x.csv"
        ),
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "map a date column" in errors["date_column"][0]
    assert "the same as the decimal separator" in errors["thousands_separator"][0]
    assert "outside the source files folder" in errors["path"][0]
    assert not DataSource.objects.exists()


def test_the_preview_shows_the_first_rows_as_loaded_and_the_problems(dims, client):
    source = file_source()
    lines = ["Date,Entity,Account,Amount", '2024-01-15,acme,4000,"1,200.50"', "2024-01-16,acme,9999,3"]
    lines += [f"2024-02-{day:02d},acme,4000,{day}" for day in range(1, 29)]
    lines += ["2024-03-01,acme,4000,oops"]
    upload(source, "\n".join(lines) + "\n")
    client.force_login(factories.analyst_user())
    before = snapshot()
    response = client.get(reverse("admin:finops_datasource_preview", args=[source.pk]))
    assert response.status_code == 200
    preview = response.context["preview"]
    assert len(preview.rows) == 20 and preview.records == 31 and preview.complete
    first = preview.rows[0]
    assert (first.number, first.period, first.value, first.codes["account"]) == (
        2,
        JAN,
        Decimal("1200.50"),
        "4000",
    )
    assert [(p.row, p.column, p.value) for p in preview.problems] == [
        (3, "Account", "9999"),
        (32, "Amount", "oops"),
    ]
    page = response.content.decode()
    assert "2 problems in 2 rows of the 31 checked" in page
    assert "A refresh would reject the whole file" in page
    assert (
        "no account with this code" in page
        and "2024-01" in page
        and "1,200.50" in page
        and "2024-01-15" in page
    )
    # February: 1 + 2 + ... + 28 = 406
    assert [(line.period, line.rows, line.total) for line in preview.periods if line.period == FEB] == [
        (FEB, 28, Decimal("406"))
    ]
    assert snapshot() == before and not RefreshRun.objects.exists()


def test_the_preview_of_a_big_file_says_it_checked_only_the_first_rows(dims, client):
    source = file_source()
    upload(source, GOOD_CSV)
    result = files.preview(source, max_rows=2)
    assert not result.complete and result.records == 2
    client.force_login(factories.analyst_user())
    page = client.get(reverse("admin:finops_datasource_preview", args=[source.pk])).content.decode()
    assert "No problems in the 4 rows checked (the whole file)" in page


def test_the_preview_of_an_unreadable_file_says_why(dims, client):
    source = file_source()
    upload(source, b"not a zip", "ledger.xlsx")
    client.force_login(factories.analyst_user())
    page = client.get(reverse("admin:finops_datasource_preview", args=[source.pk])).content.decode()
    assert "not an XLSX workbook" in page and "A refresh would reject the whole file" in page


def test_leadership_cannot_open_the_admin_preview(dims, client):
    source = file_source()
    client.force_login(factories.leadership_user())
    response = client.get(reverse("admin:finops_datasource_preview", args=[source.pk]))
    assert response.status_code in (302, 403)


def test_series_codes_are_checked_for_operational_sources(dims):
    OperationalSeries.objects.create(code="calls", name="Calls")
    config = validate_config(
        {
            "fact_kind": "operational",
            "columns": {"date": "d", "series": "s", "value": "v"},
            "constants": {"entity": "acme", "scenario": "actual"},
        }
    )
    _rows, problems = map_rows(
        [{"d": "2024-01-01", "s": "calls", "v": "1"}, {"d": "2024-01-01", "s": "emails", "v": "1"}],
        config,
        Lookups.from_db(),
    )
    assert [(p.row, p.value, p.reason) for p in problems] == [
        (2, "emails", "no operational series with this code")
    ]


def test_the_example_in_the_docs_loads_as_the_docs_say(settings):
    """docs/data-sources.md: its example CSV and config give the facts it states."""
    import json
    import re

    from finops.models import Department, Scenario

    text = (settings.BASE_DIR / "docs" / "data-sources.md").read_text()
    example_csv = re.search(r"```csv\n(.*?)```", text, re.S).group(1)
    config = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))
    Entity.objects.create(code="NW-EU", name="EU")
    for code in ("NW-SAL", "NW-MKT"):
        Department.objects.create(code=code, name=code)
    for code in ("NW-4110", "NW-6210"):
        Account.objects.create(code=code, name=code, account_type="revenue", time_behaviour="flow")
    Scenario.objects.create(code="actual", name="Actual", kind="actual")
    source = DataSource.objects.create(slug="docs", name="Docs", kind="file", config=config)
    upload(source, example_csv, "ledger-2024.csv")
    load(source)
    assert facts() == {
        (JAN, "NW-4110", "actual"): Decimal("72754.04"),
        (FEB, "NW-6210", "actual"): Decimal("-7571.40"),
    }
    assert files.validate_file_config(config).as_json() == config


def test_the_position_of_a_bad_byte_is_exact_past_the_first_megabyte():
    from finops.sources.tabular import TableOptions, open_table

    # A two-byte character straddles the 1 MB read boundary; the bad byte comes after it.
    head = b"a,b\n" + b"x" * (2**20 - 5) + b",\n"
    content = head[:-2] + "é".encode() + b",y\n1,\xff\n"
    assert content.index("é".encode()) == 2**20 - 1
    options = TableOptions()
    with (
        pytest.raises(ImportRejected) as rejected,
        open_table(io.BytesIO(content), name="big.csv", options=options) as t,
    ):
        list(t.rows)
    error = rejected.value.errors[0]
    position = content.index(b"\xff") + 1
    assert (error.row, error.value) == (3, "0xff")
    assert f"at byte position {position:,} (line 3)" in error.reason


def test_an_upload_missing_from_storage_is_a_clear_error(dims):
    source = file_source()
    stored = upload(source, GOOD_CSV)
    stored.file.storage.delete(stored.file.name)
    with pytest.raises(ImportRejected, match="the uploaded file cannot be opened: No such file"):
        load(source)


# --- the bulk path (PostgreSQL): which files it takes, and which it leaves to the row path -----


def method_for(load_path: str, bulk_reads_it: bool, columnar_reads_it: bool = False) -> str:
    if load_path == "columnar" and columnar_reads_it:
        return "columnar"
    return "bulk" if load_path in ("bulk", "columnar") and bulk_reads_it else "rows"


def test_the_bulk_path_takes_plain_files_with_the_same_facts_and_counts(dims, load_path):
    source = file_source()
    upload(source, GOOD_CSV)
    first = load(source)
    assert first.method == method_for(load_path, True)
    assert facts() == GOOD_FACTS
    assert (first.rows_read, first.rows_inserted, first.changed_periods) == (4, 3, {JAN, FEB})
    upload(source, GOOD_CSV.replace("999.99", '"1,000.01"').replace('2024-02-29,acme,1000,"5,000"\n', ""))
    again = load(source)
    assert again.method == method_for(load_path, True)
    assert (again.rows_updated, again.rows_deleted, again.rows_unchanged) == (1, 1, 1)
    assert facts()[(FEB, "4000", "actual")] == Decimal("1000.01")


def test_the_bulk_path_leaves_none_of_its_work_tables_behind(dims, load_path):
    """Its raw, code and date tables are unlogged tables of the load's own (so that parallel
    workers can read them): dropped when it has grouped the rows, and by the rollback when it
    gives way to the row path. The planner settings it changes for the grouping are put back."""
    from django.db import connection

    def work_tables() -> list[str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'finops\\_bulk\\_%%'")
            return [name for (name,) in cursor.fetchall()]

    if load_path != "bulk":
        pytest.skip("the row path makes no work tables")

    def planner_costs() -> tuple:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('parallel_setup_cost'), current_setting('parallel_tuple_cost'), "
                "current_setting('min_parallel_table_scan_size')"
            )
            return cursor.fetchone()

    source = file_source()
    upload(source, GOOD_CSV)
    costs = planner_costs()
    assert load(source).method == "bulk"
    assert work_tables() == []
    assert planner_costs() == costs  # the grouping's cheap parallel costs are put back
    upload(source, GOOD_CSV.replace("acme", " acme", 1))  # a code with a space: the row path reads it
    assert load(source).method == "rows"
    assert work_tables() == []


def test_the_bulk_path_reads_european_latin_1_files_without_a_header(dims, load_path):
    # Decimal commas, thousands points, day.month.year dates moved by the nearest month end,
    # a semicolon, Latin-1 (an unmapped column holds "Überweisung"), no header row.
    # 31.01.2024 and 01.02.2024 both belong to January: 1.234,50 + -0,50 = 1,234.00.
    mapping = {
        **LEDGER_MAPPING,
        "date_format": "%d.%m.%Y",
        "decimal_separator": ",",
        "thousands_separator": ".",
        "period_rule": "nearest_month_end",
    }
    source = file_source(
        mapping=mapping,
        header_row=0,
        columns=["Date", "Entity", "Account", "Amount", "Text"],
        delimiter=";",
        encoding="latin-1",
    )
    text = (
        "31.01.2024;acme;4000;1.234,50;Überweisung\n01.02.2024;acme;4000;-0,50;x\n20.02.2024;acme;1000;7;\n"
    )
    upload(source, text.encode("latin-1"))
    result = load(source)
    assert result.method == method_for(load_path, True)
    assert facts() == {(JAN, "4000", "actual"): Decimal("1234.00"), (FEB, "1000", "actual"): Decimal("7")}


def test_the_bulk_path_gives_way_on_what_it_does_not_read_with_certainty(dims, load_path):
    # An accounting negative, a code with a space around it and a UTF-8 byte order mark: the row
    # path reads all three, so the file loads, through it.
    source = file_source()
    upload(
        source, "\ufeffDate,Entity,Account,Amount\n2024-01-15, acme,4000,(12.50)\n2024-01-16,acme,4000,2\n"
    )
    result = load(source)
    assert result.method == "rows"
    assert facts() == {(JAN, "4000", "actual"): Decimal("-10.50")}


def test_a_bad_row_gets_the_same_report_whichever_path_was_tried_first(loaded, load_path):
    run = refresh_bad(loaded, "Date,Entity,Account,Amount\n2024-01-15,acme,4000,12\n2024-01-16,acme,9999,2\n")
    assert run.status == RefreshRun.Status.FAILED
    assert [(e["row"], e["column"], e["value"]) for e in run.errors] == [(3, "Account", "9999")]


def test_a_snapshot_through_the_bulk_path_removes_the_periods_it_no_longer_has(dims, load_path):
    source = file_source(mapping={**LEDGER_MAPPING, "snapshot": True})
    upload(source, GOOD_CSV)
    load(source)
    upload(source, "Date,Entity,Account,Amount\n2024-01-15,acme,4000,7\n")
    result = load(source)
    assert result.method == method_for(load_path, True, True)
    assert facts() == {(JAN, "4000", "actual"): Decimal("7")}
    assert FEB in result.changed_periods


def test_a_balance_dated_on_two_days_of_one_period_is_loaded_with_a_warning(dims, load_path):
    # Cash (a balance) read at the end of January and again on Feb 1st, which the nearest month
    # end also puts in January: the two add up (2,000), which is rarely what the extract meant.
    # Revenue (a flow) on two days of a month is normal and says nothing.
    source = file_source(mapping={**LEDGER_MAPPING, "period_rule": "nearest_month_end"})
    upload(
        source,
        "Date,Entity,Account,Amount\n2024-01-31,acme,1000,1000\n2024-02-01,acme,1000,1000\n"
        "2024-01-10,acme,4000,5\n2024-01-20,acme,4000,7\n2024-02-29,acme,1000,900\n",
    )
    report = Report()
    result = files.load(source, report=report)
    assert result.method == method_for(load_path, True, True)
    assert facts()[(JAN, "1000", "actual")] == Decimal("2000")
    assert report.warnings == [
        "1 balance(s) have rows dated on more than one day of the same period, which add up (for "
        "example account 1000, entity acme, Jan 2024: 2024-01-31 and 2024-02-01). A balance is read "
        "once per period: check the period rule, or whether the extract holds two snapshots of one month."
    ]


# Python's csv module (the row path) and PostgreSQL's COPY read some CSV differently; the bulk
# path must read every file as the row path does, or give way to it.
MEMO_HEADER = "Date,Entity,Account,Amount,Memo\n"


def test_a_quote_inside_an_unquoted_cell_is_read_as_the_row_path_reads_it(dims, load_path):
    # Inch marks: Python keeps the quote as a character; COPY would start a quoted section and
    # swallow the next line into this memo.
    source = file_source()
    upload(source, MEMO_HEADER + '2024-01-15,acme,4000,100,5" pipe\n2024-02-15,acme,4000,200,10" pipe\n')
    result = load(source)
    assert result.method == method_for(load_path, True)  # read by Python's csv, copied as rewritten
    assert facts() == {(JAN, "4000", "actual"): Decimal("100"), (FEB, "4000", "actual"): Decimal("200")}


def test_a_quote_in_the_header_does_not_hide_the_rows_after_it(dims, load_path):
    source = file_source()
    upload(
        source, 'Date,Entity,Account,Amount,Memo"\n2024-01-15,acme,4000,100,a\n2024-02-15,acme,4000,200,x"\n'
    )
    load(source)
    assert facts() == {(JAN, "4000", "actual"): Decimal("100"), (FEB, "4000", "actual"): Decimal("200")}


def test_quotes_inside_a_number_or_a_code_are_refused_whichever_path(loaded):
    run = refresh_bad(
        loaded, 'Date,Entity,Account,Amount\n2024-01-15,acme,4000,1"00"\n2024-01-16,ac"me",4000,1\n'
    )
    assert [(e["row"], e["column"], e["value"]) for e in run.errors] == [
        (2, "Amount", '1"00"'),
        (3, "Entity", 'ac"me"'),
    ]


def test_a_line_holding_only_backslash_period_does_not_end_the_file_early(loaded):
    run = refresh_bad(loaded, MEMO_HEADER + "2024-01-15,acme,4000,100,x\n\\.\n2024-02-15,acme,4000,200,y\n")
    assert [(e["row"], e["reason"]) for e in run.errors] == [(3, "1 cells but the header has 5 columns")]


def test_a_cell_over_the_size_limit_is_refused_whichever_path(loaded):
    big = "x" * (1024 * 1024 + 10)
    run = refresh_bad(loaded, MEMO_HEADER + f"2024-01-15,acme,4000,100,{big}\n")
    assert "field larger than field limit" in run.errors[0]["reason"]


def test_a_file_with_every_cell_quoted_still_takes_the_bulk_path(dims, load_path):
    source = file_source()
    lines = [line.replace('"', "").split(",", 3) for line in GOOD_CSV.splitlines()]
    upload(source, "".join(",".join(f'"{cell}"' for cell in cells) + "\n" for cells in lines))
    result = load(source)
    assert result.method == method_for(load_path, True)
    assert facts() == {
        (JAN, "4000", "actual"): Decimal("1500.50"),
        (FEB, "4000", "actual"): Decimal("999.99"),
        (FEB, "1000", "actual"): Decimal("5000"),
    }


def test_both_paths_give_the_same_example_of_a_split_balance(dims, load_path):
    # February's split comes first in the file, January's is the earliest period: the example
    # is January's, with its first and last day, whichever path loads the file.
    source = file_source()
    upload(
        source,
        "Date,Entity,Account,Amount\n2024-02-10,acme,1000,1\n2024-02-20,acme,1000,1\n"
        "2024-01-31,acme,1000,1\n2024-01-03,acme,1000,1\n2024-01-15,acme,1000,1\n",
    )
    report = Report()
    assert files.load(source, report=report).method == method_for(load_path, True, True)
    assert report.warnings[0].startswith(
        "2 balance(s) have rows dated on more than one day of the same period, which add up (for "
        "example account 1000, entity acme, Jan 2024: 2024-01-03 and 2024-01-31)."
    )


OPERATIONAL_MAPPING = {
    "fact_kind": "operational",
    "columns": {
        "date": "Day",
        "series": "Series",
        "value": "Value",
        "count": "Count",
        "dimension": "Channel",
    },
    "constants": {"entity": "acme", "scenario": "actual"},
}


def operational() -> dict:
    return {
        (f.date, f.dimension): (f.value, f.count)
        for f in OperationalFact.objects.filter(series__code="orders")
    }


def test_operational_rows_sharing_a_key_add_up_whichever_path(dims, load_path):
    source = file_source(mapping=OPERATIONAL_MAPPING)
    upload(
        source,
        "Day,Series,Value,Count,Channel\n2024-01-05,orders,2.5,1,web\n2024-01-05,orders,0.000001,2,web\n"
        "2024-01-06,orders,7,3,\n",
    )
    assert load(source).method == method_for(load_path, True)
    assert operational() == {
        (date(2024, 1, 5), "web"): (Decimal("2.500001"), 3),
        (date(2024, 1, 6), ""): (Decimal("7"), 3),
    }


@pytest.mark.parametrize(
    "row,key,count",
    [
        ("2024-01-05,orders,1,2.0,web", (date(2024, 1, 5), "web"), 2),  # a count written 2.0
        ("2024-01-05,orders,1,2, web", (date(2024, 1, 5), "web"), 2),  # a space before the channel
        ("2024-01-05,orders,1,2,app\u2003", (date(2024, 1, 5), "app"), 2),  # an em space after it
    ],
)
def test_operational_cells_the_bulk_path_is_unsure_of_go_row_by_row(dims, load_path, row, key, count):
    # The row path reads each of these (and strips any space around a channel); the bulk path
    # gives way to it rather than read them otherwise.
    source = file_source(mapping=OPERATIONAL_MAPPING)
    upload(source, f"Day,Series,Value,Count,Channel\n{row}\n")
    assert load(source).method == "rows"
    assert operational() == {key: (Decimal("1"), count)}


# --- the columnar path (Arrow): what it takes, and how it writes ----------------------------------

PLAIN_CSV = (  # GOOD_CSV without quotes or thousands separators: the columnar path reads it
    "Date,Entity,Account,Amount\n"
    "2024-01-15,acme,4000,1200.50\n"
    "2024-01-20,acme,4000,300\n"
    "2024-02-03,acme,4000,999.99\n"
    "2024-02-29,acme,1000,5000\n"
)


def test_the_columnar_path_loads_a_plain_file_then_replaces_it_through_the_staging_table(dims, load_path):
    source = file_source()
    upload(source, PLAIN_CSV)
    first = load(source)
    assert first.method == method_for(load_path, True, True)
    assert facts() == GOOD_FACTS
    assert (first.rows_read, first.rows_inserted, first.changed_periods) == (4, 3, {JAN, FEB})
    # Again, changed: Feb 4000 updated, Feb 1000 removed, Jan unchanged (the source's facts are
    # there now: compared through the staging table, not copied straight in).
    upload(source, PLAIN_CSV.replace("999.99", "1000.01").replace("2024-02-29,acme,1000,5000\n", ""))
    again = load(source)
    assert again.method == method_for(load_path, True, True)
    assert (again.rows_inserted, again.rows_updated, again.rows_deleted, again.rows_unchanged) == (0, 1, 1, 1)
    assert facts() == {
        (JAN, "4000", "actual"): Decimal("1500.50"),
        (FEB, "4000", "actual"): Decimal("1000.01"),
    }
    assert load(source).rows_unchanged == 2  # the same file a third time changes nothing


def test_a_first_load_adds_to_the_ledger_totals_other_sources_made(dims, load_path):
    # The other source has totals in January (a key this file shares, and one it does not): the
    # file's sums are added to them; February has none yet and is copied in.
    other = file_source("other")
    upload(other, "Date,Entity,Account,Amount\n2024-01-05,acme,4000,10\n2024-01-05,acme,1000,7\n")
    load(other)
    source = file_source()
    upload(source, PLAIN_CSV)
    assert load(source).method == method_for(load_path, True, True)
    assert facts(source) == GOOD_FACTS  # facts() also checks every ledger total against the facts
    assert facts(other) == {(JAN, "4000", "actual"): Decimal("10"), (JAN, "1000", "actual"): Decimal("7")}


def test_the_columnar_path_reads_european_numbers_in_utf_8(dims, load_path):
    mapping = {**LEDGER_MAPPING, "decimal_separator": ",", "thousands_separator": "."}
    source = file_source(mapping=mapping, delimiter=";")
    upload(source, "Date;Entity;Account;Amount\n2024-01-15;acme;4000;1.234,50\n2024-01-16;acme;4000;-0,5\n")
    assert load(source).method == method_for(load_path, True, True)
    assert facts() == {(JAN, "4000", "actual"): Decimal("1234.00")}


@pytest.mark.parametrize(
    "amount,reason",
    [
        ("5.", "not a number in the configured format"),  # Arrow would read 5
        ("1e3", "in scientific notation"),  # Arrow would read 1000
        ("1.23456", "more than 4 decimal places"),
        ("12345678901234567", "more than 16 digits before the decimal point"),
        ("", "empty; a number is required"),
    ],
)
def test_amounts_arrow_would_read_otherwise_are_refused_by_the_row_path(loaded, amount, reason):
    run = refresh_bad(
        loaded, f"Date,Entity,Account,Amount\n2024-01-15,acme,4000,1\n2024-01-16,acme,4000,{amount}\n"
    )
    assert [(e["row"], e["column"], e["value"]) for e in run.errors] == [(3, "Amount", amount)]
    assert reason in run.errors[0]["reason"]


def test_rows_whose_sum_passes_the_fact_column_are_refused_whichever_path(loaded):
    big = "9999999999999999"
    run = refresh_bad(
        loaded, f"Date,Entity,Account,Amount\n2024-01-15,acme,4000,{big}\n2024-01-16,acme,4000,{big}\n"
    )
    assert "digits" in run.errors[0]["reason"]


def test_a_file_read_in_segments_and_grouped_in_steps_gives_the_same_facts(dims, load_path, monkeypatch):
    """Bounded memory: the file is parsed a few hundred bytes at a time here, and the rows are
    grouped every few rows; a key spread over segments still adds up, and a balance's earliest
    and latest day survive the steps (its warning names them)."""
    from finops.sources import columnar

    monkeypatch.setattr(columnar, "SEGMENT_BYTES", 64)
    monkeypatch.setattr(columnar, "COMPACT_ROWS", 3)
    lines = ["2024-01-31,acme,1000,1", "2024-01-10,acme,4000,0.25"] * 6 + ["2024-01-03,acme,1000,2"]
    lines += [f"2024-02-{day:02d},acme,4000,{day}.5" for day in range(1, 21)]
    source = file_source()
    upload(source, "Date,Entity,Account,Amount\n" + "\n".join(lines) + "\n")
    report = Report()
    assert files.load(source, report=report).method == method_for(load_path, True, True)
    # Jan 1000: 6 x 1 + 2 = 8; Jan 4000: 6 x 0.25 = 1.5; Feb 4000: (1 + ... + 20) + 20 x 0.5 = 220.
    assert facts() == {
        (JAN, "1000", "actual"): Decimal("8"),
        (JAN, "4000", "actual"): Decimal("1.5"),
        (FEB, "4000", "actual"): Decimal("220"),
    }
    assert (
        "(for example account 1000, entity acme, Jan 2024: 2024-01-03 and 2024-01-31)" in report.warnings[0]
    )


def test_the_columnar_path_gives_way_on_rows_of_another_width_and_blank_codes(dims, load_path):
    # An extra empty cell after the last column (the row path ignores it; COPY does not either)
    # and a code left empty in a row the row path reports: Arrow reads neither as it does.
    source = file_source()
    upload(source, PLAIN_CSV + "2024-02-10,acme,4000,1,\n")
    result = load(source)
    assert result.method == "rows"
    assert facts()[(FEB, "4000", "actual")] == Decimal("1000.99")
    with pytest.raises(ImportRejected) as rejected:
        upload(source, PLAIN_CSV + "2024-02-10,,4000,1\n")
        load(source)
    assert [(e.row, e.column) for e in rejected.value.errors] == [(6, "Entity")]


def test_a_run_step_says_which_path_loaded_the_file_and_what_its_steps_took(dims, load_path, client):
    source = file_source()
    upload(source, PLAIN_CSV)
    run = refresh(source_slug=source.slug)
    assert run.status == RefreshRun.Status.SUCCEEDED, run.errors
    step = run.steps[0]
    assert step["method"] == method_for(load_path, True, True)
    if step["method"] == "columnar":
        assert [name for name, _seconds in step["timings"]] == ["read and group", "copy", "totals"]
    client.force_login(factories.leadership_user())
    body = client.get(reverse("run-detail", args=[run.pk])).content.decode()
    shown = {
        "columnar": "read and grouped by Arrow · read and group",
        "bulk": "checked and grouped in the database · copy",
        "rows": "ledger",
    }[step["method"]]
    assert shown in body
    assert ("grouped" in body) == (step["method"] != "rows")


def test_what_arrow_would_not_see_makes_the_columnar_path_give_way(dims, load_path, monkeypatch):
    # A byte that is not UTF-8 in a column the load does not read (Arrow checks only the columns
    # it converts): the row path refuses the file. A line starting with a byte order mark at the
    # start of a later segment (Arrow drops one there): the row path reports the date.
    from finops.sources import columnar

    source = file_source()
    upload(source, MEMO_HEADER.encode() + b"2024-01-15,acme,4000,1,ok\n2024-01-16,acme,4000,2,caf\xe9\n")
    with pytest.raises(ImportRejected, match="not UTF-8 text"):
        load(source)
    head = "Date,Entity,Account,Amount\n2024-01-15,acme,4000,1\n"
    monkeypatch.setattr(columnar, "SEGMENT_BYTES", len(head) + 3)
    upload(source, head + "\ufeff2024-01-16,acme,4000,2\n2024-01-17,acme,4000,3\n")
    with pytest.raises(ImportRejected) as rejected:
        load(source)
    assert [(e.row, e.column) for e in rejected.value.errors] == [(3, "Date")]
    assert facts() == {}


def test_a_delimiter_arrow_cannot_take_and_an_amount_column_read_twice_still_load(dims, load_path):
    source = file_source(delimiter="§")
    upload(source, "Date§Entity§Account§Amount\n2024-01-15§acme§4000§1.5\n")
    assert load(source).method == method_for(load_path, False)
    assert facts() == {(JAN, "4000", "actual"): Decimal("1.5")}
    mapping = {**LEDGER_MAPPING, "columns": {**LEDGER_MAPPING["columns"], "account": "Amount"}}
    other = file_source("other", mapping=mapping)
    upload(other, "Date,Entity,Account,Amount\n2024-02-15,acme,x,4000\n")
    assert load(other).method == method_for(load_path, True)
    assert facts(other) == {(FEB, "4000", "actual"): Decimal("4000")}
