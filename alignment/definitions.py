"""Goals and driver links shipped as data (alignment/library/*.yaml), installed by `demo` and
`import_adventureworks` next to the KPI library.

Installing is idempotent and all or nothing: every row is checked first (unknown KPI,
department, owner or parent goal is reported with its place in the file), then goals are
created or updated by code. A goal's period is the fiscal year holding the latest month of
actual facts, so the shipped goals fit whatever months the data covers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from alignment.models import Goal, GoalKPI, KPIDriver
from finops.models import Department, PeriodCoverage, Scenario
from finops.periods import add_months, fiscal_year, fiscal_year_start
from kpis.definitions import DefinitionsRejected, check_rows, load_yaml
from kpis.models import KPI

LIBRARY_DIR = Path(__file__).resolve().parent / "library"
GOAL_FIELDS = {
    "code": "str",
    "title": "str",
    "description": "str?",
    "parent": "str?",
    "department": "str?",
    "owner": "str?",
    "weight": "decimal?",
    "kpis": "any",  # a list of links, checked with LINK_FIELDS
}
LINK_FIELDS = {"kpi": "str", "role": "str", "weight": "decimal?", "target": "decimal?"}
DRIVER_FIELDS = {"driver": "str", "outcome": "str", "explanation": "str?"}


@dataclass
class GoalReport:
    goals_created: list[str] = field(default_factory=list)
    goals_updated: list[str] = field(default_factory=list)
    links: int = 0
    drivers_created: int = 0
    skipped: list[str] = field(default_factory=list)  # links to KPIs not enabled for this data


def goal_period(today: date | None = None) -> tuple[date, date]:
    """The fiscal year that holds the middle of the last twelve months of actual financial
    facts (of any facts when there are none; of ``today`` without data): the year a review
    of the latest numbers is about, not a year that has barely started."""
    coverage = PeriodCoverage.objects.filter(scenario__kind=Scenario.Kind.ACTUAL)
    latest = (
        coverage.filter(fact_kind=PeriodCoverage.FactKind.FINANCIAL).aggregate(last=Max("period"))["last"]
        or coverage.aggregate(last=Max("period"))["last"]
    )
    anchor = add_months(latest, -5) if latest else (today or timezone.localdate()).replace(day=1)
    start_month = settings.FISCAL_YEAR_START_MONTH
    start = fiscal_year_start(fiscal_year(anchor, start_month), start_month)
    return start, add_months(start, 11)


@transaction.atomic
def install_goals(dataset: str) -> GoalReport:
    """Create or update the dataset's goals and the standard driver links between enabled KPIs."""
    path = LIBRARY_DIR / f"{dataset}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in LIBRARY_DIR.glob("*.yaml") if p.stem != "drivers")
        raise DefinitionsRejected([f"no goal file for dataset {dataset!r} (known: {', '.join(known)})"])
    data = load_yaml(path.read_text(), name=path.name)
    problems: list[str] = []
    goals = check_rows(data, "goals", GOAL_FIELDS, problems)
    kpis = {kpi.code: kpi for kpi in KPI.objects.filter(is_active=True)}
    departments = {d.code: d for d in Department.objects.all()}
    owners = [goal.get("owner") for goal in goals]
    users = {user.username: user for user in get_user_model().objects.filter(username__in=owners)}
    codes = [goal["code"] for goal in goals]
    report = GoalReport()
    for i, goal in enumerate(goals):
        where = f"{path.name}: goals[{i}] ({goal['code']})"
        if goal.get("parent") and goal["parent"] not in codes[:i]:
            problems.append(f"{where}.parent: {goal['parent']!r} is not a goal listed before it")
        if goal.get("department") and goal["department"] not in departments:
            problems.append(f"{where}.department: no department {goal['department']!r}")
        links = check_rows(goal, "kpis", LINK_FIELDS, problems)
        for j, link in enumerate(links):
            if link["role"] not in GoalKPI.Role.values:
                problems.append(f"{where}.kpis[{j}].role: use one of {', '.join(GoalKPI.Role.values)}")
        goal["kpis"] = links
    if problems:
        raise DefinitionsRejected(problems)

    start, end = goal_period()
    stored = {goal.code: goal for goal in Goal.objects.filter(code__in=codes)}
    for order, row in enumerate(goals):
        fields = {
            "title": row["title"],
            "description": row.get("description", ""),
            "parent": stored.get(row.get("parent")),
            "department": departments.get(row.get("department")),
            "owner": users.get(row.get("owner")),
            "weight": Decimal(str(row.get("weight", 1))),
            "period_start": start,
            "period_end": end,
            "sort_order": order,
        }
        goal, created = Goal.objects.update_or_create(code=row["code"], defaults=fields)
        stored[goal.code] = goal
        (report.goals_created if created else report.goals_updated).append(goal.code)
        for link_order, link in enumerate(row["kpis"]):
            kpi = kpis.get(link["kpi"])
            if kpi is None:
                report.skipped.append(f"{goal.code}: {link['kpi']}")
                continue
            GoalKPI.objects.update_or_create(
                goal=goal,
                kpi=kpi,
                defaults={
                    "role": link["role"],
                    "weight": Decimal(str(link.get("weight", 1))),
                    "target": Decimal(str(link["target"])) if link.get("target") is not None else None,
                    "sort_order": link_order,
                },
            )
            report.links += 1
    report.drivers_created = _install_drivers(kpis)
    return report


def _install_drivers(kpis: dict[str, KPI]) -> int:
    path = LIBRARY_DIR / "drivers.yaml"
    problems: list[str] = []
    rows = check_rows(load_yaml(path.read_text(), name=path.name), "drivers", DRIVER_FIELDS, problems)
    if problems:
        raise DefinitionsRejected(problems)
    created = 0
    for row in rows:
        driver, outcome = kpis.get(row["driver"]), kpis.get(row["outcome"])
        if driver is None or outcome is None:
            continue
        _, made = KPIDriver.objects.get_or_create(
            driver=driver, outcome=outcome, defaults={"explanation": row.get("explanation", "")}
        )
        created += made
    return created
