"""The refresh pipeline: pull each active source, validate, load its facts, recompute the
KPIs, record the run.

One service used by ``manage.py refresh``, the Celery task and the "Refresh now" button.

- Two runs never overlap: the database allows only one run in the ``running`` state.
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

from django.db import IntegrityError, transaction
from django.utils import timezone

from finops.errors import ImportRejected
from finops.loading import LoadResult, record_coverage
from finops.models import DataSource, RefreshRun
from finops.sources import Report, loader_for

log = logging.getLogger(__name__)


class RefreshInProgress(Exception):
    def __init__(self, running: RefreshRun | None):
        self.running = running
        since = f" since {running.started_at:%Y-%m-%d %H:%M:%S %Z}" if running else ""
        ident = f" (run {running.pk}{since})" if running else ""
        super().__init__(f"Another refresh is already running{ident}; this request was refused.")


def refresh_run_start(
    *, source: DataSource | None = None, trigger: str = RefreshRun.Trigger.COMMAND, user=None
) -> RefreshRun:
    """Record a new running run, or raise RefreshInProgress if one is running already."""
    try:
        with transaction.atomic():
            return RefreshRun.objects.create(
                source=source, trigger=trigger, requested_by=user, status=RefreshRun.Status.RUNNING
            )
    except IntegrityError:
        raise RefreshInProgress(RefreshRun.objects.filter(status=RefreshRun.Status.RUNNING).first()) from None


def refresh(
    *, source_slug: str | None = None, trigger: str = RefreshRun.Trigger.COMMAND, user=None
) -> RefreshRun:
    """Run the pipeline over one source (by slug) or every active source; return the run."""
    if source_slug:
        sources = [DataSource.objects.get(slug=source_slug)]
    else:
        sources = list(DataSource.objects.filter(is_active=True).order_by("pk"))
    previous = RefreshRun.objects.exclude(finished_at=None).order_by("-finished_at").first()
    run = refresh_run_start(source=sources[0] if source_slug else None, trigger=trigger, user=user)
    total = LoadResult()
    try:
        with transaction.atomic():
            for source in sources:
                _refresh_source(run, source, total)
            _recompute(run, None if _needs_full_recompute(previous) else total.changed_periods)
    except Exception as exc:  # recorded on the run, then re-raised for the worker's log
        for step in run.steps:
            step["status"] = "rolled back"
        run.errors.append({"source": None, "message": f"{type(exc).__name__}: {exc}"})
        _finish(run, total, RefreshRun.Status.FAILED)
        raise
    _finish(run, total, RefreshRun.Status.FAILED if run.errors else RefreshRun.Status.SUCCEEDED)
    return run


def _refresh_source(run: RefreshRun, source: DataSource, total: LoadResult) -> None:
    report = Report()
    started = time.monotonic()
    step = {"source": source.slug, "status": "succeeded"}
    try:
        with transaction.atomic():  # a savepoint: a rejected source rolls back alone
            result = loader_for(source)(source, report=report)
            record_coverage(source=source)
    except ImportRejected as rejected:
        step["status"] = "rejected"
        run.rows_rejected += len(rejected.errors)
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
