"""Reads of stored KPI values (never computed here): what pages, exports and commands show."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from django.db.models import F, Q, QuerySet, Subquery, Value

from finops.models import Account, Entity, Scenario
from finops.periods import add_months, grain_months
from finops.selectors import (
    AccountNode,
    FactScope,
    account_subtrees,
    financial_fact_rows,
    financial_fact_totals,
    operational_fact_dimensions,
    operational_fact_rows,
    operational_fact_totals,
)
from kpis.formatting import format_gap, format_value
from kpis.formula import FormulaError, parse
from kpis.models import KPI, KPIValue, Measure, MeasureValue

if TYPE_CHECKING:  # the scorecard's filters; read by attribute only (kpis sits below alignment)
    from alignment.selectors import Filters


class UnknownName(ValueError):
    """A code or name that names nothing; ``what`` is the filter it was given for."""

    def __init__(self, message: str, *, what: str) -> None:
        super().__init__(message)
        self.what = what


def kpi_values(
    *, code: str, grain: str = "month", scenario: str | None = None, entity: str | None = None
) -> QuerySet:
    """Stored values of one KPI at one grain, for a scenario (default: actual) and an entity
    (default: the root of the organization tree), oldest period first."""
    return kpi_value_rows(codes=[code], grain=grain, scenario=scenario, entity=entity)


def kpi_value_rows(
    *,
    codes: list[str] | None = None,
    grain: str = "month",
    scenario: str | None = None,
    entity: str | None = None,
    start: date | None = None,
    end: date | None = None,
    status: str | None = None,
) -> QuerySet:
    """Stored values of some KPIs (None: every active one) at one grain, scenario (default:
    actual) and entity (default: the root of the organization tree), optionally between two
    period starts; in KPI order, then oldest period first. UnknownName for a code not found."""
    kpis = KPI.objects.filter(is_active=True) if codes is None else KPI.objects.filter(code__in=codes)
    if codes is not None:
        missing = sorted(set(codes) - set(kpis.values_list("code", flat=True)))
        if missing:
            known = ", ".join(KPI.objects.order_by("code").values_list("code", flat=True)[:50])
            raise UnknownName(
                f"No KPI {', '.join(map(repr, missing))}. Known: {known or 'none yet'}.", what="kpi"
            )
    query = KPIValue.objects.filter(
        kpi__in=kpis, grain=grain, scenario=_scenario(scenario), entity=_entity(entity)
    )
    if start is not None:
        query = query.filter(period__gte=start)
    if end is not None:
        query = query.filter(period__lte=end)
    if status is not None:
        query = query.filter(status=status)
    return query.select_related("kpi", "scenario", "entity").order_by(
        "kpi__sort_order", "kpi__code", "period", "pk"
    )


def _scenario(name: str | None) -> Scenario:
    if name is None:
        found = Scenario.objects.filter(kind=Scenario.Kind.ACTUAL).order_by("code").first()
    else:
        found = (
            Scenario.objects.filter(code__iexact=name).first()
            or Scenario.objects.filter(name__iexact=name).first()
        )
    if found is None:
        known = ", ".join(Scenario.objects.values_list("code", flat=True))
        missing = "No actual scenario: name one" if name is None else f"No scenario {name!r}"
        raise UnknownName(f"{missing}. Known: {known or 'none yet'}.", what="scenario")
    return found


def _entity(name: str | None) -> Entity:
    if name is None:
        found = Entity.objects.filter(parent__isnull=True).order_by("code").first()
    else:
        found = (
            Entity.objects.filter(code__iexact=name).first()
            or Entity.objects.filter(name__iexact=name).first()
        )
    if found is None:
        known = ", ".join(Entity.objects.values_list("code", flat=True)[:50])
        raise UnknownName(f"No entity {name!r}. Known: {known or 'none yet'}.", what="entity")
    return found


# --- the KPI detail page -------------------------------------------------------------------
# Stored values only: the chart, the table and the lineage of one KPI at one grain and entity
# (actual scenario), read with a fixed number of queries whatever the number of periods or
# inputs. ``filters`` is the scorecard's Filters (alignment.selectors.scorecard_filters).

DETAIL_FIELDS = (
    "kpi_id",
    "period",
    "value",
    "target",
    "target_origin",
    "variance",
    "variance_pct",
    "status",
    "status_reason",
    "partial",
    "empty_reason",
    "inputs",
    "formula_version",
    "refresh_run_id",
    "refresh_run__status",
    "refresh_run__started_at",
    "scenario__code",
)
# Functions whose value reads other periods than the one computed (days() does not).
LOOKBACK_FUNCTIONS = frozenset({"prev", "last_year", "ytd", "ttm", "avg_balance"})
TARGET_ORIGINS = {
    "budget": "the budget scenario",
    "typed": "typed in",
    "imported": "imported from a file",
    "last_year_plus": "last year plus a percentage",
    "rule": "the KPI's target rule",
}


@dataclass
class ValueRow:
    """One stored value of the KPI, with its texts ready to show."""

    period: date
    label: str
    value: Decimal | None
    target: Decimal | None
    variance: Decimal | None
    status: str
    status_reason: str
    partial: bool
    empty_reason: str
    inputs: dict
    formula_version: int
    target_origin: str = ""
    refresh_run_id: int | None = None
    refresh_run_status: str = ""
    refresh_run_started_at: datetime | None = None
    value_text: str = "—"
    target_text: str = "—"
    variance_text: str = "—"
    last_year: Decimal | None = None
    last_year_text: str = "—"

    @property
    def target_origin_text(self) -> str:
        return TARGET_ORIGINS.get(self.target_origin, self.target_origin.replace("_", " "))


@dataclass
class InputRow:
    """A measure or KPI the value was computed from, with its value in that period."""

    code: str
    kind: str  # "measure", "kpi", or "unknown" (no longer defined)
    name: str
    value: float | None
    value_text: str


@dataclass
class KPIHistory:
    kpi: KPI
    values: list[ValueRow]  # oldest first
    current: ValueRow | None
    inputs: list[InputRow]
    linked: dict[int, ValueRow]  # the filters' period of related KPIs, by KPI id
    functions: list[str]  # functions in the formula that read other periods, such as "ttm()"
    formula_error: str = ""

    @property
    def stale_formula(self) -> bool:
        return self.current is not None and self.current.formula_version != self.kpi.formula_version


def kpi_by_code(code: str) -> KPI | None:
    """The KPI with its owner and owner department (one query); None when there is none."""
    return KPI.objects.select_related("owner_department", "owner").filter(code=code).first()


def kpi_history(kpi: KPI, filters: Filters, *, related_ids: Iterable[int] = ()) -> KPIHistory:
    """The KPI's stored actual values at the filters' grain and entity, oldest first, and the
    values of ``related_ids`` (driver links) for the filters' period (one query), with the
    names of the selected value's inputs (one query when the formula names anything)."""
    try:
        formula = parse(kpi.formula)
        names, formula_error = set(formula.names), ""
        functions = sorted(f"{name}()" for name in formula.functions & LOOKBACK_FUNCTIONS)
    except FormulaError as error:  # refused when saved; shown rather than crashing if it happens
        names, functions, formula_error = set(), [], error.message
    related = sorted(set(related_ids) - {kpi.pk})
    rows: list[dict] = []
    if filters.entity is not None:
        own = Q(kpi_id=kpi.pk)
        if related and filters.period is not None:
            own |= Q(kpi_id__in=related, period=filters.period)
        rows = list(
            KPIValue.objects.filter(
                own, grain=filters.grain, entity_id=filters.entity.id, scenario__kind=Scenario.Kind.ACTUAL
            )
            .order_by("period", "scenario__code")
            .values(*DETAIL_FIELDS)
        )
    by_period: dict[date, ValueRow] = {}
    linked: dict[int, ValueRow] = {}
    for row in rows:
        value_row = _value_row(row, filters, kpi if row["kpi_id"] == kpi.pk else None)
        if row["kpi_id"] == kpi.pk:
            by_period.setdefault(row["period"], value_row)  # the first actual scenario by code
        else:
            linked.setdefault(row["kpi_id"], value_row)
    for period, value_row in by_period.items():
        last = by_period.get(add_months(period, -12))
        if last is not None and last.value is not None:
            value_row.last_year = last.value
            value_row.last_year_text = format_value(last.value, kpi.unit, kpi.decimals)
    current = by_period.get(filters.period) if filters.period else None
    names |= set(current.inputs) if current else set()
    return KPIHistory(
        kpi=kpi,
        values=list(by_period.values()),
        current=current,
        inputs=_input_rows(names, current),
        linked=linked,
        functions=functions,
        formula_error=formula_error,
    )


