"""What the review pages show changes only when something is published: a refresh succeeds,
or goals, links, driver links or KPI definitions are edited. One query reads that version;
page bodies are cached under it, so a repeat view of a scorecard reads no KPI values at all.

The cache can never show stale numbers: every refresh that stores KPI values ends as a new
succeeded run (a new version), and every edit of a goal, link or KPI changes a timestamp,
count or change record that the version includes. Names of entities or departments edited
in the admin are the exception: they show after at most ``BODY_TTL`` seconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import get_language

from alignment.models import Goal, GoalKPI, KPIDriver
from finops.models import Department, Entity, RefreshRun
from kpis.models import KPI, KPIChange

BODY_TTL = 300  # seconds


def _release() -> str:
    """A fingerprint of the page templates and this code, taken at start-up: a deploy that
    changes how pages look never serves bodies cached by the previous release (Redis keeps
    them across restarts)."""
    root = Path(settings.BASE_DIR)
    files = sorted([*root.glob("templates/**/*.html"), Path(__file__), root / "alignment" / "selectors.py"])
    stamp = "|".join(
        f"{path}:{path.stat().st_mtime_ns}:{path.stat().st_size}" for path in files if path.exists()
    )
    return hashlib.sha256(stamp.encode()).hexdigest()[:16]


RELEASE = _release()
FILTER_KEYS = ("grain", "period", "entity", "department")


@dataclass(frozen=True)
class LatestRun:
    """The newest refresh run, for the layout's "running" or "failed" banner."""

    pk: int
    status: str
    started_at: datetime | None


@dataclass(frozen=True)
class Published:
    version: str
    latest_run: LatestRun | None


def published_state() -> Published:
    """The version of everything the review pages read, and the newest run (one query)."""
    run, goal, link, driver, change, kpi = (
        model._meta.db_table for model in (RefreshRun, Goal, GoalKPI, KPIDriver, KPIChange, KPI)
    )
    entity, department = Entity._meta.db_table, Department._meta.db_table
    newest = f"(SELECT {{column}} FROM {run} ORDER BY started_at DESC, id DESC LIMIT 1)"  # noqa: S608
    sql = f"""
        SELECT
          (SELECT MAX(id) FROM {run} WHERE status = %s),
          (SELECT MAX(updated_at) FROM {goal}), (SELECT COUNT(*) FROM {goal}),
          (SELECT MAX(updated_at) FROM {link}), (SELECT COUNT(*) FROM {link}),
          (SELECT MAX(updated_at) FROM {driver}), (SELECT COUNT(*) FROM {driver}),
          (SELECT MAX(id) FROM {change}), (SELECT COUNT(*) FROM {kpi} WHERE is_active = %s),
          (SELECT COUNT(*) FROM {entity}), (SELECT COUNT(*) FROM {department}),
          {newest.format(column="id")}, {newest.format(column="status")}, {newest.format(column="started_at")}
    """  # noqa: S608 - table names from the models' metadata, values as parameters
    with connection.cursor() as cursor:
        cursor.execute(sql, [RefreshRun.Status.SUCCEEDED, True])
        row = cursor.fetchone()
    run_id, status, started = row[-3:]
    if isinstance(started, str):  # SQLite returns text
        started = parse_datetime(started)
        if started is not None and timezone.is_naive(started):
            started = timezone.make_aware(started, UTC)
    latest = LatestRun(pk=run_id, status=status, started_at=started) if run_id is not None else None
    return Published(version="|".join(str(value) for value in row[:-3]), latest_run=latest)


def cached_body(page: str, params: dict[str, str], build: Callable[[], str]) -> tuple[str, Published]:
    """The page body for these filters from the cache, or ``build()`` it and keep it; with the
    published state (whose newest run the layout shows)."""
    state = published_state()
    filters = "&".join(f"{key}={params.get(key, '')}" for key in FILTER_KEYS)
    # Numbers are formatted for the active language: one body per language.
    digest = hashlib.sha256(f"{RELEASE}#{state.version}#{filters}#{get_language()}".encode()).hexdigest()
    key = f"review:{page}:{digest}"
    body = cache.get(key)
    if body is None:
        body = build()
        cache.set(key, body, BODY_TTL)
    return body, state
