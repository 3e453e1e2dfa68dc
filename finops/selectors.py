"""Read-side queries over facts: totals that aggregate in the database, never over raw rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from django.db.models import Count, Sum

from finops.currency import CurrencyMismatch
from finops.models import MONEY_PLACES, Account, Entity, FinancialFact, OperationalFact

# Facts carry MONEY_PLACES decimals, so an exact sum does too. Rounding a database SUM to them
# changes nothing on PostgreSQL and removes the float noise of SQLite's SUM.
MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_PLACES)


def account_rollup_signs(account_code: str) -> dict[int, int]:
    """Account id -> factor (+1 or -1) with which the account's own facts enter ``account_code``'s total.

    The factor is the product of the roll-up signs on the path from the account up to (not
    including) the named account; the named account itself counts with +1. Accounts left out
    on the way (sign 0, such as statistical accounts) and their subtrees are not included.
    The chart of accounts is small, so the tree is walked in Python from one query.
    """
    nodes = list(Account.objects.values_list("id", "parent_id", "rollup_sign", "code"))
    root = next((node[0] for node in nodes if node[3] == account_code), None)
    if root is None:
        raise Account.DoesNotExist(f"No account with code {account_code!r}")
    children: dict[int, list[tuple[int, int]]] = {}
    for account_id, parent_id, sign, _code in nodes:
        if parent_id is not None:
            children.setdefault(parent_id, []).append((account_id, sign))
    factors = {root: 1}
    pending = [root]
    while pending:
        parent = pending.pop()
        for child, sign in children.get(parent, []):
            if sign and child not in factors:
                factors[child] = factors[parent] * sign
                pending.append(child)
    return factors


def account_rollup_total(
    *, account_code: str, scenario_code: str, periods: Iterable[date], entity_codes: Iterable[str]
) -> Decimal:
    """Total of an account (a leaf or a roll-up such as Net Sales) over the periods and entities.

    Sums the facts of every account below ``account_code`` times the product of the roll-up
    signs along its path, with one GROUP BY account query. Periods are summed as given: for a
    balance account, pass the one period whose closing balance you want.

    Refuses (CurrencyMismatch) when the entities do not all report in the same currency.
    """
    entity_codes = sorted(set(entity_codes))
    currencies = dict(Entity.objects.filter(code__in=entity_codes).values_list("code", "currency"))
    unknown = [code for code in entity_codes if code not in currencies]
    if unknown:
        raise Entity.DoesNotExist(f"No entity with code {', '.join(map(repr, unknown))}")
    if len(set(currencies.values())) > 1:
        listed = ", ".join(f"{code} ({currency})" for code, currency in sorted(currencies.items()))
        raise CurrencyMismatch(
            f"Cannot add {account_code} across entities in different currencies: {listed}. "
            "Total each currency apart and convert with finops.currency.group_total."
        )
    factors = account_rollup_signs(account_code)
    by_account = (
        FinancialFact.objects.filter(
            account_id__in=list(factors),
            scenario__code=scenario_code,
            period__in=sorted(set(periods)),
            entity__code__in=entity_codes,
        )
        .values("account_id")
        .annotate(total=Sum("amount"))
        .values_list("account_id", "total")
    )
    total = Decimal(0)
    for account_id, amount in by_account:
        total += factors[account_id] * Decimal(amount).quantize(MONEY_QUANTUM)
    return total


# --- drill-down from a measure value to its facts ------------------------------------------
# The KPI drill-down page (kpis.selectors.measure_drilldown) reads the facts behind one stored
# measure value with these: the same accounts, signs, entities, departments, scenario and months
# the engine aggregated (kpis.aggregate), a fixed number of queries whatever the row count.


@dataclass
class AccountNode:
    """One account under a measure's roots, with the factor its own facts enter the total with."""

    id: int
    code: str
    name: str
    parent_id: int | None
    factor: int  # +1 or -1: product of the roll-up signs on the path up to (not including) the root
    is_leaf: bool
    path: list[str] = field(default_factory=list)  # names from the root down to the parent


def account_subtrees(root_ids: Sequence[int]) -> list[AccountNode]:
    """Every account that rolls into one of ``root_ids`` (each root included), in chart order
    (depth first, by sort order and code), with its factor (one query).

    Same rule as the engine (kpis.aggregate.account_signs): a root's own sign is not applied,
    an account left out (sign 0) drops out with its subtree, and where two roots overlap the
    later root (in chart order) gives the factor.
    """
    rows = list(
        Account.objects.order_by("sort_order", "code").values_list(
            "id", "code", "name", "parent_id", "rollup_sign"
        )
    )
    by_id = {row[0]: row for row in rows}
    children: dict[int | None, list[int]] = {}
    for account_id, _code, _name, parent_id, _sign in rows:
        children.setdefault(parent_id, []).append(account_id)
    roots = [row[0] for row in rows if row[0] in set(root_ids)]  # chart order, like the engine
    found: dict[int, AccountNode] = {}
    for root in roots:
        pending: list[tuple[int, int, list[str]]] = [(root, 1, [])]
        while pending:
            account_id, factor, path = pending.pop()
            _id, code, name, parent_id, _sign = by_id[account_id]
            kids = children.get(account_id, [])
            found[account_id] = AccountNode(account_id, code, name, parent_id, factor, not kids, path)
            for child in reversed(kids):  # popped in chart order
                sign = by_id[child][4]
                if sign and child != root and len(path) < len(rows):
                    pending.append((child, factor * sign, [*path, name]))
    order = {row[0]: i for i, row in enumerate(rows)}
    ordered: list[AccountNode] = []
    seen: set[int] = set()

    def walk(account_id: int) -> None:  # depth first from each root, so a leaf follows its parents
        if account_id in seen or account_id not in found:
            return
        seen.add(account_id)
        ordered.append(found[account_id])
        for child in sorted(children.get(account_id, []), key=order.__getitem__):
            walk(child)

    for root in roots:
        walk(root)
    return ordered


