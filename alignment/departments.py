"""Reads for the department pages: one department's scorecard and what it exchanges with the
other side through the driver links; the index of departments.

A department page is the aligned scorecard (alignment/selectors.py) filtered to the KPIs its
subtree owns, plus one query for the driver links that cross its border (alignment/links.py).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from django.db.models import Count, Q

from alignment.links import driver_links
from alignment.selectors import (
    Filters,
    GoalCard,
    KPIRow,
    Scorecard,
    scorecard,
    scorecard_filters,
    subtree_ids,
)
from finops.models import Department

SIDE_LABELS = dict(Department.Side.choices)
SIDE_ORDER = {Department.Side.FINANCE: 0, Department.Side.OPERATIONS: 1, Department.Side.OTHER: 2}


@dataclass
class Exchange:
    """One row of "what the department depends on": its own KPI and the other side's KPI."""

    own: KPIRow
    other: KPIRow
    explanation: str
    other_drives: bool  # the other KPI drives the department's (else the department's drives it)


@dataclass
class DepartmentBoard:
    department: Department
    filters: Filters
    card: Scorecard
    exchanges: list[Exchange]
    heading: str
    intro: str
    own_label: str  # column heading for the department's own KPI
    other_label: str  # column heading for the other side's KPI
    empty: str


def department_board(department: Department, params: dict[str, str]) -> DepartmentBoard:
    """The department's scorecard and its driver links across its border (5 queries: filter
    options, periods, goals with links, their stored values, the driver links with values)."""
    filters = scorecard_filters({**params, "department": department.code})
    card = scorecard(filters)
    for goal in card.goals:
        _prune(goal)
    subtree = subtree_ids(filters.departments, filters.department) or {department.id}
    name = department.name
    if department.side == Department.Side.FINANCE:
        direction = "into"
        heading = f"What {name} depends on from Operations"
        intro = (
            f"The operational KPIs, owned by other departments, that drive {name}'s KPIs: "
            "when they slip, these financial results follow."
        )
        own_label, other_label = f"{name} KPI", "Depends on (operational driver)"
        empty = f"No operational KPI is linked as a driver of a KPI owned by {name}."
    elif department.side == Department.Side.OPERATIONS:
        direction = "out"
        heading = f"What Finance depends on from {name}"
        intro = f"The financial KPIs, owned by other departments, that {name}'s KPIs drive."
        own_label, other_label = f"{name} KPI", "Drives (financial outcome)"
        empty = f"No KPI owned by {name} is linked as a driver of another department's KPI."
    else:
        direction = "any"
        heading = f"Driver links between {name} and other departments"
        intro = f"KPIs owned by {name} that drive, or are driven by, KPIs of other departments."
        own_label, other_label = f"{name} KPI", "Linked KPI"
        empty = f"No driver link joins a KPI owned by {name} to another department's KPI."
    exchanges = []
    for link in driver_links(filters, departments=subtree, direction=direction):
        own_is_outcome = link.outcome_department_id in subtree and direction != "out"
        own, other = (link.outcome, link.driver) if own_is_outcome else (link.driver, link.outcome)
        exchanges.append(
            Exchange(own=own, other=other, explanation=link.explanation, other_drives=own_is_outcome)
        )
    exchanges.sort(key=lambda row: (row.own.name, row.other.name))
    return DepartmentBoard(
        department=department,
        filters=filters,
        card=card,
        exchanges=exchanges,
        heading=heading,
        intro=intro,
        own_label=own_label,
        other_label=other_label,
        empty=empty,
    )


def _prune(goal: GoalCard) -> bool:
    """Drop the sub-goals without a KPI of the department (in them or below); True if ``goal``
    keeps any."""
    goal.children = [child for child in goal.children if _prune(child)]
    return bool(goal.outcomes or goal.drivers or goal.children)


# --- the index ----------------------------------------------------------------------------


@dataclass
class DepartmentEntry:
    id: int
    code: str
    name: str
    side: str
    side_label: str
    kpis: int  # active KPIs owned by the department and the ones under it
    children: list[DepartmentEntry] = field(default_factory=list)


def department_index() -> list[DepartmentEntry]:
    """Top-level departments (finance, then operations, then others) with the departments under
    them and the number of active KPIs each subtree owns (1 query)."""
    rows = Department.objects.annotate(kpi_count=Count("kpi", filter=Q(kpi__is_active=True))).values(
        "id", "code", "name", "parent_id", "side", "kpi_count"
    )
    entries = {
        row["id"]: DepartmentEntry(
            id=row["id"],
            code=row["code"],
            name=row["name"],
            side=row["side"],
            side_label=SIDE_LABELS.get(row["side"], row["side"]),
            kpis=row["kpi_count"],
        )
        for row in rows
    }
    parents = {row["id"]: row["parent_id"] for row in rows}
    children: dict[int | None, list[DepartmentEntry]] = defaultdict(list)
    for pk, entry in entries.items():
        children[parents[pk] if parents[pk] in entries else None].append(entry)

    def build(entry: DepartmentEntry, path: frozenset[int]) -> int:
        entry.children = sorted(
            (child for child in children.get(entry.id, []) if child.id not in path), key=lambda e: e.name
        )
        entry.kpis += sum(build(child, path | {child.id}) for child in entry.children)
        return entry.kpis

    top = children.get(None, [])
    for entry in top:
        build(entry, frozenset({entry.id}))
    return sorted(top, key=lambda e: (SIDE_ORDER.get(e.side, 3), e.name))
