"""Reads of stored KPI values (never computed here): what pages, exports and commands show."""

from __future__ import annotations

from django.db.models import QuerySet

from finops.models import Entity, Scenario
from kpis.models import KPI, KPIValue


class UnknownName(ValueError):
    pass


def kpi_values(
    *, code: str, grain: str = "month", scenario: str | None = None, entity: str | None = None
) -> QuerySet:
    """Stored values of one KPI at one grain, for a scenario (default: actual) and an entity
    (default: the root of the organization tree), oldest period first."""
    kpi = KPI.objects.filter(code=code).first()
    if kpi is None:
        known = ", ".join(KPI.objects.order_by("code").values_list("code", flat=True)[:50])
        raise UnknownName(f"No KPI {code!r}. Known: {known or 'none yet'}.")
    scenario_obj = _scenario(scenario)
    entity_obj = _entity(entity)
    return (
        KPIValue.objects.filter(kpi=kpi, grain=grain, scenario=scenario_obj, entity=entity_obj)
        .select_related("kpi", "scenario", "entity")
        .order_by("period")
    )


def _scenario(name: str | None) -> Scenario:
    if name is None:
        found = Scenario.objects.filter(kind=Scenario.Kind.ACTUAL).order_by("code").first()
    else:
        found = (
            Scenario.objects.filter(code__iexact=name).first()
            or Scenario.objects.filter(name__iexact=name).first()
        )
    if found is None:
        known = ", ".join(Scenario.objects.values_list("code", flat=True))
        raise UnknownName(f"No scenario {name!r}. Known: {known or 'none yet'}.")
    return found


def _entity(name: str | None) -> Entity:
    if name is None:
        found = Entity.objects.filter(parent__isnull=True).order_by("code").first()
    else:
        found = (
            Entity.objects.filter(code__iexact=name).first()
            or Entity.objects.filter(name__iexact=name).first()
        )
    if found is None:
        known = ", ".join(Entity.objects.values_list("code", flat=True)[:50])
        raise UnknownName(f"No entity {name!r}. Known: {known or 'none yet'}.")
    return found
