"""Reads for the scorecard pages: stored KPI values arranged by goal, never computed here.

A fixed number of queries whatever the number of goals or KPIs:

1. filter options: entities and departments in one UNION query;
2. the periods that have stored (non-empty) actual values at the chosen grain and entity;
3. goals with their KPI links (one LEFT JOIN);
4. the stored values of those KPIs for the period, the periods before it (trend, last period)
   and the same period last year.

Values are shown for the actual scenario; the target, variance and status stored with each
value come from the engine (budget, typed or rule targets).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from functools import cached_property
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, Value
from django.utils.http import urlencode

from alignment.models import Goal
from alignment.scoring import GoalNode, Score, goal_scores
from finops.models import Department, Entity, RefreshRun, Scenario
from finops.periods import GRAINS, add_months, grain_start, period_label
from kpis.charts import sparkline_points
from kpis.formatting import format_gap, format_value
from kpis.models import KPIValue

STEP_MONTHS = {"month": 1, "quarter": 3, "year": 12}
TREND_LENGTH = {"month": 12, "quarter": 8, "year": 5}
GRAIN_LABELS = {"month": "Month", "quarter": "Quarter", "year": "Year"}
VALUE_FIELDS = (
    "kpi_id",
    "period",
    "value",
    "target",
    "variance",
    "variance_pct",
    "status",
    "status_reason",
    "partial",
    "empty_reason",
)


@dataclass
class Option:
    id: int
    code: str
    name: str
    parent_id: int | None
    currency: str = ""
    depth: int = 0


@dataclass
class Filters:
    """The scorecard's filters, checked against what exists; ``problems`` says what was wrong."""

    grain: str
    period: date | None
    entity: Option | None
    department: Option | None
    periods: list[date]
    partial_periods: set[date]
    entities: list[Option]
    departments: list[Option]
    currency: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def period_label(self) -> str:
        return period_label(self.period, self.grain, settings.FISCAL_YEAR_START_MONTH) if self.period else ""

    def label(self, period: date) -> str:
        return period_label(period, self.grain, settings.FISCAL_YEAR_START_MONTH)

    @cached_property
    def query_string(self) -> str:
        """The filters as a URL query string, for links to other pages of stored values."""
        return urlencode(self.as_query())

    def as_query(self, **override: Any) -> dict[str, str]:
        query = {
            "grain": self.grain,
            "period": self.period.isoformat() if self.period else "",
            "entity": self.entity.code if self.entity else "",
            "department": self.department.code if self.department else "",
        }
        query.update({key: str(value) for key, value in override.items()})
        return {key: value for key, value in query.items() if value}


@dataclass
class KPIRow:
    kpi_id: int
    code: str
    name: str
    description: str
    unit: str
    decimals: int
    direction: str
    department: str
    role: str
    goal_target: Decimal | None = None
    current: dict | None = None
    previous: dict | None = None
    last_year: dict | None = None
    trend: list[float | None] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.current["status"] if self.current else "none"

    @property
    def status_reason(self) -> str:
        if self.current is None:
            return "No value stored for this period yet."
        return self.current["status_reason"] or self.current["empty_reason"] or ""

    def show(self, number: Any) -> str:
        return format_value(number, self.unit, self.decimals)

    @property
    def value_text(self) -> str:
        return self.show(self.current["value"] if self.current else None)

    @property
    def target_text(self) -> str:
        return self.show(self.current["target"] if self.current else None)

    @property
    def variance_text(self) -> str:
        variance = self.current["variance"] if self.current else None
        if variance is None:
            return "—"
        sign = "+" if variance > 0 else ""
        return sign + format_gap(float(variance), self.unit, self.decimals)

    @property
    def previous_text(self) -> str:
        return self.show(self.previous["value"] if self.previous else None)

    @property
    def last_year_text(self) -> str:
        return self.show(self.last_year["value"] if self.last_year else None)

    @property
    def goal_target_text(self) -> str:
        return self.show(self.goal_target) if self.goal_target is not None else ""

    @property
    def partial(self) -> bool:
        return bool(self.current and self.current["partial"])

    @property
    def sparkline(self) -> str:
        return sparkline_points(self.trend)


