"""The data layer: who the company is (entities, departments), how its books are laid out
(chart of accounts, operational series, scenarios), where data comes from (data sources,
refresh runs) and the facts loaded from them.

Facts hold only additive numbers (amounts; sums and counts) at month grain, unique on their
natural key per source, so loading is an idempotent replace of a source's periods.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.text import get_valid_filename

from finops.periods import PeriodRule

code_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", "Use letters, digits, '_', '-' or '.', starting with a letter or digit."
)
currency_validator = RegexValidator(r"^[A-Z]{3}$", "Use a three-letter ISO 4217 code such as USD.")

MONEY_DIGITS = 20
MONEY_PLACES = 4


class Entity(models.Model):
    """A legal or management entity in the organization tree, with its reporting currency."""

    code = models.CharField(max_length=40, unique=True, validators=[code_validator])
    name = models.CharField(max_length=200)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    currency = models.CharField(max_length=3, default="USD", validators=[currency_validator])
    ownership_pct = models.DecimalField(
        "ownership %",
        max_digits=5,
        decimal_places=2,
        default=Decimal("100"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("100"))],
        help_text="Share of this entity owned by its parent, in percent.",
    )

    class Meta:
        verbose_name_plural = "entities"
        ordering = ["code"]

    def __str__(self) -> str:
        return self.name


class Department(models.Model):
    """A department in the organization; its side says whose scorecard its KPIs belong to."""

    class Side(models.TextChoices):
        FINANCE = "finance", "Finance"
        OPERATIONS = "operations", "Operations"
        OTHER = "other", "Other"

    code = models.CharField(max_length=40, unique=True, validators=[code_validator])
    name = models.CharField(max_length=200)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    side = models.CharField(max_length=12, choices=Side.choices, default=Side.OTHER)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.name


class Scenario(models.Model):
    """Actual, budget, forecast, or a scenario a user adds (for example a what-if)."""

    class Kind(models.TextChoices):
        ACTUAL = "actual", "Actual"
        BUDGET = "budget", "Budget"
        FORECAST = "forecast", "Forecast"
        OTHER = "other", "Other"

    code = models.CharField(max_length=40, unique=True, validators=[code_validator])
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.OTHER)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.name


class Account(models.Model):
    """A node of the chart of accounts. Facts are booked on leaves; totals roll up the tree.

    ``rollup_sign`` says how the account rolls into its parent: +1 adds, -1 subtracts,
    0 leaves it out (statistical accounts such as headcount).
    """

    class Type(models.TextChoices):
        ASSET = "asset", "Asset"
        LIABILITY = "liability", "Liability"
        EQUITY = "equity", "Equity"
        REVENUE = "revenue", "Revenue"
        EXPENSE = "expense", "Expense"
        STATISTICAL = "statistical", "Statistical"

    class TimeBehaviour(models.TextChoices):
        FLOW = "flow", "Flow (a quarter sums its months)"
        BALANCE = "balance", "Balance (a quarter takes its last month)"

    class Unit(models.TextChoices):
        CURRENCY = "currency", "Currency"
        UNITS = "units", "Units"

    code = models.CharField(max_length=40, unique=True, validators=[code_validator])
    name = models.CharField(max_length=200)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    account_type = models.CharField("type", max_length=12, choices=Type.choices)
    time_behaviour = models.CharField(max_length=8, choices=TimeBehaviour.choices)
    rollup_sign = models.SmallIntegerField(
        choices=[(1, "+ adds to parent"), (-1, "- subtracts from parent"), (0, "~ left out")], default=1
    )
    unit = models.CharField(max_length=10, choices=Unit.choices, default=Unit.CURRENCY)
    sort_order = models.IntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "code"]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"

    @property
    def operator(self) -> str:
        return {1: "+", -1: "-", 0: "~"}[self.rollup_sign]


class OperationalSeries(models.Model):
    """A kind of operational observation, such as orders delivered on time or call minutes."""

    code = models.CharField(max_length=60, unique=True, validators=[code_validator])
    name = models.CharField(max_length=200)
    unit = models.CharField(
        max_length=30, blank=True, help_text="Unit of the summed value, e.g. orders, minutes."
    )
    time_behaviour = models.CharField(
        max_length=8, choices=Account.TimeBehaviour.choices, default=Account.TimeBehaviour.FLOW
    )
    description = models.TextField(blank=True)

    class Meta:
        verbose_name_plural = "operational series"
        ordering = ["code"]

    def __str__(self) -> str:
        return self.name


class DataSource(models.Model):
    """Where facts come from. Facts remember their source so a reload replaces only its rows."""

    class Kind(models.TextChoices):
        FILE = "file", "File (CSV, XLSX)"
        SQL = "sql", "SQL database"
        HTTP = "http", "HTTP JSON API"
        DEMO = "demo", "Built-in demo company"
        ADVENTUREWORKS = "adventureworks", "AdventureWorksDW export"

    slug = models.SlugField(max_length=60, unique=True)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    config = models.JSONField(
        default=dict, blank=True, help_text="Connector settings; secrets are never stored here."
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def _source_file_path(instance: SourceFile, filename: str) -> str:
    """Uploads live under MEDIA_ROOT/sources/<slug>/, stamped so a new upload never replaces
    an old file on disk."""
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    return f"sources/{instance.source.slug}/{stamp}-{get_valid_filename(Path(filename).name)}"


class SourceFile(models.Model):
    """A file uploaded for a file data source. The newest upload is what the source loads
    (unless its config names a path); older ones are kept as the record of what was loaded."""

    source = models.ForeignKey(DataSource, on_delete=models.CASCADE, related_name="files")
    file = models.FileField(upload_to=_source_file_path, max_length=300)
    original_name = models.CharField(max_length=255)
    size = models.BigIntegerField(default=0, help_text="Bytes.")
    sha256 = models.CharField("SHA-256", max_length=64, blank=True)
    uploaded_at = models.DateTimeField(auto_now_add=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-uploaded_at", "-pk"]

    def __str__(self) -> str:
        return self.original_name

    def delete(self, *args, **kwargs):
        """Deleting the record deletes the stored file too."""
        storage, name = self.file.storage, self.file.name
        result = super().delete(*args, **kwargs)
        if name:
            storage.delete(name)
        return result


class RefreshRun(models.Model):
    """One run of the refresh pipeline (or of one source's import), with its figures."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    class Trigger(models.TextChoices):
        COMMAND = "command", "Command line"
        SCHEDULE = "schedule", "Nightly schedule"
        MANUAL = "manual", "Refresh now"

    source = models.ForeignKey(
        DataSource, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.COMMAND)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    rows_read = models.BigIntegerField(default=0)
    rows_inserted = models.BigIntegerField(default=0)
    rows_updated = models.BigIntegerField(default=0)
    rows_deleted = models.BigIntegerField(default=0)
    rows_rejected = models.BigIntegerField(default=0)
    steps = models.JSONField(default=list, blank=True, help_text="Per-source figures and timings.")
    warnings = models.JSONField(default=list, blank=True)
    errors = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            # The database itself guarantees that two runs never overlap.
            models.UniqueConstraint(
                fields=["status"], condition=Q(status="running"), name="one_running_refresh"
            )
        ]

    def __str__(self) -> str:
        return f"Run {self.pk} ({self.status})"

    @property
    def duration(self):  # noqa: ANN201 - a timedelta or None
        return self.finished_at - self.started_at if self.finished_at else None


