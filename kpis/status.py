"""Green, amber or red from a value, its target and the KPI's direction, with the reason in words.

- Higher is better: the shortfall is how far the value is below target, in percent of the
  target's size. Up to ``green_tolerance_pct`` is green, up to ``amber_tolerance_pct`` amber,
  beyond that red. A value above target is green.
- Lower is better: the same with the excess above target.
- Within a band: green inside [low, high]; amber when outside by at most
  ``amber_tolerance_pct`` percent of the nearer bound's size; red beyond.
- A target of zero: any shortfall counts as beyond every tolerance (there is no percentage).
"""

from __future__ import annotations

from dataclasses import dataclass

from kpis.formatting import Separators, format_gap, format_value

GREEN, AMBER, RED, NONE = "green", "amber", "red", "none"


@dataclass(frozen=True)
class Thresholds:
    direction: str  # "higher" | "lower" | "band"
    green_tolerance_pct: float = 0.0
    amber_tolerance_pct: float = 5.0
    band_low: float | None = None
    band_high: float | None = None
    unit: str = "ratio"
    decimals: int = 1
    separators: Separators | None = None  # how reasons write numbers (default: the active locale)


def status_for(value: float | None, target: float | None, thresholds: Thresholds) -> tuple[str, str]:
    """(status, reason) for ``value`` against ``target``; "none" when either is missing."""
    t = thresholds
    if value is None:
        return NONE, "No value for this period."
    if t.direction == "band":
        return _band_status(value, t)
    if target is None:
        return NONE, "No target set for this period."
    shortfall = (target - value) if t.direction == "higher" else (value - target)
    shown_value, shown_target = (
        format_value(value, t.unit, t.decimals, separators=t.separators),
        format_value(target, t.unit, t.decimals, separators=t.separators),
    )
    if shortfall <= 0:
        better = "above" if t.direction == "higher" else "below"
        if shortfall == 0:
            return GREEN, f"{shown_value} is on target."
        return GREEN, f"{shown_value} is {better} the target of {shown_target}."
    worse = "below" if t.direction == "higher" else "above"
    gap = format_gap(shortfall, t.unit, t.decimals, t.separators)
    if target == 0:
        return RED, f"{shown_value} is {gap} {worse} the target of {shown_target}."
    pct = _pct(shortfall, target)
    where = f"{shown_value} is {gap} ({pct:.1f}%) {worse} the target of {shown_target}"
    if pct <= t.green_tolerance_pct:
        return GREEN, f"{where}: within the {t.green_tolerance_pct:g}% tolerance."
    if pct <= t.amber_tolerance_pct:
        return AMBER, f"{where}: within {t.amber_tolerance_pct:g}%."
    return RED, f"{where}: more than {t.amber_tolerance_pct:g}%."


def _band_status(value: float, t: Thresholds) -> tuple[str, str]:
    if t.band_low is None or t.band_high is None:
        return NONE, "No band set for this KPI."
    shown = format_value(value, t.unit, t.decimals, separators=t.separators)
    low = format_value(t.band_low, t.unit, t.decimals, separators=t.separators)
    high = format_value(t.band_high, t.unit, t.decimals, separators=t.separators)
    if t.band_low <= value <= t.band_high:
        return GREEN, f"{shown} is within the band {low} to {high}."
    bound = t.band_low if value < t.band_low else t.band_high
    side = "below" if value < t.band_low else "above"
    if bound == 0:
        return RED, f"{shown} is {side} the band {low} to {high}."
    pct = _pct(abs(value - bound), bound)
    status = AMBER if pct <= t.amber_tolerance_pct else RED
    return status, f"{shown} is {pct:.1f}% {side} the band {low} to {high}."


def _pct(gap: float, base: float) -> float:
    """``gap`` in percent of ``|base|``, rounded to 9 decimals so that a value exactly at a
    tolerance compares as equal to it (in float, 5 % short of 1.0 is 5.000000000000004)."""
    return round(gap / abs(base) * 100, 9)


def variance(value: float | None, target: float | None) -> tuple[float | None, float | None]:
    """(value - target, that as a share of |target|); None where it cannot be computed."""
    if value is None or target is None:
        return None, None
    diff = value - target
    return diff, (diff / abs(target) if target else None)
