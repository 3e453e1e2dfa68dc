"""Test data built in code: small dimension sets and fact rows for the loader and pages."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from django.contrib.auth.models import User

from finops.models import Account, DataSource, Department, Entity, OperationalSeries, Scenario
from finops.roles import ANALYSTS, LEADERSHIP, ensure_roles


def user_in(group: str, username: str | None = None, **extra) -> User:
    groups = ensure_roles()
    user = User.objects.create_user(username or group.lower(), password="pw", **extra)
    user.groups.add(groups[group])
    return user


def leadership_user() -> User:
    return user_in(LEADERSHIP, "ceo")


def analyst_user() -> User:
    return user_in(ANALYSTS, "analyst1", is_staff=True)


def dimensions() -> dict:
    """One entity, one department, actual and budget, a revenue and a cash account, a series."""
    entity = Entity.objects.create(code="acme", name="Acme Ltd", currency="USD")
    department = Department.objects.create(code="sales", name="Sales", side=Department.Side.OPERATIONS)
    actual = Scenario.objects.create(code="actual", name="Actual", kind=Scenario.Kind.ACTUAL)
    budget = Scenario.objects.create(code="budget", name="Budget", kind=Scenario.Kind.BUDGET)
    revenue = Account.objects.create(
        code="4000", name="Revenue", account_type="revenue", time_behaviour="flow", rollup_sign=1
    )
    cash = Account.objects.create(code="1000", name="Cash", account_type="asset", time_behaviour="balance")
    orders = OperationalSeries.objects.create(code="orders", name="Orders", unit="orders")
    return {
        "entity": entity,
        "department": department,
        "actual": actual,
        "budget": budget,
        "revenue": revenue,
        "cash": cash,
        "orders": orders,
    }


def source(slug: str = "ledger", kind: str = DataSource.Kind.FILE) -> DataSource:
    return DataSource.objects.create(slug=slug, name=slug.title(), kind=kind)


def fin_row(dims: dict, period: date, amount: str, *, account: str = "revenue", scenario: str = "actual"):
    return (
        period,
        dims["entity"].pk,
        dims["department"].pk,
        dims[scenario].pk,
        dims[account].pk,
        Decimal(amount),
    )


def assert_ledger_totals_match_facts() -> None:
    """The ledger totals the loaders keep equal the financial facts added up, exactly."""
    from django.db.models import Sum

    from finops.models import FinancialFact, LedgerTotal

    grouped = (
        FinancialFact.objects.values("period", "entity_id", "scenario_id", "account_id")
        .annotate(total=Sum("amount"))
        .order_by()
    )
    expected = {(g["period"], g["entity_id"], g["scenario_id"], g["account_id"]): g["total"] for g in grouped}
    stored = {
        (t.period, t.entity_id, t.scenario_id, t.account_id): t.amount for t in LedgerTotal.objects.all()
    }
    assert stored == expected, "the ledger totals differ from the facts"


def other_connection_tries(statement: str, params: list) -> str:
    """Run ``statement`` from a second connection with a short lock timeout; what happened."""
    import psycopg2
    from django.db import connection

    conn_params = connection.get_connection_params()
    other = psycopg2.connect(**conn_params)
    try:
        with other.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")
            try:
                cursor.execute(statement, params)
            except psycopg2.errors.LockNotAvailable:
                return "waited"
            return "done"
    finally:
        other.rollback()
        other.close()
