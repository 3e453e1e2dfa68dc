"""The computation engine: facts -> measure values -> KPI values, with targets and statuses.

1. Aggregate the facts in the database into monthly measure totals per entity
   (``kpis.aggregate``: one scan per fact table).
2. Roll entities up their tree; an amount in another currency is translated into the
   node's currency first (average rate for flows, period-end rate for balances), and a
   missing rate leaves the node's value empty with the reason, never a wrong sum.
3. Derive quarters and years (fiscal) from the months: flows sum, balances take the last
   month. A KPI at quarter grain is then computed from the quarter's measures, never as an
   average of monthly ratios.
4. Evaluate every KPI formula over all periods at once with pandas and numpy, once over one
   frame that stacks every grain's series of every scenario and entity (the evaluator keeps
   the series apart, each at its own grain), in dependency order.
5. Attach targets (typed or imported, else the KPI's rule: budget, or last year plus N %),
   variance and status, and store everything in one transaction, writing only the values
   that changed. Readers see the previous complete values until the transaction commits.
   On PostgreSQL the rows are streamed with COPY, made a chunk at a time as the server reads
   them (targets and statuses included), and a full recompute evaluates the formulas on a
   second thread while this one writes the measure values (``_InBackground``): the server
   parses one set of rows while Python computes the next.

After a load that changed some months only, ``recompute(months=...)`` re-aggregates just
those months from the facts and reads the other months' measure values from storage.

Work in proportion to what changed: when the last refresh succeeded and no definition
changed since (``_Trust``: KPI history, targets, measures, fiscal year, budget scenario), the
stored values are trusted. A recompute then finds the months whose measure values actually
changed and re-derives, evaluates and writes only what they can reach (``_Reach``): their
quarter and year, and the periods whose formulas look back at them (``lookback``) or whose
last-year target does, reading just the stored values those formulas need. Only the measure
values that differ are written; when no value appeared or went, a KPI that reads none of the
changed measures (directly or through other KPIs) is not evaluated at all. A KPI whose
definition changed is recomputed for every period. A full recompute over unchanged facts
thus writes nothing and costs little more than its one scan of the facts.

What the trust and the reach need to know of the values a recompute does not read (which
kinds of KPI value are stored, each measure series' months and partial periods) the engine
keeps beside them, in the same transaction as the values (``StoredKPIState``,
``StoredSeries``): a recompute after one month changed reads a few hundred rows there instead
of scanning every stored value. ``FINOPS_ENGINE_SELF_CHECK`` (on in the tests) checks them
against the values after each recompute.

The definitions (measures, KPIs and their parsed formulas, entities, scenarios, how accounts
add up to measures) are read into a ``_Book``, which a worker keeps and hands to its next
recompute as long as the database's fingerprint of those tables is the same (one query on
PostgreSQL; anything that writes to them, the admin, an import, a loader's new account,
changes it).

Python's cycle collector is off during a recompute (``_no_cycle_collection``): the many
small acyclic objects it makes would otherwise set off collections of the whole heap.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import json
import logging
import math
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Generic, TypeVar

import numpy as np
import pandas as pd
from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.db import connection, models, transaction
from psycopg2.extras import execute_values

from finops.loading import lock_for_reading
from finops.models import Account, CurrencyRate, Department, Entity, RefreshRun, Scenario
from finops.periods import add_months, grain_months, grain_start, month_range
from kpis.aggregate import AccountRow, account_mapping, financial_totals, operational_totals
from kpis.formatting import Separators, separators
from kpis.formula import EvalContext, Formula, Layout, evaluate_in_order, evaluation_order, lookback, parse
from kpis.models import KPI, KPIChange, KPIValue, Measure, MeasureValue, StoredKPIState, StoredSeries, Target
from kpis.status import Thresholds, status_for, variance

log = logging.getLogger(__name__)
T = TypeVar("T")

GRAINS = ("month", "quarter", "year")
STEP = {"month": 1, "quarter": 3, "year": 12}
ADDITIVE_UNITS = {"currency", "count"}
VALUE_PLACES = Decimal("0.000001")
BATCH = 5000
KEYS_PER_STATEMENT = 300  # rows deleted by key per statement
BUDGET_REASON = "Budget values are targets themselves."

# (measure_id, scenario_id, entity_id, grain, period) -> (value or None, note)
MeasureKey = tuple[int, int, int, str, date]
KPIKey = tuple[int, int, int, str, date]
Values = dict[MeasureKey, tuple[Decimal | None, str]]


@dataclass
class EngineResult:
    measure_values: int = 0
    kpi_values: int = 0
    kpi_inserted: int = 0
    kpi_updated: int = 0
    kpi_deleted: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _Tree:
    entities: dict[int, Entity]
    subtree: dict[int, list[int]]  # node -> every entity in its subtree, itself included


@dataclass
class _Book:
    """The definitions a recompute works from: measures, active KPIs, entities, scenarios and
    how the ledger's accounts add up to measures. Only read (``load`` hands the same book to
    the recomputes of a worker while the definitions stay the same)."""

    measures: list[Measure]
    kpis: list[KPI]
    formulas: dict[str, Formula]
    order: list[str]  # KPI codes, each after the KPIs its formula uses
    fiscal_start: int
    tree: _Tree
    scenarios: dict[int, Scenario]
    accounts: list[AccountRow]  # see ``account_mapping``
    _contexts: dict[str, EvalContext] = field(default_factory=dict)
    _lookbacks: dict[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def load(cls) -> _Book:
        """The book of the definitions as stored. A worker keeps the last one it read and
        hands it out again while the database's fingerprint of the tables it comes from is
        the same (on PostgreSQL): the recomputes of a worker read and build it once."""
        fingerprint = _definitions_fingerprint()
        kept = _KEPT_BOOKS.get(connection.alias)
        if fingerprint is not None and kept is not None and kept[0] == fingerprint:
            return kept[1]
        book = cls.read()
        if fingerprint is not None:
            _KEPT_BOOKS[connection.alias] = (fingerprint, book)
        return book

    @classmethod
    def read(cls) -> _Book:
        measures = list(Measure.objects.all())
        kpis = list(KPI.objects.filter(is_active=True))
        formulas = {kpi.code: _parse(kpi.formula) for kpi in kpis}
        order = list(_order(tuple((kpi.code, kpi.formula) for kpi in kpis)))
        return cls(
            measures,
            kpis,
            formulas,
            order,
            settings.FISCAL_YEAR_START_MONTH,
            _entity_tree(),
            {scenario.pk: scenario for scenario in Scenario.objects.all()},
            account_mapping(measures),
        )

    @functools.cached_property
    def by_code(self) -> dict[str, KPI]:
        return {kpi.code: kpi for kpi in self.kpis}

    @functools.cached_property
    def behaviour_of(self) -> dict[int, str]:
        return {m.pk: m.time_behaviour for m in self.measures}

    @functools.cached_property
    def behaviours(self) -> dict[str, str]:
        return {m.code: m.time_behaviour for m in self.measures}

    @functools.cached_property
    def reads(self) -> dict[str, set[str]]:
        """The measures each KPI reads, directly or through the KPIs it uses."""
        measures = {m.code for m in self.measures}
        out: dict[str, set[str]] = {}
        for code in self.order:  # each KPI comes after the KPIs it uses
            names = self.formulas[code].names
            out[code] = (names & measures).union(*(out[name] for name in names if name in out))
        return out

    @functools.cached_property
    def versions(self) -> dict[int, int]:
        """The formula version of each KPI, by id."""
        return {kpi.pk: kpi.formula_version for kpi in self.kpis}

    @functools.cached_property
    def fixed_scenario(self) -> dict[str, int]:
        """Measures that always read one scenario (a budget measure), by code."""
        return {m.code: m.scenario_id for m in self.measures if m.scenario_id}

    def lookback(self, code: str, grain: str) -> int:
        """How many periods back a KPI's formula reads at a grain (see ``formula.lookback``)."""
        found = self._lookbacks.get((code, grain))
        if found is None:
            found = self._lookbacks[(code, grain)] = lookback(self.formulas[code], self.context(grain))
        return found

    def context(self, grain: str, missing: dict | None = None) -> EvalContext:
        if not missing:  # one for each grain (an EvalContext checks its behaviours as it is made)
            found = self._contexts.get(grain)
            if found is None:
                found = self._contexts[grain] = self._context(grain, {})
            return found
        return self._context(grain, missing)

    def _context(self, grain: str, missing: dict) -> EvalContext:
        return EvalContext(
            grain=grain,
            fiscal_year_start_month=self.fiscal_start,
            behaviours=self.behaviours,
            definitions=self.formulas,
            missing_columns=missing,
        )


# The tables a book is read from; any change to one of them (the admin's, an import's, a
# loader's new account) changes their fingerprint.
BOOK_TABLES = (KPI, Measure, Measure.accounts.through, Entity, Account, Department, Scenario)
_KEPT_BOOKS: dict[str, tuple[tuple, _Book]] = {}  # per database alias: (fingerprint, book)


def forget_kept_definitions() -> None:
    """Forget the books this worker keeps: its next recompute reads the definitions, as a
    worker's first one does."""
    _KEPT_BOOKS.clear()


def _definitions_fingerprint() -> tuple | None:
    """A fingerprint of the stored definitions (None: not on PostgreSQL), in one query: each
    table's row count and the sum of a 64-bit hash of each row's text, which any insert,
    update or delete changes (two different contents share one with a chance of 2^-64); and
    the fiscal year's first month, a setting."""
    if connection.vendor != "postgresql":
        return None
    parts = ", ".join(
        f"(SELECT (count(*), sum(hashtextextended(t::text, 0)))::text FROM {model._meta.db_table} t)"  # noqa: S608
        for model in BOOK_TABLES
    )
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {parts}")  # noqa: S608 - our own table names only
        return (*cursor.fetchone(), settings.FISCAL_YEAR_START_MONTH)


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Formula:
    """Formulas are immutable: a worker parses each text once."""
    return parse(text)


