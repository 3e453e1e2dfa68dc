"""Facts to monthly measure values, aggregated in the database.

Measures that do not filter by department read ``LedgerTotal``: the financial facts already
added up per month, scenario, entity and account by the loaders when they changed them (tens
of thousands of rows where the facts can be millions). Otherwise one pass over each fact
table: the facts are first grouped by month, entity, scenario and
account (and department, only when a measure filters by department: grouping by it would
keep almost every row of a large ledger as its own group), and only those group totals are
mapped onto measures, through an inline VALUES table of (account, measure, sign,
department) rows. Raw fact rows never leave the database, so memory does not grow with the
row count, and money stays exact (``numeric`` in PostgreSQL, ``Decimal`` in Python). The big
GROUP BY runs without JIT compilation (``finops.loading.big_query_settings``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from decimal import Decimal

from django.db import connection, transaction

from finops.loading import big_query_settings
from finops.models import Account, Department, FinancialFact, LedgerTotal, OperationalFact, Scenario
from kpis.models import Measure

WORK_MEM = "64MB"

# (measure_id, scenario_id, entity_id, period) -> amount, for leaf entities
MonthlyTotals = dict[tuple[int, int, int, date], Decimal]
AccountRow = tuple[int, int, int, int]  # leaf account, measure, sign, department (0 = any)


def account_signs() -> dict[int, dict[int, int]]:
    """For every account: {leaf account id: product of roll-up signs from the leaf up to it}.

    The named account's own sign is not applied (it says how the account rolls into ITS
    parent), so "Total Cost of Sales" reads as a positive cost.
    """
    parent_of: dict[int, int | None] = {}
    sign_of: dict[int, int] = {}
    for pk, parent_id, sign in Account.objects.values_list("pk", "parent_id", "rollup_sign"):
        parent_of[pk], sign_of[pk] = parent_id, sign
    signs: dict[int, dict[int, int]] = defaultdict(dict)
    for leaf in parent_of:
        factor, node = 1, leaf
        signs[leaf][leaf] = 1
        seen = {leaf}
        while parent_of[node] is not None and sign_of[node] != 0:
            factor *= sign_of[node]
            node = parent_of[node]
            if node in seen:  # a cycle in the tree is a data error; stop rather than loop
                break
            seen.add(node)
            signs[node][leaf] = factor
    return signs


def department_subtrees() -> dict[int, list[int]]:
    children: dict[int | None, list[int]] = defaultdict(list)
    for pk, parent_id in Department.objects.values_list("pk", "parent_id"):
        children[parent_id].append(pk)
    subtree: dict[int, list[int]] = {}
    for root in [pk for ids in children.values() for pk in ids]:
        stack, found = [root], []
        while stack:
            node = stack.pop()
            found.append(node)
            stack.extend(children.get(node, []))
        subtree[root] = found
    return subtree


def account_mapping(measures: Iterable[Measure]) -> list[AccountRow]:
    """How the ledger's leaf accounts add up to the account roll-up measures: (leaf account,
    measure, sign, department) rows, department 0 when the measure takes any department."""
    measures = [measure for measure in measures if measure.kind == Measure.Kind.ACCOUNT]
    if not measures:
        return []
    signs = account_signs()
    departments = department_subtrees() if any(measure.department_id for measure in measures) else {}
    accounts_of: dict[int, list[int]] = defaultdict(list)  # one query, not one per measure
    named = Measure.accounts.through.objects.filter(measure_id__in=[measure.pk for measure in measures])
    for measure_id, account_id in named.order_by("account__sort_order", "account__code").values_list(
        "measure_id", "account_id"
    ):
        accounts_of[measure_id].append(account_id)  # in the accounts' order (a later one wins a leaf)
    mapping: list[AccountRow] = []
    for measure in measures:
        dept_ids = departments.get(measure.department_id, [0]) if measure.department_id else [0]
        leaves: dict[int, int] = {}
        for account_id in accounts_of[measure.pk]:
            leaves.update(signs.get(account_id, {}))
        for leaf, sign in leaves.items():
            mapping.extend((leaf, measure.pk, sign, dept) for dept in dept_ids)
    return mapping


def financial_totals(
    measures: Iterable[Measure], months: list[date] | None = None, *, mapping: list[AccountRow] | None = None
) -> MonthlyTotals:
    """Monthly totals of account roll-up measures per scenario and leaf entity (one query);
    ``mapping``: the measures' ``account_mapping``, when the caller has it."""
    if mapping is None:
        mapping = account_mapping(measures)
    if not mapping:
        return {}
    by_department = any(dept for *_, dept in mapping)
    if not by_department:
        return _from_ledger_totals(mapping, months)
    facts = FinancialFact._meta.db_table
    department = "f.department_id" if by_department else "0"
    params: list = []
    where = ""
    if months:
        where = f"WHERE f.period IN ({', '.join(['%s'] * len(months))})"
        params.extend(months)
        scenarios = list(Scenario.objects.values_list("pk", flat=True))
        if connection.vendor == "postgresql" and scenarios:
            # Lets PostgreSQL use the (scenario, period, account) index for a few months.
            where += f" AND f.scenario_id IN ({', '.join(['%s'] * len(scenarios))})"
            params.extend(scenarios)
    values = ", ".join(["(%s, %s, %s, %s)"] * len(mapping))
    for row in mapping:
        params.extend(row)
    # Without a department to match, the join is on the account alone: the planner then
    # estimates it well and sums the joined totals in a hash table rather than sorting them.
    matches = "AND (m.department_id = 0 OR m.department_id = leaf.department_id)" if by_department else ""
    # The inner GROUP BY is the one scan of the fact table; the join happens on its totals.
    sql = f"""
        WITH leaf AS (
            SELECT f.period, f.entity_id, f.scenario_id, {department} AS department_id, f.account_id,
                   SUM(f.amount) AS total
            FROM {facts} f {where}
            GROUP BY f.period, f.entity_id, f.scenario_id, f.account_id{", f.department_id" * by_department}
        ), map (account_id, measure_id, sign, department_id) AS (VALUES {values})
        SELECT m.measure_id, leaf.scenario_id, leaf.entity_id, leaf.period, SUM(leaf.total * m.sign)
        FROM leaf JOIN map m ON m.account_id = leaf.account_id {matches}
        GROUP BY m.measure_id, leaf.scenario_id, leaf.entity_id, leaf.period
    """  # noqa: S608 - only placeholders and our own table name are interpolated
    return _fetch(sql, params)


