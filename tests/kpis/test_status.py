"""Green, amber or red from a value, its target and the KPI's direction, with the reason in words."""

from __future__ import annotations

import pytest

from kpis.status import AMBER, GREEN, NONE, RED, Thresholds, status_for, variance

HIGHER = Thresholds(direction="higher", green_tolerance_pct=1, amber_tolerance_pct=5, unit="count")
LOWER = Thresholds(direction="lower", amber_tolerance_pct=10, unit="days")
BAND = Thresholds(direction="band", band_low=0.75, band_high=0.92, amber_tolerance_pct=5, unit="percent")


# --- higher is better -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (120, GREEN),  # above target
        (100, GREEN),  # on target
        (99.5, GREEN),  # 0.5 % short: inside the green tolerance
        (99, GREEN),  # exactly the 1 % green tolerance
        (98.9, AMBER),
        (95, AMBER),  # exactly the 5 % amber tolerance
        (94.9, RED),
        (-10, RED),
    ],
)
def test_higher_is_better_with_tolerances_at_their_edges(value, expected):
    assert status_for(value, 100, HIGHER)[0] == expected


@pytest.mark.parametrize(
    ("value", "target", "expected"),
    [
        (0.95, 1.0, AMBER),  # 5 % short: in float 5.000000000000004 %, still the edge
        (0.855, 0.9, AMBER),  # the same
        (0.1 + 0.2, 0.3, GREEN),
        (0.94, 1.0, RED),
    ],
)
def test_a_value_exactly_at_a_tolerance_is_not_pushed_over_by_float_rounding(value, target, expected):
    thresholds = Thresholds(direction="higher", amber_tolerance_pct=5, unit="percent")
    assert status_for(value, target, thresholds)[0] == expected


def test_the_reasons_say_how_far_and_which_way():
    assert status_for(120, 100, HIGHER) == (GREEN, "120.0 is above the target of 100.0.")
    assert status_for(100, 100, HIGHER) == (GREEN, "100.0 is on target.")
    assert status_for(99, 100, HIGHER) == (
        GREEN,
        "99.0 is 1.0 (1.0%) below the target of 100.0: within the 1% tolerance.",
    )
    assert status_for(96, 100, HIGHER) == (AMBER, "96.0 is 4.0 (4.0%) below the target of 100.0: within 5%.")
    assert status_for(90, 100, HIGHER) == (
        RED,
        "90.0 is 10.0 (10.0%) below the target of 100.0: more than 5%.",
    )


def test_a_negative_target_measures_the_gap_against_its_size():
    # A loss of 110 against a budgeted loss of 100 is 10 % short.
    assert status_for(-110, -100, HIGHER) == (
        RED,
        "-110.0 is 10.0 (10.0%) below the target of -100.0: more than 5%.",
    )
    assert status_for(-104, -100, HIGHER)[0] == AMBER
    assert status_for(-90, -100, HIGHER)[0] == GREEN


# --- lower is better ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (30, GREEN),
        (40, GREEN),
        (40.4, AMBER),  # any excess beyond the default 0 % green tolerance
        (44, AMBER),  # exactly 10 %
        (44.1, RED),
    ],
)
def test_lower_is_better_with_tolerances_at_their_edges(value, expected):
    assert status_for(value, 40, LOWER)[0] == expected


def test_lower_is_better_reasons_speak_of_above_and_below():
    assert status_for(30, 40, LOWER) == (GREEN, "30.0 days is below the target of 40.0 days.")
    assert status_for(42, 40, LOWER) == (
        AMBER,
        "42.0 days is 2.0 days (5.0%) above the target of 40.0 days: within 10%.",
    )
    assert status_for(50, 40, LOWER) == (
        RED,
        "50.0 days is 10.0 days (25.0%) above the target of 40.0 days: more than 10%.",
    )


# --- target zero, missing values ------------------------------------------------------------


def test_a_target_of_zero_makes_any_shortfall_red():
    assert status_for(-0.01, 0, HIGHER) == (RED, "-0.0 is 0.0 below the target of 0.0.")
    assert status_for(3, 0, LOWER) == (RED, "3.0 days is 3.0 days above the target of 0.0 days.")
    assert status_for(0, 0, LOWER) == (GREEN, "0.0 days is on target.")
    assert status_for(-2, 0, LOWER) == (GREEN, "-2.0 days is below the target of 0.0 days.")


def test_a_missing_value_or_target_gives_no_status():
    assert status_for(None, 100, HIGHER) == (NONE, "No value for this period.")
    assert status_for(95, None, HIGHER) == (NONE, "No target set for this period.")
    assert status_for(None, None, LOWER) == (NONE, "No value for this period.")
    assert status_for(None, None, BAND) == (NONE, "No value for this period.")


# --- percent KPIs: gaps in points -----------------------------------------------------------


def test_percent_gaps_are_in_points_and_the_tolerance_in_percent_of_target():
    thresholds = Thresholds(direction="higher", amber_tolerance_pct=5, unit="percent", decimals=1)
    assert status_for(0.85, 0.9, thresholds) == (
        RED,
        "85.0% is 5.0 pts (5.6%) below the target of 90.0%: more than 5%.",
    )
    assert status_for(0.88, 0.9, thresholds) == (
        AMBER,
        "88.0% is 2.0 pts (2.2%) below the target of 90.0%: within 5%.",
    )
    assert status_for(0.93, 0.9, thresholds) == (GREEN, "93.0% is above the target of 90.0%.")


def test_currency_reasons_use_the_compact_amounts():
    thresholds = Thresholds(direction="higher", amber_tolerance_pct=5, unit="currency", decimals=0)
    assert status_for(1_850_000, 2_000_000, thresholds) == (
        RED,
        "1.85M is 150.0k (7.5%) below the target of 2.00M: more than 5%.",
    )


# --- within a band --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.75, GREEN),  # on the low bound
        (0.84, GREEN),
        (0.92, GREEN),  # on the high bound
        (0.7125, AMBER),  # exactly 5 % of 0.75 below the low bound
        (0.71, RED),
        (0.966, AMBER),  # exactly 5 % of 0.92 above the high bound
        (0.97, RED),
    ],
)
def test_a_band_is_green_inside_and_amber_up_to_the_tolerance_outside(value, expected):
    assert status_for(value, None, BAND)[0] == expected


def test_a_band_ignores_the_target_and_says_which_side():
    assert status_for(0.84, 0.5, BAND) == (GREEN, "84.0% is within the band 75.0% to 92.0%.")
    assert status_for(0.7, 0.84, BAND) == (RED, "70.0% is 6.7% below the band 75.0% to 92.0%.")
    assert status_for(0.95, None, BAND) == (AMBER, "95.0% is 3.3% above the band 75.0% to 92.0%.")


def test_a_band_without_bounds_or_with_a_zero_bound():
    assert status_for(0.5, 0.5, Thresholds(direction="band", band_low=0.1)) == (
        NONE,
        "No band set for this KPI.",
    )
    zero = Thresholds(direction="band", band_low=0, band_high=2, unit="ratio")
    assert status_for(-0.01, None, zero) == (RED, "-0.01 is below the band 0.00 to 2.00.")
    assert status_for(0, None, zero)[0] == GREEN


# --- variance -------------------------------------------------------------------------------


def test_variance_is_the_difference_and_its_share_of_the_target_size():
    assert variance(90, 100) == (-10, -0.1)
    assert variance(-110, -100) == (-10, -0.1)
    assert variance(5, 0) == (5, None)
    assert variance(None, 100) == (None, None)
    assert variance(100, None) == (None, None)
