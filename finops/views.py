"""Pages of the data layer: the Data page (sources, coverage, runs) and a run's report."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from finops.data_health import data_overview
from finops.models import DataSource, RefreshRun
from finops.roles import is_analyst
from finops.tasks import refresh_task


def home(request: HttpRequest) -> HttpResponse:
    return redirect("overview")


def data_page(request: HttpRequest) -> HttpResponse:
    overview = data_overview()
    return render(
        request,
        "finops/data.html",
        {"overview": overview, "can_refresh": is_analyst(request.user), "nav": "data"},
    )


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
    transaction.on_commit(
        lambda: refresh_task.delay(
            source_slug=slug, trigger=RefreshRun.Trigger.MANUAL, user_id=request.user.pk
        )
    )
    messages.success(request, "Refresh queued. This page shows the run when it starts.")
    return redirect("data")