@functools.lru_cache(maxsize=64)
def _order(definitions: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """KPI codes of these (code, formula text) definitions in evaluation order: a worker works
    it out once for each set of definitions. Raises CycleError (not remembered)."""
    formulas = {code: _parse(text) for code, text in definitions}
    return tuple(code for code in evaluation_order(formulas) if code in formulas)


def recompute(*, run: RefreshRun | None = None, months: Iterable[date] | None = None) -> EngineResult:
    """Recompute measure and KPI values; ``months`` limits the fact aggregation to those months.

    The result is what recomputing everything from the facts gives; what is written is only
    what differs from the stored values (see the module docstring for what is skipped when).
    """
    with _no_cycle_collection(), transaction.atomic():
        _lock_definitions()
        return _recompute(run, months)


def _lock_definitions() -> None:
    """Hold the tables the stored values refer to in SHARE mode until the recompute commits:
    they can be read but not changed meanwhile (an edit in the admin waits), so every value
    written refers to a KPI, measure, entity and scenario as they were read (see
    ``kpis.models.VALUE_REFERENCE``). Taking the locks again in the same transaction is free."""
    lock_for_reading(KPI, Measure, Entity, Scenario)


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Python's cycle collector stays off while a recompute runs. A recompute makes many
    small objects (keys, Decimals) that reference counting frees; they would otherwise set off
    collections of the whole heap, each as long as a one-month recompute itself. Whatever
    cycles it leaves are collected as usual afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _recompute(run: RefreshRun | None, months: Iterable[date] | None) -> EngineResult:
    result = EngineResult()
    clock = time.monotonic()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.monotonic()
        result.seconds[step] = round(now - clock, 3)
        clock = now

    changed = sorted(set(months)) if months is not None else None
    book = _Book.load()

    if changed == []:  # no fact changed: measure values come from storage
        leaf_totals = {}
    else:
        leaf_totals = financial_totals(book.measures, changed, mapping=book.accounts)
        leaf_totals |= operational_totals(book.measures, changed)
    lap("aggregate")
    monthly = _roll_up_entities(leaf_totals, book.measures, book.tree, _rates())
    trust = _Trust.find(book, run)
    summary = _Summary.read(book.fiscal_start) if trust is not None else None
    if trust is not None and summary is not None:
        _recompute_changes(monthly, changed, book, trust, summary, run, result, lap)
        _check_summary(book.fiscal_start)
        log.info("recompute: %s", result)
        return result
    if changed is not None:
        monthly = _merge_stored_months(monthly, changed)
    values = _derive_grains(monthly, book.behaviour_of, book.fiscal_start)
    lap("measures")
    # Read before the evaluation starts: a query made while it runs waits for the GIL after it.
    targets = _Targets(book)
    lap("targets")  # reading them; each value gets its own as it is stored

    with transaction.atomic(savepoint=False):  # recompute() holds the transaction
        # The formulas are evaluated while the measure values are written (on PostgreSQL).
        evaluated = _InBackground(lambda stop: _evaluate_kpis(_Columns.of(values), book, stop=stop))
        try:
            result.measure_values = _store_measures(values, run)
            _Summary.of((key, note) for key, (_value, note) in values.items()).write(book.fiscal_start)
            kpi_values = evaluated.result()
        finally:
            evaluated.stop.set()  # a recompute that failed meanwhile: the evaluation ends too
        lap("formulas")
        targets.results = kpi_values
        inserted, updated, deleted = _store_kpis(kpi_values, book, run, targets=targets)
        _KPIStates.of(kpi_values.items(), book.versions).write()  # the values are exactly these
        _check_summary(book.fiscal_start)
    result.kpi_values = len(kpi_values)
    result.kpi_inserted, result.kpi_updated, result.kpi_deleted = inserted, updated, deleted
    lap("store")
    log.info("recompute: %s", result)
    return result


def _recompute_changes(
    fresh: Values,
    requested: list[date] | None,
    book: _Book,
    trust: _Trust,
    summary: _Summary,
    run: RefreshRun | None,
    result: EngineResult,
    lap: Callable[[str], None],
) -> None:
    """Recompute what the changed months can reach, when the stored values are trusted.

    ``fresh`` holds the month values of the re-aggregated months (every month when
    ``requested`` is None). The months whose values differ from the stored ones (or that
    enter or leave a scenario's data range) are the changed months; only their quarters and
    years are re-derived, and each KPI is evaluated and written only for the periods they can
    reach (``_Reach``), or everywhere for a KPI whose definition changed.
    """
    stored = _StoredMeasures(summary.months)
    shape: _StoredShape | None = None
    fresh_shape: _Shape | None = None  # with the requested months as recomputed
    derived: Values | None = None  # the changed months' quarters and years
    fiscal_start = book.fiscal_start
    if requested is None:  # every month was re-aggregated: compare them all with storage
        monthly = fresh
        loaded = _loaded_months(monthly)
        stored_months = _stored_months_as_text()
        changed = _changed_months(monthly, stored_months, loaded)
        reshaped = _reshaped(_Shape.of(stored_months, None, None), _Shape.of(monthly, None, None))
    else:  # the other months are as stored
        asked = set(requested)
        # One read: the requested months, and their quarters and years, as stored.
        stored.get({(grain, grain_start(month, grain, fiscal_start)) for month in asked for grain in GRAINS})
        before = stored.get(("month", month) for month in asked)
        changed = {key[4] for key, (value, note) in fresh.items() if before.get(key) != (value, note[:300])}
        changed.update(key[4] for key in before.keys() - fresh.keys())
        shape = summary.shape(excluding=requested, fiscal_start=fiscal_start)
        fresh_shape = _Shape.of(fresh, requested, shape)
        reshaped = _reshaped(_Shape.of(before, requested, shape), fresh_shape)
        others = shape.month_ranges()
        old_ranges = _extend_ranges(others, before)
        new_ranges = _extend_ranges(others, fresh)
        loaded = {scenario: set(month_range(*bounds)) for scenario, bounds in new_ranges.items()}
        for scenario_id in old_ranges.keys() | new_ranges.keys():  # months entering or leaving the range
            old = set(month_range(*old_ranges[scenario_id])) if scenario_id in old_ranges else set()
            changed |= old ^ loaded.get(scenario_id, set())
        derived = None
        if changed <= asked:  # no month outside them entered or left a data range
            derived = _derived_from_changes(fresh, before, stored, changed, book, summary)
        if derived is None:  # from the months of their fiscal years
            around = stored.get(("month", month) for month in _year_months(changed, fiscal_start))
            monthly = {key: value for key, value in around.items() if key[4] not in asked}
            monthly.update(fresh)
        else:
            monthly = fresh
    periods = {grain: {grain_start(month, grain, fiscal_start) for month in changed} for grain in GRAINS}
    measure_rows = {key: value for key, value in monthly.items() if key[4] in changed}
    if derived is None:
        derived = _derive_grains(monthly, book.behaviour_of, fiscal_start, periods, loaded)
    measure_rows.update(derived)
    # What differs from storage, exactly: only that is written. When no value appeared or went
    # (the periods with data are as they were), only the KPIs that read a changed measure can
    # change, and no stored KPI value can be left without a period.
    before = stored.get((grain, period) for grain, starts in periods.items() for period in starts)
    rows = {key: (value, note[:300]) for key, (value, note) in measure_rows.items()}
    written = {key: value for key, value in rows.items() if before.get(key) != value}
    gone = before.keys() - rows.keys()
    moved = bool(gone) or any(key not in before for key in written)
    # A series that gained or lost a measure, or whose history now starts in another month,
    # explains its empty values otherwise in every period ("revenue is not in the data", "not
    # enough history for prev"): then every KPI is evaluated for every period (and written
    # where it differs), as a full recompute would.
    dirty = trust.dirty | ({kpi.pk for kpi in book.kpis} if reshaped else set())
    reach = _Reach(changed, book, dirty, None if moved else {key[0] for key in written})
    lap("measures")

    evaluated = None
    targets = None
    if reach.kpis:  # the stored values the results read, but those just recomputed (or gone)
        window = reach.window()
        read, before_read = stored.needed(reach.needs(book), skip=reach.measures)
        values = read + _Columns.of(before_read | measure_rows)
        shape = shape or summary.shape(excluding=[], fiscal_start=fiscal_start)
        whole = (
            fresh_shape
            if monthly is fresh and fresh_shape is not None
            else _Shape.of(monthly, requested, shape)
        )
        outlines = _outlines(whole, window, reach, measure_rows, book, shape)
        # Read before the evaluation starts: a query made while it runs waits for the GIL after it.
        targets = _Targets(book, typed=trust.typed)
        # The formulas are evaluated while the measure values are written (on PostgreSQL).
        evaluated = _InBackground(
            lambda stop: _evaluate_kpis(
                values,
                book,
                wanted=reach.evaluated,
                outlines=outlines,
                stop=stop,
                written=reach.written,
                earlier=targets.earlier,
            )
        )

    kpi_rows: dict[KPIKey, _KPIResult] = {}
    with transaction.atomic(savepoint=False):  # recompute() holds the transaction
        try:
            _store_measures(written, run, scope=_Scope(MEASURE_KEY, set(written) | gone))
            result.measure_values = len(written) + len(gone)
            if moved or any(
                note.startswith("partial") != before[key][1].startswith("partial")
                for key, (_, note) in written.items()
            ):
                summary.replaced(periods, rows).write(fiscal_start, summary)
            if evaluated is not None and targets is not None:
                kpi_values = evaluated.result()
                lap("formulas")
                targets.results = kpi_rows = kpi_values
                lap("targets")
        finally:
            if evaluated is not None:
                evaluated.stop.set()  # a recompute that failed meanwhile: the evaluation ends too
        scope = reach.kpi_scope(shrinks=moved)
        inserted, updated, deleted = _store_kpis(kpi_rows, book, run, scope, targets=targets)
        if trust.inactive:  # values of KPIs no longer active
            deleted += KPIValue.objects.filter(kpi_id__in=sorted(trust.inactive)).delete()[0]
        if deleted:  # a kind may have lost its last value
            _KPIStates.scan().write(trust.states)
        elif kpi_rows:
            trust.states.after(kpi_rows.items(), dirty, book.versions).write(trust.states)
    result.kpi_values = len(kpi_rows)
    result.kpi_inserted, result.kpi_updated, result.kpi_deleted = inserted, updated, deleted
    lap("store")


# --- entities and currencies -------------------------------------------------------------


def _entity_tree() -> _Tree:
    entities = {e.pk: e for e in Entity.objects.all()}
    children: dict[int | None, list[int]] = defaultdict(list)
    for entity in entities.values():
        children[entity.parent_id].append(entity.pk)
    subtree: dict[int, list[int]] = {}
    for pk in entities:
        stack, found = [pk], []
        while stack:
            node = stack.pop()
            if node in found:
                continue
            found.append(node)
            stack.extend(children.get(node, []))
        subtree[pk] = found
    return _Tree(entities, subtree)


def _rates() -> dict[tuple[str, date], tuple[Decimal, Decimal]]:
    """(currency, month) -> (average rate, end rate): value of one unit in the group currency."""
    return {
        (currency, period): (avg, end)
        for currency, period, avg, end in CurrencyRate.objects.values_list(
            "currency", "period", "average_rate", "end_rate"
        )
    }


def _roll_up_entities(
    leaf: dict[tuple[int, int, int, date], Decimal],
    measures: list[Measure],
    tree: _Tree,
    rates: dict[tuple[str, date], tuple[Decimal, Decimal]],
) -> Values:
    """Month values for every entity node: the sum over its subtree, in the node's currency."""
    by_measure = {m.pk: m for m in measures}
    own: dict[tuple[int, int, date], dict[int, Decimal]] = defaultdict(dict)
    for (measure_id, scenario_id, entity_id, period), amount in leaf.items():
        own[(measure_id, scenario_id, period)][entity_id] = amount
    alone = {pk for pk, members in tree.subtree.items() if len(members) == 1}
    parents = [(pk, members) for pk, members in tree.subtree.items() if len(members) > 1]
    currency = {pk: entity.currency for pk, entity in tree.entities.items()}
    out: Values = {}
    for (measure_id, scenario_id, period), amounts in own.items():
        measure = by_measure[measure_id]
        multiplier = None if measure.multiplier == 1 else measure.multiplier
        money = measure.kind == Measure.Kind.ACCOUNT and measure.unit == "currency"
        for node_id, amount in amounts.items():  # an entity without children: its own amount
            if node_id in alone:
                value = amount if multiplier is None else amount * multiplier
                out[(measure_id, scenario_id, node_id, "month", period)] = (value.quantize(VALUE_PLACES), "")
        for node_id, members in parents:
            present = [e for e in members if e in amounts]
            if not present:
                continue
            node_currency = currency[node_id]
            total, note = Decimal(0), ""
            for entity_id in present:
                amount = amounts[entity_id] if multiplier is None else amounts[entity_id] * multiplier
                if money and currency[entity_id] != node_currency:
                    factor = _conversion(
                        currency[entity_id], node_currency, period, measure.time_behaviour, rates
                    )
                    if factor is None:
                        total = None
                        note = f"no {currency[entity_id]} to {node_currency} rate for {period:%b %Y}"
                        break
                    amount *= factor
                total += amount
            out[(measure_id, scenario_id, node_id, "month", period)] = (
                total.quantize(VALUE_PLACES) if total is not None else None,
                note,
            )
    return out


def _conversion(
    source: str,
    target: str,
    period: date,
    behaviour: str,
    rates: dict[tuple[str, date], tuple[Decimal, Decimal]],
) -> Decimal | None:
    pick = 0 if behaviour == "flow" else 1  # average rate for flows, end-of-period for balances
    group = settings.GROUP_CURRENCY
    source_rate = Decimal(1) if source == group else (rates.get((source, period)) or (None, None))[pick]
    target_rate = Decimal(1) if target == group else (rates.get((target, period)) or (None, None))[pick]
    if source_rate is None or target_rate is None or target_rate == 0:
        return None
    return source_rate / target_rate


def _merge_stored_months(fresh: Values, changed: list[date]) -> Values:
    """Stored month values for the months not re-aggregated, plus the fresh ones."""
    merged: Values = {}
    stored = (
        MeasureValue.objects.filter(grain="month")
        .exclude(period__in=changed)
        .values_list("measure_id", "scenario_id", "entity_id", "period", "value", "note")
    )
    for measure_id, scenario_id, entity_id, period, value, note in stored.iterator(chunk_size=BATCH):
        merged[(measure_id, scenario_id, entity_id, "month", period)] = (value, note)
    merged.update(fresh)
    return merged


# --- what changed -------------------------------------------------------------------------

# How long before the previous run's start a definition change still counts as made after
# it: a change saved just before the run started may have been committed after the run read
# the definitions (and clocks of different servers differ a little).
TRUST_MARGIN = timedelta(minutes=1)


@dataclass
class _Trust:
    """Stored values that are known to follow the current definitions, but for ``dirty`` KPIs."""

    dirty: set[int]  # KPIs to evaluate and write for every period
    inactive: set[int]  # KPIs with stored values that are no longer active
    states: _KPIStates  # the kinds of value stored
    typed: set[int]  # KPIs with typed or imported targets (dirty too)

    @classmethod
    def find(cls, book: _Book, run: RefreshRun | None) -> _Trust | None:
        """Trust what the last refresh stored, when it succeeded and no measure or budget
        scenario changed since (nor the fiscal year: see ``_Summary.read``); a KPI whose
        definition or targets changed since, or whose stored values do not match its formula
        version, is dirty (and so is every KPI that uses it). Definitions change through the
        services, which record each KPI change."""
        runs = RefreshRun._meta.db_table
        with connection.cursor() as cursor:  # the last finished run's status and start
            cursor.execute(
                f"SELECT status, started_at FROM {runs} WHERE finished_at IS NOT NULL AND id <> %s "  # noqa: S608
                "ORDER BY finished_at DESC LIMIT 1",
                [run.pk if run is not None else 0],
            )
            previous = cursor.fetchone()
        if previous is None or previous[0] != RefreshRun.Status.SUCCEEDED:
            return None
        started = previous[1]
        if isinstance(started, str):  # SQLite may give the stored text
            started = datetime.fromisoformat(started)
        if started.tzinfo is None:  # SQLite stores the connection's time zone (UTC) without it
            started = started.replace(tzinfo=connection.timezone)
        since = connection.ops.adapt_datetimefield_value(started - TRUST_MARGIN)
        # What changed since, in one statement: measures, the budget scenarios, KPI definitions
        # and the KPIs with typed targets.
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT 'measures', COUNT(*) FROM {Measure._meta.db_table} WHERE updated_at >= %s "  # noqa: S608
                f"UNION ALL SELECT 'budget', id FROM {Scenario._meta.db_table} WHERE kind = %s "
                f"UNION ALL SELECT DISTINCT 'changed', kpi_id FROM {KPIChange._meta.db_table} "
                "WHERE changed_at >= %s "
                f"UNION ALL SELECT DISTINCT 'typed', kpi_id FROM {Target._meta.db_table}",
                [since, Scenario.Kind.BUDGET, since],
            )
            found: dict[str, set[int]] = defaultdict(set)
            for kind, number in cursor.fetchall():
                found[kind].add(number)
        if found["measures"] != {0}:
            return None
        states = _KPIStates.read()
        if states is None:
            return None
        budgets = found["budget"]
        versions = book.versions
        dirty = found["changed"] | found["typed"]
        # A formula naming a measure or KPI that is gone (deleted, deactivated) reads nothing now.
        known = {m.code for m in book.measures} | set(book.formulas)
        dirty |= {kpi.pk for kpi in book.kpis if book.formulas[kpi.code].names - known}
        seen: set[int] = set()
        for kpi_id, scenario_id, _entity, formula_version, typed, budget in states.kinds:
            seen.add(kpi_id)
            if budget != (scenario_id in budgets):
                return None  # a scenario became (or stopped being) the budget
            if typed or versions.get(kpi_id, formula_version) != formula_version:
                dirty.add(kpi_id)
        dirty |= set(versions) - seen
        return cls(_with_users(dirty, book), seen - set(versions), states, found["typed"])