class CurrencyRate(models.Model):
    """Monthly rate of one unit of ``currency`` in the group currency: average for flows,
    end of period for balances (the usual translation rule)."""

    currency = models.CharField(max_length=3, validators=[currency_validator])
    period = models.DateField(help_text="First day of the month.")
    average_rate = models.DecimalField(max_digits=20, decimal_places=10)
    end_rate = models.DecimalField(max_digits=20, decimal_places=10)
    source = models.ForeignKey(DataSource, on_delete=models.CASCADE, related_name="currency_rates")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source", "currency", "period"], name="currencyrate_natural_key"),
        ]

    def __str__(self) -> str:
        return f"{self.currency} {self.period:%Y-%m}"


# How a fact row refers to its dimensions. Facts come by the million, so the references are
# kept by the loaders rather than by per-row foreign-key triggers: every code is looked up in
# the dimension tables inside the load's transaction, which holds them in SHARE mode until it
# commits (``finops.loading.lock_dimensions``), so no dimension row can go or change under a
# load; and PROTECT still refuses, in the ORM and the admin, to delete a dimension with facts.
# The natural-key unique constraint starts with the source, and the (scenario, period, ...)
# index with the scenario; the other references have no index of their own (each one more
# would be written for every fact, and only a rare dimension delete would read it).
FACT_REFERENCE = {"on_delete": models.PROTECT, "db_constraint": False, "db_index": False}


