"""Properties that must hold for any data: entity roll-ups add up, quarters and years of flows
are the sum of their months and balances their last month."""

from collections import defaultdict
from datetime import date
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finops.loading import rebuild_ledger_totals
from finops.models import Entity, FinancialFact
from finops.periods import grain_start
from kpis.definitions import import_definitions
from kpis.engine import recompute
from kpis.models import MeasureValue

MONTHS = [date(2024, m, 1) for m in range(1, 13)]
amount = st.decimals(min_value=-(10**9), max_value=10**9, places=2, allow_nan=False, allow_infinity=False)
booking = st.tuples(
    st.sampled_from(["US", "CA", "G"]),
    st.sampled_from(["4100", "4200", "1200"]),
    st.sampled_from(MONTHS),
    amount,
)


def _setup(book) -> None:
    Entity.objects.create(code="CA", name="CA", currency="USD", parent=book.group)
    book.account("4000")
    book.account("4100", parent="4000")
    book.account("4200", parent="4000", sign=-1)
    book.account("1200", balance=True)
    import_definitions(
        {
            "version": 1,
            "measures": [
                {
                    "code": "net_sales",
                    "name": "n",
                    "kind": "account",
                    "account": "4000",
                    "time_behaviour": "flow",
                },
                {
                    "code": "receivables",
                    "name": "r",
                    "kind": "account",
                    "account": "1200",
                    "time_behaviour": "balance",
                },
            ],
            "kpis": [],
        }
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(booking, min_size=1, max_size=40))
def test_roll_ups_and_grains_add_up_for_any_bookings(book, rows):
    if not Entity.objects.filter(code="CA").exists():
        _setup(book)
    FinancialFact.objects.all().delete()
    rebuild_ledger_totals()  # as the loaders keep them
    book.book([(f"{m:%Y-%m}", entity, account, str(value)) for entity, account, m, value in rows])
    recompute()

    stored = {
        (v.measure.code, v.entity.code, v.grain, v.period): v.value
        for v in MeasureValue.objects.select_related("measure", "entity")
    }
    months = {
        (code, entity, period): value
        for (code, entity, grain, period), value in stored.items()
        if grain == "month"
    }
    # The group's value is the sum of its own facts and its children's, for every measure and month.
    for (code, entity, period), value in months.items():
        if entity == "G":
            parts = [months.get((code, e, period)) for e in ("US", "CA")]
            own = _own(rows, code, "G", period)
            assert value == sum((p for p in parts if p is not None), Decimal(0)) + own
    # Quarters and years: flows sum their months, balances take the last month with data.
    expected: dict[tuple, list] = defaultdict(list)
    for (code, entity, period), value in sorted(months.items(), key=lambda item: item[0][2]):
        for grain in ("quarter", "year"):
            expected[(code, entity, grain, grain_start(period, grain, 1))].append(value)
    for (code, entity, grain, start), values in expected.items():
        want = values[-1] if code == "receivables" else sum(values, Decimal(0))
        assert stored[(code, entity, grain, start)] == want


def _own(rows, code: str, entity: str, period: date) -> Decimal:
    signs = {"net_sales": {"4100": 1, "4200": -1}, "receivables": {"1200": 1}}[code]
    return sum(
        (
            value * signs[account]
            for e, account, m, value in rows
            if e == entity and m == period and account in signs
        ),
        Decimal(0),
    )