# KPI, scenario, entity, formula version, typed target, budget
KPIKind = tuple[int, int, int, int, bool, bool]
KIND_FIELDS = ("kpi_id", "scenario_id", "entity_id", "formula_version", "typed", "budget")


@dataclass
class _KPIStates:
    """The kinds of KPI value stored (``KPIKind``), kept by the engine in ``StoredKPIState`` as
    it writes the values: what ``_Trust`` checks, read from a few rows, not from every value."""

    kinds: set[KPIKind]

    @classmethod
    def read(cls) -> _KPIStates | None:
        """The kinds kept; None when there are stored values without them (stored before the
        engine kept them): only a full recompute, which writes them, can then follow them."""
        kinds = set(StoredKPIState.objects.values_list(*KIND_FIELDS))
        if not kinds and KPIValue.objects.exists():
            return None
        return cls(kinds)

    @classmethod
    def scan(cls) -> _KPIStates:
        """The kinds found in the stored values (a DISTINCT is cheaper than a GROUP BY)."""
        flag = functools.partial(models.ExpressionWrapper, output_field=models.BooleanField())
        stored = (
            KPIValue.objects.annotate(
                typed=flag(models.Q(target_origin="typed")),
                budget=flag(models.Q(status_reason=BUDGET_REASON)),
            )
            .values_list(*KIND_FIELDS)
            .distinct()
            .order_by()
        )
        return cls(set(stored))

    @classmethod
    def of(cls, results: Iterable[tuple[KPIKey, _KPIResult]], versions: dict[int, int]) -> _KPIStates:
        """The kinds of these results, once written (with their targets attached)."""
        return cls(
            {
                (
                    kpi_id,
                    scenario_id,
                    entity_id,
                    versions[kpi_id],
                    result.target_origin == "typed",
                    result.status_reason == BUDGET_REASON,
                )
                for (kpi_id, scenario_id, entity_id, *_), result in results
            }
        )

    def after(
        self, written: Iterable[tuple[KPIKey, _KPIResult]], rewritten: set[int], versions: dict[int, int]
    ) -> _KPIStates:
        """The kinds once these results are written and every KPI in ``rewritten`` has exactly
        the values written (when no stored value was deleted). A value of another KPI keeps
        its kind when it is written again: its version, target origin and budget flag are
        those its stored kind has, or the KPI would be rewritten (``_Trust``)."""
        kept = {kind for kind in self.kinds if kind[0] not in rewritten}
        return _KPIStates(kept | _KPIStates.of(written, versions).kinds)

    def write(self, old: _KPIStates | None = None) -> None:
        """Store these kinds in place of ``old`` (None: in place of whatever is stored)."""
        if old is None:
            StoredKPIState.objects.all().delete()
            old = _KPIStates(set())
        _delete_keys(StoredKPIState, KIND_FIELDS, old.kinds - self.kinds)
        _insert_rows(StoredKPIState, KIND_FIELDS, sorted(self.kinds - old.kinds))


def _with_users(dirty: set[int], book: _Book) -> set[int]:
    """The KPIs and every KPI whose formula uses one of them, directly or not."""
    code_of = {kpi.pk: kpi.code for kpi in book.kpis}
    codes = {code_of[pk] for pk in dirty if pk in code_of}
    for code in book.order:  # each KPI comes after the KPIs it uses
        if book.formulas[code].names & codes:
            codes.add(code)
    return dirty | {kpi.pk for kpi in book.kpis if kpi.code in codes}


def _changed_months(
    monthly: Values, stored: dict[MeasureKey, tuple], loaded: dict[int, set[date]]
) -> set[date]:
    """Months whose values differ from the stored ones, and months that enter or leave a
    scenario's data range (they change which quarters and years are partial). ``stored`` has
    each value as its text when it comes from :func:`_stored_months_as_text`; ``loaded`` is
    ``monthly``'s data range."""
    as_text = next((isinstance(value, str) for value, _ in stored.values() if value is not None), False)
    changed: set[date] = set()
    for key, (value, note) in monthly.items():
        if key[4] in changed:
            continue
        old = stored.get(key)
        if old is None or old[0] != (_numeric_text(value) if as_text else value) or old[1] != note[:300]:
            changed.add(key[4])
    changed.update(key[4] for key in stored.keys() - monthly.keys())
    before, after = _loaded_months(stored), loaded
    for scenario_id in before.keys() | after.keys():
        changed |= before.get(scenario_id, set()) ^ after.get(scenario_id, set())
    return changed


def _stored_months_as_text() -> dict[MeasureKey, tuple]:
    """Every stored month value, with the value as PostgreSQL's text of it (``numeric(24, 6)``:
    six decimals); elsewhere as Decimal. Reading a number as text is several times cheaper
    than as a Decimal, and equal text is an equal number."""
    if connection.vendor != "postgresql":
        return _stored_values(["month"])
    table = MeasureValue._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT measure_id, scenario_id, entity_id, period, value::text, note FROM {table} "  # noqa: S608
            "WHERE grain = 'month'"
        )
        rows = cursor.fetchall()
    return {(m, s, e, "month", p): (value, note) for m, s, e, p, value, note in rows}


def _numeric_text(value: Decimal | None) -> str | None:
    """The text PostgreSQL gives for ``value`` stored as ``numeric(24, 6)``, for a value with
    six decimals (any other is then seen as changed, which costs time, not correctness)."""
    if value is None:
        return None
    return "0.000000" if not value else format(value, "f")


class _Reach:
    """The periods that changed months can reach, per grain and per KPI.

    A month changes its own month, quarter and year measure values. A KPI value at period p
    reads periods p - lookback .. p, so a changed period q reaches q .. q + lookback; a KPI
    whose target is last year's value plus N % reaches a year further. With ``measures`` (the
    measures whose values changed, when no value appeared or went), a KPI that reads none of
    them, directly or through other KPIs, is not reached at all.
    """

    def __init__(
        self, changed: set[date], book: _Book, dirty: set[int], measures: set[int] | None = None
    ) -> None:
        self.measures: dict[str, set[date]] = {
            grain: {grain_start(month, grain, book.fiscal_start) for month in changed} for grain in GRAINS
        }
        self.dirty = dirty
        self.kpis: dict[tuple[int, str], set[date] | None] = {}  # None: every period
        self.helpers: dict[tuple[int, str], set[date]] = {}  # a year before, for last-year targets
        self.lookbacks: dict[tuple[int, str], int] = {}
        reads = book.reads
        touched = None if measures is None else {m.code for m in book.measures if m.pk in measures}
        for kpi in book.kpis:
            untouched = touched is not None and kpi.code in reads and not reads[kpi.code] & touched
            for grain in GRAINS:
                if kpi.pk in dirty:
                    self.kpis[(kpi.pk, grain)] = None
                    continue
                if not self.measures[grain] or untouched:
                    continue
                step = STEP[grain]
                reach = self.lookbacks[(kpi.pk, grain)] = book.lookback(kpi.code, grain)
                periods = {
                    add_months(start, n * step) for start in self.measures[grain] for n in range(reach + 1)
                }
                if kpi.target_rule == KPI.TargetRule.LAST_YEAR_PLUS:
                    periods |= {add_months(period, 12) for period in periods}
                    self.helpers[(kpi.pk, grain)] = {add_months(period, -12) for period in periods}
                self.kpis[(kpi.pk, grain)] = periods

    def evaluated(self, kpi_id: int, grain: str) -> set[date] | None:
        """Periods whose results are needed (to write, or as last year's value); None: all."""
        if (kpi_id, grain) not in self.kpis:
            return set()
        periods = self.kpis[(kpi_id, grain)]
        return None if periods is None else periods | self.helpers.get((kpi_id, grain), set())

    def written(self, kpi_id: int, grain: str) -> set[date] | None:
        """Periods whose results are written (the others evaluated give last year's values
        for targets); None: all."""
        return self.kpis.get((kpi_id, grain), set())

    def window(self) -> dict[str, tuple[date, date] | None]:
        """Per grain, the periods the needed results read (None: all of them)."""
        out: dict[str, tuple[date, date] | None] = {}
        for grain in GRAINS:
            bounds: list[date] = []
            for kpi_id, kpi_grain in self.kpis:
                if kpi_grain != grain:
                    continue
                periods = self.evaluated(kpi_id, grain)
                if periods is None:
                    out[grain] = None
                    break
                reach = self.lookbacks[(kpi_id, grain)] * STEP[grain]
                bounds += [add_months(min(periods), -reach), max(periods)]
            else:
                if bounds:
                    out[grain] = (min(bounds), max(bounds))
        return out

    def needs(self, book: _Book) -> dict[str, dict[int, tuple[date, date] | None]]:
        """Per grain, the periods of each measure that the needed results read (None: all)."""
        reads = book.reads
        code_of = {kpi.pk: kpi.code for kpi in book.kpis}
        measure_id = {m.code: m.pk for m in book.measures}
        out: dict[str, dict[int, tuple[date, date] | None]] = {grain: {} for grain in GRAINS}
        for (kpi_id, grain), _periods in self.kpis.items():
            periods = self.evaluated(kpi_id, grain)
            if periods is not None and not periods:
                continue
            bounds = None
            if periods is not None:
                back = self.lookbacks[(kpi_id, grain)] * STEP[grain]
                bounds = (add_months(min(periods), -back), max(periods))
            for code in reads[code_of[kpi_id]]:
                pk = measure_id[code]
                if pk not in out[grain]:
                    out[grain][pk] = bounds
                elif out[grain][pk] is not None:
                    old = out[grain][pk]
                    out[grain][pk] = (
                        None if bounds is None else (min(old[0], bounds[0]), max(old[1], bounds[1]))
                    )
        return out

    def kpi_scope(self, *, shrinks: bool = True) -> _Scope:
        """The stored KPI values the written ones replace; ``shrinks``: some of them may be
        gone (a period lost or gained its data), else every one of them is written again."""
        keys = {
            (kpi_id, grain, period)
            for (kpi_id, grain), periods in self.kpis.items()
            if periods is not None
            for period in periods
        }
        return _Scope(("kpi_id", "grain", "period"), keys, set(self.dirty), shrinks=shrinks)


class _StoredMeasures:
    """Stored measure values, read by (grain, period) as they are needed, each pair once.

    ``series`` are those of the stored values (from ``_Summary``): on PostgreSQL a read names
    their scenarios and entities, so that it goes through the (scenario, entity, grain,
    period) index rather than through every stored value."""

    def __init__(self, series: Iterable[SeriesKey]) -> None:
        self.by_period: dict[tuple[str, date], Values] = defaultdict(dict)
        self.pairs: set[tuple[str, date]] = set()  # read
        keys = list(series)
        self.scenarios = sorted({scenario for _, scenario, _ in keys})  # of the stored values
        self.entities = sorted({entity for _, _, entity in keys})

    def get(self, pairs: Iterable[tuple[str, date]]) -> Values:
        """The stored values of these (grain, period) pairs."""
        pairs = set(pairs)
        missing = sorted(pairs - self.pairs)
        if missing:
            by_period = self.by_period
            for m, s, e, g, p, value, note in self._read(missing):
                by_period[(g, p)][(m, s, e, g, p)] = (value, note)
            self.pairs.update(missing)
        out: Values = {}
        for pair in pairs:
            out.update(self.by_period.get(pair, {}))
        return out

    def needed(
        self, needs: dict[str, dict[int, tuple[date, date] | None]], skip: dict[str, set[date]]
    ) -> tuple[_Columns, Values]:
        """Stored values of each grain and measure, within their periods (None: all), but those
        of the periods in ``skip`` (per grain), as columns for the formulas; and those of the
        (grain, period) pairs read before, from what was read then."""
        grouped: dict[tuple[str, tuple[date, date] | None], list[int]] = defaultdict(list)
        for grain, measures in needs.items():
            for measure_id, bounds in measures.items():
                grouped[(grain, bounds)].append(measure_id)
        left_out = defaultdict(set, {grain: set(periods) for grain, periods in skip.items()})
        for grain, period in self.pairs:  # read before: below
            left_out[grain].add(period)
        out: Values = {}
        for (grain, period), values in self.by_period.items():
            if grain not in needs or period in skip.get(grain, ()):
                continue
            wanted = needs[grain]
            for key, value in values.items():
                bounds = wanted.get(key[0], False)
                if bounds is None or (bounds and bounds[0] <= period <= bounds[1]):
                    out[key] = value
        return _needed_columns(grouped, left_out), out

    def _read(self, pairs: list[tuple[str, date]]) -> Iterable[tuple]:
        starts = {grain: [period for name, period in pairs if name == grain] for grain in GRAINS}
        if connection.vendor != "postgresql":
            found = models.Q(pk__in=[])
            for grain, periods in starts.items():
                if periods:
                    found |= models.Q(grain=grain, period__in=periods)
            return _fetch(MeasureValue.objects.filter(found))
        if not self.scenarios:
            return []
        conditions = [
            ("(grain = %s AND period = ANY(%s))", [grain, periods])
            for grain, periods in starts.items()
            if periods
        ]
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT measure_id, scenario_id, entity_id, grain, period, value, note "  # noqa: S608
                f"FROM {MeasureValue._meta.db_table} WHERE scenario_id = ANY(%s) AND entity_id = ANY(%s) "
                f"AND ({' OR '.join(sql for sql, _ in conditions)})",
                [
                    self.scenarios,
                    self.entities,
                    *(param for _, params in conditions for param in params),
                ],
            )
            return cursor.fetchall()


