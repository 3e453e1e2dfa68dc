"""Celery tasks: thin wrappers that take ids and call one service; safe to run twice."""

from __future__ import annotations

import logging

from celery import shared_task
from django.contrib.auth import get_user_model

from finops.refresh import RefreshInProgress, refresh

log = logging.getLogger(__name__)


@shared_task(acks_late=True, reject_on_worker_lost=True, time_limit=3600, soft_time_limit=3540)
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
