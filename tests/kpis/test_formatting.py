"""How a KPI value is written for people, the same on every page, export and status reason."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest

from kpis.formatting import format_gap, format_value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12_345, "12.3k"),
        (10_000, "10.0k"),
        (999_940, "999.9k"),
        (999_960, "1.00M"),  # not "1,000.0k"
        (4_560_000, "4.56M"),
        (999_994_999, "999.99M"),
        (999_995_000, "1.00B"),
        (7_890_000_000, "7.89B"),
        (1_234_000_000_000, "1,234.00B"),
        (Decimal("2500000.00"), "2.50M"),
    ],
)
def test_large_amounts_of_money_are_compact(value, expected):
    assert format_value(value, "currency") == expected


@pytest.mark.parametrize(
    ("value", "decimals", "expected"),
    [
        (79.94, 2, "79.94"),
        (9_999.5, 1, "9,999.5"),
        (1_234, 0, "1,234"),
        (0.5, 2, "0.50"),
        (0, 0, "0"),
    ],
)
def test_small_amounts_are_shown_in_full_with_the_kpis_decimals(value, decimals, expected):
    assert format_value(value, "currency", decimals) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(-12_345, "-12.3k"), (-4_560_000, "-4.56M"), (-7_890_000_000, "-7.89B"), (-79.94, "-79.94")],
)
def test_negative_amounts_keep_their_sign(value, expected):
    assert format_value(value, "currency", 2) == expected


def test_an_entity_currency_is_written_before_the_amount():
    assert format_value(4_560_000, "currency", 0, "EUR") == "EUR 4.56M"
    assert format_value(79.94, "currency", 2, "USD") == "USD 79.94"
    assert format_value(None, "currency", 0, "USD") == "—"


@pytest.mark.parametrize(
    ("value", "decimals", "expected"),
    [
        (0.423, 1, "42.3%"),
        (Decimal("0.85"), 1, "85.0%"),
        (0.0213, 2, "2.13%"),
        (1, 0, "100%"),
        (12.5, 0, "1,250%"),
        (-0.047619, 1, "-4.8%"),
    ],
)
def test_percent_kpis_are_stored_as_fractions_and_shown_as_percent(value, decimals, expected):
    assert format_value(value, "percent", decimals) == expected


@pytest.mark.parametrize(
    ("value", "unit", "decimals", "expected"),
    [
        (21.75, "days", 1, "21.8 days"),
        (1_234.4, "days", 0, "1,234 days"),
        (2, "ratio", 1, "2.00"),  # a ratio shows at least two decimals
        (18.87931, "ratio", 1, "18.88"),
        (1.4, "ratio", 3, "1.400"),
        (35, "score", 0, "35"),
        (-12, "score", 0, "-12"),
        (12_345, "count", 0, "12,345"),
        (7.5, "hours", 1, "7.5"),  # a unit of its own: the number alone
    ],
)
def test_days_ratios_scores_and_counts(value, unit, decimals, expected):
    assert format_value(value, unit, decimals) == expected


@pytest.mark.parametrize("empty", [None, float("nan"), math.nan, np.nan, np.float64("nan")])
@pytest.mark.parametrize("unit", ["currency", "percent", "days", "ratio", "score", "count"])
def test_an_empty_value_is_a_dash(empty, unit):
    assert format_value(empty, unit) == "—"


@pytest.mark.parametrize(
    ("value", "unit", "decimals", "expected"),
    [
        (0.05, "percent", 1, "5.0 pts"),
        (-0.021, "percent", 1, "-2.1 pts"),
        (150_000, "currency", 0, "150.0k"),
        (-80, "currency", 0, "-80"),
        (2.26, "days", 1, "2.3 days"),
        (0.3, "ratio", 1, "0.30"),
        (5, "score", 0, "5"),
    ],
)
def test_a_gap_is_in_points_for_percent_kpis_and_in_the_kpis_unit_otherwise(value, unit, decimals, expected):
    assert format_gap(value, unit, decimals) == expected


def test_separators_given_are_used_even_where_they_group_otherwise_than_by_three():
    """The engine looks the locale's separators up once and passes them on; a locale that
    groups digits in fours (Chinese) is written with its own grouping, whatever is active."""
    from kpis.formatting import grouped, separators

    assert grouped(1234567.25, 2, (".", ",", 4)) == "123,4567.25"
    assert grouped(-0.04, 1, (",", ".", 4)) == "-0,0"
    assert grouped(1234567.25, 2, separators()) == "1,234,567.25"  # the site's en-us
