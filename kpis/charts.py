"""Charts of stored KPI values, built on the server: small SVG trend lines for tables, and
Plotly figures (as JSON for the shared plotly.js bundle) for the KPI detail page.

Pure functions over already-read values; nothing here queries or computes a KPI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date

import plotly.graph_objects as go

from kpis.formatting import format_value

SPARK_WIDTH = 100
SPARK_HEIGHT = 24
STATUS_COLOURS = {"green": "#1a7f37", "amber": "#b7791f", "red": "#c62828", "none": "#6b7280"}
PLOTLY_TICKFORMAT = {"percent": ".1%", "currency": ",.3s", "ratio": ",.2f", "days": ",.1f", "count": ",.0f"}


def sparkline_points(values: Sequence[float | None]) -> str:
    """An SVG path (``d``) through ``values`` in a 100 x 24 box; gaps where a value is missing.

    Empty when fewer than two values exist. The lowest value touches the bottom, the highest the
    top; a flat line sits in the middle.
    """
    present = [v for v in values if v is not None and not math.isnan(v)]
    if len(present) < 2:
        return ""
    low, high = min(present), max(present)
    span = high - low
    step = SPARK_WIDTH / (len(values) - 1)
    parts: list[str] = []
    pen_down = False
    for i, value in enumerate(values):
        if value is None or math.isnan(value):
            pen_down = False
            continue
        y = SPARK_HEIGHT / 2 if span == 0 else SPARK_HEIGHT - 2 - (value - low) / span * (SPARK_HEIGHT - 4)
        parts.append(f"{'L' if pen_down else 'M'}{i * step:.1f},{y:.1f}")
        pen_down = True
    return " ".join(parts)


def kpi_history_figure(
    *,
    title: str,
    unit: str,
    decimals: int,
    periods: Sequence[date],
    labels: Sequence[str],
    actual: Sequence[float | None],
    target: Sequence[float | None],
    last_year: Sequence[float | None],
    statuses: Sequence[str],
    currency: str = "",
    partial: Sequence[bool] | None = None,
) -> go.Figure:
    """Actual against target and last year over time, each actual point coloured by status.

    A partial period (not every month loaded yet) is an open marker, said so on hover, so a
    quarter with one month of sales does not read like a complete one.
    """
    partial = list(partial) if partial is not None else [False] * len(actual)
    text = [
        format_value(v, unit, decimals) + (" — partial: not every month loaded" if p else "")
        for v, p in zip(actual, partial, strict=True)
    ]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=list(labels),
            y=list(target),
            name="Target",
            mode="lines",
            line={"color": "#374151", "dash": "dash", "width": 2},
            hovertemplate="Target: %{y}<extra></extra>",
        )
    )
    figure.add_trace(
        go.Scatter(
            x=list(labels),
            y=list(last_year),
            name="Last year",
            mode="lines",
            line={"color": "#9ca3af", "width": 2},
            hovertemplate="Last year: %{y}<extra></extra>",
        )
    )
    figure.add_trace(
        go.Scatter(
            x=list(labels),
            y=list(actual),
            name="Actual",
            mode="lines+markers",
            line={"color": "#1d4ed8", "width": 3},
            marker={
                "size": 9,
                "color": [STATUS_COLOURS.get(s, STATUS_COLOURS["none"]) for s in statuses],
                "symbol": ["circle-open" if p else "circle" for p in partial],
                "line": {
                    "width": 2,
                    "color": [STATUS_COLOURS.get(s, STATUS_COLOURS["none"]) for s in statuses],
                },
            },
            customdata=[[t, s] for t, s in zip(text, statuses, strict=True)],
            hovertemplate="Actual: %{customdata[0]} (%{customdata[1]})<extra></extra>",
        )
    )
    axis_title = {"percent": "Percent", "currency": f"Amount {currency}".strip(), "days": "Days"}.get(
        unit, unit.capitalize()
    )
    figure.update_layout(
        title={"text": title, "x": 0, "xanchor": "left"},
        xaxis={"title": {"text": "Period"}, "type": "category"},
        yaxis={"title": {"text": axis_title}, "tickformat": PLOTLY_TICKFORMAT.get(unit, "")},
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 60, "r": 20, "t": 50, "b": 80},
        height=360,
        template="simple_white",
        hovermode="x unified",
    )
    return figure
