"""The metric layer: measures over facts, KPI definitions with formulas, targets and the
stored values the pages read.

    facts --aggregate--> MeasureValue --formulas--> KPIValue (with target, status, lineage)

Definitions are edited in the admin through services (kpis/services.py) that validate the
formula and record every change; nothing here computes in ``save()``.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from finops.models import Account, Department, Entity, OperationalSeries, RefreshRun, Scenario

identifier_validator = RegexValidator(
    r"^[a-z_][a-z0-9_]{0,63}$",
    "Use lower-case letters, digits and '_', starting with a letter (this is the name used in formulas).",
)

GRAIN_CHOICES = [("month", "Month"), ("quarter", "Quarter"), ("year", "Year")]


# A measure is a flow or a balance exactly as accounts are.
TimeBehaviour = Account.TimeBehaviour


class Measure(models.Model):
    """A named aggregation over the facts, computed for every scenario, entity and month.

    Financial measures roll up one or more account subtrees: each leaf's amount times the product of
    the roll-up signs on its path up to (not including) the named account, so "Net Sales" is
    gross sales minus returns and discounts, and "Total Cost of Sales" is a positive cost.
    Operational measures sum a series' values or counts.
    """

    class Kind(models.TextChoices):
        ACCOUNT = "account", "Account roll-up (financial facts)"
        SERIES_VALUE = "series_value", "Sum of a series' values (operational facts)"
        SERIES_COUNT = "series_count", "Count of a series' observations (operational facts)"

    code = models.CharField(max_length=64, unique=True, validators=[identifier_validator])
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=12, choices=Kind.choices)
    accounts = models.ManyToManyField(
        Account,
        blank=True,
        help_text="Roots of the account subtrees rolled up and added (usually one; one per chart of "
        "accounts when several companies share the database).",
    )
    series = models.ForeignKey(OperationalSeries, null=True, blank=True, on_delete=models.PROTECT)
    department = models.ForeignKey(
        Department,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        help_text="Only facts of this department and the departments under it (financial measures).",
    )
    scenario = models.ForeignKey(
        Scenario,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        help_text="Always read this scenario (e.g. a budget measure). Empty: the scenario being computed.",
    )
    time_behaviour = models.CharField(max_length=8, choices=TimeBehaviour.choices)
    unit = models.CharField(max_length=12, default="currency")
    # Negative multipliers let a measure read a credit balance as a positive number.
    multiplier = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("1"))
    updated_at = models.DateTimeField(auto_now=True)  # a changed measure makes the next refresh full

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} ({self.name})"


class KPI(models.Model):
    """A KPI definition: a formula over measures and other KPIs, with unit, direction and
    thresholds. ``formula_version`` increases with every change of the formula."""

    class Unit(models.TextChoices):
        CURRENCY = "currency", "Currency"
        PERCENT = "percent", "Percent"
        DAYS = "days", "Days"
        RATIO = "ratio", "Ratio"
        COUNT = "count", "Count"
        SCORE = "score", "Score (points)"

    class Direction(models.TextChoices):
        HIGHER = "higher", "Higher is better"
        LOWER = "lower", "Lower is better"
        BAND = "band", "Within a band"

    class TargetRule(models.TextChoices):
        BUDGET = "budget", "The budget scenario's value of this KPI"
        LAST_YEAR_PLUS = "last_year_plus", "Same period last year plus a percentage"
        MANUAL = "manual", "Typed in or imported only"

    code = models.CharField(max_length=64, unique=True, validators=[identifier_validator])
    name = models.CharField(max_length=200)
    description = models.TextField(
        blank=True, help_text="What it means, in plain words for the other department."
    )
    convention = models.TextField(blank=True, help_text="Which convention is used where sources disagree.")
    owner_department = models.ForeignKey(Department, null=True, blank=True, on_delete=models.SET_NULL)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    unit = models.CharField(max_length=10, choices=Unit.choices)
    direction = models.CharField(max_length=8, choices=Direction.choices, default=Direction.HIGHER)
    formula = models.TextField()
    formula_version = models.PositiveIntegerField(default=1)
    decimals = models.PositiveSmallIntegerField(default=1, help_text="Decimals shown.")
    is_active = models.BooleanField(default=True)
    is_library = models.BooleanField(default=False, help_text="Shipped with the standard KPI library.")
    sort_order = models.IntegerField(default=0)

    # Targets and status.
    target_rule = models.CharField(max_length=16, choices=TargetRule.choices, default=TargetRule.BUDGET)
    target_rule_pct = models.DecimalField(
        max_digits=7,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="For 'last year plus': the percentage.",
    )
    green_tolerance_pct = models.DecimalField(
        max_digits=6,
        decimal_places=2,
        default=Decimal("0"),
        help_text="Still green when this many percent on the wrong side of target.",
    )
    amber_tolerance_pct = models.DecimalField(
        max_digits=6,
        decimal_places=2,
        default=Decimal("5"),
        help_text="Amber (not red) up to this many percent on the wrong side of target.",
    )
    band_low = models.DecimalField(max_digits=20, decimal_places=6, null=True, blank=True)
    band_high = models.DecimalField(max_digits=20, decimal_places=6, null=True, blank=True)

    class Meta:
        verbose_name = "KPI"
        ordering = ["sort_order", "code"]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class KPIChange(models.Model):
    """One change to a KPI definition: who, when, and each field's old and new value."""

    kpi = models.ForeignKey(KPI, on_delete=models.CASCADE, related_name="changes")
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    changed_at = models.DateTimeField(auto_now_add=True)
    formula_version = models.PositiveIntegerField()
    changes = models.JSONField(help_text="{field: [old, new]}")

    class Meta:
        ordering = ["-changed_at", "-pk"]
        verbose_name = "KPI change"

    def __str__(self) -> str:
        return f"{self.kpi_id} v{self.formula_version} {self.changed_at:%Y-%m-%d %H:%M}"


