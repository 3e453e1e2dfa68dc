"""Stored KPI values and goals built in code: the scorecard reads only these."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from alignment.models import Goal, GoalKPI
from finops.models import Department, Entity, Scenario
from finops.periods import add_months
from kpis.models import KPI, KPIValue


class Board:
    """Group > US; Finance and Operations departments; KPIs with monthly values."""

    def __init__(self) -> None:
        self.group = Entity.objects.create(code="G", name="Group", currency="USD")
        self.us = Entity.objects.create(code="US", name="US Inc", currency="USD", parent=self.group)
        self.finance = Department.objects.create(code="FIN", name="Finance", side=Department.Side.FINANCE)
        self.ops = Department.objects.create(code="OPS", name="Operations", side=Department.Side.OPERATIONS)
        self.actual = Scenario.objects.create(code="actual", name="Actual", kind=Scenario.Kind.ACTUAL)
        self.budget = Scenario.objects.create(code="budget", name="Budget", kind=Scenario.Kind.BUDGET)

    def kpi(self, code: str, *, unit: str = "currency", department: Department | None = None, **extra) -> KPI:
        return KPI.objects.create(
            code=code,
            name=code.replace("_", " ").title(),
            unit=unit,
            formula="1",
            owner_department=department,
            **extra,
        )

    def values(
        self,
        kpi: KPI,
        first: date,
        numbers: list[str | None],
        *,
        target: str | None = None,
        status: str = "none",
        grain: str = "month",
        entity: Entity | None = None,
        step: int = 1,
    ) -> None:
        KPIValue.objects.bulk_create(
            KPIValue(
                kpi=kpi,
                scenario=self.actual,
                entity=entity or self.group,
                grain=grain,
                period=add_months(first, i * step),
                value=Decimal(number) if number is not None else None,
                target=Decimal(target) if target is not None else None,
                variance=(Decimal(number) - Decimal(target))
                if number is not None and target is not None
                else None,
                status=status,
                status_reason=f"{kpi.code} is {status}",
                formula_version=1,
            )
            for i, number in enumerate(numbers)
        )

    def goal(
        self, code: str, *, parent: Goal | None = None, department=None, year: int = 2025, **extra
    ) -> Goal:
        return Goal.objects.create(
            code=code,
            title=f"Goal {code}",
            parent=parent,
            department=department,
            period_start=date(year, 1, 1),
            period_end=date(year, 12, 1),
            **extra,
        )

    def link(self, goal: Goal, kpi: KPI, role: str = "outcome", **extra) -> GoalKPI:
        return GoalKPI.objects.create(goal=goal, kpi=kpi, role=role, **extra)