@dataclass
class GoalCard:
    id: int
    code: str
    title: str
    description: str
    department: str
    owner: str
    period_start: date
    period_end: date
    score: Score
    outcomes: list[KPIRow] = field(default_factory=list)
    drivers: list[KPIRow] = field(default_factory=list)
    children: list[GoalCard] = field(default_factory=list)


@dataclass
class Scorecard:
    filters: Filters
    goals: list[GoalCard]
    goals_note: str = ""

    @property
    def rows(self) -> list[KPIRow]:
        """Every KPI on the scorecard once, in the goals and the goals under them."""
        seen: dict[int, KPIRow] = {}
        stack = list(reversed(self.goals))
        while stack:
            goal = stack.pop()
            for row in goal.outcomes + goal.drivers:
                seen.setdefault(row.kpi_id, row)
            stack.extend(reversed(goal.children))
        return list(seen.values())

    @property
    def status_counts(self) -> dict[str, int]:
        return count_statuses(self.rows)


def count_statuses(rows: list[KPIRow]) -> dict[str, int]:
    """KPIs by status; "none" has a value but no target, "empty" has no value."""
    counts = {"green": 0, "amber": 0, "red": 0, "none": 0, "empty": 0}
    for row in rows:
        empty = row.current is None or row.current["value"] is None
        counts["empty" if empty else row.status] += 1
    return counts


# --- filters ------------------------------------------------------------------------------


def scorecard_filters(params: dict[str, str]) -> Filters:
    """Read and check the filters (2 queries): unknown values are reported and replaced by the
    default (the latest period with values, the top entity, all departments)."""
    problems: list[str] = []
    grain = params.get("grain") or "month"
    if grain not in GRAINS:
        problems.append(f"Unknown grain {grain!r}; showing months.")
        grain = "month"
    entity_options, department_options = _options()
    entity = _pick(entity_options, params.get("entity"), "entity", problems)
    if entity is None:
        entity = next((option for option in entity_options if option.parent_id is None), None)
    department = _pick(department_options, params.get("department"), "department", problems)
    periods, partial, default = _periods(grain, entity.id) if entity else ([], set(), None)
    period = None
    if params.get("period"):
        try:
            period = date.fromisoformat(params["period"])
        except ValueError:
            problems.append(
                f"{params['period']!r} is not a date (use YYYY-MM-DD); showing the latest period."
            )
        else:
            # A month picked at month grain stays meaningful at quarter or year grain: the
            # quarter or year that holds it.
            period = grain_start(period, grain, settings.FISCAL_YEAR_START_MONTH)
            if period not in periods:
                problems.append(f"No values for {params['period']} at this grain; showing the latest period.")
                period = None
    if period is None:
        period = default
    return Filters(
        grain=grain,
        period=period,
        entity=entity,
        department=department,
        periods=periods,
        partial_periods=partial,
        entities=entity_options,
        departments=department_options,
        currency=entity.currency if entity else "",
        problems=problems,
    )


def _options() -> tuple[list[Option], list[Option]]:
    fields = ("kind", "id", "code", "name", "parent_id", "currency")
    entities = Entity.objects.order_by().annotate(kind=Value("entity")).values_list(*fields)
    departments = (
        Department.objects.order_by()
        .annotate(kind=Value("department"), currency=Value(""))
        .values_list(*fields)
    )
    by_kind: dict[str, list[Option]] = {"entity": [], "department": []}
    for kind, pk, code, name, parent_id, currency in entities.union(departments, all=True):
        by_kind[kind].append(Option(pk, code, name, parent_id, currency))
    return _tree_order(by_kind["entity"]), _tree_order(by_kind["department"])


def _tree_order(options: list[Option]) -> list[Option]:
    """Parents before children, indented by depth, siblings by name."""
    children: dict[int | None, list[Option]] = defaultdict(list)
    ids = {option.id for option in options}
    for option in options:
        children[option.parent_id if option.parent_id in ids else None].append(option)
    ordered: list[Option] = []

    def walk(parent: int | None, depth: int) -> None:
        for option in sorted(children.get(parent, []), key=lambda o: o.name):
            option.depth = depth
            ordered.append(option)
            walk(option.id, depth + 1)

    walk(None, 0)
    return ordered