def _value_row(row: dict, filters: Filters, kpi: KPI | None) -> ValueRow:
    value_row = ValueRow(
        period=row["period"],
        label=filters.label(row["period"]),
        value=row["value"],
        target=row["target"],
        variance=row["variance"],
        status=row["status"],
        status_reason=row["status_reason"],
        partial=row["partial"],
        empty_reason=row["empty_reason"],
        inputs=row["inputs"] or {},
        formula_version=row["formula_version"],
        target_origin=row["target_origin"],
        refresh_run_id=row["refresh_run_id"],
        refresh_run_status=row["refresh_run__status"] or "",
        refresh_run_started_at=row["refresh_run__started_at"],
    )
    if kpi is not None:
        value_row.value_text = format_value(row["value"], kpi.unit, kpi.decimals)
        value_row.target_text = format_value(row["target"], kpi.unit, kpi.decimals)
        if row["variance"] is not None:
            sign = "+" if row["variance"] > 0 else ""
            value_row.variance_text = sign + format_gap(float(row["variance"]), kpi.unit, kpi.decimals)
    return value_row


def _input_rows(names: set[str], current: ValueRow | None) -> list[InputRow]:
    """The formula's names (and the stored inputs) as measures or KPIs, with their values."""
    if not names:
        return []
    fields = ("input_kind", "code", "name", "unit", "shown_decimals")
    measures = (
        Measure.objects.filter(code__in=names)
        .order_by()
        .annotate(input_kind=Value("measure"), shown_decimals=Value(0))
    )
    kpis = (
        KPI.objects.filter(code__in=names)
        .order_by()
        .annotate(input_kind=Value("kpi"), shown_decimals=F("decimals"))
    )
    found = {
        code: (kind, name, unit, decimals)
        for kind, code, name, unit, decimals in measures.values_list(*fields).union(
            kpis.values_list(*fields), all=True
        )
    }
    inputs = current.inputs if current else {}
    rows = []
    for code in sorted(names):
        kind, name, unit, decimals = found.get(code, ("unknown", code, "", 1))
        value = inputs.get(code)
        if kind == "measure":
            decimals = 0 if unit in ("count", "currency") else 2
        rows.append(
            InputRow(
                code, kind, name, value, format_value(value, unit, decimals) if value is not None else "—"
            )
        )
    # Measures first (they drill down to facts), then KPIs, then names no longer defined.
    order = {"measure": 0, "kpi": 1, "unknown": 2}
    return sorted(rows, key=lambda row: (order[row.kind], row.code))


