"""Writes to KPI definitions: formulas are checked before they are saved, and every change
is recorded with who made it, when, and each field's old and new value."""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction

from kpis.formula import Formula, FormulaError, find_cycle, parse, validate
from kpis.models import KPI, KPIChange, Measure

# Fields whose changes are recorded in a KPI's history.
TRACKED_FIELDS = (
    "code",
    "name",
    "description",
    "convention",
    "owner_department_id",
    "owner_id",
    "unit",
    "direction",
    "formula",
    "decimals",
    "is_active",
    "target_rule",
    "target_rule_pct",
    "green_tolerance_pct",
    "amber_tolerance_pct",
    "band_low",
    "band_high",
)

MEASURE_UNITS = {
    "currency": "currency",
    "count": "count",
    "days": "days",
    "ratio": "ratio",
    "percent": "percent",
}


def kpi_formula_check(*, code: str, formula_text: str, exclude_pk: int | None = None) -> Formula:
    """Parse and check a KPI formula against the measures and the other KPIs.

    Raises FormulaError (with the position where it applies) for a syntax error, an unknown
    name, a unit mismatch, or a cycle through other KPIs.
    """
    formula = parse(formula_text)
    measures = dict(Measure.objects.values_list("code", "unit"))
    others = {
        kpi_code: (text, unit)
        for kpi_code, text, unit in KPI.objects.exclude(pk=exclude_pk).values_list("code", "formula", "unit")
    }
    if code in measures:
        raise FormulaError(
            f"'{code}' is already the code of a measure; a KPI needs its own code.", position=0
        )
    units = {name: MEASURE_UNITS.get(unit) for name, unit in measures.items()}
    units.update({name: unit for name, (_, unit) in others.items()})
    validate(formula, known_names=set(measures) | set(others) | {code}, units=units)

    definitions: dict[str, Formula] = {code: formula}
    for other_code, (text, _) in others.items():
        if other_code == code:
            continue  # the formula being checked replaces the stored one
        try:
            definitions[other_code] = parse(text)
        except FormulaError:
            continue  # a stored formula that no longer parses is reported on its own KPI
    cycle = find_cycle(definitions, start=code)
    if cycle and code in cycle:
        raise FormulaError("The formula forms a cycle: " + " → ".join(cycle), position=0)
    return formula


@transaction.atomic
def kpi_save(*, kpi: KPI, user=None) -> KPIChange | None:
    """Save a new or edited KPI and record what changed; the formula version goes up when the
    formula changes. Returns the recorded change, or None when nothing changed."""
    kpi_formula_check(code=kpi.code, formula_text=kpi.formula, exclude_pk=kpi.pk)
    previous = (
        KPI.objects.filter(pk=kpi.pk).values(*TRACKED_FIELDS, "formula_version").first() if kpi.pk else None
    )
    changes: dict[str, list] = {}
    for field in TRACKED_FIELDS:
        old = previous[field] if previous else None
        new = getattr(kpi, field)
        if _comparable(old) != _comparable(new):
            changes[field] = [_jsonable(old), _jsonable(new)]
    if previous and "formula" in changes:
        kpi.formula_version = previous["formula_version"] + 1
    if previous and not changes:
        return None
    kpi.save()
    return KPIChange.objects.create(
        kpi=kpi, changed_by=user, formula_version=kpi.formula_version, changes=changes
    )


def _comparable(value):
    if isinstance(value, Decimal):
        return value.normalize()
    if value == "":
        return None
    return value


def _jsonable(value):
    return str(value) if isinstance(value, Decimal) else value
