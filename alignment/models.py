"""Where finance and operations meet: shared goals, the KPIs that measure them, and which
operational KPIs drive which financial ones.

    KPI values (stored by the engine) --> goal links --> goal scores --> scorecards

A company-level goal (no department) is shared by finance and operations; department goals
cascade from it through ``parent``. Each goal names its KPIs with a role: a financial outcome
it is judged by, or an operational driver that moves that outcome. Scores are not stored: they
are a weighted reading of the stored KPI statuses (alignment/scoring.py).
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import F, Q

from finops.models import Department, code_validator
from kpis.models import KPI


class Goal(models.Model):
    """A strategic goal for a period: company level when it has no department."""

    code = models.CharField(max_length=40, unique=True, validators=[code_validator])
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True, help_text="Why it matters, in words both departments share.")
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="children",
        help_text="The goal this one cascades from.",
    )
    department = models.ForeignKey(
        Department,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        help_text="Empty: a shared company-level goal.",
    )
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    period_start = models.DateField(help_text="First month the goal covers.")
    period_end = models.DateField(help_text="Last month the goal covers.")
    weight = models.DecimalField(
        max_digits=6,
        decimal_places=2,
        default=Decimal("1"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text="Weight in the parent goal's score.",
    )
    sort_order = models.IntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)  # part of the published version of pages

    class Meta:
        ordering = ["sort_order", "code"]
        constraints = [
            models.CheckConstraint(
                condition=Q(period_end__gte=F("period_start")), name="goal_period_in_order"
            ),
            models.CheckConstraint(condition=~Q(parent=F("pk")), name="goal_not_its_own_parent"),
        ]

    def __str__(self) -> str:
        return self.title

    @property
    def is_shared(self) -> bool:
        return self.department_id is None

    def clean(self) -> None:
        if self.period_start and self.period_end and self.period_end < self.period_start:
            raise ValidationError({"period_end": "The goal must end on or after the month it starts."})
        ancestor = self.parent
        seen = set()
        while ancestor is not None and ancestor.pk not in seen:
            if self.pk is not None and ancestor.pk == self.pk:
                raise ValidationError(
                    {"parent": "A goal cannot cascade from itself or from a goal under it."}
                )
            seen.add(ancestor.pk)
            ancestor = ancestor.parent


class GoalKPI(models.Model):
    """A KPI that measures a goal: a financial outcome or an operational driver."""

    class Role(models.TextChoices):
        OUTCOME = "outcome", "Financial outcome"
        DRIVER = "driver", "Operational driver"

    goal = models.ForeignKey(Goal, on_delete=models.CASCADE, related_name="links")
    kpi = models.ForeignKey(KPI, on_delete=models.CASCADE, related_name="goal_links")
    role = models.CharField(max_length=8, choices=Role.choices)
    weight = models.DecimalField(
        max_digits=6,
        decimal_places=2,
        default=Decimal("1"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text="Weight in the goal's score.",
    )
    target = models.DecimalField(
        max_digits=20,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="What the goal aims for by the end of its period, in the KPI's unit "
        "(percent as a fraction: 0.42 is 42%).",
    )
    sort_order = models.IntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "goal KPI"
        ordering = ["sort_order", "pk"]
        constraints = [models.UniqueConstraint(fields=["goal", "kpi"], name="goalkpi_once_per_goal")]

    def __str__(self) -> str:
        return f"{self.goal_id}: {self.kpi_id} ({self.role})"


class KPIDriver(models.Model):
    """An operational KPI that drives a financial one (on-time delivery drives DSO)."""

    driver = models.ForeignKey(KPI, on_delete=models.CASCADE, related_name="drives")
    outcome = models.ForeignKey(KPI, on_delete=models.CASCADE, related_name="driven_by")
    explanation = models.TextField(blank=True, help_text="How the driver moves the outcome, in plain words.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "KPI driver link"
        ordering = ["outcome", "driver"]
        constraints = [
            models.UniqueConstraint(fields=["driver", "outcome"], name="kpidriver_once"),
            models.CheckConstraint(condition=~Q(driver=F("outcome")), name="kpidriver_not_itself"),
        ]

    def __str__(self) -> str:
        return f"{self.driver_id} drives {self.outcome_id}"

    def clean(self) -> None:
        if self.driver_id and self.driver_id == self.outcome_id:
            raise ValidationError("A KPI cannot drive itself.")
