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


# --- Department pages, the alignment map and the alignment gaps -----------------------------
# (appended as one block; their reads live in alignment/departments.py, links.py and gaps.py)

from django.shortcuts import get_object_or_404  # noqa: E402

from alignment.departments import department_board, department_index  # noqa: E402
from alignment.gaps import alignment_gaps  # noqa: E402
from alignment.links import driver_links  # noqa: E402
from alignment.map import alignment_figure  # noqa: E402
from finops.models import Department  # noqa: E402


def departments_page(request: HttpRequest) -> HttpResponse:
    """Top-level departments with their side, each linking to its own scorecard."""
    context = {"departments": department_index(), "nav": "departments"}
    return render(request, "alignment/departments.html", context)


def department_page(request: HttpRequest, code: str) -> HttpResponse:
    """One department's scorecard and what it exchanges with the other side."""
    department = get_object_or_404(Department, code=code)
    board = department_board(department, request.GET.dict())
    context = {
        "board": board,
        "card": board.card,
        "filters": board.filters,
        "grains": GRAIN_LABELS,
        "nav": "departments",
    }
    body = request.headers.get("HX-Request")
    return render(
        request, "alignment/_department_body.html" if body else "alignment/department.html", context
    )


def alignment_map_page(request: HttpRequest) -> HttpResponse:
    """Goals, their KPIs and the driver links as one picture, with the same links in words."""
    filters = scorecard_filters(request.GET.dict())
    card = scorecard(filters)
    links = driver_links(filters)
    figure = alignment_figure(card.goals, links, period_label=filters.period_label)
    context = {
        "card": card,
        "links": links,
        "figure": figure.to_plotly_json() if figure is not None else None,
        "filters": filters,
        "grains": GRAIN_LABELS,
        "nav": "alignment-map",
    }
    return render(request, "alignment/map.html", context)


def alignment_gaps_page(request: HttpRequest) -> HttpResponse:
    """What is missing for the goals and KPIs to line up, and where to fix it."""
    context = {"gaps": alignment_gaps(), "nav": "alignment-gaps"}
    return render(request, "alignment/gaps.html", context)
