from decimal import Decimal

import pytest

from finops import sources
from finops.models import DataSource, FinancialFact, PeriodCoverage, RefreshRun
from finops.refresh import RefreshInProgress, refresh, refresh_run_start
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fake_file_loader(monkeypatch):
    monkeypatch.setitem(sources.LOADERS, DataSource.Kind.FILE, "tests.finops.fake_source")


@pytest.fixture
def ledger():
    factories.dimensions()
    src = factories.source("ledger")
    src.config = {"rows": [["2024-01-01", "100"], ["2024-02-01", "50"]], "warnings": ["two dates in Jan"]}
    src.save()
    return src


def total() -> Decimal:
    return sum((f.amount for f in FinancialFact.objects.all()), Decimal(0))


def test_a_refresh_loads_and_records_its_figures(ledger):
    run = refresh(trigger=RefreshRun.Trigger.COMMAND)
    run.refresh_from_db()
    assert run.status == RefreshRun.Status.SUCCEEDED
    assert (run.rows_read, run.rows_inserted) == (2, 2)
    assert run.finished_at is not None
    assert run.steps[0]["source"] == "ledger" and run.steps[0]["status"] == "succeeded"
    assert run.warnings == [{"source": "ledger", "message": "two dates in Jan"}]
    assert PeriodCoverage.objects.filter(source=ledger).count() == 2
    assert total() == Decimal("150")


def test_a_rejected_source_leaves_its_facts_as_they_were(ledger):
    refresh()
    ledger.config = {**ledger.config, "reject": True}
    ledger.save()
    run = refresh(source_slug="ledger")
    assert run.status == RefreshRun.Status.FAILED
    assert run.rows_rejected == 1
    assert run.errors[0]["row"] == 3 and run.errors[0]["column"] == "amount"
    assert "ledger.csv, row 3, column amount" in run.errors[0]["message"]
    assert total() == Decimal("150")


def test_a_crashing_connector_fails_the_run_and_changes_nothing(ledger):
    refresh()
    ledger.config = {**ledger.config, "crash": True, "rows": [["2024-01-01", "999"]]}
    ledger.save()
    with pytest.raises(RuntimeError):
        refresh()
    run = RefreshRun.objects.latest("started_at")
    assert run.status == RefreshRun.Status.FAILED
    assert "connector bug" in run.errors[-1]["message"]
    assert total() == Decimal("150")


def test_two_refreshes_never_overlap(ledger):
    running = refresh_run_start(trigger=RefreshRun.Trigger.SCHEDULE)
    with pytest.raises(RefreshInProgress, match=f"run {running.pk}"):
        refresh()
    assert RefreshRun.objects.count() == 1
    assert total() == 0


def test_the_refresh_command_reports_figures_and_warnings(ledger, capsys):
    from django.core.management import call_command

    call_command("refresh", "--sync")
    out = capsys.readouterr().out
    assert "ledger: succeeded, read 2, inserted 2" in out
    assert "warning: ledger: two dates in Jan" in out


def test_the_refresh_command_refuses_an_unknown_source(ledger):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="No data source 'nope' \\(known: ledger\\)"):
        call_command("refresh", "--sync", "--source", "nope")


def test_the_refresh_command_fails_loudly_on_rejected_input(ledger, capsys):
    from django.core.management import CommandError, call_command

    ledger.config = {**ledger.config, "reject": True}
    ledger.save()
    with pytest.raises(CommandError, match="failed"):
        call_command("refresh", "--sync")
    assert "ledger.csv, row 3, column amount" in capsys.readouterr().err


def test_without_sync_the_refresh_is_queued_as_a_task(ledger, capsys):
    from django.core.management import call_command

    call_command("refresh")  # in-process in tests (no broker): the task runs at once
    assert "Refresh queued" in capsys.readouterr().out
    assert RefreshRun.objects.get().status == RefreshRun.Status.SUCCEEDED
