"""Pages of the alignment layer: the overview, the aligned scorecard, the department views,
the alignment map and the gaps. Views read stored values through selectors and render them;
they never compute a KPI. The overview and scorecard bodies are cached under the published
version (alignment/published.py), so a repeat view reads no KPI values."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe

from alignment.departments import department_board, department_index
from alignment.gaps import alignment_gaps
from alignment.links import driver_links
from alignment.map import alignment_figure
from alignment.published import Published, cached_body
from alignment.selectors import GRAIN_LABELS, overview, scorecard, scorecard_filters
from finops.models import Department


def overview_page(request: HttpRequest) -> HttpResponse:
    def build() -> str:
        filters = scorecard_filters(params)
        context = {"view": overview(filters), "filters": filters, "grains": GRAIN_LABELS}
        return render_to_string("alignment/_overview_body.html", context, request=request)

    params = request.GET.dict()
    return _page(request, "alignment/overview.html", "overview", *cached_body("overview", params, build))


def scorecard_page(request: HttpRequest) -> HttpResponse:
    def build() -> str:
        filters = scorecard_filters(params)
        context = {"card": scorecard(filters), "filters": filters, "grains": GRAIN_LABELS}
        return render_to_string("alignment/_scorecard_body.html", context, request=request)

    params = request.GET.dict()
    return _page(request, "alignment/scorecard.html", "scorecard", *cached_body("scorecard", params, build))


def _page(request: HttpRequest, template: str, nav: str, body: str, state: Published) -> HttpResponse:
    """The body alone for an HTMX swap, else the whole page around it (the layout's banner
    reads the newest run from the same query as the version)."""
    if request.headers.get("HX-Request"):
        return HttpResponse(body)
    context = {"body": mark_safe(body), "nav": nav, "latest_run": state.latest_run}  # noqa: S308 - our own render
    return render(request, template, context)


# --- Department pages, the alignment map and the alignment gaps -----------------------------
# (their reads live in alignment/departments.py, links.py and gaps.py)


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
