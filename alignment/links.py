"""Reads of the driver links (an operational KPI that moves a financial one) with the stored
status of both ends, for the department pages and the alignment map.

One query whatever the number of links: the links with both KPIs (two joins) and each end's
stored actual value for the filters' period as correlated subqueries. Values are read, never
computed.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import OuterRef, Q, QuerySet, Subquery

from alignment.models import KPIDriver
from alignment.selectors import Filters, KPIRow, kpi_row_from
from finops.models import Scenario
from kpis.models import KPIValue

# The stored fields a KPIRow reads from ``current`` (the trend and variance are not shown here).
CURRENT_FIELDS = ("value", "target", "status", "status_reason", "empty_reason", "partial")
KPI_FIELDS = (
    "code",
    "name",
    "description",
    "unit",
    "decimals",
    "direction",
    "owner_department_id",
    "owner_department__name",
)


@dataclass
class DriverLink:
    """``driver`` moves ``outcome``; ``explanation`` says how, in plain words."""

    id: int
    driver: KPIRow
    outcome: KPIRow
    explanation: str
    driver_department_id: int | None = None
    outcome_department_id: int | None = None


def driver_links(
    filters: Filters,
    *,
    departments: set[int] | None = None,
    direction: str = "any",
) -> list[DriverLink]:
    """Driver links between active KPIs, each end with its stored value for the filters' period.

    With ``departments`` (a department subtree, see ``selectors.subtree_ids``) only the links that
    cross its border: ``direction`` "into" keeps links whose outcome it owns and whose driver it
    does not (what it depends on), "out" links whose driver it owns and whose outcome it does not
    (what it moves elsewhere), "any" both.
    """
    links = KPIDriver.objects.filter(driver__is_active=True, outcome__is_active=True)
    if departments is not None:
        owns_outcome = Q(outcome__owner_department_id__in=departments)
        owns_driver = Q(driver__owner_department_id__in=departments)
        into = owns_outcome & ~owns_driver
        out = owns_driver & ~owns_outcome
        links = links.filter({"into": into, "out": out}.get(direction, into | out))
    links = _with_current(links, filters)
    fields = [f"{end}__{name}" for end in ("driver", "outcome") for name in KPI_FIELDS]
    annotated = list(links.query.annotations)
    rows = links.values("id", "explanation", "driver_id", "outcome_id", *fields, *annotated).order_by(
        "outcome__sort_order", "outcome__code", "driver__sort_order", "driver__code"
    )
    return [
        DriverLink(
            id=row["id"],
            driver=_row(row, "driver"),
            outcome=_row(row, "outcome"),
            explanation=row["explanation"],
            driver_department_id=row["driver__owner_department_id"],
            outcome_department_id=row["outcome__owner_department_id"],
        )
        for row in rows
    ]


def _with_current(links: QuerySet, filters: Filters) -> QuerySet:
    if filters.period is None or filters.entity is None:
        return links  # nothing stored yet: every end reads "no value"
    annotations = {}
    for end in ("driver", "outcome"):
        stored = KPIValue.objects.filter(
            kpi_id=OuterRef(f"{end}_id"),
            grain=filters.grain,
            entity_id=filters.entity.id,
            period=filters.period,
            scenario__kind=Scenario.Kind.ACTUAL,
        ).order_by("scenario_id")
        for name in CURRENT_FIELDS:
            annotations[f"{end}_{name}"] = Subquery(stored.values(name)[:1])
    return links.annotate(**annotations)


def _row(row: dict, end: str) -> KPIRow:
    current = {name: row.get(f"{end}_{name}") for name in CURRENT_FIELDS}
    kpi = kpi_row_from(row, end, role=end)
    if current["status"] is not None:
        current["variance"] = None
        current["partial"] = bool(current["partial"])
        kpi.current = current
    return kpi
