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
