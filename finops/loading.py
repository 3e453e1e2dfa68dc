"""Writing facts: the one place where fact tables change.

A load replaces one source's facts for the (scenario, period) pairs it covers:

- rows of the load that share a natural key are added up (both rows are real and count);
- a key already stored with the same numbers is left alone, a changed one is updated, a new
  one inserted, and a stored key the load no longer has (removed at the source) is deleted;
- facts of other sources, and of periods the load does not cover, are never touched.

So loading the same input twice changes nothing. Callers validate every row first and wrap
the call in ``transaction.atomic()`` together with the run record, so a load is all or nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from django.db import models

from finops.models import DataSource, FinancialFact, OperationalFact, PeriodCoverage

BATCH_SIZE = 5000


@dataclass
class LoadResult:
    rows_read: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0
    rows_unchanged: int = 0
    changed_periods: set[date] = field(default_factory=set)  # months where any fact changed

    def add(self, other: LoadResult) -> None:
        self.changed_periods |= other.changed_periods
        self.rows_read += other.rows_read
        self.rows_inserted += other.rows_inserted
        self.rows_updated += other.rows_updated
        self.rows_deleted += other.rows_deleted
        self.rows_unchanged += other.rows_unchanged


# (period, entity_id, department_id, scenario_id, account_id) -> amount
FinancialKey = tuple[date, int, int, int, int]
# (date, entity_id, scenario_id, series_id, dimension) -> (value, count)
OperationalKey = tuple[date, int, int, int, str]


def load_financial_facts(
    *, source: DataSource, rows: Iterable[tuple[date, int, int, int, int, Decimal]]
) -> LoadResult:
    """Replace ``source``'s financial facts for the scenario-periods present in ``rows``.

    Each row is (period, entity_id, department_id, scenario_id, account_id, amount); the
    period is the first day of a month.
    """
    incoming: dict[FinancialKey, Decimal] = {}
    read = 0
    for period, entity_id, department_id, scenario_id, account_id, amount in rows:
        read += 1
        key = (period, entity_id, department_id, scenario_id, account_id)
        incoming[key] = incoming.get(key, Decimal(0)) + amount
    scope = {(key[3], key[0]) for key in incoming}
    result = _replace(
        model=FinancialFact,
        source=source,
        scope=scope,
        key_fields=("period", "entity_id", "department_id", "scenario_id", "account_id"),
        value_fields=("amount",),
        incoming={key: (amount,) for key, amount in incoming.items()},
    )
    result.rows_read = read
    return result


def load_operational_facts(
    *, source: DataSource, rows: Iterable[tuple[date, int, int, int, str, Decimal, int]]
) -> LoadResult:
    """Replace ``source``'s operational facts for the scenario-periods present in ``rows``.

    Each row is (date, entity_id, scenario_id, series_id, dimension, value, count).
    """
    incoming: dict[OperationalKey, tuple[Decimal, int]] = {}
    read = 0
    for day, entity_id, scenario_id, series_id, dimension, value, count in rows:
        read += 1
        key = (day, entity_id, scenario_id, series_id, dimension)
        old_value, old_count = incoming.get(key, (Decimal(0), 0))
        incoming[key] = (old_value + value, old_count + count)
    scope = {(key[2], key[0].replace(day=1)) for key in incoming}
    result = _replace(
        model=OperationalFact,
        source=source,
        scope=scope,
        key_fields=("date", "entity_id", "scenario_id", "series_id", "dimension"),
        value_fields=("value", "count"),
        incoming=incoming,
        derived={"period": lambda key: key[0].replace(day=1)},
    )
    result.rows_read = read
    return result


def _replace(
    *,
    model: type[models.Model],
    source: DataSource,
    scope: set[tuple[int, date]],
    key_fields: tuple[str, ...],
    value_fields: tuple[str, ...],
    incoming: dict,
    derived: dict | None = None,
) -> LoadResult:
    result = LoadResult()
    existing: dict[tuple, tuple[int, tuple]] = {}
    periods_by_scenario: dict[int, set[date]] = {}
    for scenario_id, period in scope:
        periods_by_scenario.setdefault(scenario_id, set()).add(period)
    for scenario_id, periods in periods_by_scenario.items():
        stored = model.objects.filter(source=source, scenario_id=scenario_id, period__in=sorted(periods))
        for row in stored.values_list("id", *key_fields, *value_fields).iterator(chunk_size=BATCH_SIZE):
            key = tuple(row[1 : 1 + len(key_fields)])
            existing[key] = (row[0], tuple(row[1 + len(key_fields) :]))

    to_insert, to_update = [], []
    period_of = derived.get("period") if derived else (lambda key: key[0])
    for key, values in incoming.items():
        if not isinstance(values, tuple):
            values = (values,)
        found = existing.pop(key, None)
        if found is None:
            fields = dict(zip(key_fields, key, strict=True)) | dict(zip(value_fields, values, strict=True))
            for name, compute in (derived or {}).items():
                fields[name] = compute(key)
            to_insert.append(model(source=source, **fields))
            result.changed_periods.add(period_of(key))
        elif _differs(found[1], values):
            result.changed_periods.add(period_of(key))
            obj = model(id=found[0])
            for name, value in zip(value_fields, values, strict=True):
                setattr(obj, name, value)
            to_update.append(obj)
        else:
            result.rows_unchanged += 1

    model.objects.bulk_create(to_insert, batch_size=BATCH_SIZE)
    if to_update:
        model.objects.bulk_update(to_update, list(value_fields), batch_size=BATCH_SIZE)
    stale_ids = [found[0] for found in existing.values()]
    result.changed_periods.update(period_of(key) for key in existing)
    for start in range(0, len(stale_ids), BATCH_SIZE):
        model.objects.filter(id__in=stale_ids[start : start + BATCH_SIZE]).delete()
    result.rows_inserted = len(to_insert)
    result.rows_updated = len(to_update)
    result.rows_deleted = len(stale_ids)
    return result


def _differs(stored: tuple, new: tuple) -> bool:
    return any(Decimal(str(a)) != Decimal(str(b)) for a, b in zip(stored, new, strict=True))


def record_coverage(*, source: DataSource) -> int:
    """Recount ``source``'s facts per scenario and month into PeriodCoverage (two GROUP BYs)."""
    PeriodCoverage.objects.filter(source=source).delete()
    rows = []
    for kind, model in (
        (PeriodCoverage.FactKind.FINANCIAL, FinancialFact),
        (PeriodCoverage.FactKind.OPERATIONAL, OperationalFact),
    ):
        grouped = (
            model.objects.filter(source=source)
            .values("scenario_id", "period")
            .annotate(rows=models.Count("id"))
            .order_by()
        )
        rows.extend(PeriodCoverage(source=source, fact_kind=kind, **group) for group in grouped)
    PeriodCoverage.objects.bulk_create(rows, batch_size=BATCH_SIZE)
    return len(rows)
