"""Alignment gaps: what is missing for goals, KPIs and driver links to line up, each with what to
do about it.

Four queries whatever the number of goals or KPIs: the top entity; the goals with their KPI
links (one LEFT JOIN); the active KPIs with their owner and their latest stored actual month
value's period and target for the top entity (two correlated subqueries); the driver links.
Everything else is worked out here, in Python, from those rows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date

from django.db.models import OuterRef, Subquery

from alignment.models import Goal, KPIDriver
from finops.models import Department, Entity, Scenario
from kpis.models import KPI, KPIValue

GOAL_ADMIN = "admin:alignment_goal_change"
KPI_ADMIN = "admin:kpis_kpi_change"

TARGET_ADVICE = {
    KPI.TargetRule.BUDGET: "Its target is the budget scenario's value: load a budget for the measures "
    "behind it, or type a target (Admin › Targets).",
    KPI.TargetRule.LAST_YEAR_PLUS: "Its target is the same period last year plus a percentage: it needs "
    "a value a year earlier and the percentage on the KPI.",
    KPI.TargetRule.MANUAL: "Its targets are typed in or imported: add them under Admin › Targets.",
}


@dataclass
class GapItem:
    id: int
    code: str
    name: str
    owner: str  # department (or "shared" for goals)
    detail: str = ""
    admin_url: str = ""  # the admin change view's name, for analysts


@dataclass
class GapSection:
    key: str
    title: str
    todo: str  # what to do, for every item of the list
    empty: str  # what an empty list means
    items: list[GapItem] = field(default_factory=list)


@dataclass
class Gaps:
    sections: list[GapSection]
    entity: str  # the top entity whose stored values were checked for targets
    goals: int
    kpis: int

    @property
    def total(self) -> int:
        return sum(len(section.items) for section in self.sections)

    def section(self, key: str) -> GapSection:
        return next(section for section in self.sections if section.key == key)


def alignment_gaps() -> Gaps:
    """Every gap in the goal tree, the KPI definitions and the driver links (4 queries)."""
    root = Entity.objects.filter(parent__isnull=True).order_by("name").values("id", "name").first()
    goal_rows = list(
        Goal.objects.values(
            "id",
            "code",
            "title",
            "parent_id",
            "department__name",
            "links__role",
            "links__kpi_id",
            "links__kpi__is_active",
        ).order_by("sort_order", "code", "links__sort_order")
    )
    kpis = list(_kpis(root["id"] if root else None))
    driver_pairs = list(
        KPIDriver.objects.filter(driver__is_active=True, outcome__is_active=True)
        .order_by()
        .values_list("driver_id", "outcome_id")
    )
    by_id = {kpi["id"]: kpi for kpi in kpis}

    # The goal tree with its links to active KPIs.
    goals: dict[int, dict] = {}
    links: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for row in goal_rows:
        goals.setdefault(row["id"], row)
        if row["links__kpi_id"] is not None and row["links__kpi__is_active"]:
            links[row["id"]].append((row["links__kpi_id"], row["links__role"]))
    children: dict[int, list[int]] = defaultdict(list)
    for pk, goal in goals.items():
        if goal["parent_id"] in goals:
            children[goal["parent_id"]].append(pk)

    def subtree_links(pk: int, path: frozenset[int]) -> list[tuple[int, str]]:
        found = list(links[pk])
        for child in children[pk]:
            if child not in path:
                found += subtree_links(child, path | {child})
        return found

    in_goal = {kpi_id for found in links.values() for kpi_id, _ in found}
    goal_drivers = {kpi_id for found in links.values() for kpi_id, role in found if role == "driver"}
    outcome_of: dict[int, list[str]] = defaultdict(list)
    for pk, found in links.items():
        for kpi_id, role in found:
            if role == "outcome":
                outcome_of[kpi_id].append(goals[pk]["title"])
    drives: dict[int, list[int]] = defaultdict(list)
    for driver_id, outcome_id in driver_pairs:
        drives[driver_id].append(outcome_id)
    driven_by: dict[int, list[int]] = defaultdict(list)
    for driver_id, outcome_id in driver_pairs:
        driven_by[outcome_id].append(driver_id)

    no_kpis = _section(
        "goals-without-kpis",
        "Goals without KPIs",
        "Link the KPIs the goal is judged by (financial outcomes) and the operational drivers that move "
        "them, in the goal's KPI list. A goal without KPIs, in itself or its sub-goals, has no score.",
        "Every goal has at least one KPI.",
    )
    no_driver = _section(
        "goals-without-drivers",
        "Financial goals without an operational driver",
        "The goal, with its sub-goals, is judged by financial outcomes but names nothing operations does "
        "to move them: link an operational KPI to it as a driver.",
        "Every goal with financial outcomes has an operational driver.",
    )
    for pk, goal in goals.items():
        found = subtree_links(pk, frozenset({pk}))
        if not found:
            no_kpis.items.append(_goal_item(goal, "No KPI linked to it or to a goal under it."))
            continue
        outcomes = [kpi_id for kpi_id, role in found if role == "outcome"]
        if outcomes and not any(role == "driver" for _, role in found):
            known = sorted({by_id[d]["name"] for kpi_id in outcomes for d in driven_by[kpi_id] if d in by_id})
            detail = f"Outcomes: {_names(outcomes, by_id)}."
            if known:
                detail += f" Known drivers of these outcomes: {', '.join(known)}."
            no_driver.items.append(_goal_item(goal, detail))

    no_owner = _section(
        "kpis-without-owner",
        "KPIs without an owner",
        "Give the KPI an owner department (the scorecard it belongs to) or an owner person who explains "
        "its variances.",
        "Every active KPI has an owner.",
    )
    no_target = _section(
        "kpis-without-target",
        "KPIs without a target",
        "Without a target a KPI has no status and does not count in goal scores.",
        "Every active KPI's latest stored value has a target.",
    )
    no_goal = _section(
        "kpis-in-no-goal",
        "KPIs in no goal",
        "Link the KPI to the goal it measures, as an outcome or a driver; deactivate it if nobody "
        "reviews it.",
        "Every active KPI measures at least one goal.",
    )
    idle = _section(
        "operational-kpis-driving-nothing",
        "Operational KPIs that drive nothing",
        "Link the KPI to the financial KPI it moves (Admin › KPI driver links) or to a goal as a driver, "
        "so finance can see why it matters.",
        "Every operational KPI drives a financial KPI or a goal.",
    )
    entity = root["name"] if root else ""
    for kpi in kpis:
        if kpi["owner_department_id"] is None and kpi["owner_id"] is None:
            no_owner.items.append(_kpi_item(kpi, "No owner department and no owner person."))
        if kpi["latest_period"] is None or kpi["latest_target"] is None:
            if kpi["latest_period"] is None:
                where = f" for {entity}" if entity else ""
                detail = f"No value stored yet{where} at month grain."
            else:
                detail = f"Latest value ({_month(kpi['latest_period'])}) has no target."
            no_target.items.append(_kpi_item(kpi, f"{detail} {TARGET_ADVICE.get(kpi['target_rule'], '')}"))
        if kpi["id"] not in in_goal:
            no_goal.items.append(_kpi_item(kpi, "Not linked to any goal."))
        if (
            kpi["owner_department__side"] == Department.Side.OPERATIONS
            and not drives.get(kpi["id"])
            and kpi["id"] not in goal_drivers
        ):
            detail = "Drives no KPI and is no goal's driver."
            if outcome_of.get(kpi["id"]):
                detail += f" It is an outcome of: {', '.join(outcome_of[kpi['id']])}."
            idle.items.append(_kpi_item(kpi, detail))
    return Gaps(
        sections=[no_kpis, no_driver, no_owner, no_target, no_goal, idle],
        entity=entity,
        goals=len(goals),
        kpis=len(kpis),
    )


def _kpis(root_id: int | None):
    fields = (
        "id",
        "code",
        "name",
        "owner_department_id",
        "owner_id",
        "owner_department__name",
        "owner_department__side",
        "target_rule",
    )
    kpis = KPI.objects.filter(is_active=True).order_by("sort_order", "code")
    if root_id is None:
        return [{**row, "latest_period": None, "latest_target": None} for row in kpis.values(*fields)]
    latest = KPIValue.objects.filter(
        kpi_id=OuterRef("pk"), grain="month", entity_id=root_id, scenario__kind=Scenario.Kind.ACTUAL
    ).order_by("-period")
    return kpis.annotate(
        latest_period=Subquery(latest.values("period")[:1]),
        latest_target=Subquery(latest.values("target")[:1]),
    ).values(*fields, "latest_period", "latest_target")


def _section(key: str, title: str, todo: str, empty: str) -> GapSection:
    return GapSection(key=key, title=title, todo=todo, empty=empty)


def _goal_item(goal: dict, detail: str) -> GapItem:
    return GapItem(
        id=goal["id"],
        code=goal["code"],
        name=goal["title"],
        owner=goal["department__name"] or "Shared goal",
        detail=detail,
        admin_url=GOAL_ADMIN,
    )


def _kpi_item(kpi: dict, detail: str) -> GapItem:
    return GapItem(
        id=kpi["id"],
        code=kpi["code"],
        name=kpi["name"],
        owner=kpi["owner_department__name"] or "",
        detail=detail,
        admin_url=KPI_ADMIN,
    )


def _names(kpi_ids: list[int], by_id: dict[int, dict]) -> str:
    return ", ".join(dict.fromkeys(by_id[pk]["name"] for pk in kpi_ids if pk in by_id))


def _month(period: date) -> str:
    return f"{period:%b %Y}"
