"""Read-side queries over facts: totals that aggregate in the database, never over raw rows."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from decimal import Decimal

from django.db.models import Sum

from finops.currency import CurrencyMismatch
from finops.models import MONEY_PLACES, Account, Entity, FinancialFact

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