def _needed_columns(
    grouped: dict[tuple[str, tuple[date, date] | None], list[int]], skip: dict[str, set[date]]
) -> _Columns:
    """The stored values of these measures (grouped by grain and periods, None: all), but of
    the periods in ``skip`` (per grain), as columns. On PostgreSQL each column comes as one
    array (its text parsed by numpy): thousands of values, and the formulas read them as
    numbers, not as keys and Decimals. Periods come as month numbers, grains as their
    positions in ``GRAINS``."""
    if connection.vendor != "postgresql":
        found = models.Q(pk__in=[])
        for (grain, bounds), measure_ids in grouped.items():
            where = models.Q(grain=grain, measure_id__in=sorted(measure_ids))
            where &= ~models.Q(period__in=sorted(skip.get(grain, ())))
            found |= where if bounds is None else where & models.Q(period__range=bounds)
        return _Columns.of(_rows(MeasureValue.objects.filter(found)))
    conditions, params = [], []
    for (grain, bounds), measure_ids in grouped.items():
        conditions.append(
            "(measure_id = ANY(%s) AND grain = %s AND period BETWEEN %s AND %s AND NOT period = ANY(%s))"
        )
        params += [sorted(measure_ids), grain, *(bounds or (date.min, date.max)), sorted(skip.get(grain, ()))]
    found = None
    if conditions:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT array_agg(measure_id)::text, array_agg(scenario_id)::text, "  # noqa: S608
                "array_agg(entity_id)::text, "
                "array_agg(CASE grain WHEN 'month' THEN 0 WHEN 'quarter' THEN 1 ELSE 2 END)::text, "
                "array_agg(date_part('year', period)::int * 12 + date_part('month', period)::int - 1)::text, "
                "array_agg(value)::text, "  # parsed as float() parses the Decimal's text
                "array_agg(CASE WHEN note LIKE 'partial%%' THEN 1 ELSE 0 END)::text "
                f"FROM {MeasureValue._meta.db_table} WHERE {' OR '.join(conditions)}",
                params,
            )
            found = cursor.fetchone()
    if not found or found[0] is None:  # no value
        return _Columns.of({})
    measure, scenario, entity, grain, month, number, partial = (
        np.fromstring(text[1:-1].replace("NULL", "nan"), dtype=np.float64 if n == 5 else np.int64, sep=",")
        for n, text in enumerate(found)
    )
    return _Columns(measure, scenario, entity, _GRAIN_NAMES[grain], month, number, partial.astype(bool))


_GRAIN_NAMES = np.array(GRAINS, dtype=object)


def _year_months(months: Iterable[date], fiscal_start: int) -> set[date]:
    """Every month of the fiscal years of these months."""
    years = {grain_start(month, "year", fiscal_start) for month in months}
    return {add_months(year, n) for year in years for n in range(12)}


def _stored_values(grains: Iterable[str], periods: Iterable[date] | None = None) -> Values:
    """Stored measure values of these grains (and periods)."""
    query = MeasureValue.objects.filter(grain__in=list(grains))
    if periods is not None:
        query = query.filter(period__in=sorted(set(periods)))
    return _rows(query)


def _rows(query: models.QuerySet) -> Values:
    return {(m, s, e, g, p): (value, note) for m, s, e, g, p, value, note in _fetch(query)}


def _fetch(query: models.QuerySet) -> Iterable[tuple]:
    """(measure, scenario, entity, grain, period, value, note) of each measure value."""
    query = query.values_list("measure_id", "scenario_id", "entity_id", "grain", "period", "value", "note")
    if connection.vendor != "postgresql":
        return query
    try:  # the same rows without the ORM's per-row work
        sql, params = query.query.sql_with_params()
    except EmptyResultSet:
        return []
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _outlines(
    shape: _Shape,
    window: dict[str, tuple[date, date] | None],
    reach: _Reach,
    recomputed: Values,
    book: _Book,
    stored: _StoredShape,
) -> dict[str, _Outline]:
    """The outline of each grain's series, cut to the window: from the stored periods with
    data, but those just recomputed, which come from ``recomputed``. (Periods outside the
    window are outside every series' rows.)"""
    code_of = {m.pk: m.code for m in book.measures}
    periods: dict[str, dict[tuple[int, int, int], bool]] = {grain: {} for grain in window}
    for (scenario_id, entity_id, grain, period), is_partial in stored.periods.items():
        if grain in periods and period not in reach.measures[grain]:
            periods[grain][(scenario_id, entity_id, _month_number(period))] = is_partial
    # The recomputed values' periods (a few dozen among their hundreds of values), partial when
    # one of the period's values is.
    recomputed_periods: dict[tuple[int, int, str, date], bool] = {}
    for (_measure, scenario_id, entity_id, grain, period), (_value, note) in recomputed.items():
        key = (scenario_id, entity_id, grain, period)
        if note.startswith("partial"):
            recomputed_periods[key] = True
        elif key not in recomputed_periods:
            recomputed_periods[key] = False
    for (scenario_id, entity_id, grain, period), is_partial in recomputed_periods.items():
        if grain in periods:
            key = (scenario_id, entity_id, _month_number(period))
            periods[grain][key] = periods[grain].get(key, False) or is_partial
    outlines = {}
    for grain, bounds in window.items():
        low, high = (date.min, date.max) if bounds is None else bounds
        series = {
            key: (
                {code_of[pk] for pk in shape.codes[key]},
                _month_number(max(grain_start(first, grain, book.fiscal_start), low)),
                _month_number(min(grain_start(last, grain, book.fiscal_start), high)),
            )
            for key, (first, last) in shape.months.items()
        }
        outlines[grain] = _Outline(series, periods[grain])
    return outlines


@dataclass
class _Shape:
    """Each (scenario, entity) series as a whole: its measure codes and its first and last
    month. A frame that holds a window of periods only still reads a measure the series has
    (but not in the window) as a column without values, and a series' history as starting
    where its data start."""

    codes: dict[tuple[int, int], set[int]]  # measure ids
    months: dict[tuple[int, int], tuple[date, date]]

    @classmethod
    def of(cls, monthly: Values, requested: list[date] | None, stored: _StoredShape | None) -> _Shape:
        """From ``monthly`` when it has every month (``requested`` is None), else from the
        stored months but the requested ones (``stored`` leaves them out) and their values in
        ``monthly``."""
        if requested is None:  # ``monthly`` has every month
            return cls.of_ranges((m, s, e, p, p) for m, s, e, _g, p in monthly)
        asked = set(requested)
        # The stored series' shape is found once for every call.
        base = stored.shape if stored is not None else None
        return cls.of_ranges(((m, s, e, p, p) for m, s, e, _g, p in monthly if p in asked), base)

    @classmethod
    def of_ranges(
        cls, ranges: Iterable[tuple[int, int, int, date, date]], base: _Shape | None = None
    ) -> _Shape:
        """From (measure, scenario, entity, first month, last month) ranges, added to ``base``."""
        codes: dict[tuple[int, int], set[int]] = defaultdict(set)
        months: dict[tuple[int, int], tuple[date, date]] = {}
        if base is not None:
            codes.update({series: set(ids) for series, ids in base.codes.items()})
            months.update(base.months)
        for measure_id, scenario_id, entity_id, first, last in ranges:
            series = (scenario_id, entity_id)
            codes[series].add(measure_id)
            old = months.get(series, (first, last))
            months[series] = (min(old[0], first), max(old[1], last))
        return cls(dict(codes), months)


def _reshaped(old: _Shape, new: _Shape) -> bool:
    """Whether a series gained or lost a measure, or starts in another month (a series
    ending later, as after each month's load, reshapes nothing the earlier periods read)."""
    series = old.codes.keys() | new.codes.keys()
    return any(
        old.codes.get(key) != new.codes.get(key)
        or (old.months.get(key) or (None,))[0] != (new.months.get(key) or (None,))[0]
        for key in series
    )


@dataclass
class _StoredShape:
    """The stored measure values' shape: each (measure, scenario, entity)'s first and last
    month, leaving some months out, and each (scenario, entity, grain, period) with a value,
    and whether it is partial (from ``_Summary.shape``)."""

    ranges: list[tuple[int, int, int, date, date]]
    periods: dict[tuple[int, int, str, date], bool]

    @functools.cached_property
    def shape(self) -> _Shape:
        """The (scenario, entity) series of ``ranges`` as a whole."""
        return _Shape.of_ranges(self.ranges)

    def month_ranges(self) -> dict[int, tuple[date, date]]:
        """First and last month with a stored value (leaving those months out), per scenario."""
        out: dict[int, tuple[date, date]] = {}
        for _measure, scenario_id, _entity, first, last in self.ranges:
            old = out.get(scenario_id, (first, last))
            out[scenario_id] = (min(old[0], first), max(old[1], last))
        return out


SeriesKey = tuple[int, int, int]  # (measure, scenario, entity)


@dataclass
class _Summary:
    """What the stored measure values look like, series by series, kept by the engine in
    ``StoredSeries`` as it writes them: the month numbers each series has a stored month value
    for, and the (grain, month number) of its stored values that are partial. It is all a
    recompute after a few months changed needs to know of the values it does not read (each
    series' extent and measures, the periods with data): reading it costs a few hundred rows
    whatever the size of the value store, where finding the same from the values scanned
    them all. Quarters and years have a value where one of their months has."""

    months: dict[SeriesKey, set[int] | frozenset[int]]
    partial: dict[SeriesKey, set[tuple[str, int]]]

    @classmethod
    def of(cls, values: Iterable[tuple[MeasureKey, str]]) -> _Summary:
        """The summary of these (key, note) pairs of measure values."""
        months: dict[SeriesKey, set[int]] = defaultdict(set)
        partial: dict[SeriesKey, set[tuple[str, int]]] = defaultdict(set)
        numbers: dict[date, int] = {}
        for (measure_id, scenario_id, entity_id, grain, period), note in values:
            series = (measure_id, scenario_id, entity_id)
            number = numbers.get(period)
            if number is None:
                number = numbers[period] = _month_number(period)
            if grain == "month":
                months[series].add(number)
            if note.startswith("partial"):
                partial[series].add((grain, number))
        return cls(dict(months), dict(partial))

    @classmethod
    def read(cls, fiscal_start: int | None = None) -> _Summary | None:
        """The stored summary; None when there are stored values without one (stored before the
        engine kept it), or with quarters and years of another fiscal year than ``fiscal_start``
        (when given): only a full recompute, which writes it, can then follow them."""
        with connection.cursor() as cursor:  # the JSON as text: series mostly share theirs
            table = StoredSeries._meta.db_table
            cursor.execute(
                "SELECT measure_id, scenario_id, entity_id, CAST(months AS TEXT), "  # noqa: S608
                f"CAST(partial AS TEXT), fiscal_start FROM {table}"
            )
            rows = cursor.fetchall()
        if not rows and MeasureValue.objects.exists():
            return None
        if fiscal_start is not None and any(row[5] != fiscal_start for row in rows):
            return None
        months, partial = {}, {}
        shared: dict[str, frozenset[int]] = {}  # one set for the series with the same months
        flags: dict[str, frozenset[tuple[str, int]]] = {}
        for measure_id, scenario_id, entity_id, runs, flagged, _fiscal_start in rows:
            series = (measure_id, scenario_id, entity_id)
            found = shared.get(runs)
            if found is None:
                found = shared[runs] = frozenset(
                    n for first, last in json.loads(runs) for n in range(first, last + 1)
                )
            months[series] = found
            marked = flags.get(flagged)
            if marked is None:
                marked = flags[flagged] = frozenset((grain, number) for grain, number in json.loads(flagged))
            if marked:
                partial[series] = set(marked)
        return cls(months, partial)

    @classmethod
    def scan(cls) -> _Summary:
        """The summary found from every stored value (what ``FINOPS_ENGINE_SELF_CHECK`` compares)."""
        rows = MeasureValue.objects.values_list(
            "measure_id", "scenario_id", "entity_id", "grain", "period", "note"
        )
        return cls.of(((m, s, e, g, p), note) for m, s, e, g, p, note in rows.iterator(chunk_size=BATCH))

    def shape(self, *, excluding: Iterable[date], fiscal_start: int) -> _StoredShape:
        """Each series' first and last month leaving ``excluding`` out, and each period with a
        value (and whether it is partial)."""
        left_out = {_month_number(month) for month in excluding}
        ranges = []
        # Series mostly have the same months: each distinct set is worked on once (``read``
        # shares one frozenset between the series that have the same months).
        bounds: dict[frozenset[int], tuple[date, date] | None] = {}
        sets_of: dict[tuple[int, int], dict[int, frozenset[int]]] = defaultdict(dict)
        for (measure_id, scenario_id, entity_id), months in self.months.items():
            months = months if isinstance(months, frozenset) else frozenset(months)
            sets_of[(scenario_id, entity_id)][id(months)] = months
            if months not in bounds:
                kept = months - left_out if left_out else months
                bounds[months] = (_month_date(min(kept)), _month_date(max(kept))) if kept else None
            if bounds[months] is not None:
                ranges.append((measure_id, scenario_id, entity_id, *bounds[months]))
        periods: dict[tuple[int, int, str, date], bool] = {}
        starts: dict[int, list[tuple[str, date]]] = {}
        for (scenario_id, entity_id), sets in sets_of.items():
            for number in frozenset().union(*sets.values()):
                into = starts.get(number)
                if into is None:
                    month = _month_date(number)
                    into = starts[number] = [
                        (grain, grain_start(month, grain, fiscal_start)) for grain in GRAINS
                    ]
                for grain, start in into:
                    periods[(scenario_id, entity_id, grain, start)] = False
        for (_measure, scenario_id, entity_id), flagged in self.partial.items():
            for grain, number in flagged:
                periods[(scenario_id, entity_id, grain, _month_date(number))] = True
        return _StoredShape(ranges, periods)

    def replaced(self, periods: dict[str, set[date]], rows: Values) -> _Summary:
        """The summary once the stored values of these periods are ``rows`` (and only them)."""
        numbers = {(grain, _month_number(start)) for grain, starts in periods.items() for start in starts}
        months_out = {number for grain, number in numbers if grain == "month"}
        fresh = _Summary.of((key, note) for key, (_value, note) in rows.items())
        months: dict[SeriesKey, set[int]] = {}
        partial: dict[SeriesKey, set[tuple[str, int]]] = {}
        for series in self.months.keys() | fresh.months.keys():
            kept = self.months.get(series, set()) - months_out
            kept |= fresh.months.get(series, set())
            if kept:
                months[series] = kept
                flagged = (self.partial.get(series, set()) - numbers) | fresh.partial.get(series, set())
                if flagged:
                    partial[series] = flagged
        return _Summary(months, partial)

    def write(self, fiscal_start: int, old: _Summary | None = None) -> None:
        """Store this summary, of quarters and years from ``fiscal_start``, in place of ``old``
        (None: in place of whatever is stored), writing only the series that differ."""
        if old is None:
            StoredSeries.objects.all().delete()
            old = _Summary({}, {})
        gone = [series for series in old.months if series not in self.months]
        changed = [
            series
            for series, months in self.months.items()
            if old.months.get(series) != months
            or old.partial.get(series, set()) != self.partial.get(series, set())
        ]
        stale = gone + [series for series in changed if series in old.months]
        _delete_keys(StoredSeries, ("measure_id", "scenario_id", "entity_id"), stale)
        rows = [
            (
                *series,
                json.dumps(_runs(self.months[series])),
                json.dumps(sorted(self.partial.get(series, ()))),
                fiscal_start,
            )
            for series in changed
        ]
        fields = ("measure_id", "scenario_id", "entity_id", "months", "partial", "fiscal_start")
        _insert_rows(StoredSeries, fields, rows, json_fields={"months", "partial"})