def _pick(options: list[Option], code: str | None, what: str, problems: list[str]) -> Option | None:
    if not code:
        return None
    found = next((option for option in options if option.code == code), None)
    if found is None:
        problems.append(f"Unknown {what} {code!r}; showing all.")
    return found


def _periods(grain: str, entity_id: int) -> tuple[list[date], set[date], date | None]:
    """Periods with stored actual values (newest first), those still partial (not every month
    loaded yet) for every KPI, and the default: the latest complete period in which at least
    half as many KPIs have a value as in the best-covered period (so a month in which only
    one source has reported is not what a review opens on)."""
    rows = (
        KPIValue.objects.filter(
            grain=grain, entity_id=entity_id, scenario__kind=Scenario.Kind.ACTUAL, value__isnull=False
        )
        .values("period")
        .annotate(values=Count("id"), complete=Count("id", filter=Q(partial=False)))
        .order_by("-period")
    )
    periods, partial, counts = [], set(), {}
    for row in rows:
        periods.append(row["period"])
        counts[row["period"]] = row["values"]
        if not row["complete"]:
            partial.add(row["period"])
    most = max(counts.values(), default=0)
    default = next(
        (p for p in periods if p not in partial and counts[p] * 2 >= most),
        next((p for p in periods if p not in partial), periods[0] if periods else None),
    )
    return periods, partial, default


def subtree_ids(options: list[Option], root: Option | None) -> set[int] | None:
    """Ids of ``root`` and everything under it; None (no filter) without a root."""
    if root is None:
        return None
    ids, frontier = {root.id}, [root.id]
    while frontier:
        frontier = [option.id for option in options if option.parent_id in frontier and option.id not in ids]
        ids.update(frontier)
    return ids


# --- values -------------------------------------------------------------------------------


def value_window(period: date, grain: str) -> tuple[list[date], date, date]:
    """(trend periods oldest first ending at ``period``, previous period, same period last year)."""
    step = STEP_MONTHS[grain]
    trend = [add_months(period, -step * i) for i in reversed(range(TREND_LENGTH[grain]))]
    return trend, add_months(period, -step), add_months(period, -12)


def stored_values(kpi_ids: set[int], filters: Filters) -> dict[tuple[int, date], dict]:
    """Stored actual values of ``kpi_ids`` over the filters' window, by (kpi id, period)."""
    if not kpi_ids or filters.period is None or filters.entity is None:
        return {}
    trend, previous, last_year = value_window(filters.period, filters.grain)
    rows = KPIValue.objects.filter(
        kpi_id__in=kpi_ids,
        grain=filters.grain,
        entity_id=filters.entity.id,
        scenario__kind=Scenario.Kind.ACTUAL,
        period__in={*trend, previous, last_year},
    ).values(*VALUE_FIELDS)
    return {(row["kpi_id"], row["period"]): row for row in rows}


def fill_row(row: KPIRow, values: dict[tuple[int, date], dict], period: date, grain: str) -> KPIRow:
    trend, previous, last_year = value_window(period, grain)
    row.current = values.get((row.kpi_id, period))
    row.previous = values.get((row.kpi_id, previous))
    row.last_year = values.get((row.kpi_id, last_year))
    row.trend = [_float(values.get((row.kpi_id, period), {}).get("value")) for period in trend]
    return row


def _float(value: Decimal | None) -> float | None:
    return float(value) if value is not None else None


# --- the scorecard ------------------------------------------------------------------------

GOAL_FIELDS = (
    "id",
    "code",
    "title",
    "description",
    "parent_id",
    "weight",
    "period_start",
    "period_end",
    "department__name",
    "owner__username",
    "owner__first_name",
    "owner__last_name",
    "links__role",
    "links__weight",
    "links__target",
    "links__kpi_id",
    "links__kpi__code",
    "links__kpi__name",
    "links__kpi__description",
    "links__kpi__unit",
    "links__kpi__decimals",
    "links__kpi__direction",
    "links__kpi__is_active",
    "links__kpi__owner_department_id",
    "links__kpi__owner_department__name",
)


