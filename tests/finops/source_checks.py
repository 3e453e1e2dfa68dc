"""Shared checks for the SQL and HTTP source tests: the same four records (two sharing a key)
load to the same facts, and a failing refresh leaves them exactly as they were."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from finops.models import DataSource, FinancialFact, RefreshRun
from finops.refresh import refresh

JAN, FEB = date(2024, 1, 1), date(2024, 2, 1)
# Jan 4000: 1200.50 + 300 (same key: they add up) = 1500.50; Feb 4000: 999.99; Feb 1000: 5000.
GOOD_FACTS = {
    (JAN, "4000"): Decimal("1500.50"),
    (FEB, "4000"): Decimal("999.99"),
    (FEB, "1000"): Decimal("5000"),
}


def facts() -> dict:
    return {(f.period, f.account.code): f.amount for f in FinancialFact.objects.select_related("account")}


def snapshot() -> list:
    return list(FinancialFact.objects.order_by("pk").values_list("pk", "period", "account_id", "amount"))


def good_then_bad(source: DataSource, **changes) -> RefreshRun:
    """Load the good records, then refresh with ``changes`` to the config: the run fails with
    a message and the facts stay exactly as they were."""
    first = refresh(source_slug=source.slug)
    assert first.status == RefreshRun.Status.SUCCEEDED, first.errors
    assert facts() == GOOD_FACTS
    before = snapshot()
    source.config = {**source.config, **changes}
    source.save()
    run = refresh(source_slug=source.slug)
    run.refresh_from_db()
    assert run.status == RefreshRun.Status.FAILED
    assert run.steps[0]["status"] == "rejected"
    assert snapshot() == before, f"a failed {source.kind} source changed the facts"
    return run