def _delete_keys(model: type[models.Model], fields: tuple[str, ...], keys: Iterable[tuple]) -> None:
    """Delete the rows with these values of ``fields``, a few hundred keys per statement
    (SQLite refuses an expression of a thousand terms)."""
    keys = list(keys)
    for start in range(0, len(keys), KEYS_PER_STATEMENT):
        found = models.Q(pk__in=[])
        for key in keys[start : start + KEYS_PER_STATEMENT]:
            found |= models.Q(**dict(zip(fields, key, strict=True)))
        model.objects.filter(found).delete()


def _insert_rows(
    model: type[models.Model], fields: tuple[str, ...], rows: list[tuple], *, json_fields: Iterable[str] = ()
) -> None:
    """Insert these rows (values of ``fields``, JSON fields as JSON text): on PostgreSQL in one
    statement, without a model instance per row."""
    if not rows:
        return
    json_fields = set(json_fields)
    if connection.vendor == "postgresql":
        template = "(" + ", ".join("%s::jsonb" if name in json_fields else "%s" for name in fields) + ")"
        with connection.cursor() as cursor, connection.wrap_database_errors:
            execute_values(
                cursor.cursor,  # psycopg2's, inside Django's: its errors come out as Django's
                f"INSERT INTO {model._meta.db_table} ({', '.join(fields)}) VALUES %s",  # noqa: S608
                rows,
                template=template,
                page_size=BATCH,
            )
        return
    model.objects.bulk_create(
        [
            model(
                **{
                    name: json.loads(v) if name in json_fields else v
                    for name, v in zip(fields, row, strict=True)
                }
            )
            for row in rows
        ],
        batch_size=BATCH,
    )


def _runs(numbers: set[int]) -> list[list[int]]:
    """Sorted numbers as runs of consecutive ones: {1, 2, 3, 7} is [[1, 3], [7, 7]]."""
    runs: list[list[int]] = []
    for number in sorted(numbers):
        if runs and runs[-1][1] == number - 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return runs