@dataclass(frozen=True)
class FactScope:
    """Which facts a measure value reads: ids of the entity subtree, departments (None: any),
    scenario, months."""

    entity_ids: frozenset[int]
    scenario_id: int
    months: tuple[date, ...]
    department_ids: frozenset[int] | None = None


def _financial_facts(scope: FactScope, account_ids: Iterable[int]):  # noqa: ANN202 - a QuerySet
    facts = FinancialFact.objects.filter(
        account_id__in=sorted(set(account_ids)),
        scenario_id=scope.scenario_id,
        period__in=scope.months,
        entity_id__in=sorted(scope.entity_ids),
    )
    if scope.department_ids is not None:
        facts = facts.filter(department_id__in=sorted(scope.department_ids))
    return facts


def financial_fact_totals(
    scope: FactScope, account_ids: Iterable[int]
) -> list[tuple[int, int, date, Decimal]]:
    """(account id, entity id, month, summed amount) of the facts in scope (one GROUP BY query)."""
    rows = (
        _financial_facts(scope, account_ids)
        .values("account_id", "entity_id", "period")
        .annotate(total=Sum("amount"))
        .values_list("account_id", "entity_id", "period", "total")
        .order_by()
    )
    return [
        (account_id, entity_id, period, Decimal(total).quantize(MONEY_QUANTUM))
        for account_id, entity_id, period, total in rows
    ]


def financial_fact_rows(
    scope: FactScope, account_ids: Iterable[int], *, limit: int
) -> tuple[list[dict], int]:
    """The first ``limit`` fact rows in scope, by month, account, entity, department and source,
    and how many there are in all (always two queries, so a page's query count is fixed)."""
    facts = _financial_facts(scope, account_ids)
    rows = list(
        facts.order_by(
            "period",
            "account__sort_order",
            "account__code",
            "entity__code",
            "department__code",
            "source__name",
        ).values(
            "id",
            "period",
            "amount",
            "account_id",
            "account__code",
            "account__name",
            "entity__code",
            "entity__name",
            "entity__currency",
            "department__code",
            "department__name",
            "source__name",
            "source__slug",
        )[:limit]
    )
    return rows, facts.count()


def _operational_facts(scope: FactScope, series_id: int):  # noqa: ANN202 - a QuerySet
    return OperationalFact.objects.filter(
        series_id=series_id,
        scenario_id=scope.scenario_id,
        period__in=scope.months,
        entity_id__in=sorted(scope.entity_ids),
    )


def operational_fact_totals(scope: FactScope, series_id: int) -> list[tuple[int, date, Decimal, int]]:
    """(entity id, month, summed value, summed count) of a series' facts in scope (one query)."""
    rows = (
        _operational_facts(scope, series_id)
        .values("entity_id", "period")
        .annotate(value_sum=Sum("value"), count_sum=Sum("count"))
        .values_list("entity_id", "period", "value_sum", "count_sum")
        .order_by()
    )
    return [(entity_id, period, _decimal(value), int(count)) for entity_id, period, value, count in rows]


def operational_fact_dimensions(scope: FactScope, series_id: int) -> list[tuple[str, Decimal, int, int]]:
    """(dimension, summed value, summed count, rows) of a series' facts in scope (one query)."""
    rows = (
        _operational_facts(scope, series_id)
        .values("dimension")
        .annotate(value_sum=Sum("value"), count_sum=Sum("count"), rows=Count("id"))
        .values_list("dimension", "value_sum", "count_sum", "rows")
        .order_by("dimension")
    )
    return [(dimension, _decimal(value), int(count), rows) for dimension, value, count, rows in rows]


def operational_fact_rows(scope: FactScope, series_id: int, *, limit: int) -> tuple[list[dict], int]:
    """The first ``limit`` fact rows of a series in scope, by date, dimension, entity and source,
    and how many there are in all (two queries)."""
    facts = _operational_facts(scope, series_id)
    rows = list(
        facts.order_by("date", "dimension", "entity__code", "source__name").values(
            "id",
            "date",
            "period",
            "dimension",
            "value",
            "count",
            "entity__code",
            "entity__name",
            "source__name",
            "source__slug",
        )[:limit]
    )
    return rows, facts.count()


def _decimal(value) -> Decimal:  # SQLite returns floats or ints for SUM over decimals
    if value is None:
        return Decimal(0)
    return value if isinstance(value, Decimal) else Decimal(str(value))
