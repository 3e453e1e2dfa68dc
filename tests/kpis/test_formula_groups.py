"""Evaluating several independent series at once (a frame of groups) and ``lookback``.

The engine evaluates each KPI once per grain over every (scenario, entity) series stacked in
one frame. That must give exactly what evaluating each series alone gives, values and reasons,
and no look back may cross from one series into another. Pure tests: no database.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpis.formula import Call, EvalContext, EvalResult, Name, evaluate, evaluate_in_order, lookback, parse
from tests.kpis.test_formula import COLUMNS, cell, formula_from, numbers, trees

DEFINITIONS = {"margin": parse("revenue - cogs"), "cover": parse("ttm(margin) / avg_balance(x)")}
group_names = st.sampled_from([*COLUMNS, "android", "margin", "cover"]).map(lambda name: Name(name))
group_expressions = st.recursive(st.one_of(numbers, group_names, st.just(Call("days"))), trees, max_leaves=10)


def months(first: str, count: int) -> pd.DatetimeIndex:
    return pd.date_range(first, periods=count, freq="MS")


def outcome(result: EvalResult) -> list[tuple[float | None, str | None]]:
    return [
        (None if np.isnan(number) else float(number), reason)
        for number, reason in zip(result.values.to_numpy(), result.reasons.to_numpy(), strict=True)  # noqa: PD011
    ]


def test_shifts_and_windows_stay_inside_their_group():
    a = pd.DataFrame({"x": [1.0, 2.0, 3.0]}, index=months("2024-01-01", 3))
    b = pd.DataFrame({"x": [10.0, 20.0]}, index=months("2024-04-01", 2))
    frame = pd.concat({"a": a, "b": b})
    context = EvalContext(behaviours={"x": "flow"})
    result = evaluate(parse("prev(x)"), frame, context=context)
    # b's first month (Apr) has no previous month in b, although a's Mar is the row before it.
    assert outcome(result) == [
        (None, "not enough history for prev (needs Dec 2023)"),
        (1.0, None),
        (2.0, None),
        (None, "not enough history for prev (needs Mar 2024)"),
        (10.0, None),
    ]
    ytd = evaluate(parse("ytd(x)"), frame, context=context)
    assert [value for value, _ in outcome(ytd)] == [1.0, 3.0, 6.0, None, None]  # b has no January
    opening = evaluate(parse("avg_balance(x)"), frame, context=context)
    assert [value for value, _ in outcome(opening)] == [None, 1.5, 2.5, None, 15.0]


def test_a_group_without_a_column_reads_it_as_not_in_the_data():
    a = pd.DataFrame({"x": [1.0, 2.0]}, index=months("2024-01-01", 2))
    b = pd.DataFrame({"x": [np.nan, np.nan]}, index=months("2024-01-01", 2))
    frame = pd.concat({("actual", 1): a, ("budget", 1): b})
    context = EvalContext(missing_columns={("budget", 1): {"x"}})
    assert outcome(evaluate(parse("x * 2"), frame, context=context)) == [
        (2.0, None),
        (4.0, None),
        (None, "missing input: x is not in the data"),
        (None, "missing input: x is not in the data"),
    ]
    # Without the hint the group has the column, with no values in it.
    plain = evaluate(parse("x * 2"), frame, context=EvalContext())
    assert outcome(plain)[2] == (None, "missing input: x has no value for Jan 2024")


@st.composite
def groups(draw) -> tuple[dict, dict, EvalContext]:
    """Two to four series with their own periods, gaps, values and columns; one grain."""
    grain = draw(st.sampled_from(["month", "quarter", "year"]))
    fiscal_start = draw(st.integers(min_value=1, max_value=12))
    step = {"month": 1, "quarter": 3, "year": 12}[grain]
    behaviours = {name: draw(st.sampled_from(["flow", "balance"])) for name in COLUMNS if draw(st.booleans())}
    alone: dict = {}
    missing: dict = {}
    for number in range(draw(st.integers(min_value=2, max_value=4))):
        label = (draw(st.sampled_from(["actual", "budget"])), number)
        offset = draw(st.integers(min_value=0, max_value=8))
        count = draw(st.integers(min_value=1, max_value=20))
        first = 2020 * 12 + fiscal_start - 1 + offset * step
        kept = draw(st.lists(st.booleans(), min_size=count, max_size=count))
        kept[0] = True
        starts = [first + i * step for i in range(count) if kept[i]]
        index = pd.DatetimeIndex([pd.Timestamp(year=m // 12, month=m % 12 + 1, day=1) for m in starts])
        present = [name for name in COLUMNS if draw(st.booleans())]
        data = {name: draw(st.lists(cell, min_size=len(index), max_size=len(index))) for name in present}
        frame = pd.DataFrame(data, index=index, dtype=float)
        if draw(st.booleans()):
            frame = frame.iloc[::-1]
        alone[label] = frame
        missing[label] = set(COLUMNS) - set(present)
    context = EvalContext(
        grain=grain, fiscal_year_start_month=fiscal_start, behaviours=behaviours, definitions=DEFINITIONS
    )
    return alone, missing, context


@given(group_expressions, groups(), st.randoms(use_true_random=False))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_frame_of_groups_gives_each_group_what_it_gets_alone(root, drawn, random):
    formula = formula_from(root)
    alone, missing, context = drawn
    stacked = pd.concat(alone).reindex(columns=COLUMNS)
    rows = list(range(len(stacked)))
    random.shuffle(rows)  # groups interleaved, periods in any order
    stacked = stacked.iloc[rows]
    together = evaluate(formula, stacked, context=dataclasses.replace(context, missing_columns=missing))
    got = dict(zip(stacked.index, outcome(together), strict=True))
    for label, frame in alone.items():
        expected = outcome(evaluate(formula, frame, context=context))
        assert [got[(*label, period)] for period in frame.index] == expected


@given(group_expressions, groups(), st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_evaluating_in_order_gives_what_evaluating_one_by_one_gives(root, drawn, random):
    """The engine evaluates a grain's KPIs in order on one evaluator; each result must be what
    evaluate() gives with every earlier result added to the frame as a column."""
    alone, missing, context = drawn
    stacked = pd.concat(alone).reindex(columns=COLUMNS)
    rows = list(range(len(stacked)))
    random.shuffle(rows)
    stacked = stacked.iloc[rows]
    extra = formula_from(root)
    context = dataclasses.replace(
        context, missing_columns=missing, definitions={**DEFINITIONS, "extra": extra}
    )
    formulas = [("margin", DEFINITIONS["margin"]), ("cover", DEFINITIONS["cover"]), ("extra", extra)]
    expected, frame = [], stacked.copy()
    for code, formula in formulas:
        result = evaluate(formula, frame, context=context)
        expected.append((code, outcome(result)))
        frame[code] = result.values.to_numpy()  # noqa: PD011
    got = [
        (code, [(None if np.isnan(n) else float(n), why) for n, why in zip(num, reasons, strict=True)])
        for code, num, reasons in evaluate_in_order(formulas, stacked, context=context)
    ]
    assert got == expected
    assert list(stacked.columns) == list(COLUMNS)  # the frame is left as it is


@given(group_expressions, groups(), st.data())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_change_reaches_no_further_than_the_lookback(root, drawn, data):
    formula = formula_from(root)
    alone, _missing, context = drawn
    frame = next(iter(alone.values())).sort_index()
    reach = lookback(formula, context)
    changed = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    other = frame.copy()
    for column in other.columns:
        other.iloc[changed, other.columns.get_loc(column)] = data.draw(cell)
    before = outcome(evaluate(formula, frame, context=context))
    after = outcome(evaluate(formula, other, context=context))
    step = {"month": 1, "quarter": 3, "year": 12}[context.grain]
    at = frame.index[changed]
    for period, old, new in zip(frame.index, before, after, strict=True):
        periods_after = ((period.year - at.year) * 12 + period.month - at.month) // step
        if periods_after < 0 or periods_after > reach:
            assert old == new, (str(formula), reach, period)


@pytest.mark.parametrize(
    ("text", "grain", "expected"),
    [
        ("revenue / cogs", "month", 0),
        ("prev(revenue)", "month", 1),
        ("last_year(revenue)", "quarter", 4),
        ("ttm(revenue)", "month", 11),  # revenue is a flow
        ("ttm(x)", "month", 0),  # x is a balance: ttm of a balance is the balance
        ("avg_balance(x)", "month", 1),
        ("ttm(margin) / avg_balance(x)", "month", 11),  # ttm of a KPI: its formula over 12 months
        ("prev(cover)", "month", 12),
        ("last_year(prev(revenue))", "year", 2),
    ],
)
def test_lookback(text, grain, expected):
    context = EvalContext(
        grain=grain, behaviours={"revenue": "flow", "cogs": "flow", "x": "balance"}, definitions=DEFINITIONS
    )
    assert lookback(parse(text), context) == expected
