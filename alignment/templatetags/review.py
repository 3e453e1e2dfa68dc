"""Template helpers for the review pages: labels and indentation, no computation."""

from __future__ import annotations

from datetime import date

from django import template

from alignment.selectors import Filters

register = template.Library()


@register.filter
def period_label(filters: Filters, period: date) -> str:
    """The label of ``period`` at the filters' grain (Mar 2026, 2026 Q1, FY2026)."""
    label = filters.label(period)
    return f"{label} (partial)" if period in filters.partial_periods else label


@register.filter
def indent(depth: int) -> str:
    """Non-breaking spaces that show a tree level inside a <select>."""
    return "\u00a0\u00a0" * depth
