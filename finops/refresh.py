"""The refresh pipeline: pull each active source, validate, load its facts, recompute the
KPIs, record the run.

One service used by ``manage.py refresh``, the Celery task and the "Refresh now" button.

- Two runs never overlap: the database allows only one run in the ``running`` state.
- A run whose worker died cannot block refreshes: the next run marks it failed and proceeds
  (see ``fail_dead_runs``). On PostgreSQL a live run holds an advisory lock on its own
  connection, which the server releases the moment the worker's connection drops; on SQLite
  (development) a run counts as dead once it is older than the task time limit.
- Publication is atomic: the loads and the recompute happen in one transaction, so pages
  show the previous complete data until the whole run has committed; a worker killed in the
  middle leaves the data exactly as it was.
- Each source loads in its own savepoint: a source whose input is rejected leaves its facts
  as they were (the run records which rows were wrong) and the other sources still load.
- The recompute re-aggregates only the months whose facts changed, unless the previous run
  failed (then everything is recomputed).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from finops import progress
from finops.errors import ImportRejected
from finops.loading import LoadResult, lock_dimensions, record_coverage
from finops.models import DataSource, RefreshRun
from finops.sources import Report, loader_for
from finops.sources.pull import Pulls

log = logging.getLogger(__name__)


class RefreshInProgress(Exception):
    def __init__(self, running: RefreshRun | None):
        self.running = running
        since = f" since {running.started_at:%Y-%m-%d %H:%M:%S %Z}" if running else ""
        ident = f" (run {running.pk}{since})" if running else ""
        super().__init__(f"Another refresh is already running{ident}; this request was refused.")


DEAD_RUN_REASON = "The worker stopped during the run; nothing it did was published."

# Advisory locks use the two-integer form: (namespace, run id). The namespace keeps them apart
# from any other advisory lock on the server; the run id ties each lock to one run.
LOCK_NAMESPACE = 0x46_49_4E  # "FIN"


def refresh_run_start(
    *, source: DataSource | None = None, trigger: str = RefreshRun.Trigger.COMMAND, user=None
) -> RefreshRun:
    """Record a new running run, or raise RefreshInProgress if a live one is running already.

    A run left ``running`` by a dead worker is marked failed first. On PostgreSQL the new run
    holds its advisory lock from the moment its row is committed until ``release_run_lock``
    (or until its connection drops): that lock is what tells the next run it is alive.
    """
    fail_dead_runs()
    try:
        with transaction.atomic():
            run = RefreshRun.objects.create(
                source=source, trigger=trigger, requested_by=user, status=RefreshRun.Status.RUNNING
            )
            _run_lock(run, "pg_advisory_lock")  # taken before the row is visible to anyone
            return run
    except IntegrityError:
        raise RefreshInProgress(RefreshRun.objects.filter(status=RefreshRun.Status.RUNNING).first()) from None


def release_run_lock(run: RefreshRun) -> None:
    """Release the run's advisory lock (PostgreSQL); nothing to do elsewhere or if the
    connection is already gone (the server released it then)."""
    try:
        _run_lock(run, "pg_advisory_unlock")
    except DatabaseError:
        log.warning("refresh run %s: could not release its lock (connection lost)", run.pk)


def fail_dead_runs() -> list[RefreshRun]:
    """Mark failed every ``running`` run whose worker is gone; return them.

    PostgreSQL: a run is alive while some connection to this database holds its advisory
    lock; a killed worker's connection drops and the server releases the lock (and rolls back
    its uncommitted work). SQLite: a run is alive until it is older than the Celery task time
    limit, after which Celery would have killed it anyway.
    """
    dead = [run for run in RefreshRun.objects.filter(status=RefreshRun.Status.RUNNING) if not _is_alive(run)]
    for run in dead:
        run.errors.append({"source": None, "message": DEAD_RUN_REASON})
        for step in run.steps:
            step["status"] = "rolled back"
        # Conditional on the status, so two runs recovering the same row at once write it once.
        updated = RefreshRun.objects.filter(pk=run.pk, status=RefreshRun.Status.RUNNING).update(
            status=RefreshRun.Status.FAILED, finished_at=timezone.now(), errors=run.errors, steps=run.steps
        )
        if updated:
            log.warning("refresh run %s: %s Marked failed.", run.pk, DEAD_RUN_REASON)
    return dead


def _is_alive(run: RefreshRun) -> bool:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND objsubid = 2 AND classid = %s::bigint::oid AND objid = %s::bigint::oid"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
                [LOCK_NAMESPACE, _lock_key(run)],
            )
            return cursor.fetchone()[0]
    limit = timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT)
    return run.started_at > timezone.now() - limit


def _run_lock(run: RefreshRun, function: str) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {function}(%s, %s)", [LOCK_NAMESPACE, _lock_key(run)])


def _lock_key(run: RefreshRun) -> int:
    return run.pk % 2**31  # the lock functions take int4 keys


def refresh(
    *, source_slug: str | None = None, trigger: str = RefreshRun.Trigger.COMMAND, user=None
) -> RefreshRun:
    """Run the pipeline over one source (by slug) or every active source; return the run."""
    if source_slug:
        sources = [DataSource.objects.get(slug=source_slug)]
    else:
        sources = list(DataSource.objects.filter(is_active=True).order_by("pk"))
    run = refresh_run_start(source=sources[0] if source_slug else None, trigger=trigger, user=user)
    # After the start: a dead run it has just marked failed counts as the previous run.
    previous = RefreshRun.objects.exclude(finished_at=None).order_by("-finished_at").first()
    total = LoadResult()
    pulls = Pulls()
    try:
        try:
            steps = len(sources) + 1  # each source, then the recompute
            pulls = Pulls.start(sources)  # remote sources pull while the others load
            with transaction.atomic():
                lock_dimensions()  # before any code is looked up: see finops.loading
                for done, source in enumerate(sources):
                    progress.publish(run.pk, stage=f"Loading {source.name}", done=done, total=steps)
                    _refresh_source(run, source, total, pulls)
                progress.publish(run.pk, stage="Recomputing the KPIs", done=len(sources), total=steps)
                _recompute(run, None if _needs_full_recompute(previous) else total.changed_periods)
                progress.publish(run.pk, stage="Publishing", done=steps, total=steps)
                # In the same commit as the data: a run is never "running" once its work is
                # published, so a run found running with its worker gone published nothing.
                _finish(run, total, RefreshRun.Status.FAILED if run.errors else RefreshRun.Status.SUCCEEDED)
        except Exception as exc:  # recorded on the run, then re-raised for the worker's log
            for step in run.steps:
                step["status"] = "rolled back"
            run.errors.append({"source": None, "message": f"{type(exc).__name__}: {exc}"})
            try:
                _finish(run, total, RefreshRun.Status.FAILED)
            except DatabaseError:  # e.g. the database went away: the next run marks it failed
                log.exception("refresh run %s: could not record its failure", run.pk)
            raise
    finally:
        pulls.close()
        release_run_lock(run)
        progress.clear(run.pk)
    return run


def _refresh_source(run: RefreshRun, source: DataSource, total: LoadResult, pulls: Pulls) -> None:
    report = Report()
    started = time.monotonic()
    step = {"source": source.slug, "status": "succeeded"}
    pulled = pulls.take(source)  # waits for the source's pull, when it was pulled ahead
    if pulled is not None and pulled.live:
        log.info(
            "refresh run %s: source %s loads live: its spool could not hold a record (%s)",
            run.pk,
            source.slug,
            pulled.live,
        )
    elif pulled is not None:
        step["pulled_ahead"] = {"records": pulled.records, "seconds": round(pulled.seconds, 3)}
    try:
        with transaction.atomic():  # a savepoint: a rejected source rolls back alone
            load = loader_for(source)
            result = (
                load(source, report=report) if pulled is None else load(source, report=report, pulled=pulled)
            )
            record_coverage(source=source)
    except ImportRejected as rejected:
        step["status"] = "rejected"
        run.rows_rejected += rejected.rows
        run.errors.extend(
            {"source": source.slug, **error.as_dict(), "message": str(error)}
            for error in rejected.errors[:1000]
        )
        result = LoadResult()
    total.add(result)
    run.warnings.extend({"source": source.slug, "message": message} for message in report.warnings)
    step.update(
        rows_read=result.rows_read,
        rows_inserted=result.rows_inserted,
        rows_updated=result.rows_updated,
        rows_deleted=result.rows_deleted,
        rows_unchanged=result.rows_unchanged,
        seconds=round(time.monotonic() - started, 3),
    )
    if step["status"] != "rejected":  # which path loaded it, and its steps where it timed them
        step.update(method=result.method, timings=list(result.timings.items()))  # in order
    run.steps.append(step)
    log.info("refresh run %s: source %s %s", run.pk, source.slug, step)


def _needs_full_recompute(previous: RefreshRun | None) -> bool:
    """Everything is recomputed after a failed run and after measure definitions changed;
    otherwise only the months whose facts changed are re-aggregated."""
    from kpis.models import Measure

    if previous is None or previous.status == RefreshRun.Status.FAILED:
        return True
    return Measure.objects.filter(updated_at__gte=previous.started_at).exists()


def _recompute(run: RefreshRun, months: set | None) -> None:
    """The metric step: re-aggregate the changed months, re-evaluate every KPI (formulas and
    targets may have changed even when no fact did)."""
    from kpis.engine import recompute  # the metric layer builds on the data layer, not the reverse

    started = time.monotonic()
    result = recompute(run=run, months=months)
    run.steps.append(
        {
            "source": "recompute",
            "status": "succeeded",
            "months": "all" if months is None else len(months),
            "kpi_values": result.kpi_values,
            "rows_inserted": result.kpi_inserted,
            "rows_updated": result.kpi_updated,
            "rows_deleted": result.kpi_deleted,
            "seconds": round(time.monotonic() - started, 3),
            "timings": result.seconds,
        }
    )


def _finish(run: RefreshRun, total: LoadResult, status: str) -> None:
    run.status = status
    run.finished_at = timezone.now()
    run.rows_read = total.rows_read
    run.rows_inserted = total.rows_inserted
    run.rows_updated = total.rows_updated
    run.rows_deleted = total.rows_deleted
    run.save()