class Target(models.Model):
    """A target typed in or imported for a KPI, period and grain (optionally one entity).

    Targets given here win over the KPI's target rule for the same period.
    """

    class Origin(models.TextChoices):
        TYPED = "typed", "Typed in"
        IMPORTED = "imported", "Imported from a file"

    kpi = models.ForeignKey(KPI, on_delete=models.CASCADE, related_name="targets")
    entity = models.ForeignKey(
        Entity, null=True, blank=True, on_delete=models.CASCADE, help_text="Empty: all."
    )
    grain = models.CharField(max_length=8, choices=GRAIN_CHOICES, default="month")
    period = models.DateField(help_text="First day of the month, quarter or (fiscal) year.")
    value = models.DecimalField(max_digits=20, decimal_places=6)
    origin = models.CharField(max_length=10, choices=Origin.choices, default=Origin.TYPED)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["kpi", "entity", "grain", "period"],
                condition=models.Q(entity__isnull=False),
                name="target_natural_key_entity",
            ),
            models.UniqueConstraint(
                fields=["kpi", "grain", "period"],
                condition=models.Q(entity__isnull=True),
                name="target_natural_key_all_entities",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kpi_id} {self.grain} {self.period}: {self.value}"


# How stored values refer to what they are of. The engine writes tens of thousands of them per
# recompute, so the references are kept by the engine rather than by per-row foreign-key
# triggers: it reads the definitions and dimensions inside its transaction, which holds their
# tables in SHARE mode until it commits (``kpis.engine.recompute``), so none of them can go
# or change under it; deleting a KPI, measure, entity or scenario still deletes its values
# (Django's CASCADE), and deleting a run clears the values' reference to it (SET_NULL). The
# natural-key unique constraints start with the KPI or measure and the (scenario, entity, ...)
# indexes with the scenario; the other references have no index of their own.
VALUE_REFERENCE = {"on_delete": models.CASCADE, "db_constraint": False, "db_index": False}
RUN_REFERENCE = {
    "null": True,
    "on_delete": models.SET_NULL,
    "related_name": "+",
    "db_constraint": False,
    "db_index": False,
}


class MeasureValue(models.Model):
    """A measure's value for one scenario, entity node, grain and period (what KPIs read)."""

    measure = models.ForeignKey(Measure, **VALUE_REFERENCE)
    scenario = models.ForeignKey(Scenario, **VALUE_REFERENCE)
    entity = models.ForeignKey(Entity, **VALUE_REFERENCE)
    grain = models.CharField(max_length=8, choices=GRAIN_CHOICES)
    period = models.DateField()
    value = models.DecimalField(max_digits=24, decimal_places=6, null=True)
    note = models.CharField(max_length=300, blank=True, help_text="Why the value is empty or partial.")
    refresh_run = models.ForeignKey(RefreshRun, **RUN_REFERENCE)

    class Meta:
        constraints = [
            # Grain and period before scenario and entity: the engine reads the values of some
            # measures over a range of periods, which is then one range of this index.
            models.UniqueConstraint(
                fields=["measure", "grain", "period", "scenario", "entity"], name="measurevalue_natural_key"
            )
        ]
        indexes = [models.Index(fields=["scenario", "entity", "grain", "period"])]

    def __str__(self) -> str:
        return f"{self.measure_id} {self.grain} {self.period}: {self.value}"


