"""How a KPI value is written for people: by unit, with thousands separators.

One function, used by every page, export and status reason, so a number reads the same
everywhere; thousands and decimal separators follow the active locale (the browser's language
on pages, LANGUAGE_CODE elsewhere). Percent KPIs are stored as fractions (0.423) and shown as 42.3%.
"""

from __future__ import annotations

import math
from decimal import Decimal
from functools import lru_cache

from django.conf import settings
from django.utils import numberformat, translation
from django.utils.formats import get_format
from django.utils.translation import get_language

UNIT_SUFFIX = {"days": " days", "count": "", "ratio": "", "currency": ""}
# (from this size, divided by, suffix, decimals), smallest first: 12,345 is 12.3k.
MONEY_SCALES = ((1e4, 1e3, "k", 1), (1e6, 1e6, "M", 2), (1e9, 1e9, "B", 2))


# (decimal, thousands, grouping) of a language: what ``separators()`` returns.
Separators = tuple[str, str, object]


def format_value(
    value: float | Decimal | None,
    unit: str,
    decimals: int = 1,
    currency: str = "",
    separators: Separators | None = None,
) -> str:
    """``separators``: the locale's, looked up once by a caller that formats many values
    (default: the active language's, looked up for each value)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    number = float(value)
    if unit == "percent":
        return f"{grouped(number * 100, decimals, separators)}%"
    if unit == "currency":
        text = _compact_money(number, decimals, separators)
        return f"{currency} {text}".strip() if currency else text
    if unit == "ratio":
        return grouped(number, max(decimals, 2), separators)
    return f"{grouped(number, decimals, separators)}{UNIT_SUFFIX.get(unit, '')}"


def separators() -> Separators:
    """The active locale's separators (the site's LANGUAGE_CODE when no language is active)."""
    return _separators(get_language() or settings.LANGUAGE_CODE)


def grouped(number: float, places: int, separators: Separators | None = None) -> str:
    """``number`` with ``places`` decimals and the active locale's separators (1,234.5 in
    English, 1.234,5 in German); the site's LANGUAGE_CODE when no language is active."""
    decimal, thousands, grouping = separators or _separators(get_language() or settings.LANGUAGE_CODE)
    if grouping != 3:  # a locale that groups otherwise (or not at all): Django formats it
        text = f"{number:.{places}f}"
        shown = numberformat.format(
            Decimal(text), decimal, places, grouping, thousands, force_grouping=True, use_l10n=True
        )
        # A small negative rounds to "-0.0": keep the sign, it says which side of zero it is.
        return "-" + shown if text.startswith("-") and not shown.startswith("-") else shown
    text = f"{number:,.{places}f}"
    return (
        text
        if (decimal, thousands) == (".", ",")
        else text.translate({ord(","): thousands, ord("."): decimal})
    )


@lru_cache(maxsize=64)
def _separators(language: str) -> tuple[str, str, object]:
    """(decimal, thousands, grouping) of a language, looked up once: the engine formats tens of
    thousands of status reasons per refresh."""
    with translation.override(language):
        return (
            get_format("DECIMAL_SEPARATOR", use_l10n=True),
            get_format("THOUSAND_SEPARATOR", use_l10n=True),
            get_format("NUMBER_GROUPING", use_l10n=True),
        )


def _compact_money(number: float, decimals: int, separators: Separators | None = None) -> str:
    """Money at a glance: 7.89B / 4.56M / 12.3k; below ten thousand in full with the KPI's
    decimals (a cost per unit of 79.94)."""
    size = abs(number)
    chosen = None
    for threshold, divisor, suffix, places in MONEY_SCALES:
        # An amount that would round to 1,000 of the smaller scale (999,960 is 1,000.0k) moves up.
        if size >= threshold or (chosen and round(size / chosen[1], chosen[3]) >= 1000):
            chosen = (threshold, divisor, suffix, places)
    if chosen is None:
        return grouped(number, decimals, separators)
    _, divisor, suffix, places = chosen
    return f"{grouped(number / divisor, places, separators)}{suffix}"


def format_gap(value: float, unit: str, decimals: int = 1, separators: Separators | None = None) -> str:
    """A difference between two values: percentage points for percent KPIs."""
    if unit == "percent":
        return f"{value * 100:,.{decimals}f} pts"
    return format_value(value, unit, decimals, separators=separators)