class FinancialFact(models.Model):
    """An amount booked on a leaf account, in the entity's currency, for one month."""

    source = models.ForeignKey(DataSource, related_name="financial_facts", **FACT_REFERENCE)
    period = models.DateField(help_text="First day of the month.")
    entity = models.ForeignKey(Entity, **FACT_REFERENCE)
    department = models.ForeignKey(Department, **FACT_REFERENCE)
    scenario = models.ForeignKey(Scenario, **FACT_REFERENCE)
    account = models.ForeignKey(Account, **FACT_REFERENCE)
    amount = models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES)

    class Meta:
        # One index: the natural key, led by (scenario, period), which is also what the reads
        # filter on (ledger totals of some months, a drill-down to the facts of a measure value).
        # A second index would cost every load as much as a fifth of a raw COPY of its file.
        constraints = [
            models.UniqueConstraint(
                fields=["scenario", "period", "source", "entity", "department", "account"],
                name="financialfact_natural_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.period:%Y-%m} {self.account_id} {self.amount}"


class OperationalFact(models.Model):
    """An additive operational observation: a sum and a count, so rates are exact at any grain.

    ``date`` is the day observed when the source has one (else the first of the month);
    ``dimension`` distinguishes rows of one series on one day (a shift, a channel), or is empty.
    """

    source = models.ForeignKey(DataSource, related_name="operational_facts", **FACT_REFERENCE)
    period = models.DateField(help_text="First day of the month.")
    date = models.DateField()
    entity = models.ForeignKey(Entity, **FACT_REFERENCE)
    scenario = models.ForeignKey(Scenario, **FACT_REFERENCE)
    series = models.ForeignKey(OperationalSeries, **FACT_REFERENCE)
    dimension = models.CharField(max_length=100, blank=True, default="")
    value = models.DecimalField(
        max_digits=MONEY_DIGITS, decimal_places=6, help_text="Sum of the observed values."
    )
    count = models.BigIntegerField(default=1, help_text="Number of observations summed.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["source", "scenario", "series", "entity", "date", "dimension"],
                name="operationalfact_natural_key",
            ),
        ]
        indexes = [models.Index(fields=["scenario", "period", "series"])]

    def __str__(self) -> str:
        return f"{self.date} {self.series_id} {self.value}/{self.count}"


class LedgerTotal(models.Model):
    """The financial facts of one month added up per scenario, entity and account (over every
    source and department): what the metric engine reads instead of scanning the facts.

    Kept by ``finops.loading`` for the months each load changes, in the load's transaction, so
    it always equals the sum of the facts (``rebuild_ledger_totals`` recomputes it whole)."""

    period = models.DateField(help_text="First day of the month.")
    entity = models.ForeignKey(Entity, **FACT_REFERENCE)
    scenario = models.ForeignKey(Scenario, **FACT_REFERENCE)
    account = models.ForeignKey(Account, **FACT_REFERENCE)
    amount = models.DecimalField(max_digits=MONEY_DIGITS + 8, decimal_places=MONEY_PLACES)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["period", "scenario", "entity", "account"], name="ledgertotal_natural_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.period:%Y-%m} {self.entity_id} {self.account_id} {self.amount}"


class PeriodCoverage(models.Model):
    """Rows per source, scenario and month, refreshed after each load so the
    Data page reads a few hundred stored rows instead of counting millions of facts."""

    class FactKind(models.TextChoices):
        FINANCIAL = "financial", "Financial"
        OPERATIONAL = "operational", "Operational"

    source = models.ForeignKey(DataSource, on_delete=models.CASCADE, related_name="coverage")
    scenario = models.ForeignKey(Scenario, on_delete=models.CASCADE)
    fact_kind = models.CharField(max_length=12, choices=FactKind.choices)
    period = models.DateField()
    rows = models.BigIntegerField()

    class Meta:
        verbose_name_plural = "period coverage"
        constraints = [
            models.UniqueConstraint(
                fields=["source", "scenario", "fact_kind", "period"], name="periodcoverage_natural_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.source_id} {self.fact_kind} {self.period:%Y-%m}: {self.rows} rows"


PERIOD_RULE_CHOICES = [(rule.value, rule.label) for rule in PeriodRule]


class ApiToken(models.Model):
    """A key for the REST API (``/api/v1/``), for a BI tool or a script acting as ``user``.

    Only the key's SHA-256 digest is stored, and its first characters to tell keys apart; the
    key itself is shown once, when it is made (``finops.api_auth.issue_token``). Deleting the
    token revokes it."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What uses it, e.g. 'Power BI finance workspace'.")
    prefix = models.CharField(max_length=12, editable=False, help_text="The key's first characters.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: it does not expire.")

    class Meta:
        verbose_name = "API token"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