# --- the drill-down from a measure value to its facts ---------------------------------------
# Exactly the facts the engine summed for one stored measure value (kpis.aggregate and
# kpis.engine): the measure's account subtrees with their roll-up signs, or its series; the
# entity subtree; the measure's scenario (else actual); its department subtree; and the months
# of the period (flows: every month; balances: the last month with data). The facts are
# totalled here only to show that they reconcile with the stored value.

ROW_LIMIT = 500
VALUE_PLACES = Decimal("0.000001")


@dataclass
class AccountLine:
    node: AccountNode
    amounts: dict[str, Decimal]  # currency ("" when one currency or not money) -> summed amount
    has_facts: bool
    cells: list[tuple[str, str]] = field(default_factory=list)  # (amount, contribution) texts by currency

    def contribution(self, currency: str) -> Decimal | None:
        amount = self.amounts.get(currency)
        return None if amount is None else amount * self.node.factor


@dataclass
class EntityCheck:
    """One entity of the subtree: its facts total in its own currency against its stored value."""

    entity_id: int
    code: str
    name: str
    currency: str
    expected: Decimal | None
    stored: Decimal | None
    has_stored: bool
    is_leaf: bool
    expected_text: str = "—"
    stored_text: str = "—"

    @property
    def agrees(self) -> bool:
        return self.has_stored and self.expected == self.stored


