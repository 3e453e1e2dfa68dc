"""Pages of the metric layer: a KPI's detail page and the drill-down from one of its measure
values to the facts behind it.

Views read stored values through selectors (kpis.selectors, finops.selectors) and render
them; they never compute a KPI. Both pages take the scorecard's filters (grain, period,
entity) from the query string, checked by alignment.selectors.scorecard_filters, and issue a
fixed number of SQL queries whatever the number of periods, inputs or facts.
"""

from __future__ import annotations

import json

from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.http import urlencode

from alignment.models import GoalKPI, KPIDriver
from alignment.selectors import GRAIN_LABELS, Filters, scorecard_filters
from kpis.charts import kpi_history_figure
from kpis.formatting import format_value
from kpis.formula import FormulaError, parse
from kpis.models import KPI, Measure
from kpis.selectors import KPIHistory, kpi_by_code, kpi_history, measure_drilldown, measure_for_drilldown


def kpi_detail(request: HttpRequest, code: str) -> HttpResponse:
    kpi = kpi_by_code(code)
    if kpi is None:
        return _unknown_kpi(request, code)
    filters = scorecard_filters(request.GET.dict())
    goals = list(
        GoalKPI.objects.filter(kpi=kpi)
        .select_related("goal", "goal__department")
        .order_by("goal__sort_order", "goal__code")
    )
    links = list(
        KPIDriver.objects.filter(Q(driver=kpi) | Q(outcome=kpi))
        .select_related("driver", "outcome")
        .order_by("driver__name", "outcome__name")
    )
    related = {link.driver_id for link in links} | {link.outcome_id for link in links}
    history = kpi_history(kpi, filters, related_ids=related)
    drivers = [
        (link.driver, link.explanation, history.linked.get(link.driver_id))
        for link in links
        if link.outcome_id == kpi.pk
    ]
    outcomes = [
        (link.outcome, link.explanation, history.linked.get(link.outcome_id))
        for link in links
        if link.driver_id == kpi.pk
    ]
    context = {
        "kpi": kpi,
        "filters": filters,
        "grains": GRAIN_LABELS,
        "history": history,
        "current": history.current,
        "figure_json": _figure(history, filters),
        "chart_label": _chart_label(history, filters),
        "goals": goals,
        "drivers": drivers,
        "outcomes": outcomes,
        "no_value": _no_value_reason(history, filters),
        "band": _band(kpi),
        "query": urlencode(filters.as_query(department="")),
        "period_query": urlencode(filters.as_query(department="", period="")),
        "nav": "scorecard",
    }
    return render(request, "kpis/detail.html", context)


def kpi_facts(request: HttpRequest, code: str) -> HttpResponse:
    kpi = kpi_by_code(code)
    if kpi is None:
        return _unknown_kpi(request, code)
    filters = scorecard_filters(request.GET.dict())
    measure_code = request.GET.get("measure", "").strip()
    try:
        names = set(parse(kpi.formula).names)
    except FormulaError:
        names = set()
    problem = ""
    measure = None
    if not measure_code:
        problem = "Choose one of the measures in the formula to see the facts behind it."
    elif measure_code not in names:
        problem = f"{measure_code!r} is not a name in the formula of {kpi.name}; choose one of its measures."
    else:
        measure = measure_for_drilldown(measure_code)
        if measure is None:
            problem = (
                f"{measure_code!r} is not a measure (it may be a KPI: open its own page to drill into it)."
            )
    choices = [] if measure is not None else _formula_measures(names)
    drill = (
        measure_drilldown(measure, filters) if measure is not None and filters.period is not None else None
    )
    context = {
        "kpi": kpi,
        "filters": filters,
        "grains": GRAIN_LABELS,
        "measure": measure,
        "keep": [("measure", measure.code)] if measure is not None else [],
        "drill": drill,
        "problem": problem,
        "choices": choices,
        "kpi_names": sorted(names - {m.code for m in choices}) if measure is None else [],
        "query": urlencode(filters.as_query(department="")),
        "nav": "scorecard",
    }
    return render(request, "kpis/facts.html", context)


def _unknown_kpi(request: HttpRequest, code: str) -> HttpResponse:
    return render(request, "kpis/unknown.html", {"code": code, "nav": "scorecard"}, status=404)


def _formula_measures(names: set[str]) -> list[Measure]:
    return list(Measure.objects.filter(code__in=names).order_by("name")) if names else []


def _figure(history: KPIHistory, filters: Filters) -> dict | None:
    """The Plotly figure of actual, target and last year over the stored periods (as JSON data
    for charts.js), or None when no period has a value to draw."""
    values = history.values
    if not any(row.value is not None for row in values):
        return None
    # From the first period with anything to draw (a trailing-twelve-months KPI starts empty).
    first = next(i for i, row in enumerate(values) if row.value is not None or row.target is not None)
    values = values[first:]
    kpi = history.kpi
    figure = kpi_history_figure(
        title=f"{kpi.name}: actual, target and last year by {filters.grain}",
        unit=kpi.unit,
        decimals=kpi.decimals,
        periods=[row.period for row in values],
        labels=[row.label for row in values],
        actual=[_float(row.value) for row in values],
        target=[_float(row.target) for row in values],
        last_year=[_float(row.last_year) for row in values],
        statuses=[row.status for row in values],
        currency=filters.currency if kpi.unit == KPI.Unit.CURRENCY else "",
        partial=[row.partial for row in values],
    )
    return json.loads(figure.to_json())


def _band(kpi: KPI) -> str:
    """The band of a within-a-band KPI, in its unit (80.0% to 95.0%)."""
    if kpi.direction != KPI.Direction.BAND or kpi.band_low is None or kpi.band_high is None:
        return ""
    low, high = (format_value(bound, kpi.unit, kpi.decimals) for bound in (kpi.band_low, kpi.band_high))
    return f"{low} to {high}"


def _chart_label(history: KPIHistory, filters: Filters) -> str:
    values = [row for row in history.values if row.value is not None]
    if not values:
        return ""
    return (
        f"Line chart of {history.kpi.name} by {filters.grain} from {values[0].label} to {values[-1].label}, "
        "actual against target and last year; the same numbers are in the table below."
    )


def _no_value_reason(history: KPIHistory, filters: Filters) -> str:
    """Why the selected period shows no value, in words that say what to do."""
    kpi = history.kpi
    if history.current is not None:
        if history.current.value is None:
            return history.current.empty_reason or "The formula gave no value for this period."
        return ""
    if not kpi.is_active:
        return (
            f"{kpi.name} is switched off, so the nightly refresh does not compute it. "
            "An analyst can switch it on under Admin › KPIs."
        )
    if filters.period is None:
        return ""  # the page says there are no values at all
    if not history.values:
        return (
            f"{kpi.name} has no stored values for {filters.entity.name if filters.entity else 'this entity'} "
            f"at this grain yet. If it was added or changed since the last refresh, run a refresh on the "
            "Data page; otherwise the data its formula needs is not loaded."
        )
    first, last = history.values[0].label, history.values[-1].label
    return (
        f"No value is stored for {filters.period_label}: {kpi.name} has values from {first} to {last}. "
        "The data its formula needs does not reach this period; pick another period or load the "
        "missing data and refresh."
    )


def _float(value) -> float | None:  # noqa: ANN001 - a Decimal or None
    return float(value) if value is not None else None
