"""Periods: the calendar month is the base grain; quarters and years follow the fiscal year.

A period is identified by the first day of its first month (a ``date``). Fiscal years are
named by the calendar year in which they end: with a July start, July 2010 to June 2011 is
FY2011. With a January start the fiscal year is the calendar year.
"""

from __future__ import annotations

import calendar
import enum
from datetime import date, timedelta

GRAINS = ("month", "quarter", "year")


class PeriodRule(enum.StrEnum):
    """How a booking date is mapped to a monthly period (sources with drifting dates)."""

    CALENDAR_MONTH = "calendar_month"
    NEAREST_MONTH_START = "nearest_month_start"
    NEAREST_MONTH_END = "nearest_month_end"

    @property
    def label(self) -> str:
        return {
            "calendar_month": "Calendar month of the date",
            "nearest_month_start": "Nearest first of a month",
            "nearest_month_end": "Nearest month end",
        }[self.value]


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(period: date, months: int) -> date:
    index = period.year * 12 + (period.month - 1) + months
    return date(index // 12, index % 12 + 1, 1)


def month_end(period: date) -> date:
    return period.replace(day=calendar.monthrange(period.year, period.month)[1])


def days_in_month(period: date) -> int:
    return calendar.monthrange(period.year, period.month)[1]


def period_for_date(day: date, rule: PeriodRule | str) -> date:
    """The monthly period (its first day) that a booking date belongs to under ``rule``.

    Ties (a date exactly between two candidates) go to the earlier period.
    """
    rule = PeriodRule(rule)
    if rule is PeriodRule.CALENDAR_MONTH:
        return month_start(day)
    if rule is PeriodRule.NEAREST_MONTH_START:
        this_start = month_start(day)
        next_start = add_months(this_start, 1)
        return this_start if (day - this_start) <= (next_start - day) else next_start
    # Nearest month end: candidates are the end of the previous month and of this month.
    previous_end = month_start(day) - timedelta(days=1)
    this_end = month_end(day)
    chosen = previous_end if (day - previous_end) <= (this_end - day) else this_end
    return month_start(chosen)


def fiscal_year(period: date, start_month: int) -> int:
    """Fiscal year of a month, named by the calendar year in which the fiscal year ends."""
    if start_month == 1:
        return period.year
    return period.year + 1 if period.month >= start_month else period.year


def fiscal_year_start(year: int, start_month: int) -> date:
    return date(year if start_month == 1 else year - 1, start_month, 1)


def fiscal_quarter(period: date, start_month: int) -> int:
    return ((period.month - start_month) % 12) // 3 + 1


def grain_start(period: date, grain: str, start_month: int) -> date:
    """First month of the quarter or year (fiscal) that contains ``period``."""
    if grain == "month":
        return month_start(period)
    year_start = fiscal_year_start(fiscal_year(period, start_month), start_month)
    if grain == "year":
        return year_start
    if grain == "quarter":
        return add_months(year_start, 3 * (fiscal_quarter(period, start_month) - 1))
    raise ValueError(f"unknown grain {grain!r}; use one of {', '.join(GRAINS)}")


def grain_months(start: date, grain: str) -> list[date]:
    """The months of the period of ``grain`` that starts at ``start``."""
    count = {"month": 1, "quarter": 3, "year": 12}[grain]
    return [add_months(start, i) for i in range(count)]


def period_label(start: date, grain: str, start_month: int) -> str:
    if grain == "month":
        return start.strftime("%b %Y")
    fy = fiscal_year(start, start_month)
    prefix = "FY" if start_month != 1 else ""
    if grain == "quarter":
        return f"{prefix}{fy} Q{fiscal_quarter(start, start_month)}"
    return f"FY{fy}" if start_month != 1 else str(fy)


def month_range(first: date, last: date) -> list[date]:
    months = []
    current = month_start(first)
    while current <= last:
        months.append(current)
        current = add_months(current, 1)
    return months