@dataclass
class Drilldown:
    measure: Measure
    scenario_name: str
    months: list[date]  # the months whose facts make the value
    period_months: list[date]  # every month of the period
    stored: Decimal | None = None
    stored_note: str = ""
    has_stored: bool = False
    expected: Decimal | None = None  # the facts as the engine sums them (None: not comparable)
    translated: bool = False  # the entities report in several currencies: the engine translates
    currencies: list[str] = field(default_factory=list)
    accounts: list[AccountLine] = field(default_factory=list)
    totals: dict[str, Decimal] = field(default_factory=dict)  # by currency, before the multiplier
    entities: list[EntityCheck] = field(default_factory=list)
    dimensions: list[tuple[str, Decimal, int, int]] = field(default_factory=list)
    dimensions_text: list[tuple[str, str, str, str]] = field(default_factory=list)
    roots: list[Account] = field(default_factory=list)  # the accounts the measure names
    entity_count: int = 1  # entities in the subtree read (the chosen one and those under it)
    money: bool = False  # an amount in the entities' currencies (translated across currencies)
    rows: list[dict] = field(default_factory=list)
    row_count: int = 0
    row_limit: int = ROW_LIMIT
    decimals: int = 2  # amounts in full, so a reader can add them up by hand
    total_cells: list[str] = field(default_factory=list)  # texts of ``totals`` by currency

    def text(self, value: Decimal | None) -> str:
        return format_value(value, "count", self.decimals)

    @property
    def stored_text(self) -> str:
        return self.text(self.stored)

    @property
    def stored_short(self) -> str:
        """The stored value as the KPI page shows its inputs."""
        decimals = 0 if self.measure.unit in ("count", "currency") else 2
        return format_value(self.stored, self.measure.unit, decimals)

    @property
    def expected_text(self) -> str:
        return self.text(self.expected)

    @property
    def difference_text(self) -> str:
        difference = self.difference
        if difference is None:
            return "—"
        return ("+" if difference > 0 else "") + format_value(difference, "count", 6)

    @property
    def multiplied(self) -> bool:
        return self.measure.multiplier != 1

    @property
    def agrees(self) -> bool | None:
        if self.expected is None or not self.has_stored:
            return None
        return self.expected == self.stored

    @property
    def difference(self) -> Decimal | None:
        if self.expected is None or self.stored is None:
            return None
        return self.stored - self.expected

    @property
    def is_account(self) -> bool:
        return self.measure.kind == Measure.Kind.ACCOUNT

    @property
    def is_balance(self) -> bool:
        return self.measure.time_behaviour == "balance"

    @property
    def capped(self) -> bool:
        return self.row_count > len(self.rows)


def measure_for_drilldown(code: str) -> Measure | None:
    """The measure with its series, department and scenario, and the actual scenario's id and
    name for measures without a scenario of their own (one query)."""
    actual = Scenario.objects.filter(kind=Scenario.Kind.ACTUAL).order_by("code")
    return (
        Measure.objects.select_related("series", "department", "scenario")
        .annotate(
            actual_id=Subquery(actual.values("pk")[:1]),
            actual_name=Subquery(actual.values("name")[:1]),
        )
        .filter(code=code)
        .first()
    )