def _month_date(number: int) -> date:
    return date(number // 12, number % 12 + 1, 1)


def _check_summary(fiscal_start: int) -> None:
    """With ``FINOPS_ENGINE_SELF_CHECK``: the stored summary must be what the values give."""
    if not settings.FINOPS_ENGINE_SELF_CHECK:
        return
    if MeasureValue.objects.filter(grain="year").exclude(period__month=fiscal_start).exists():
        raise AssertionError(f"stored year values do not start in month {fiscal_start}")
    if StoredSeries.objects.exclude(fiscal_start=fiscal_start).exists():
        raise AssertionError(
            f"the engine's summary of the stored measure values is not of month {fiscal_start}"
        )
    kept, found = _Summary.read(), _Summary.scan()
    if kept != found:
        series = sorted(
            key
            for key in found.months.keys() | (kept.months.keys() if kept else set())
            if kept is None
            or kept.months.get(key) != found.months.get(key)
            or kept.partial.get(key) != found.partial.get(key)
        )
        raise AssertionError(f"the engine's summary of the stored measure values is wrong for {series[:5]}")
    kinds, found_kinds = _KPIStates.read(), _KPIStates.scan()
    if kinds != found_kinds:
        wrong = sorted(found_kinds.kinds ^ (kinds.kinds if kinds else set()))
        raise AssertionError(f"the engine's kinds of stored KPI value are wrong: {wrong[:5]}")


def _extend_ranges(ranges: dict[int, tuple[date, date]], values: Values) -> dict[int, tuple[date, date]]:
    out = dict(ranges)
    for scenario_id, period in {(key[1], key[4]) for key in values}:
        first, last = out.get(scenario_id, (period, period))
        out[scenario_id] = (min(first, period), max(last, period))
    return out


# --- grains -------------------------------------------------------------------------------


def _derive_grains(
    monthly: Values,
    behaviour: dict[int, str],
    fiscal_start: int,
    only: dict[str, set[date]] | None = None,
    loaded: dict[int, set[date]] | None = None,
) -> Values:
    """Quarter and year values from the months: flows sum, balances take the last month.

    A quarter or year with months missing from its scenario's data range is marked partial
    in the note; a balance then takes the last month that has data. With ``only``, just those
    quarters and years, and not the months (``monthly`` then needs only their months, and
    ``loaded`` says each scenario's data range).
    """
    if only is not None and not any(only.get(grain) for grain in ("quarter", "year")):
        return {}
    loaded = _loaded_months(monthly) if loaded is None else loaded
    values = dict(monthly) if only is None else {}
    starts: dict[date, list[tuple[str, date]]] = {}  # month -> the quarters and years it goes into
    for period in {key[4] for key in monthly}:
        into = [(grain, grain_start(period, grain, fiscal_start)) for grain in ("quarter", "year")]
        starts[period] = [(grain, start) for grain, start in into if only is None or start in only[grain]]
    groups: dict[tuple[int, int, int, str, date], list[tuple[date, Decimal | None, str]]] = defaultdict(list)
    for (measure_id, scenario_id, entity_id, _grain, period), (value, note) in monthly.items():
        into = starts[period]
        if into:
            for grain, start in into:
                groups[(measure_id, scenario_id, entity_id, grain, start)].append((period, value, note))
    partial: dict[tuple[int, str, date], str] = {}  # (scenario, grain, start) -> note

    def partial_note(scenario_id: int, grain: str, start: date) -> str:
        found = partial.get((scenario_id, grain, start))
        if found is None:
            expected = grain_months(start, grain)
            have = len(loaded.get(scenario_id, set()).intersection(expected))
            found = f"partial: {have} of {len(expected)} months loaded" if have < len(expected) else ""
            partial[(scenario_id, grain, start)] = found
        return found

    balances = {pk for pk, kind in behaviour.items() if kind == "balance"}
    for key, months in groups.items():
        measure_id, scenario_id, _entity_id, grain, start = key
        months.sort()
        if any(value is None for _, value, _ in months):
            notes = [note for _, _, note in months if note]
            values[key] = (None, notes[0] if notes else "an input month has no value")
            continue
        value = months[-1][1] if measure_id in balances else sum((v for _, v, _ in months), Decimal(0))
        values[key] = (value, partial_note(scenario_id, grain, start))
    return values


def _derived_from_changes(
    fresh: Values,
    before: Values,
    stored: _StoredMeasures,
    changed: set[date],
    book: _Book,
    summary: _Summary,
) -> Values | None:
    """The quarter and year values of the changed months, from their stored values and what
    the months changed, without reading their other months: what ``_derive_grains`` gives
    from all of them, when the changed months have the same series as stored, a value that
    changed was and is a number, and so is its quarter's and year's stored value. (Month
    values have six decimals, as stored: sums of them are exact.) Then a flow's quarter or year
    moves by the months' changes, and a balance takes the new value of its last month with
    data, if that is a changed month; partial notes stay, as every scenario's data range is
    as it was. None when it cannot be done so.
    """
    fiscal_start = book.fiscal_start
    now = {key: value for key, value in fresh.items() if key[4] in changed}
    then = {key: value for key, value in before.items() if key[4] in changed}
    if now.keys() != then.keys():
        return None
    starts = {
        month: [(grain, grain_start(month, grain, fiscal_start)) for grain in ("quarter", "year")]
        for month in changed
    }
    out = stored.get(pair for month in changed for pair in starts[month])  # every series' own
    balances = {m.pk for m in book.measures if m.time_behaviour == "balance"}
    for key, (value, note) in now.items():
        old, old_note = then[key]
        if value == old and note[:300] == old_note:
            continue  # this series' quarter and year stay as they are
        if value is None or old is None:
            return None
        measure_id, scenario_id, entity_id, _grain, month = key
        for grain, start in starts[month]:
            derived = (measure_id, scenario_id, entity_id, grain, start)
            total, derived_note = out.get(derived, (None, ""))
            if total is None:
                return None
            if measure_id not in balances:
                out[derived] = (total + value - old, derived_note)
                continue
            first = _month_number(start)
            months = summary.months.get((measure_id, scenario_id, entity_id), ())
            last = next((n for n in range(first + STEP[grain] - 1, first - 1, -1) if n in months), None)
            if last is None:
                return None  # the kept summary does not know the month: derive from all months
            if last == _month_number(month):
                out[derived] = (value, derived_note)  # its last month with data
    return out


def _loaded_months(monthly: Values) -> dict[int, set[date]]:
    """Months inside each scenario's data range (first to last month with any value)."""
    bounds: dict[int, tuple[date, date]] = {}
    for scenario_id, period in {(key[1], key[4]) for key in monthly}:
        first, last = bounds.get(scenario_id, (period, period))
        bounds[scenario_id] = (min(first, period), max(last, period))
    return {scenario: set(month_range(first, last)) for scenario, (first, last) in bounds.items()}


# --- formulas -----------------------------------------------------------------------------


@dataclass(slots=True)
class _KPIResult:
    value: float | None
    reason: str
    inputs: dict[str, float | None]
    partial: bool
    target: float | None = None
    target_origin: str = ""
    status: str = "none"
    status_reason: str = ""


@dataclass
class _Part:
    """One grain's measure values, every (scenario, entity) series stacked.

    Each series runs from its first to its last period with data, gaps included; ``own`` marks
    the rows of periods it has data for (only they get KPI values).
    """

    grain: str
    columns: list[str]  # measure codes
    data: np.ndarray  # a column per measure code
    pairs: list[tuple[int, int]]  # the (scenario, entity) series, in order
    series: np.ndarray  # each row's series (position in ``pairs``)
    scenario: np.ndarray  # of each row
    entity: np.ndarray
    month: np.ndarray  # period start as year * 12 + month - 1
    own: np.ndarray
    partial: np.ndarray  # rows whose period is not fully loaded
    has: list[frozenset[str]]  # each series' measure codes (with those every series reads)


@dataclass
class _Frame:
    """Every grain's parts laid end to end: the evaluator's input. Its groups are the
    (grain, scenario, entity) series, each evaluated at its own grain (``Layout.grains``)."""

    frame: pd.DataFrame  # a column per measure code
    layout: Layout  # each row's series and period
    data: np.ndarray  # the frame's values, a column per measure code
    grain: np.ndarray  # of each row
    scenario: np.ndarray
    entity: np.ndarray
    month: np.ndarray  # period start as year * 12 + month - 1
    own: np.ndarray
    partial: np.ndarray  # rows whose period is not fully loaded
    missing: dict[tuple[str, int, int], frozenset[str]]  # measure codes a series does not have

    @classmethod
    def of(cls, parts: list[_Part]) -> _Frame:
        columns = sorted({code for part in parts for code in part.columns})
        column_of = {code: j for j, code in enumerate(columns)}
        data = np.full((sum(len(part.month) for part in parts), len(columns)), np.nan)
        labels: list[tuple[str, int, int]] = []
        missing: dict[tuple[str, int, int], frozenset[str]] = {}
        groups, row = [], 0
        everything = frozenset(columns)
        for part in parts:
            data[row : row + len(part.month), [column_of[code] for code in part.columns]] = part.data
            groups.append(part.series + len(labels))
            for pair, has in zip(part.pairs, part.has, strict=True):
                if everything - has:
                    missing[(part.grain, *pair)] = everything - has
                labels.append((part.grain, *pair))
            row += len(part.month)
        layout = Layout(
            np.concatenate([part.month for part in parts]),
            np.concatenate(groups),
            labels,
            grains=[label[0] for label in labels],
        )
        return cls(
            pd.DataFrame(data, columns=columns),  # its rows are in ``layout``, not in an index
            layout,
            data,
            np.concatenate([np.full(len(part.month), part.grain, dtype=object) for part in parts]),
            np.concatenate([part.scenario for part in parts]),
            np.concatenate([part.entity for part in parts]),
            layout.months,
            np.concatenate([part.own for part in parts]),
            np.concatenate([part.partial for part in parts]),
            missing,
        )


@dataclass
class _Outline:
    """One grain's series as a whole, for a frame that holds only some of their values: each
    series' measure codes, first and last period (cut to the window), and its periods with
    data (True when partial). A measure a series has, but not in the window, is still one of
    its columns; its history starts where its data start (or at the window)."""

    series: dict[tuple[int, int], tuple[set[str], int, int]]  # codes, first and last month number
    periods: dict[tuple[int, int, int], bool]  # (scenario, entity, month number) -> partial


@dataclass
class _Columns:
    """Measure values as the formulas read them, a column per part: each value's measure,
    scenario, entity, grain, period start (month number), number (NaN: empty) and whether
    its period is partial."""

    measure: np.ndarray
    scenario: np.ndarray
    entity: np.ndarray
    grain: np.ndarray  # "month", "quarter" or "year" (objects)
    month: np.ndarray
    number: np.ndarray
    partial: np.ndarray

    @classmethod
    def of(cls, values: Values) -> _Columns:
        if values:  # each key's and value's parts as columns
            measures, scenarios, entities, grains, periods = zip(*values, strict=True)
            amounts, notes = zip(*values.values(), strict=True)
        else:
            measures = scenarios = entities = grains = periods = amounts = notes = ()
        month_of = {period: _month_number(period) for period in set(periods)}
        return cls(
            np.array(measures, dtype=np.int64),
            np.array(scenarios, dtype=np.int64),
            np.array(entities, dtype=np.int64),
            np.array(grains, dtype=object),
            np.array([month_of[period] for period in periods], dtype=np.int64),
            np.array([math.nan if value is None else float(value) for value in amounts], dtype=np.float64),
            np.array([note.startswith("partial") for note in notes], dtype=bool),
        )

    def __add__(self, other: _Columns) -> _Columns:
        return _Columns(
            *(
                np.concatenate([getattr(self, name), getattr(other, name)])
                for name in ("measure", "scenario", "entity", "grain", "month", "number", "partial")
            )
        )


def _frame(columns: _Columns, book: _Book, outlines: dict[str, _Outline] | None = None) -> _Frame | None:
    """The frame of every grain (None: no series). A measure that always reads one scenario
    (a budget measure) takes that scenario's values in every series, and every series has it."""
    code_of = {m.pk: m.code for m in book.measures}
    measure, scenario, entity, grain = columns.measure, columns.scenario, columns.entity, columns.grain
    month, numbers, partial = columns.month, columns.number, columns.partial
    parts = []
    for name in GRAINS:
        chosen = grain == name
        if outlines is not None and name not in outlines:
            continue  # no result is needed at this grain
        outline = outlines.get(name) if outlines is not None else None
        if outline is None and not chosen.any():
            continue
        if outline is None:
            outline = _outline_of(
                measure[chosen], scenario[chosen], entity[chosen], month[chosen], partial[chosen], code_of
            )
        if outline.series:
            part = _stack(
                name,
                measure[chosen],
                scenario[chosen],
                entity[chosen],
                month[chosen],
                numbers[chosen],
                STEP[name],
                book.fixed_scenario,
                outline,
                code_of,
            )
            if len(part.month):
                parts.append(part)
    return _Frame.of(parts) if parts else None


def _month_number(period: date) -> int:
    return period.year * 12 + period.month - 1


def _outline_of(
    measure: np.ndarray,
    scenario: np.ndarray,
    entity: np.ndarray,
    month: np.ndarray,
    partial: np.ndarray,
    code_of: dict[int, str],
) -> _Outline:
    """The outline of series whose values are all there (one row per value: its measure id,
    scenario, entity, month number and whether it is partial)."""
    if not len(measure):
        return _Outline({}, {})
    span = int(entity.max()) + 1
    pair_keys, pair = np.unique(scenario * span + entity, return_inverse=True)
    pair = pair.reshape(-1)
    count = len(pair_keys)
    first = np.full(count, np.iinfo(np.int64).max)
    last = np.full(count, np.iinfo(np.int64).min)
    np.minimum.at(first, pair, month)
    np.maximum.at(last, pair, month)
    has: list[set[str]] = [set() for _ in range(count)]
    ids = int(measure.max()) + 1
    for combined in np.unique(pair * ids + measure).tolist():
        has[combined // ids].add(code_of[combined % ids])
    labels = [(key // span, key % span) for key in pair_keys.tolist()]
    series = {
        label: (has[n], start, end)
        for n, (label, start, end) in enumerate(zip(labels, first.tolist(), last.tolist(), strict=True))
    }
    months = int(month.max()) + 1
    period_keys, period = np.unique(pair * months + month, return_inverse=True)
    flagged = np.zeros(len(period_keys), dtype=bool)
    np.logical_or.at(flagged, period.reshape(-1), partial)
    periods = {
        (*labels[key // months], key % months): is_partial
        for key, is_partial in zip(period_keys.tolist(), flagged.tolist(), strict=True)
    }
    return _Outline(series, periods)


def _stack(
    grain: str,
    measure: np.ndarray,
    scenario: np.ndarray,
    entity: np.ndarray,
    month: np.ndarray,
    numbers: np.ndarray,
    step: int,
    fixed: dict[str, int],
    outline: _Outline,
    code_of: dict[int, str],
) -> _Part:
    """One grain's frame from its values (one row per value: measure id, scenario, entity,
    month number, number): each series from its first to its last period in ``outline``."""
    present = np.unique(measure).tolist()
    columns = sorted(
        {code for has, _, _ in outline.series.values() for code in has}
        | {code_of[pk] for pk in present}
        | set(fixed)
    )
    pairs = sorted(key for key, (_, first, last) in outline.series.items() if first <= last)
    first = np.array([outline.series[pair][1] for pair in pairs], dtype=np.int64)
    last = np.array([outline.series[pair][2] for pair in pairs], dtype=np.int64)
    sizes = (last - first) // step + 1
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    rows = int(offsets[-1])
    row_bucket = np.repeat(np.arange(len(pairs)), sizes)
    row_month = first[row_bucket] + step * (np.arange(rows) - offsets[row_bucket])
    pair_scenario = np.array([pair[0] for pair in pairs], dtype=np.int64)
    pair_entity = np.array([pair[1] for pair in pairs], dtype=np.int64)
    row_scenario, row_entity = pair_scenario[row_bucket], pair_entity[row_bucket]
    row_of = {
        (s, e, m): r
        for r, (s, e, m) in enumerate(
            zip(row_scenario.tolist(), row_entity.tolist(), row_month.tolist(), strict=True)
        )
    }
    own = np.zeros(rows, dtype=bool)
    partial_rows = np.zeros(rows, dtype=bool)
    for key, is_partial in outline.periods.items():
        row = row_of.get(key)
        if row is not None:
            own[row], partial_rows[row] = True, is_partial
    data = np.full((rows, len(columns)), np.nan)
    column_of = {code: j for j, code in enumerate(columns)}
    # Each value's row: its series' first row plus its periods since the series' first period
    # (pairs are sorted, and so are their keys); a value outside every series' rows is left out.
    span = int(max(entity.max(initial=0), pair_entity.max(initial=0))) + 1
    pair_keys = pair_scenario * span + pair_entity
    value_keys = scenario * span + entity
    bucket = np.minimum(np.searchsorted(pair_keys, value_keys), max(len(pairs) - 1, 0))
    since = month - first[bucket] if len(pairs) else month
    placed = (
        (pair_keys[bucket] == value_keys) & (since >= 0) & (month <= last[bucket]) & (since % step == 0)
        if len(pairs)
        else np.zeros(len(month), dtype=bool)
    )
    column_by_id = np.full(int(measure.max(initial=0)) + 1, -1, dtype=np.int64)
    for pk in present:
        if code_of[pk] not in fixed:  # a budget measure: below
            column_by_id[pk] = column_of[code_of[pk]]
    column = column_by_id[measure] if len(measure) else np.zeros(0, dtype=np.int64)
    placed &= column >= 0
    data[offsets[bucket[placed]] + since[placed] // step, column[placed]] = numbers[placed]
    id_of = {code: pk for pk, code in code_of.items()}
    for code, source in fixed.items():  # a budget measure: the budget scenario's value of the month
        chosen = (measure == id_of.get(code, -1)) & (scenario == source)
        lookup = dict(
            zip(
                zip(entity[chosen].tolist(), month[chosen].tolist(), strict=True),
                numbers[chosen].tolist(),
                strict=True,
            )
        )
        if lookup:
            j = column_of[code]
            for row, key in enumerate(zip(row_entity.tolist(), row_month.tolist(), strict=True)):
                if key in lookup:
                    data[row, j] = lookup[key]
    has = [frozenset(outline.series[pair][0]) | frozenset(fixed) for pair in pairs]
    return _Part(
        grain, columns, data, pairs, row_bucket, row_scenario, row_entity, row_month, own, partial_rows, has
    )


def _evaluate_kpis(
    values: _Columns,
    book: _Book,
    wanted: Callable[[int, str], set[date] | None] | None = None,
    outlines: dict[str, _Outline] | None = None,
    stop: threading.Event | None = None,
    written: Callable[[int, str], set[date] | None] | None = None,
    earlier: dict[KPIKey, float | None] | None = None,
) -> dict[KPIKey, _KPIResult]:
    """Every KPI for every series and period with data; ``wanted(kpi_id, grain)`` can limit
    the periods that get a result (None: all), and then ``values`` need hold only the values
    these results read, with the ``outlines`` of the whole series. With ``written``, only the
    periods it gives (of those wanted) get a result; the others' values go into ``earlier``
    (last year's values for targets). Once ``stop`` is set it raises ``_Stopped`` (checked
    before each KPI)."""
    by_code = book.by_code
    out: dict[KPIKey, _KPIResult] = {}
    stacked = _frame(values, book, outlines)
    if stacked is None:
        return out
    frame = stacked.frame
    # Every grain in one frame: each formula is evaluated once, each group at its own grain.
    context = book.context("month", stacked.missing)
    columns = {name: stacked.data[:, j] for j, name in enumerate(frame.columns)}
    grains = [grain for grain in GRAINS if grain in set(stacked.layout.grains or ())]
    at = {grain: stacked.grain == grain for grain in grains}
    scenarios, entities = stacked.scenario.tolist(), stacked.entity.tolist()
    dates = {number: _month_date(number) for number in set(stacked.month.tolist())}
    starts = [dates[number] for number in stacked.month.tolist()]
    rows_of: dict[tuple[str, frozenset[date] | None], np.ndarray] = {}
    rounded: dict[tuple[str, str, frozenset[date] | None], list[float | None]] = {}
    missing = stacked.missing
    needed_at = {grain: _needed(book, grain, wanted) for grain in grains}
    needed = [
        (code, book.formulas[code]) for code in book.order if any(code in n for n in needed_at.values())
    ]
    for code, numbers, reasons in evaluate_in_order(needed, frame, context=context, layout=stacked.layout):
        if stop is not None and stop.is_set():
            raise _Stopped
        kpi_id = by_code[code].pk
        columns[code] = numbers
        names = [name for name in sorted(book.formulas[code].names) if name in columns]
        for grain in grains:
            periods = wanted(kpi_id, grain) if wanted is not None else None
            if periods is not None and not periods:
                continue
            if written is not None and earlier is not None and periods is not None:
                kept = written(kpi_id, grain)
                if kept is not None and len(kept) < len(periods):  # the rest: values only
                    before = _rows_of(stacked, grain, at[grain], frozenset(periods - kept), rows_of)
                    for i, value in zip(before.tolist(), numbers[before].tolist(), strict=True):
                        earlier[(kpi_id, scenarios[i], entities[i], grain, starts[i])] = (
                            None if value != value else value
                        )
                    periods = kept
            chosen = None if periods is None else frozenset(periods)
            rows = _rows_of(stacked, grain, at[grain], chosen, rows_of)
            if not len(rows):
                continue
            # Six decimals are enough to see where a value comes from; a column is read by
            # many KPIs, and rounded once for each set of rows.
            shown = []
            for name in names:
                cached = rounded.get((name, grain, chosen))
                if cached is None:
                    cached = rounded[(name, grain, chosen)] = [
                        None if number != number else round(number, 6)
                        for number in columns[name][rows].tolist()
                    ]
                shown.append(cached)
            given = list(zip(*shown, strict=True)) if names else [()] * len(rows)
            partial = stacked.partial[rows].tolist()
            why = reasons[rows].tolist()
            for n, (i, value) in enumerate(zip(rows.tolist(), numbers[rows].tolist(), strict=True)):
                scenario_id, entity_id = scenarios[i], entities[i]
                inputs = dict(zip(names, given[n], strict=True))
                lacking = missing.get((grain, scenario_id, entity_id)) if missing else None
                if lacking:
                    inputs = {name: number for name, number in inputs.items() if name not in lacking}
                empty = value != value  # NaN: empty
                out[(kpi_id, scenario_id, entity_id, grain, starts[i])] = _KPIResult(
                    None if empty else value, (why[n] or "") if empty else "", inputs, partial[n]
                )
    return out


def _rows_of(
    stacked: _Frame,
    grain: str,
    at: np.ndarray,
    chosen: frozenset[date] | None,
    found: dict[tuple[str, frozenset[date] | None], np.ndarray],
) -> np.ndarray:
    """The frame rows of a grain (``at``: those of the grain) that get a result in the periods
    ``chosen`` (None: all), found once for each set of periods (KPIs mostly want the same ones)."""
    rows = found.get((grain, chosen))
    if rows is None:
        if chosen is None:
            rows = np.flatnonzero(stacked.own & at)
        else:
            months = [_month_number(period) for period in chosen]
            rows = np.flatnonzero(stacked.own & at & np.isin(stacked.month, months))
        # A period's results one after another (the frame has each series' periods in a row):
        # stored in this order, each KPI's values of a period share a page or two, and a
        # recompute of one month changes a few pages, not one row on each of hundreds (each
        # page's first change after a checkpoint writes all of it to the WAL).
        rows = found[(grain, chosen)] = rows[np.argsort(stacked.month[rows], kind="stable")]
    return rows


def _needed(book: _Book, grain: str, wanted: Callable[[int, str], set[date] | None] | None) -> list[str]:
    """The KPIs to evaluate at a grain, in order: those with results wanted, and the KPIs
    their formulas use (read as columns, with their own reasons for empty values)."""
    if wanted is None:
        return book.order
    kpis, needed = book.by_code, set()
    for code in reversed(book.order):  # each KPI comes before the KPIs it uses
        periods = wanted(kpis[code].pk, grain)
        if code in needed or periods is None or periods:
            needed.add(code)
            needed |= book.formulas[code].names & book.formulas.keys()
    return [code for code in book.order if code in needed]


# --- targets ------------------------------------------------------------------------------


class _Targets:
    """Where the targets of a recompute's results come from, read once: typed and imported
    targets, the budget scenario, the KPIs' rules and thresholds. ``attach`` gives one result
    its target, origin and status; ``_store_kpis`` calls it as each row is written, so on
    PostgreSQL that work overlaps the server's parsing of the rows before it."""

    def __init__(self, book: _Book, *, typed: set[int] | None = None) -> None:
        """``typed``: the KPIs known to have typed or imported targets (None: read them all)."""
        kpis = book.kpis
        # Every result evaluated, set once they are: the budget and last-year values come from them.
        self.results: dict[KPIKey, _KPIResult] = {}
        self.earlier: dict[KPIKey, float | None] = {}  # values evaluated for targets only
        self.scenarios = book.scenarios
        budget_ids = [pk for pk, s in self.scenarios.items() if s.kind == Scenario.Kind.BUDGET]
        self.budget_id = (
            min(budget_ids, key=lambda pk: (self.scenarios[pk].code != "budget", pk)) if budget_ids else None
        )
        self.by_pk = {kpi.pk: kpi for kpi in kpis}
        self.typed = _typed_targets(
            [kpi for kpi in kpis if typed is None or kpi.pk in typed], book.fiscal_start
        )
        shown = separators()  # the reasons' numbers: looked up once, not for each of thousands
        self.thresholds = {kpi.pk: _thresholds(kpi, shown) for kpi in kpis}

    def attach(self, key: KPIKey, result: _KPIResult) -> _KPIResult:
        kpi_id, scenario_id = key[0], key[1]
        if self.scenarios[scenario_id].kind == Scenario.Kind.BUDGET:
            result.status, result.status_reason = "none", BUDGET_REASON
            return result
        target, origin = _target_for(
            self.by_pk[kpi_id], key, self.typed, self.results, self.budget_id, self.earlier
        )
        result.target, result.target_origin = target, origin
        result.status, result.status_reason = status_for(result.value, target, self.thresholds[kpi_id])
        if result.partial and result.status != "none":
            result.status_reason += " Partial period: not all months are loaded yet."
        return result


def _thresholds(kpi: KPI, shown: Separators) -> Thresholds:
    return Thresholds(
        direction=kpi.direction,
        green_tolerance_pct=float(kpi.green_tolerance_pct),
        amber_tolerance_pct=float(kpi.amber_tolerance_pct),
        band_low=float(kpi.band_low) if kpi.band_low is not None else None,
        band_high=float(kpi.band_high) if kpi.band_high is not None else None,
        unit=kpi.unit,
        decimals=kpi.decimals,
        separators=shown,
    )


def _target_for(
    kpi: KPI,
    key: KPIKey,
    typed: dict[tuple[int, int | None, str, date], float],
    results: dict[KPIKey, _KPIResult],
    budget_id: int | None,
    earlier: dict[KPIKey, float | None],
) -> tuple[float | None, str]:
    kpi_id, scenario_id, entity_id, grain, period = key
    for entity in (entity_id, None):
        if (kpi_id, entity, grain, period) in typed:
            return typed[(kpi_id, entity, grain, period)], "typed"
    if kpi.target_rule == KPI.TargetRule.BUDGET and budget_id is not None:
        budget = results.get((kpi_id, budget_id, entity_id, grain, period))
        if budget is not None and budget.value is not None:
            return budget.value, "budget"
    if kpi.target_rule == KPI.TargetRule.LAST_YEAR_PLUS and kpi.target_rule_pct is not None:
        then = (kpi_id, scenario_id, entity_id, grain, add_months(period, -12))
        last = results.get(then)
        value = last.value if last is not None else earlier.get(then)
        if value is not None:
            pct = format(kpi.target_rule_pct.normalize(), "f")
            return value * (1 + float(kpi.target_rule_pct) / 100), f"last year +{pct}%"
    return None, ""


def _typed_targets(kpis: list[KPI], fiscal_start: int) -> dict[tuple[int, int | None, str, date], float]:
    """Typed and imported targets at their own grain, pro-rated to the others where it means
    something: an additive KPI (money, counts) sums month targets into quarters and years and
    splits a year or quarter target over its months by days; any other KPI applies a year or
    quarter target to each month inside it as it is."""
    if not kpis:
        return {}
    units = {kpi.pk: kpi.unit for kpi in kpis}
    given: dict[tuple[int, int | None, str, date], float] = {
        (kpi_id, entity_id, grain, period): float(value)
        for kpi_id, entity_id, grain, period, value in Target.objects.filter(kpi__in=kpis).values_list(
            "kpi_id", "entity_id", "grain", "period", "value"
        )
    }
    out = dict(given)
    for (kpi_id, entity_id, grain, period), value in given.items():
        additive = units.get(kpi_id) in ADDITIVE_UNITS
        if grain in ("quarter", "year"):
            months = grain_months(period, grain)
            total_days = sum((add_months(m, 1) - m).days for m in months)
            for month in months:
                share = value * (add_months(month, 1) - month).days / total_days if additive else value
                out.setdefault((kpi_id, entity_id, "month", month), share)
    # Month targets of additive KPIs add up to quarters and years (when every month has one).
    sums: dict[tuple[int, int | None, str, date], list[float]] = defaultdict(list)
    for (kpi_id, entity_id, grain, period), value in given.items():
        if grain == "month" and units.get(kpi_id) in ADDITIVE_UNITS:
            for coarser in ("quarter", "year"):
                sums[(kpi_id, entity_id, coarser, grain_start(period, coarser, fiscal_start))].append(value)
    for key, parts in sums.items():
        if len(parts) == len(grain_months(key[3], key[2])):
            out.setdefault(key, sum(parts))
    return out


# --- storage ------------------------------------------------------------------------------

MEASURE_KEY = ("measure_id", "scenario_id", "entity_id", "grain", "period")
MEASURE_FIELDS = ("value", "note")
KPI_KEY = ("kpi_id", "scenario_id", "entity_id", "grain", "period")
KPI_FIELDS = (
    "value",
    "empty_reason",
    "target",
    "target_origin",
    "variance",
    "variance_pct",
    "status",
    "status_reason",
    "formula_version",
    "inputs",
    "partial",
)


def _store_measures(values: Values, run: RefreshRun | None, scope: _Scope | None = None) -> int:
    rows = {key: (value, note[:300]) for key, (value, note) in values.items()}
    _sync(MeasureValue, MEASURE_KEY, MEASURE_FIELDS, rows, run, scope)
    return len(rows)


def _store_kpis(
    results: dict[KPIKey, _KPIResult],
    book: _Book,
    run: RefreshRun | None,
    scope: _Scope | None = None,
    *,
    targets: _Targets | None,
) -> tuple[int, int, int]:
    """Store these results, each with its target and status (``targets``: None only when there
    are no results)."""
    rows = _KPIRows(results, book.versions, targets)
    return _sync(KPIValue, KPI_KEY, KPI_FIELDS, rows, run, scope)


class _KPIRows(Mapping[KPIKey, tuple]):
    """KPI results as the rows ``_sync`` stores (``KPI_FIELDS``), each made when it is read,
    with its target, variance and status."""

    def __init__(self, results: dict[KPIKey, _KPIResult], versions: dict[int, int], targets: _Targets | None):
        self._results, self._versions, self._targets = results, versions, targets

    def __len__(self) -> int:
        return len(self._results)

    def __iter__(self) -> Iterator[KPIKey]:
        return iter(self._results)

    def __contains__(self, key: object) -> bool:  # without making the row
        return key in self._results

    def __getitem__(self, key: KPIKey) -> tuple:
        if self._targets is None:
            raise ValueError("KPI results to store need their targets")
        result = self._targets.attach(key, self._results[key])
        diff, diff_pct = variance(result.value, result.target)
        return (  # numbers as floats: each store rounds them to the columns' places
            _finite(result.value),
            result.reason[:300],
            _finite(result.target),
            result.target_origin,
            _finite(diff),
            _finite(diff_pct),
            result.status,
            result.status_reason[:300],
            self._versions[key[0]],
            result.inputs,  # rounded as they were evaluated
            result.partial,
        )


class _Stopped(Exception):
    """A computation in the background was told to stop: nobody waits for its result."""


class _InBackground(Generic[T]):
    """``compute(stop)`` run on a second thread while this one writes to the database, on
    PostgreSQL: the server parses rows while Python computes the next ones (two cores instead
    of one after the other). ``compute`` must not use the database: only this thread does, so
    an exception raised in it meanwhile (a task's time limit, from a signal handler) leaves
    nothing else on the connection. ``compute`` should check the ``stop`` event now and then
    and raise ``_Stopped`` once it is set: the caller sets it when it gives up waiting.
    Elsewhere ``compute`` runs at once, in this thread."""

    def __init__(self, compute: Callable[[threading.Event], T]) -> None:
        self.stop = threading.Event()
        self._outcome: dict[str, object] = {}
        self._done = threading.Event()
        if connection.vendor != "postgresql":
            self._outcome["value"] = compute(self.stop)
            self._done.set()
            return
        thread = threading.Thread(target=self._run, args=(compute,), name="recompute-formulas", daemon=True)
        thread.start()

    def _run(self, compute: Callable[[threading.Event], T]) -> None:
        try:
            self._outcome["value"] = compute(self.stop)
        except BaseException as error:  # noqa: BLE001 - raised again by result()
            self._outcome["error"] = error
        finally:
            self._done.set()

    def result(self) -> T:
        """What ``compute`` returned, once it has; what it raised is raised here."""
        self._done.wait()
        if "error" in self._outcome:
            raise self._outcome.pop("error")  # popped: no cycle keeps its frames alive
        return self._outcome["value"]


@dataclass
class _Scope:
    """The stored rows a partial sync answers for: those whose ``fields`` are one of ``keys``,
    and every row whose first field is in ``whole``. The other rows stay as they are."""

    fields: tuple[str, ...]
    keys: set[tuple] = field(default_factory=set)
    whole: set = field(default_factory=set)
    shrinks: bool = True  # False: every stored row of ``keys`` is among the rows (none to delete)

    def __bool__(self) -> bool:
        return bool(self.keys or self.whole)

    def q(self) -> models.Q:
        found = models.Q(**{f"{self.fields[0]}__in": sorted(self.whole)})
        for key in self.keys:
            found |= models.Q(**dict(zip(self.fields, key, strict=True)))
        return found


def _sync(
    model: type[models.Model],
    key_fields: tuple[str, ...],
    fields: tuple[str, ...],
    rows: Mapping[tuple, tuple],
    run: RefreshRun | None,
    scope: _Scope | None = None,
) -> tuple[int, int, int]:
    """Make ``model``'s table hold exactly ``rows`` (natural key -> values in ``fields`` order):
    insert new keys, update changed ones, delete the rest (within ``scope``, when given).
    Unchanged rows are not written (they keep their refresh run)."""
    if scope is not None and not scope and not rows:
        return 0, 0, 0
    if connection.vendor == "postgresql":
        return _sync_postgresql(model, key_fields, fields, rows, run, scope)
    return _sync_orm(model, key_fields, fields, rows, run, scope)


def _sync_orm(
    model: type[models.Model],
    key_fields: tuple[str, ...],
    fields: tuple[str, ...],
    rows: Mapping[tuple, tuple],
    run: RefreshRun | None,
    scope: _Scope | None,
) -> tuple[int, int, int]:
    if scope is None:
        query = model.objects.all()
    elif scope.fields == key_fields:  # whole keys: read by their first field, keep those asked for
        firsts = {key[0] for key in scope.keys} | scope.whole
        query = model.objects.filter(**{f"{key_fields[0]}__in": sorted(firsts)})
    else:
        query = model.objects.filter(scope.q())
    stored = {
        tuple(row[1 : 1 + len(key_fields)]): (row[0], row[1 + len(key_fields) :])
        for row in query.values_list("id", *key_fields, *fields).iterator(chunk_size=BATCH)
    }
    if scope is not None and scope.fields == key_fields:
        stored = {key: old for key, old in stored.items() if key in scope.keys or key[0] in scope.whole}
    kinds = [model._meta.get_field(name) for name in fields]
    as_decimal = {i for i, kind in enumerate(kinds) if isinstance(kind, models.DecimalField)}
    to_insert, to_update = [], []
    for key, given in rows.items():
        values = tuple(_decimal(v) if i in as_decimal else v for i, v in enumerate(given))
        old = stored.pop(key, None)
        named = dict(zip(fields, values, strict=True))
        if old is None:
            to_insert.append(model(refresh_run=run, **dict(zip(key_fields, key, strict=True)), **named))
        elif any(_differs(a, b) for a, b in zip(old[1], values, strict=True)):
            to_update.append(model(id=old[0], refresh_run=run, **named))
    model.objects.bulk_create(to_insert, batch_size=BATCH)
    model.objects.bulk_update(to_update, [*fields, "refresh_run"], batch_size=BATCH)
    stale = [old[0] for old in stored.values()]
    for start in range(0, len(stale), BATCH):
        model.objects.filter(id__in=stale[start : start + BATCH]).delete()
    return len(to_insert), len(to_update), len(stale)


def _sync_postgresql(
    model: type[models.Model],
    key_fields: tuple[str, ...],
    fields: tuple[str, ...],
    rows: Mapping[tuple, tuple],
    run: RefreshRun | None,
    scope: _Scope | None,
) -> tuple[int, int, int]:
    """The same with set-based SQL: COPY the rows into a temporary table and let PostgreSQL
    compare. (A bulk_update's CASE over thousands of ids is slow to plan and to JIT-compile.)

    Into an empty table (the first refresh) the rows are copied straight in. Stored rows the
    rows no longer have are found by an anti-join with the staged rows, but for a scope of
    whole keys, where they are known already, and for a scope that does not shrink."""
    table = model._meta.db_table
    columns = ", ".join([*key_fields, *fields])
    kinds = [model._meta.get_field(name) for name in (*key_fields, *fields)]
    text_fields = [
        f.column for f in kinds[len(key_fields) :] if isinstance(f, models.CharField | models.TextField)
    ]
    force = f", FORCE_NOT_NULL ({', '.join(text_fields)})" if text_fields else ""
    run_id = run.pk if run is not None else None
    whole_keys = scope is not None and scope.fields == key_fields
    gone = scope.keys - rows.keys() if whole_keys else set()
    anti_join = scope is None or bool(scope.whole) or (bool(scope.keys) and scope.shrinks and not whole_keys)
    deleted = 0
    with connection.cursor() as cursor:
        if scope is None and rows:
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {table})")  # noqa: S608
            if not cursor.fetchone()[0]:
                buffer = _CsvRows(rows, kinds, tail=(run_id,))
                _copy(
                    cursor,
                    f"COPY {table} ({columns}, refresh_run_id) FROM STDIN WITH (FORMAT csv{force})",
                    buffer,
                )
                return len(rows), 0, 0
        if rows or anti_join:
            stage = _stage(cursor, table, columns, kinds)
            if rows:
                buffer = _CsvRows(rows, kinds)
                _copy(cursor, f"COPY {stage} ({columns}) FROM STDIN WITH (FORMAT csv{force})", buffer)
        if anti_join:
            deleted += _delete_missing(cursor, model, table, stage, key_fields, scope, whole_keys)
        if gone:
            types = [model._meta.get_field(name).db_type(connection) for name in key_fields]
            arrays = ", ".join(f"%s::{kind}[]" for kind in types)
            matches = " AND ".join(f"t.{name} = sc.{name}" for name in key_fields)
            cursor.execute(
                f"DELETE FROM {table} t USING unnest({arrays}) AS sc ({', '.join(key_fields)}) "  # noqa: S608
                f"WHERE {matches}",
                [list(column) for column in zip(*gone, strict=True)],
            )
            deleted += cursor.rowcount
        inserted = updated = 0
        if rows:
            # New keys are inserted, changed rows updated (with this run), unchanged ones left alone.
            changed = " OR ".join(_changed_sql(model, name, new="EXCLUDED") for name in fields)
            assignments = ", ".join(f"{name} = EXCLUDED.{name}" for name in fields)
            cursor.execute(  # the stage is emptied by the next sync and at commit
                f"INSERT INTO {table} AS t ({columns}, refresh_run_id) "  # noqa: S608
                f"SELECT {columns}, %s FROM {stage} "
                f"ON CONFLICT ({', '.join(key_fields)}) DO UPDATE SET {assignments}, refresh_run_id = %s "
                f"WHERE {changed} RETURNING xmax = 0",
                [run_id, run_id],
            )
            written = [new for (new,) in cursor.fetchall()]
            inserted, updated = sum(written), len(written) - sum(written)
    return inserted, updated, deleted


def _stage(cursor, table: str, columns: str, kinds: list[models.Field]) -> str:
    """A temporary table with these columns of ``table``, empty, to COPY rows into (each sync
    starts by emptying it, as a sync whose error was caught may have left its rows; the
    commit and a rollback empty it too).

    It stays for the session, where creating and dropping a table for each sync cost a
    one-month recompute more than its COPY (ON COMMIT DELETE ROWS: no rows outlive their
    transaction). Its name holds its columns' names and types, so a table made before a
    migration changed them is not used after it."""
    if not connection.in_atomic_block:  # autocommit would empty it after each statement
        raise RuntimeError("a sync through the staging table runs inside a transaction")
    shape = ",".join(f"{kind.column} {kind.db_type(connection)}" for kind in kinds)
    stage = f"{table}_stage_{zlib.crc32(shape.encode()):08x}"
    cursor.execute(  # emptied too: a sync that failed after its COPY may have left rows in it
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS "  # noqa: S608
        f"AS SELECT {columns} FROM {table} WITH NO DATA; DELETE FROM {stage}"
    )
    return stage


def _delete_missing(
    cursor,
    model: type[models.Model],
    table: str,
    stage: str,
    key_fields: tuple[str, ...],
    scope: _Scope | None,
    whole_keys: bool,
) -> int:
    """Delete the stored rows (in scope) that the staged rows do not have."""
    same_key = " AND ".join(f"t.{name} = s.{name}" for name in key_fields)
    missing = f"NOT EXISTS (SELECT 1 FROM {stage} s WHERE {same_key})"  # noqa: S608
    deleted = 0
    # The anti-joins are cheap as hash joins; a fresh table's estimates could make the planner
    # pick a nested loop over every pair of rows instead.
    cursor.execute("SELECT current_setting('enable_nestloop'), set_config('enable_nestloop', 'off', true)")
    nestloop = cursor.fetchone()[0]
    if scope is None:
        cursor.execute(f"DELETE FROM {table} t WHERE {missing}")  # noqa: S608
        deleted += cursor.rowcount
    else:
        if scope.whole:
            cursor.execute(
                f"DELETE FROM {table} t WHERE t.{scope.fields[0]} = ANY(%s) AND {missing}",  # noqa: S608
                [sorted(scope.whole)],
            )
            deleted += cursor.rowcount
        if scope.keys and scope.shrinks and not whole_keys:
            types = [model._meta.get_field(name).db_type(connection) for name in scope.fields]
            arrays = ", ".join(f"%s::{kind}[]" for kind in types)
            listed = ", ".join(scope.fields)
            matches = " AND ".join(f"t.{name} = sc.{name}" for name in scope.fields)
            cursor.execute(
                f"DELETE FROM {table} t USING unnest({arrays}) AS sc ({listed}) "  # noqa: S608
                f"WHERE {matches} AND {missing}",
                [list(column) for column in zip(*scope.keys, strict=True)],
            )
            deleted += cursor.rowcount
    cursor.execute("SELECT set_config('enable_nestloop', %s, true)", [nestloop])
    return deleted


class _CsvRows:
    """The rows (natural key -> values) as a CSV file for COPY, each line the key's columns,
    the values' and then ``tail`` (more columns, the same on every line), written as it is
    read, ``FIRST_ROWS`` rows at first and twice as many each time up to ``CHUNK_ROWS``: the
    server parses each chunk while the next one is written (on two cores, the two overlap),
    and a one-month recompute's thousand rows overlap too, after a small first chunk. Each
    chunk is written a column at a time, which in Python is several times faster than a value
    at a time (``csv.writer``)."""

    FIRST_ROWS = 250
    CHUNK_ROWS = 2000

    def __init__(self, rows: Mapping[tuple, tuple], kinds: list[models.Field], *, tail: tuple = ()) -> None:
        self._items = iter(rows.items())
        self._kinds = kinds  # the key's columns, then the values'
        self._end = "".join(f",{_csv_column((value,), None)[0]}" for value in tail) + "\n"
        self.error: BaseException | None = None  # what went wrong making the rows (see ``_copy``)
        self._size = self.FIRST_ROWS

    def read(self, size: int = -1) -> str:
        try:
            return self._read()
        except BaseException as error:  # a time limit or Ctrl-C lands here too
            self.error = error
            raise

    def _read(self) -> str:
        size = min(self._size, self.CHUNK_ROWS)
        self._size = size * 2
        chunk = list(itertools.islice(self._items, size))
        if not chunk:
            return ""  # the end of the file
        keys, values = zip(*chunk, strict=True)
        columns = [*zip(*keys, strict=True), *zip(*values, strict=True)]
        texts = [_csv_column(column, kind) for column, kind in zip(columns, self._kinds, strict=True)]
        return self._end.join(map(",".join, zip(*texts, strict=True))) + self._end


def _copy(cursor, sql: str, rows: _CsvRows) -> None:
    """COPY ``rows`` in with ``sql``. An error making the rows (they are made as COPY reads
    them) is raised as itself, not as the error psycopg2 ends the COPY with; the database's
    own errors are raised as Django's (which a refresh task retries where they are transient)."""
    try:
        with connection.wrap_database_errors:
            cursor.cursor.copy_expert(sql, rows)  # psycopg2's cursor, inside Django's
    except Exception as error:
        if rows.error is not None:
            raise rows.error from error
        raise


def _csv_column(column: tuple, kind: models.Field | None) -> list[str]:
    """One column's values as COPY reads them in CSV: an empty field is NULL (or, in a column
    read with FORCE_NOT_NULL, an empty string), text is quoted, numbers are their str()."""
    if isinstance(kind, models.CharField | models.TextField):
        quoted = {text: '"' + text.replace('"', '""') + '"' for text in set(column) if text is not None}
        return [quoted.get(text, "") for text in column]  # values repeat: each is quoted once
    if isinstance(kind, models.DateField):
        shown = {day: day.isoformat() for day in set(column) if day is not None}
        return [shown.get(day, "") for day in column]
    if isinstance(kind, models.JSONField):
        return [_json_field(value) for value in column]
    if isinstance(kind, models.BooleanField):
        return ["" if value is None else "t" if value else "f" for value in column]
    return ["" if value is None else str(value) for value in column]  # numbers: str() is exact


def _json_field(value) -> str:
    """JSON text of a value as a quoted CSV field (each " doubled), as json.dumps would write
    it. The inputs of a KPI value ({code: number or None}, codes identifiers, numbers finite)
    are written directly, the quotes doubled as they are written: there is one per KPI value."""
    if isinstance(value, dict):
        parts = []
        for name, number in value.items():
            if name not in _PLAIN_NAMES:
                if not (isinstance(name, str) and name.isidentifier()):
                    break
                _PLAIN_NAMES.add(name)
            if number is None:
                parts.append(f'""{name}"": null')
            elif type(number) is float and math.isfinite(number):
                parts.append(f'""{name}"": {number!r}')
            else:
                break
        else:
            return '"{' + ", ".join(parts) + '}"'
    return '"' + json.dumps(value).replace('"', '""') + '"'


_PLAIN_NAMES: set[str] = set()  # names seen to be identifiers (KPI and measure codes)


def _changed_sql(model: type[models.Model], name: str, *, new: str) -> str:
    """SQL true when the stored value (t) differs from the ``new`` one, as ``_differs`` decides."""
    old, new = f"t.{name}", f"{new}.{name}"
    if isinstance(model._meta.get_field(name), models.FloatField):
        return (
            f"(({old} IS NULL) <> ({new} IS NULL) OR abs({old} - {new}) > "
            f"greatest(1e-12 * greatest(abs({old}), abs({new})), 1e-12))"
        )
    return f"{old} IS DISTINCT FROM {new}"


def _finite(value: float | None) -> float | None:
    """A float a value column can hold: NaN and infinities are empty."""
    return None if value is None or not math.isfinite(value) else value


def _decimal(value: float | Decimal | None) -> Decimal | None:
    """A value as a decimal column holds it: rounded to its places, halves away from zero (as
    PostgreSQL rounds the text of a float that COPY gives it)."""
    if value is None or isinstance(value, Decimal):
        return value
    return Decimal(repr(value)).quantize(VALUE_PLACES, rounding=ROUND_HALF_UP)


def _differs(old, new) -> bool:
    if old is None or new is None:
        return (old is None) != (new is None)
    if isinstance(old, Decimal) or isinstance(new, Decimal):
        return Decimal(old) != Decimal(new)
    if isinstance(old, float) or isinstance(new, float):
        return not math.isclose(old, new, rel_tol=1e-12, abs_tol=1e-12)
    return old != new
