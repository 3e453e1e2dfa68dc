"""Goal scores: a weighted reading of the stored KPI statuses, rolled up through the goal tree.

A KPI on target counts 100 points, one to watch 50, one off target 0; a KPI without a value or
a target does not count (the score says how many did). A goal's score is the weighted mean of
its own KPIs and of its child goals' scores, each with its weight. Pure functions: no database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

STATUS_POINTS = {"green": 100.0, "amber": 50.0, "red": 0.0}
# Score bands for the colour of a goal: the same three words as KPI statuses.
GREEN_FROM = 80.0
AMBER_FROM = 50.0


@dataclass(frozen=True)
class GoalNode:
    id: int
    parent_id: int | None
    weight: Decimal
    kpis: tuple[tuple[int, Decimal], ...]  # (kpi id, weight)


@dataclass
class Score:
    value: float | None
    counted: int = 0  # KPIs with a status that counted, in this goal and below
    uncounted: int = 0  # KPIs without a value or target
    reasons: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.value is None:
            return "none"
        if self.value >= GREEN_FROM:
            return "green"
        return "amber" if self.value >= AMBER_FROM else "red"

    @property
    def explanation(self) -> str:
        if self.value is None:
            return "No KPI of this goal has a value and a target for the period."
        text = f"{self.value:.0f} of 100 from {self.counted} KPI{'s' if self.counted != 1 else ''}"
        if self.uncounted:
            text += f"; {self.uncounted} without a value or target not counted"
        return text + "."


def goal_scores(goals: Iterable[GoalNode], statuses: Mapping[int, str]) -> dict[int, Score]:
    """Score every goal from its KPIs' statuses (by KPI id) and its children's scores."""
    nodes = {goal.id: goal for goal in goals}
    children: dict[int, list[int]] = {}
    for goal in nodes.values():
        if goal.parent_id in nodes:
            children.setdefault(goal.parent_id, []).append(goal.id)
    scores: dict[int, Score] = {}

    def visit(goal_id: int, path: frozenset[int]) -> Score:
        if goal_id in scores:
            return scores[goal_id]
        goal = nodes[goal_id]
        total = weights = 0.0
        counted = uncounted = 0
        for kpi_id, weight in goal.kpis:
            points = STATUS_POINTS.get(statuses.get(kpi_id, "none"))
            if points is None:
                uncounted += 1
                continue
            total += points * float(weight)
            weights += float(weight)
            counted += 1
        for child_id in children.get(goal_id, []):
            if child_id in path:  # a cycle in bad data: ignore the back edge
                continue
            child = visit(child_id, path | {child_id})
            counted += child.counted
            uncounted += child.uncounted
            if child.value is not None:
                total += child.value * float(nodes[child_id].weight)
                weights += float(nodes[child_id].weight)
        value = total / weights if weights else None
        scores[goal_id] = Score(value=value, counted=counted, uncounted=uncounted)
        return scores[goal_id]

    for goal_id in nodes:
        visit(goal_id, frozenset({goal_id}))
    return scores
