"""A loader for tests: rows come from the source's config; ``reject`` makes it refuse them."""

from datetime import date
from decimal import Decimal

from finops.errors import ImportRejected, RowError
from finops.loading import load_financial_facts
from finops.models import Account, Department, Entity, Scenario


def load(source, *, report):
    config = source.config
    if config.get("crash"):
        raise RuntimeError("connector bug")
    if config.get("reject"):
        raise ImportRejected([RowError("ledger.csv", 3, "amount", "12,x", "is not a number")])
    for message in config.get("warnings", []):
        report.warn(message)
    ids = {
        "entity": Entity.objects.get(code="acme").pk,
        "department": Department.objects.get(code="sales").pk,
        "actual": Scenario.objects.get(code="actual").pk,
        "revenue": Account.objects.get(code="4000").pk,
    }
    rows = [
        (
            date.fromisoformat(day),
            ids["entity"],
            ids["department"],
            ids["actual"],
            ids["revenue"],
            Decimal(amount),
        )
        for day, amount in config["rows"]
    ]
    return load_financial_facts(source=source, rows=rows)
