"""Targets from CSV and XLSX files: all or nothing, row and column named, idempotent."""

import io
import zipfile
from datetime import date
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse
from openpyxl import Workbook

from finops.errors import ImportRejected
from kpis.engine import recompute
from kpis.models import KPIValue, Target
from kpis.target_files import import_targets
from tests import factories
from tests.kpis.test_engine import define

JAN, FEB = date(2024, 1, 1), date(2024, 2, 1)


@pytest.fixture
def revenue(book):
    book.account("4000")
    book.book([("2024-01", "US", "4000", "900"), ("2024-02", "US", "4000", "500")])
    define(
        [{"code": "net_sales", "name": "n", "kind": "account", "account": "4000", "time_behaviour": "flow"}],
        [
            {
                "code": "revenue",
                "name": "Revenue",
                "unit": "currency",
                "formula": "net_sales",
                "target_rule": "manual",
            }
        ],
    )
    return book


def csv_bytes(text: str) -> bytes:
    return text.strip().encode() + b"\n"


def stored() -> list:
    rows = Target.objects.values_list("kpi__code", "entity__code", "grain", "period", "value", "origin")
    return sorted(rows, key=str)


def test_a_csv_of_targets_is_stored_and_drives_the_status(revenue):
    content = csv_bytes("kpi,period,value,entity\nrevenue,2024-01,1000,US\nrevenue,2024-02-01,450,")
    result = import_targets(content, filename="targets.csv")
    assert (result.created, result.updated, result.unchanged) == (2, 0, 0)
    assert set(stored()) == {
        ("revenue", None, "month", FEB, Decimal("450"), "imported"),
        ("revenue", "US", "month", JAN, Decimal("1000"), "imported"),
    }
    recompute()
    jan = KPIValue.objects.get(kpi__code="revenue", period=JAN, grain="month", entity__code="US")
    assert (jan.target, jan.status) == (Decimal("1000"), "red")
    feb = KPIValue.objects.get(kpi__code="revenue", period=FEB, grain="month", entity__code="US")
    assert (feb.target, feb.status) == (Decimal("450"), "green")


def test_importing_the_same_file_again_changes_nothing(revenue):
    content = csv_bytes("kpi;period;value\nrevenue;2024-01;1000")
    import_targets(content, filename="t.csv")
    again = import_targets(content, filename="t.csv")
    assert (again.created, again.updated, again.unchanged) == (0, 0, 1)


def test_an_xlsx_workbook_is_read_like_a_csv(revenue):
    book = Workbook()
    sheet = book.active
    sheet.append(["KPI", "Grain", "Period", "Value"])
    sheet.append(["revenue", "quarter", "2024-01", 2000])
    buffer = io.BytesIO()
    book.save(buffer)
    import_targets(buffer.getvalue(), filename="targets.xlsx")
    assert stored() == [("revenue", None, "quarter", JAN, Decimal("2000"), "imported")]


@pytest.mark.parametrize(
    "text,row,column,reason",
    [
        ("kpi,period,value\nnope,2024-01,1", 2, "kpi", "no KPI with this code"),
        ("kpi,period,value\nrevenue,Jan 2024,1", 2, "period", "not a month"),
        ("kpi,period,value\nrevenue,2024-01,12x", 2, "value", "not a number"),
        ("kpi,period,value\nrevenue,2024-01,12,5", 2, None, "4 cells but 3 columns"),
        ("kpi,period,value,grain\nrevenue,2024-02,1,quarter", 2, "period", "a quarter starts in 2024-01"),
        ("kpi,period,value,grain\nrevenue,2024-01,1,week", 2, "grain", "use month, quarter or year"),
        ("kpi,period,value,entity\nrevenue,2024-01,1,Mars", 2, "entity", "no entity"),
        ("kpi,period,value\nrevenue,2024-01,1\nrevenue,2024-01,2", 3, "period", "a second target"),
        ("kpi,value\nrevenue,1", 1, None, "missing column(s) period"),
    ],
)
def test_a_bad_row_rejects_the_whole_file_naming_row_and_column(revenue, text, row, column, reason):
    from kpis.models import KPI

    Target.objects.create(kpi=KPI.objects.get(code="revenue"), grain="month", period=JAN, value=Decimal("7"))
    before = stored()
    with pytest.raises(ImportRejected) as rejected:
        import_targets(csv_bytes(text), filename="t.csv")
    error = rejected.value.errors[0]
    assert (error.row, error.column) == (row, column)
    assert reason in error.reason
    assert stored() == before


@pytest.mark.parametrize(
    "content,filename,reason",
    [
        (b"", "t.csv", "empty"),
        ("kpi,period,value\nrévenue,2024-01,1".encode("latin-1"), "t.csv", "not UTF-8"),
        (b"this is not a zip", "t.xlsx", "not an XLSX workbook"),
    ],
)
def test_unreadable_files_are_refused_clearly(revenue, content, filename, reason):
    with pytest.raises(ImportRejected, match=reason):
        import_targets(content, filename=filename)
    assert not Target.objects.exists()


def test_an_xlsx_that_would_inflate_past_the_limit_is_refused_unopened(revenue, monkeypatch):
    monkeypatch.setattr("kpis.target_files.MAX_XLSX_UNCOMPRESSED", 1000)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/worksheets/sheet1.xml", "0" * 50_000)  # compresses to almost nothing
    with pytest.raises(ImportRejected, match="would expand"):
        import_targets(buffer.getvalue(), filename="bomb.xlsx")


def test_the_command_imports_a_file_and_reports_errors(revenue, tmp_path, capsys):
    good = tmp_path / "targets.csv"
    good.write_bytes(csv_bytes("kpi,period,value\nrevenue,2024-01,1000"))
    call_command("kpis", "import-targets", str(good))
    assert "1 created" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_bytes(csv_bytes("kpi,period,value\nrevenue,2024-01,abc"))
    with pytest.raises(CommandError, match="bad.csv, row 2, column value: 'abc' not a number"):
        call_command("kpis", "import-targets", str(bad))


def test_an_analyst_uploads_targets_in_the_admin_and_sees_bad_rows(revenue, client):
    client.force_login(factories.user_in("Analysts", "ana", is_staff=True))
    url = reverse("admin:kpis_target_import")
    assert client.get(url).status_code == 200
    bad = SimpleUploadedFile("t.csv", csv_bytes("kpi,period,value\nrevenue,2024-13,5"))
    response = client.post(url, {"file": bad})
    assert b"rejected" in response.content and b"2024-13" in response.content
    assert not Target.objects.exists()
    good = SimpleUploadedFile("t.csv", csv_bytes("kpi,period,value\nrevenue,2024-01,5"))
    response = client.post(url, {"file": good})
    assert response.status_code == 302 and Target.objects.count() == 1


def test_leadership_cannot_import_targets(revenue, client):
    client.force_login(factories.user_in("Leadership", "boss", is_staff=True))
    assert client.get(reverse("admin:kpis_target_import")).status_code == 403