class StoredSeries(models.Model):
    """The shape of one (measure, scenario, entity) series of stored measure values, kept by
    the engine with them, in the same transaction (``kpis.engine._Summary``): the months it
    has a stored month value for, as runs ``[first, last]`` of month numbers (year * 12 +
    month - 1), and the ``[grain, month number]`` of its stored values that are partial. A
    recompute after some months changed reads these few rows, not every stored value."""

    measure = models.ForeignKey(Measure, **VALUE_REFERENCE)
    scenario = models.ForeignKey(Scenario, **VALUE_REFERENCE)
    entity = models.ForeignKey(Entity, **VALUE_REFERENCE)
    months = models.JSONField(default=list)
    partial = models.JSONField(default=list)
    fiscal_start = models.PositiveSmallIntegerField(
        help_text="The month fiscal years started in when its quarters and years were derived."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["measure", "scenario", "entity"], name="storedseries_natural_key")
        ]

    def __str__(self) -> str:
        return f"{self.measure_id} {self.scenario_id} {self.entity_id}: {self.months}"


class StoredKPIState(models.Model):
    """One kind of stored value a KPI has for a scenario and entity, kept by the engine with the
    values, in the same transaction: the formula version they were computed with, whether their
    target was typed, and whether they are budget values (the targets themselves). What a
    refresh must know to trust the stored values (``kpis.engine._Trust``), without reading
    them all."""

    kpi = models.ForeignKey(KPI, related_name="+", **VALUE_REFERENCE)
    scenario = models.ForeignKey(Scenario, **VALUE_REFERENCE)
    entity = models.ForeignKey(Entity, **VALUE_REFERENCE)  # deleting an entity deletes its kinds
    formula_version = models.PositiveIntegerField()
    typed = models.BooleanField()
    budget = models.BooleanField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["kpi", "scenario", "entity", "formula_version", "typed", "budget"],
                name="storedkpistate_natural_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kpi_id} {self.scenario_id} v{self.formula_version}"


class KPIValue(models.Model):
    """A KPI's stored value with its target, variance, status and lineage."""

    class Status(models.TextChoices):
        GREEN = "green", "On target"
        AMBER = "amber", "Watch"
        RED = "red", "Off target"
        NONE = "none", "No target"

    kpi = models.ForeignKey(KPI, related_name="values", **VALUE_REFERENCE)
    scenario = models.ForeignKey(Scenario, **VALUE_REFERENCE)
    entity = models.ForeignKey(Entity, **VALUE_REFERENCE)
    grain = models.CharField(max_length=8, choices=GRAIN_CHOICES)
    period = models.DateField()
    value = models.DecimalField(max_digits=24, decimal_places=6, null=True)
    empty_reason = models.CharField(max_length=300, blank=True)
    target = models.DecimalField(max_digits=24, decimal_places=6, null=True)
    target_origin = models.CharField(max_length=20, blank=True)
    variance = models.DecimalField(max_digits=24, decimal_places=6, null=True)
    variance_pct = models.FloatField(null=True)
    status = models.CharField(max_length=6, choices=Status.choices, default=Status.NONE)
    status_reason = models.CharField(max_length=300, blank=True)
    partial = models.BooleanField(default=False, help_text="Not every month of the period is loaded yet.")
    refresh_run = models.ForeignKey(RefreshRun, **RUN_REFERENCE)
    formula_version = models.PositiveIntegerField()
    inputs = models.JSONField(
        default=dict, help_text="{name: value} of the measures and KPIs it was computed from."
    )

    class Meta:
        verbose_name = "KPI value"
        constraints = [
            models.UniqueConstraint(
                fields=["kpi", "scenario", "entity", "grain", "period"], name="kpivalue_natural_key"
            )
        ]
        indexes = [models.Index(fields=["scenario", "entity", "grain", "period"])]

    def __str__(self) -> str:
        return f"{self.kpi_id} {self.grain} {self.period}: {self.value}"