def scorecard(filters: Filters) -> Scorecard:
    """Every goal (and the goals under it) with its outcome and driver KPIs for the filters'
    period (2 queries: goals with links, then the stored values)."""
    rows = list(Goal.objects.values(*GOAL_FIELDS).order_by("sort_order", "code", "links__sort_order"))
    departments = subtree_ids(filters.departments, filters.department)
    goals: dict[int, GoalCard] = {}
    links: dict[int, list[tuple[KPIRow, Decimal]]] = defaultdict(list)
    parents: dict[int, int | None] = {}
    weights: dict[int, Decimal] = {}
    for row in rows:
        goal = goals.get(row["id"])
        if goal is None:
            goal = goals[row["id"]] = GoalCard(
                id=row["id"],
                code=row["code"],
                title=row["title"],
                description=row["description"],
                department=row["department__name"] or "",
                owner=_person(row),
                period_start=row["period_start"],
                period_end=row["period_end"],
                score=Score(value=None),
            )
            parents[goal.id] = row["parent_id"]
            weights[goal.id] = row["weight"]
        if row["links__kpi_id"] is None or not row["links__kpi__is_active"]:
            continue
        if departments is not None and row["links__kpi__owner_department_id"] not in departments:
            continue
        kpi_row = kpi_row_from(row, "links__kpi", role=row["links__role"], goal_target=row["links__target"])
        links[goal.id].append((kpi_row, row["links__weight"]))

    goals_note = ""
    if filters.period is not None:
        active = {
            pk
            for pk, goal in goals.items()
            if goal.period_start <= _period_end(filters.period, filters.grain)
            and goal.period_end >= filters.period
        }
        if goals and not active:
            latest = max(goal.period_end for goal in goals.values())
            active = {pk for pk, goal in goals.items() if goal.period_end == latest}
            goals_note = (
                f"No goal covers {filters.period_label}; showing the goals set for "
                f"{min(goals[pk].period_start for pk in active):%b %Y} to {latest:%b %Y} against it."
            )
        goals = {pk: goal for pk, goal in goals.items() if pk in active}

    values = (
        stored_values({row.kpi_id for pk in goals for row, _ in links[pk]}, filters) if filters.period else {}
    )
    statuses: dict[int, str] = {}
    for pk, goal in goals.items():
        for kpi_row, _ in links[pk]:
            if filters.period is not None:
                fill_row(kpi_row, values, filters.period, filters.grain)
            statuses[kpi_row.kpi_id] = kpi_row.status
            (goal.outcomes if kpi_row.role == "outcome" else goal.drivers).append(kpi_row)

    scores = goal_scores(
        [
            GoalNode(
                id=pk,
                parent_id=parents[pk] if parents[pk] in goals else None,
                weight=weights[pk],
                kpis=tuple((row.kpi_id, weight) for row, weight in links[pk]),
            )
            for pk in goals
        ],
        statuses,
    )
    for pk, goal in goals.items():
        goal.score = scores[pk]
    top: list[GoalCard] = []
    for pk, goal in goals.items():
        parent = parents[pk]
        if parent in goals:
            goals[parent].children.append(goal)
        else:
            top.append(goal)
    if departments is not None:
        top = [goal for goal in top if _has_kpis(goal)]
    return Scorecard(filters=filters, goals=top, goals_note=goals_note)


def kpi_row_from(row: dict, field: str, *, role: str, goal_target: Decimal | None = None) -> KPIRow:
    """A row for a KPI from a ``values()`` dict holding ``{field}_id`` and ``{field}__code``,
    ``__name`` and the other KPI fields (``field`` is the path to the KPI: "kpi", "links__kpi")."""
    return KPIRow(
        kpi_id=row[f"{field}_id"],
        code=row[f"{field}__code"],
        name=row[f"{field}__name"],
        description=row[f"{field}__description"],
        unit=row[f"{field}__unit"],
        decimals=row[f"{field}__decimals"],
        direction=row[f"{field}__direction"],
        department=row[f"{field}__owner_department__name"] or "",
        role=role,
        goal_target=goal_target,
    )


