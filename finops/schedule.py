"""The nightly refresh schedule, stored for Celery beat's database scheduler so analysts can
change its time and time zone in the admin (Periodic tasks)."""

from __future__ import annotations

from django.conf import settings
from django_celery_beat.models import CrontabSchedule, PeriodicTask

NIGHTLY_TASK_NAME = "Nightly refresh"
REFRESH_TASK = "finops.tasks.refresh_task"


def ensure_nightly_schedule(hour: int = 2, minute: int = 0) -> PeriodicTask:
    """Create the nightly refresh at 02:00 in the project time zone unless it exists already
    (an analyst's changes to it are kept)."""
    existing = PeriodicTask.objects.filter(name=NIGHTLY_TASK_NAME).first()
    if existing:
        return existing
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute=str(minute),
        hour=str(hour),
        day_of_week="*",
        day_of_month="*",
        month_of_year="*",
        timezone=settings.TIME_ZONE,
    )
    return PeriodicTask.objects.create(
        name=NIGHTLY_TASK_NAME,
        task=REFRESH_TASK,
        crontab=crontab,
        kwargs='{"trigger": "schedule"}',
        description="Pull every active data source and recompute. Change the time here.",
    )
