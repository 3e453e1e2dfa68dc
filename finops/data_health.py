"""Reads for the Data page: what each source has loaded, month by month, and the last runs.

A fixed number of queries whatever the number of sources, months or runs: sources, coverage
(stored by each load, never a count over the fact tables) and the latest runs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from statistics import median

from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from finops.models import DataSource, PeriodCoverage, RefreshRun
from finops.periods import month_range

RECENT_RUNS = 15
# A month with fewer rows than this share of the typical month is flagged as partial.
PARTIAL_SHARE = 0.25


@dataclass
class CoverageLine:
    """One source and scenario across the months, with gaps and partial months flagged."""

    source: DataSource
    scenario_name: str
    fact_kind: str
    rows_by_period: dict[date, int]
    total_rows: int = 0
    first: date | None = None
    last: date | None = None
    missing: list[date] = field(default_factory=list)
    partial: list[date] = field(default_factory=list)
    # One cell per month of the page's month axis: (month, rows or None, state).
    cells: list[tuple[date, int | None, str]] = field(default_factory=list)


@dataclass
class SourceSummary:
    source: DataSource
    last_success: datetime | None
    last_run: RefreshRun | None
    lines: list[CoverageLine]
    stale: bool = False  # active, and not loaded successfully for FINOPS_STALE_AFTER_HOURS


@dataclass
class DataOverview:
    sources: list[SourceSummary]
    months: list[date]
    runs: list[RefreshRun]
    running: RefreshRun | None
    stale_after_hours: int = 0

    @property
    def stale(self) -> list[SourceSummary]:
        return [summary for summary in self.sources if summary.stale]


def data_overview() -> DataOverview:
    sources = list(DataSource.objects.order_by("name"))
    coverage = PeriodCoverage.objects.select_related("scenario").order_by("period")
    runs = list(
        RefreshRun.objects.select_related("source", "requested_by").order_by("-started_at")[:RECENT_RUNS]
    )
    # Freshness needs each source's last success even if it is older than the recent runs.
    last_success = dict(
        RefreshRun.objects.filter(status=RefreshRun.Status.SUCCEEDED)
        .values_list("source_id")
        .order_by("source_id")
        .annotate(last=Max("finished_at"))
    )

    grouped: dict[tuple[int, str, str], dict[date, int]] = defaultdict(dict)
    scenario_names: dict[tuple[int, str, str], str] = {}
    all_periods: set[date] = set()
    for row in coverage:
        key = (row.source_id, row.scenario.code, row.fact_kind)
        grouped[key][row.period] = row.rows
        scenario_names[key] = row.scenario.name
        all_periods.add(row.period)
    months = month_range(min(all_periods), max(all_periods)) if all_periods else []

    by_source: dict[int, list[CoverageLine]] = defaultdict(list)
    for key in sorted(grouped):
        rows_by_period = grouped[key]
        line = CoverageLine(
            source=next(s for s in sources if s.pk == key[0]),
            scenario_name=scenario_names[key],
            fact_kind=key[2],
            rows_by_period=rows_by_period,
            total_rows=sum(rows_by_period.values()),
            first=min(rows_by_period),
            last=max(rows_by_period),
        )
        line.missing = [m for m in month_range(line.first, line.last) if m not in rows_by_period]
        typical = median(rows_by_period.values())
        line.partial = [p for p, n in rows_by_period.items() if n < PARTIAL_SHARE * typical]
        line.cells = [(m, rows_by_period.get(m), _cell_state(m, line)) for m in months]
        by_source[key[0]].append(line)

    stale_hours = settings.FINOPS_STALE_AFTER_HOURS
    stale_before = timezone.now() - timedelta(hours=stale_hours)
    # "Whole refresh" runs (no source) count for every source they covered.
    latest_any = next((run for run in runs if run.source_id is None), None)
    summaries = []
    for source in sources:
        own = next((run for run in runs if run.source_id == source.pk), None)
        last_run = own or latest_any
        success = last_success.get(source.pk)
        if last_success.get(None) and (success is None or last_success[None] > success):
            success = last_success[None]
        stale = source.is_active and (success is None or success < stale_before)
        summaries.append(SourceSummary(source, success, last_run, by_source.get(source.pk, []), stale))
    running = next((run for run in runs if run.status == RefreshRun.Status.RUNNING), None)
    return DataOverview(
        sources=summaries, months=months, runs=runs, running=running, stale_after_hours=stale_hours
    )


def _cell_state(month: date, line: CoverageLine) -> str:
    if month in line.partial:
        return "partial"
    if month in line.missing:
        return "missing"
    if month in line.rows_by_period:
        return "loaded"
    return "outside"
