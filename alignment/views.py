"""Pages of the alignment layer: the overview and the aligned scorecard. Views read stored
values through selectors and render them; they never compute a KPI."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from alignment.selectors import GRAIN_LABELS, overview, scorecard, scorecard_filters


def overview_page(request: HttpRequest) -> HttpResponse:
    filters = scorecard_filters(request.GET.dict())
    context = {"view": overview(filters), "filters": filters, "grains": GRAIN_LABELS, "nav": "overview"}
    template = (
        "alignment/_overview_body.html" if request.headers.get("HX-Request") else "alignment/overview.html"
    )
    return render(request, template, context)


def scorecard_page(request: HttpRequest) -> HttpResponse:
    filters = scorecard_filters(request.GET.dict())
    context = {"card": scorecard(filters), "filters": filters, "grains": GRAIN_LABELS, "nav": "scorecard"}
    template = (
        "alignment/_scorecard_body.html" if request.headers.get("HX-Request") else "alignment/scorecard.html"
    )
    return render(request, template, context)
