"""A small company built in code, for engine tests with numbers checked by hand."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from finops.loading import load_financial_facts, load_operational_facts
from finops.models import Account, DataSource, Department, Entity, OperationalSeries, Scenario


class Book:
    """Entities G (USD) > US (USD), EU (EUR); one department; actual and budget; a small chart."""

    def __init__(self) -> None:
        self.source = DataSource.objects.create(slug="ledger", name="Ledger", kind=DataSource.Kind.FILE)
        self.group = Entity.objects.create(code="G", name="Group", currency="USD")
        self.us = Entity.objects.create(code="US", name="US", currency="USD", parent=self.group)
        self.eu = Entity.objects.create(code="EU", name="EU", currency="EUR", parent=self.group)
        self.dept = Department.objects.create(code="fin", name="Finance", side=Department.Side.FINANCE)
        self.actual = Scenario.objects.create(code="actual", name="Actual", kind=Scenario.Kind.ACTUAL)
        self.budget = Scenario.objects.create(code="budget", name="Budget", kind=Scenario.Kind.BUDGET)
        self.accounts: dict[str, Account] = {}
        self.series: dict[str, OperationalSeries] = {}

    def account(
        self, code: str, *, parent: str | None = None, sign: int = 1, balance: bool = False
    ) -> Account:
        account = Account.objects.create(
            code=code,
            name=code,
            parent=self.accounts.get(parent) if parent else None,
            account_type="asset" if balance else "revenue",
            time_behaviour="balance" if balance else "flow",
            rollup_sign=sign,
        )
        self.accounts[code] = account
        return account

    def a_series(self, code: str) -> OperationalSeries:
        self.series[code] = OperationalSeries.objects.create(code=code, name=code)
        return self.series[code]

    def book(self, rows: list[tuple[str, str, str, str] | tuple[str, str, str, str, str]]) -> None:
        """Rows of (yyyy-mm, entity code, account code, amount[, scenario code]); replaces the load."""
        entities = {e.code: e for e in Entity.objects.all()}
        scenarios = {"actual": self.actual, "budget": self.budget}
        facts = []
        for row in rows:
            month, entity, account, amount = row[:4]
            scenario = scenarios[row[4] if len(row) > 4 else "actual"]
            facts.append(
                (
                    date.fromisoformat(month + "-01"),
                    entities[entity].pk,
                    self.dept.pk,
                    scenario.pk,
                    self.accounts[account].pk,
                    Decimal(amount),
                )
            )
        return load_financial_facts(source=self.source, rows=facts)

    def observe(self, rows: list[tuple[str, str, str, str, int]]) -> None:
        """Rows of (yyyy-mm, entity code, series code, value, count), actual scenario."""
        entities = {e.code: e for e in Entity.objects.all()}
        facts = [
            (
                date.fromisoformat(month + "-01"),
                entities[entity].pk,
                self.actual.pk,
                self.series[series].pk,
                "",
                Decimal(value),
                count,
            )
            for month, entity, series, value, count in rows
        ]
        return load_operational_facts(source=self.source, rows=facts)


@pytest.fixture
def book(db) -> Book:
    return Book()
