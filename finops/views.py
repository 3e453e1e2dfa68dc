"""Pages of the data layer: the Data page (sources, coverage, runs), a run's report, and the
unauthenticated health check."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import PermissionDenied
from django.db import Error as DatabaseError
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe

from finops import progress
from finops.data_health import data_overview
from finops.models import DataSource, RefreshRun
from finops.roles import is_analyst
from finops.tasks import refresh_task

logger = logging.getLogger(__name__)


@login_not_required
@never_cache
@require_safe
def health(request: HttpRequest) -> JsonResponse:
    """``GET /health/`` for load balancers and container healthchecks: no login, one query
    (when the latest successful refresh finished), and nothing else revealed. 503 when the
    database does not answer; the reason goes to the log, not to the caller."""
    try:
        finished = (
            RefreshRun.objects.filter(status=RefreshRun.Status.SUCCEEDED, finished_at__isnull=False)
            .order_by("-finished_at")
            .values_list("finished_at", flat=True)
            .first()
        )
    except DatabaseError:
        logger.warning("Health check: the database query failed", exc_info=True)
        return JsonResponse({"status": "error", "database": "error", "last_refresh": None}, status=503)
    return JsonResponse(
        {"status": "ok", "database": "ok", "last_refresh": finished.isoformat() if finished else None}
    )


def home(request: HttpRequest) -> HttpResponse:
    return redirect("overview")


def data_page(request: HttpRequest) -> HttpResponse:
    overview = data_overview()
    queued = _Queued.of(request)
    waiting = overview.running is None and queued is not None and not _started_since(queued.after)
    return render(
        request,
        "finops/data.html",
        {
            "overview": overview,
            "can_refresh": is_analyst(request.user),
            "nav": "data",
            "progress": progress.read(overview.running.pk) if overview.running else None,
            "queued": queued if waiting else None,
        },
    )


@never_cache
@require_safe
def refresh_progress(request: HttpRequest) -> HttpResponse:
    """The Data page's progress panel, polled every few seconds while a refresh runs (or was
    just queued and no worker has started it yet). When the run is over, the page reloads to
    show its figures."""
    running = RefreshRun.objects.filter(status=RefreshRun.Status.RUNNING).order_by("-started_at").first()
    queued = _Queued.of(request)
    if running is None and (queued is None or _started_since(queued.after)):
        response = HttpResponse(status=200)
        response["HX-Redirect"] = reverse("data")
        return response
    return render(
        request,
        "finops/_progress.html",
        {
            "run": running,
            "progress": progress.read(running.pk) if running else None,
            "queued": queued if running is None else None,
        },
    )


QUEUE_PATIENCE = 300  # seconds a queued refresh may wait for a worker before the page says so


@dataclass(frozen=True)
class _Queued:
    """The refresh this page was sent to follow after "Refresh now" queued it: any run after
    run ``after``, queued at ``at`` (epoch seconds)."""

    after: int
    at: int

    @classmethod
    def of(cls, request: HttpRequest) -> _Queued | None:
        try:
            return cls(int(request.GET.get("after", "")), int(request.GET.get("at", "")))
        except ValueError:
            return None

    @property
    def query(self) -> str:
        return urlencode({"after": self.after, "at": self.at})

    @property
    def patience_minutes(self) -> int:
        return QUEUE_PATIENCE // 60

    @property
    def late(self) -> bool:
        """No worker has started it for a while: the page stops waiting and says so."""
        return time.time() - self.at > QUEUE_PATIENCE


def _started_since(after: int) -> bool:  # any run after that one
    return RefreshRun.objects.filter(pk__gt=after).exists()


def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(RefreshRun.objects.select_related("source", "requested_by"), pk=run_id)
    return render(request, "finops/run_detail.html", {"run": run, "nav": "data"})


@require_POST
def refresh_now(request: HttpRequest) -> HttpResponse:
    """Queue a refresh of one source (or all) for the worker, after this request commits."""
    if not is_analyst(request.user):
        raise PermissionDenied("Only analysts may start a refresh.")
    slug = request.POST.get("source") or None
    if slug and not DataSource.objects.filter(slug=slug).exists():
        messages.error(request, f"There is no data source {slug!r}.")
        return redirect("data")
    if RefreshRun.objects.filter(status=RefreshRun.Status.RUNNING).exists():
        messages.warning(request, "A refresh is already running; wait for it to finish and try again.")
        return redirect("data")
    # Before queueing: without a worker (no Redis) the task runs at once, inside this request.
    last = RefreshRun.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    transaction.on_commit(
        lambda: refresh_task.delay(
            source_slug=slug, trigger=RefreshRun.Trigger.MANUAL, user_id=request.user.pk
        )
    )
    messages.success(request, "Refresh queued. This page follows the run while it runs.")
    return redirect(f"{reverse('data')}?{_Queued(after=last, at=int(time.time())).query}")
