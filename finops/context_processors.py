"""What every page's layout shows about the data: a refresh running now, or the last one failed."""

from __future__ import annotations

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from finops.models import RefreshRun


def refresh_state(request: HttpRequest) -> dict:
    """``refresh_state.latest``: the newest run (one query, only when a page shows it)."""

    def latest() -> RefreshRun | None:
        return (
            RefreshRun.objects.only("id", "status", "started_at", "finished_at")
            .order_by("-started_at")
            .first()
        )

    return {"latest_run": SimpleLazyObject(latest) if request.user.is_authenticated else None}
