from datetime import timedelta
from decimal import Decimal

import psycopg2
import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from finops import sources
from finops.models import DataSource, FinancialFact, PeriodCoverage, RefreshRun
from finops.refresh import (
    DEAD_RUN_REASON,
    LOCK_NAMESPACE,
    RefreshInProgress,
    fail_dead_runs,
    refresh,
    refresh_run_start,
    release_run_lock,
)
from tests import factories
from tests.conftest import using_postgres

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
    release_run_lock(running)


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


# ---------------------------------------------------------------- runs whose worker died


def left_running(*, age: timedelta) -> RefreshRun:
    """A run as a killed worker leaves it: running, with no live connection behind it."""
    run = RefreshRun.objects.create(status=RefreshRun.Status.RUNNING, steps=[{"source": "ledger"}])
    RefreshRun.objects.filter(pk=run.pk).update(started_at=timezone.now() - age)
    return run


def time_limit() -> timedelta:
    return timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT)


def test_a_run_left_running_by_a_dead_worker_is_failed_and_the_next_refresh_proceeds(ledger):
    dead = left_running(age=time_limit() + timedelta(minutes=1))  # dead on either database

    run = refresh()

    assert run.status == RefreshRun.Status.SUCCEEDED
    assert total() == Decimal("150")
    dead.refresh_from_db()
    assert dead.status == RefreshRun.Status.FAILED
    assert dead.finished_at is not None
    assert dead.errors == [{"source": None, "message": DEAD_RUN_REASON}]
    assert dead.steps == [{"source": "ledger", "status": "rolled back"}]


def test_a_dead_run_is_failed_once_even_when_two_starters_find_it(ledger):
    dead = left_running(age=time_limit() + timedelta(minutes=1))
    assert fail_dead_runs() == [dead]
    assert fail_dead_runs() == []
    dead.refresh_from_db()
    assert dead.errors == [{"source": None, "message": DEAD_RUN_REASON}]


def test_on_sqlite_a_running_run_is_alive_until_it_is_older_than_the_task_time_limit(ledger):
    if using_postgres():
        pytest.skip("SQLite's rule (age); PostgreSQL asks the run's advisory lock")
    recent = left_running(age=time_limit() - timedelta(minutes=1))
    with pytest.raises(RefreshInProgress, match=f"run {recent.pk}"):
        refresh()
    RefreshRun.objects.filter(pk=recent.pk).update(
        started_at=timezone.now() - time_limit() - timedelta(seconds=1)
    )
    assert refresh().status == RefreshRun.Status.SUCCEEDED
    recent.refresh_from_db()
    assert recent.status == RefreshRun.Status.FAILED


def advisory_locks_held(pid: int | None = None) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::bigint::oid"
            " AND (%s IS NULL OR pid = %s)",
            [LOCK_NAMESPACE, pid, pid],
        )
        return cursor.fetchone()[0]


@pytest.mark.postgres
def test_on_postgresql_a_run_is_alive_exactly_while_a_connection_holds_its_lock(ledger):
    run = left_running(age=2 * time_limit())  # the age does not matter on PostgreSQL
    worker = psycopg2.connect(**connection.get_connection_params())  # the run's worker
    try:
        with worker.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s, %s)", [LOCK_NAMESPACE, run.pk])
        with pytest.raises(RefreshInProgress, match=f"run {run.pk}"):
            refresh()
        run.refresh_from_db()
        assert run.status == RefreshRun.Status.RUNNING
    finally:
        worker.close()  # the worker dies: the server releases its lock

    assert refresh().status == RefreshRun.Status.SUCCEEDED
    run.refresh_from_db()
    assert run.status == RefreshRun.Status.FAILED
    assert run.errors[-1]["message"] == DEAD_RUN_REASON
    assert total() == Decimal("150")


@pytest.mark.postgres
def test_on_postgresql_a_run_holds_its_lock_from_its_start_until_it_ends(ledger):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    run = refresh_run_start()
    assert advisory_locks_held(pid) == 1
    release_run_lock(run)
    assert advisory_locks_held(pid) == 0

    refresh()
    ledger.config = {**ledger.config, "crash": True}
    ledger.save()
    with pytest.raises(RuntimeError):
        refresh()
    assert advisory_locks_held(pid) == 0  # released after a success and after a failure


def test_the_task_uses_the_configured_time_limits():
    from finops.tasks import refresh_task

    assert refresh_task.time_limit == settings.CELERY_TASK_TIME_LIMIT
    assert refresh_task.soft_time_limit == settings.CELERY_TASK_SOFT_TIME_LIMIT
    assert refresh_task.acks_late and refresh_task.reject_on_worker_lost