def _from_ledger_totals(mapping: list[AccountRow], months: list[date] | None) -> MonthlyTotals:
    """The same totals from ``LedgerTotal`` (the facts added up per month, scenario, entity and
    account by the loaders), for measures that do not filter by department: tens of thousands
    of rows to read where the facts can be millions."""
    params: list = []
    values = ", ".join(["(%s, %s, %s)"] * len(mapping))
    for account_id, measure_id, sign, _department in mapping:
        params.extend((account_id, measure_id, sign))
    where = ""
    if months:
        where = f"WHERE t.period IN ({', '.join(['%s'] * len(months))})"
        params.extend(months)
    sql = f"""
        WITH map (account_id, measure_id, sign) AS (VALUES {values})
        SELECT m.measure_id, t.scenario_id, t.entity_id, t.period, SUM(t.amount * m.sign)
        FROM {LedgerTotal._meta.db_table} t JOIN map m ON m.account_id = t.account_id {where}
        GROUP BY m.measure_id, t.scenario_id, t.entity_id, t.period
    """  # noqa: S608 - only placeholders and our own table name are interpolated
    return _fetch(sql, params, big=not months)  # a few months of totals: a small query


def operational_totals(measures: Iterable[Measure], months: list[date] | None = None) -> MonthlyTotals:
    """Monthly sums (or counts) of operational series per scenario and entity (one query)."""
    wanted = [m for m in measures if m.kind != Measure.Kind.ACCOUNT and m.series_id is not None]
    if not wanted:
        return {}
    facts = OperationalFact._meta.db_table
    series_ids = sorted({m.series_id for m in wanted})
    params: list = list(series_ids)
    where = f"WHERE o.series_id IN ({', '.join(['%s'] * len(series_ids))})"
    if months:
        where += f" AND o.period IN ({', '.join(['%s'] * len(months))})"
        params.extend(months)
    sql = f"""
        SELECT o.series_id, o.scenario_id, o.entity_id, o.period, SUM(o.value), SUM(o.count)
        FROM {facts} o {where}
        GROUP BY o.series_id, o.scenario_id, o.entity_id, o.period
    """  # noqa: S608 - only placeholders and our own table name are interpolated
    by_series: dict[int, list[Measure]] = defaultdict(list)
    for measure in wanted:
        by_series[measure.series_id].append(measure)
    readers = {
        series_id: [(m.pk, 4 if m.kind == Measure.Kind.SERIES_VALUE else 5) for m in series_measures]
        for series_id, series_measures in by_series.items()
    }
    totals: MonthlyTotals = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    for row in rows:
        series_id, scenario_id, entity_id, period = row[:4]
        period = _as_date(period)
        for measure_id, column in readers[series_id]:
            totals[(measure_id, scenario_id, entity_id, period)] = _as_decimal(row[column])
    return totals


def _fetch(sql: str, params: list, *, big: bool = True) -> MonthlyTotals:
    """The query's totals; ``big``: it scans the facts, with the settings for that (a
    savepoint puts them back if it fails)."""
    if not big:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
    else:
        with transaction.atomic(), connection.cursor() as cursor:
            restore = big_query_settings(cursor, WORK_MEM)
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            restore()
    return {
        (measure_id, scenario_id, entity_id, _as_date(period)): _as_decimal(total)
        for measure_id, scenario_id, entity_id, period, total in rows
    }


def _as_date(value) -> date:  # SQLite returns ISO strings from raw SQL
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _as_decimal(value) -> Decimal:  # SQLite returns floats or ints for SUM over decimals
    return value if isinstance(value, Decimal) else Decimal(str(value))