def _has_kpis(goal: GoalCard) -> bool:
    return bool(goal.outcomes or goal.drivers) or any(_has_kpis(child) for child in goal.children)


def _period_end(period: date, grain: str) -> date:
    return add_months(period, STEP_MONTHS[grain] - 1)


def _person(row: dict) -> str:
    full = f"{row['owner__first_name'] or ''} {row['owner__last_name'] or ''}".strip()
    return full or row["owner__username"] or ""


# --- the overview -------------------------------------------------------------------------


@dataclass
class Movement:
    row: KPIRow
    change: float  # relative change against the previous period, signed
    better: bool | None  # None for KPIs kept within a band

    @property
    def change_text(self) -> str:
        """Percent KPIs move in points (a margin from 30% to 33% is +3.0 pts); others in %."""
        if self.row.unit == "percent":
            now, before = self.row.current["value"], self.row.previous["value"]
            return ("+" if now > before else "") + format_gap(float(now - before), "percent", 1)
        return f"{self.change:+.1%}"


@dataclass
class Overview:
    filters: Filters
    card: Scorecard
    rows: list[KPIRow]
    changed_status: list[KPIRow]
    movers: list[Movement]
    last_refresh: Any = None  # the latest finished RefreshRun
    running: Any = None  # a RefreshRun in progress

    @property
    def status_counts(self) -> dict[str, int]:
        return count_statuses(self.rows)


STATUS_RANK = {"green": 0, "amber": 1, "red": 2, "none": 3}
MOVERS = 6


def overview(filters: Filters) -> Overview:
    """The period's headline: every active KPI's status, goal scores, what changed status
    since the previous period, the biggest movers and the data's freshness (4 queries)."""
    card = scorecard(filters)
    rows: list[KPIRow] = []
    if filters.period is not None and filters.entity is not None:
        _, previous, _ = value_window(filters.period, filters.grain)
        stored = (
            KPIValue.objects.filter(
                kpi__is_active=True,
                grain=filters.grain,
                entity_id=filters.entity.id,
                scenario__kind=Scenario.Kind.ACTUAL,
                period__in=(filters.period, previous),
            )
            .values(
                *VALUE_FIELDS,
                "kpi__code",
                "kpi__name",
                "kpi__description",
                "kpi__unit",
                "kpi__decimals",
                "kpi__direction",
                "kpi__owner_department__name",
                "kpi__sort_order",
            )
            .order_by("kpi__sort_order", "kpi__code")
        )
        by_kpi: dict[int, KPIRow] = {}
        for value in stored:
            row = by_kpi.get(value["kpi_id"])
            if row is None:
                row = by_kpi[value["kpi_id"]] = kpi_row_from(value, "kpi", role="")
            if value["period"] == filters.period:
                row.current = value
            else:
                row.previous = value
        rows = list(by_kpi.values())
    changed = [
        row
        for row in rows
        if row.current and row.previous and row.current["status"] != row.previous["status"]
    ]
    changed.sort(key=lambda row: (-STATUS_RANK[row.status], row.name))
    movers = sorted(
        (movement for row in rows if (movement := _movement(row)) is not None),
        key=lambda movement: -abs(movement.change),
    )[:MOVERS]
    runs = list(RefreshRun.objects.filter(status__in=["running", "succeeded"]).order_by("-started_at")[:5])
    return Overview(
        filters=filters,
        card=card,
        rows=rows,
        changed_status=changed,
        movers=movers,
        running=next((run for run in runs if run.status == "running"), None),
        last_refresh=next((run for run in runs if run.status == "succeeded"), None),
    )


def _movement(row: KPIRow) -> Movement | None:
    now = row.current["value"] if row.current else None
    before = row.previous["value"] if row.previous else None
    if now is None or before is None or before == 0 or (now < 0) != (before < 0):
        return None  # no base, or a sign change (a variance turning around): not a relative move
    change = float((now - before) / abs(before))
    better = None if row.direction == "band" else (change > 0) == (row.direction == "higher")
    return Movement(row=row, change=change, better=better)