def measure_drilldown(measure: Measure, filters: Filters, *, limit: int = ROW_LIMIT) -> Drilldown:
    """The facts behind ``measure``'s stored value for the filters' grain, period and entity.

    Queries, whatever the number of facts: the stored values of the entity subtree (1); for an
    account measure its roots (1), the chart of accounts (1), the totals by account, entity and
    month (1), the first ``limit`` fact rows and their count (2); for a series measure the totals
    by entity and month (1), by dimension (1), the first rows and their count (2).
    """
    if filters.period is None or filters.entity is None:
        raise ValueError("A drill-down needs a period and an entity (there are no stored values yet).")
    scenario_id = measure.scenario_id or measure.actual_id
    drill = Drilldown(
        measure=measure,
        scenario_name=measure.scenario.name if measure.scenario_id else (measure.actual_name or "Actual"),
        months=[],
        period_months=grain_months(filters.period, filters.grain),
    )
    entities = {option.id: option for option in filters.entities}
    subtree = _subtree(filters.entities, filters.entity.id)
    stored = MeasureValue.objects.filter(
        measure=measure,
        scenario_id=scenario_id,
        grain=filters.grain,
        period=filters.period,
        entity_id__in=subtree,
    ).values_list("entity_id", "value", "note")
    stored_by_entity = {entity_id: (value, note) for entity_id, value, note in stored}
    if filters.entity.id in stored_by_entity:
        drill.has_stored = True
        drill.stored, drill.stored_note = stored_by_entity[filters.entity.id]
    if scenario_id is None:  # no actual scenario at all: nothing can have been computed
        return drill
    departments = None
    if measure.department_id:
        departments = frozenset(_subtree(filters.departments, measure.department_id))
    scope = FactScope(frozenset(subtree), scenario_id, tuple(drill.period_months), departments)
    money = measure.kind == Measure.Kind.ACCOUNT and measure.unit == "currency"
    drill.money, drill.entity_count = money, len(subtree)
    currency_of = {pk: (entities[pk].currency if pk in entities else "") for pk in subtree}
    drill.translated = money and len(set(currency_of.values())) > 1
    drill.currencies = sorted(set(currency_of.values())) if drill.translated else [""]

    # (entity id, month) -> the entity's own amount before the multiplier
    by_entity_month: dict[tuple[int, date], Decimal] = defaultdict(Decimal)
    if measure.kind == Measure.Kind.ACCOUNT:
        drill.roots = list(measure.accounts.order_by("sort_order", "code").only("code", "name"))
        nodes = account_subtrees([root.pk for root in drill.roots])
        factor = {node.id: node.factor for node in nodes}
        totals = financial_fact_totals(scope, factor) if factor else []
        for account_id, entity_id, period, amount in totals:
            by_entity_month[(entity_id, period)] += amount * factor[account_id]
        drill.months = _months_read(drill, {period for _, _, period, _ in totals})
        amounts: dict[int, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        for account_id, entity_id, period, amount in totals:
            if period in drill.months:
                amounts[account_id][currency_of[entity_id] if drill.translated else ""] += amount
        for node in nodes:
            if node.is_leaf or node.id in amounts:
                drill.accounts.append(AccountLine(node, dict(amounts.get(node.id, {})), node.id in amounts))
        for line in drill.accounts:
            for currency in drill.currencies:
                contribution = line.contribution(currency)
                if contribution is not None:
                    drill.totals[currency] = drill.totals.get(currency, Decimal(0)) + contribution
        if factor and drill.months:
            reading = replace(scope, months=tuple(drill.months))
            drill.rows, drill.row_count = financial_fact_rows(reading, factor, limit=limit)
            for row in drill.rows:
                row["factor"] = factor[row["account_id"]]
    elif measure.series_id is not None:
        totals = operational_fact_totals(scope, measure.series_id)
        use_count = measure.kind == Measure.Kind.SERIES_COUNT
        for entity_id, period, value, count in totals:
            by_entity_month[(entity_id, period)] += Decimal(count) if use_count else value
        drill.months = _months_read(drill, {period for _, period, _, _ in totals})
        reading = replace(scope, months=tuple(drill.months))
        if drill.months:
            drill.dimensions = operational_fact_dimensions(reading, measure.series_id)
            drill.rows, drill.row_count = operational_fact_rows(reading, measure.series_id, limit=limit)
        for _entity_id, period, value, count in totals:
            if period in drill.months:
                drill.totals[""] = drill.totals.get("", Decimal(0)) + (Decimal(count) if use_count else value)

    # The stored value as the engine makes it from these facts: per month, the entity subtree's
    # sum times the multiplier (rounded to 6 places); a flow adds the months, a balance takes
    # the last month with data. Across currencies the engine translates at monthly rates, which
    # this page does not redo: there each entity is checked in its own currency instead.
    if not drill.translated:
        drill.expected = _engine_value(drill, by_entity_month, subtree, measure)
    for entity_id in subtree:
        option = entities.get(entity_id)
        own = _subtree(filters.entities, entity_id)
        if option is None or (len(own) > 1 and not drill.translated):
            continue  # groups are only listed when they cannot be checked as one
        if len(own) > 1 and len({currency_of.get(pk, "") for pk in own}) > 1 and money:
            expected = None
        else:
            expected = _engine_value(drill, by_entity_month, own, measure)
        value, _note = stored_by_entity.get(entity_id, (None, ""))
        drill.entities.append(
            EntityCheck(
                entity_id=entity_id,
                code=option.code,
                name=option.name,
                currency=option.currency,
                expected=expected,
                stored=value,
                has_stored=entity_id in stored_by_entity,
                is_leaf=len(own) == 1,
            )
        )
    drill.entities.sort(key=lambda check: (not check.is_leaf, check.name))
    _add_texts(drill)
    return drill


def _add_texts(drill: Drilldown) -> None:
    """Every amount written once by the one formatter, in full with its decimals."""
    if drill.measure.kind == Measure.Kind.SERIES_COUNT:
        drill.decimals = 0
    for line in drill.accounts:
        line.cells = [
            (drill.text(line.amounts.get(currency)), drill.text(line.contribution(currency)))
            for currency in drill.currencies
        ]
    drill.total_cells = [drill.text(drill.totals.get(currency)) for currency in drill.currencies]
    for check in drill.entities:
        check.expected_text, check.stored_text = drill.text(check.expected), drill.text(check.stored)
    for row in drill.rows:
        if "amount" in row:
            row["amount_text"] = drill.text(row["amount"])
            row["signed_text"] = "+" if row["factor"] > 0 else "−"
        else:
            row["value_text"] = drill.text(row["value"])
            row["count_text"] = format_value(row["count"], "count", 0)
    drill.dimensions_text = [
        (dimension, drill.text(value), format_value(count, "count", 0), format_value(rows, "count", 0))
        for dimension, value, count, rows in drill.dimensions
    ]


def _months_read(drill: Drilldown, with_data: set[date]) -> list[date]:
    """Flows read every month of the period that has data; balances the last one."""
    months = [month for month in drill.period_months if month in with_data]
    if drill.is_balance:
        return months[-1:]
    return months


def _engine_value(
    drill: Drilldown,
    by_entity_month: dict[tuple[int, date], Decimal],
    members: set[int],
    measure: Measure,
) -> Decimal | None:
    monthly: list[Decimal] = []
    for month in drill.period_months:
        present = [by_entity_month[(pk, month)] for pk in members if (pk, month) in by_entity_month]
        if not present:
            continue
        if len(members) == 1:
            monthly.append((present[0] * measure.multiplier).quantize(VALUE_PLACES))
        else:
            monthly.append(
                sum((amount * measure.multiplier for amount in present), Decimal(0)).quantize(VALUE_PLACES)
            )
    if not monthly:
        return None
    if drill.is_balance:
        return monthly[-1]
    return sum(monthly, Decimal(0))


def _subtree(options: Iterable, root_id: int) -> set[int]:
    """``root_id`` and every option under it (options carry ``id`` and ``parent_id``)."""
    children: dict[int | None, list[int]] = defaultdict(list)
    for option in options:
        children[option.parent_id].append(option.id)
    found, pending = set(), [root_id]
    while pending:
        node = pending.pop()
        if node not in found:
            found.add(node)
            pending.extend(children.get(node, []))
    return found
