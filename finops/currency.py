"""Money in more than one currency: amounts are only ever added within one currency, or after
converting each into the group currency with an explicit rate.

A rate is the value of one unit of a currency in the group currency (for USD as the group
currency: US dollars per unit, e.g. EUR 1.08, JPY 0.0095). That is the direction of
``finops.models.CurrencyRate`` and of AdventureWorksDW's FactCurrencyRate.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal


class CurrencyMismatch(Exception):
    """Amounts in different currencies were about to be added without a rate to convert them."""


def group_total(
    amounts_by_currency: Mapping[str, Decimal], rates: Mapping[str, Decimal], group_currency: str = "USD"
) -> Decimal:
    """The sum of ``amounts_by_currency`` expressed in ``group_currency``.

    Amounts already in the group currency are taken as they are; every other amount is
    multiplied by its rate. A currency without a rate is refused (CurrencyMismatch), never
    added as if it were the group currency.
    """
    missing = sorted(code for code in amounts_by_currency if code != group_currency and code not in rates)
    if missing:
        held = ", ".join(sorted(amounts_by_currency))
        raise CurrencyMismatch(
            f"Cannot add amounts in {held} into one {group_currency} total: no rate to {group_currency} "
            f"for {', '.join(missing)}. Load currency rates for the period or total each currency apart."
        )
    own_rate = rates.get(group_currency)
    if own_rate is not None and Decimal(own_rate) != 1:
        raise ValueError(
            f"The rate of the group currency {group_currency} to itself must be 1, not {own_rate}"
        )
    total = Decimal(0)
    for code, amount in amounts_by_currency.items():
        total += amount if code == group_currency else amount * Decimal(rates[code])
    return total
