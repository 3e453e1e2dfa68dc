"""Celery tasks: thin wrappers that take ids and call one service; safe to run twice.

``refresh_task`` acknowledges its message only when it has finished (``acks_late``) and hands
it back to the broker if its worker process dies (``reject_on_worker_lost``), so a killed
worker's refresh is delivered again. The redelivered task finds the dead run still marked
``running``, marks it failed ("the worker stopped during the run; nothing it did was
published": its transaction never committed) and runs cleanly. A lost database connection
(PostgreSQL restarted) is retried with backoff; anything else fails the run with its reason.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import InterfaceError, OperationalError

from finops.refresh import RefreshInProgress, refresh

log = logging.getLogger(__name__)


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=settings.CELERY_TASK_TIME_LIMIT,
    soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
    autoretry_for=(OperationalError, InterfaceError),  # transient: the database went away
    retry_backoff=10,
    retry_backoff_max=300,
    max_retries=3,
)
def refresh_task(
    source_slug: str | None = None, trigger: str = "schedule", user_id: int | None = None
) -> dict:
    user = get_user_model().objects.filter(pk=user_id).first() if user_id else None
    try:
        run = refresh(source_slug=source_slug, trigger=trigger, user=user)
    except RefreshInProgress as busy:
        log.warning("%s", busy)
        return {"refused": str(busy)}
    return {"run": run.pk, "status": run.status}
