"""Periods: booking dates to months under each rule, and fiscal quarters and years."""

from datetime import date

import pytest

from finops.periods import (
    PeriodRule,
    add_months,
    days_in_month,
    fiscal_quarter,
    fiscal_year,
    grain_months,
    grain_start,
    month_end,
    period_for_date,
    period_label,
)

# The drifting AdventureWorks booking dates and the month each rule gives them, worked by hand:
# nearest first of a month, nearest month end (as the first of that month), calendar month.
AW_DATES = [
    # date           nearest start      nearest end        calendar month
    (date(2010, 12, 29), date(2011, 1, 1), date(2010, 12, 1), date(2010, 12, 1)),  # Jan 1 is 3 days away
    (date(2011, 1, 29), date(2011, 2, 1), date(2011, 1, 1), date(2011, 1, 1)),  # Jan 31 is 2 days away
    (date(2011, 3, 1), date(2011, 3, 1), date(2011, 2, 1), date(2011, 3, 1)),  # Feb 28 is 1 day back
    (date(2011, 3, 31), date(2011, 4, 1), date(2011, 3, 1), date(2011, 3, 1)),
    (date(2011, 5, 1), date(2011, 5, 1), date(2011, 4, 1), date(2011, 5, 1)),
]


@pytest.mark.parametrize(("day", "nearest_start", "nearest_end", "calendar"), AW_DATES)
def test_period_for_date_under_each_rule(day, nearest_start, nearest_end, calendar):
    assert period_for_date(day, PeriodRule.NEAREST_MONTH_START) == nearest_start
    assert period_for_date(day, PeriodRule.NEAREST_MONTH_END) == nearest_end
    assert period_for_date(day, PeriodRule.CALENDAR_MONTH) == calendar


def test_the_rule_may_be_given_as_text():
    assert period_for_date(date(2010, 12, 29), "nearest_month_start") == date(2011, 1, 1)
    with pytest.raises(ValueError):
        period_for_date(date(2010, 12, 29), "nearest_friday")


def test_the_two_nearest_rules_give_one_period_per_month_where_calendar_months_do_not():
    days = [day for day, *_ in AW_DATES]
    assert [period_for_date(d, "nearest_month_start").month for d in days] == [1, 2, 3, 4, 5]
    assert [period_for_date(d, "nearest_month_end").month for d in days] == [12, 1, 2, 3, 4]
    assert [period_for_date(d, "calendar_month").month for d in days] == [12, 1, 3, 3, 5]


def test_a_date_exactly_between_two_candidates_goes_to_the_earlier_period():
    # February 2011 has 28 days: the 15th is 14 days after Feb 1 and 14 days before Mar 1.
    assert period_for_date(date(2011, 2, 15), "nearest_month_start") == date(2011, 2, 1)
    # Feb 14 is 14 days after Jan 31 and 14 days before Feb 28.
    assert period_for_date(date(2011, 2, 14), "nearest_month_end") == date(2011, 1, 1)


def test_month_arithmetic():
    assert add_months(date(2011, 11, 1), 3) == date(2012, 2, 1)
    assert add_months(date(2011, 1, 1), -1) == date(2010, 12, 1)
    assert month_end(date(2012, 2, 1)) == date(2012, 2, 29)
    assert days_in_month(date(2011, 2, 1)) == 28


@pytest.mark.parametrize(
    ("period", "start_month", "year", "quarter"),
    [
        (date(2011, 1, 1), 1, 2011, 1),
        (date(2011, 3, 1), 1, 2011, 1),
        (date(2011, 5, 1), 1, 2011, 2),
        (date(2011, 12, 1), 1, 2011, 4),
        # July start: July 2010 to June 2011 is FY2011, named by the year it ends in.
        (date(2011, 3, 1), 7, 2011, 3),
        (date(2011, 6, 1), 7, 2011, 4),
        (date(2011, 7, 1), 7, 2012, 1),
        (date(2011, 12, 1), 7, 2012, 2),
    ],
)
def test_fiscal_year_and_quarter(period, start_month, year, quarter):
    assert fiscal_year(period, start_month) == year
    assert fiscal_quarter(period, start_month) == quarter


@pytest.mark.parametrize(
    ("period", "grain", "start_month", "expected"),
    [
        (date(2011, 5, 1), "month", 1, date(2011, 5, 1)),
        (date(2011, 5, 1), "quarter", 1, date(2011, 4, 1)),
        (date(2011, 5, 1), "year", 1, date(2011, 1, 1)),
        (date(2011, 5, 1), "quarter", 7, date(2011, 4, 1)),
        (date(2011, 5, 1), "year", 7, date(2010, 7, 1)),
        (date(2011, 8, 1), "quarter", 7, date(2011, 7, 1)),
        (date(2011, 8, 1), "year", 7, date(2011, 7, 1)),
        (date(2012, 1, 1), "quarter", 7, date(2012, 1, 1)),
    ],
)
def test_grain_start(period, grain, start_month, expected):
    assert grain_start(period, grain, start_month) == expected


def test_grain_months_and_labels():
    assert grain_months(date(2010, 7, 1), "quarter") == [date(2010, 7, 1), date(2010, 8, 1), date(2010, 9, 1)]
    assert len(grain_months(date(2010, 7, 1), "year")) == 12
    assert period_label(date(2011, 3, 1), "month", 1) == "Mar 2011"
    assert period_label(date(2011, 1, 1), "quarter", 1) == "2011 Q1"
    assert period_label(date(2011, 7, 1), "quarter", 7) == "FY2012 Q1"
    assert period_label(date(2010, 7, 1), "year", 7) == "FY2011"
    assert period_label(date(2011, 1, 1), "year", 1) == "2011"


def test_an_unknown_grain_is_refused():
    with pytest.raises(ValueError, match="unknown grain 'week'"):
        grain_start(date(2011, 5, 1), "week", 1)
