from datetime import date
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from alignment.selectors import scorecard, scorecard_filters
from finops.models import RefreshRun
from kpis.models import KPIValue
from tests import factories
from tests.alignment.builders import Board

JAN = date(2025, 1, 1)


@pytest.fixture
def board(db) -> Board:
    return Board()


def months(*numbers):
    return list(numbers)


def test_a_row_has_actual_target_variance_last_period_last_year_and_trend(board):
    revenue = board.kpi("revenue", department=board.finance)
    # Jan 2024 .. Mar 2025: 15 months, 100 .. 240
    board.values(
        revenue, date(2024, 1, 1), [str(100 + 10 * i) for i in range(15)], target="230", status="green"
    )
    goal = board.goal("G1")
    board.link(goal, revenue, target=Decimal("250"))

    filters = scorecard_filters({"grain": "month", "period": "2025-03-01"})
    card = scorecard(filters)

    (row,) = card.goals[0].outcomes
    assert float(row.current["value"]) == 240
    assert row.value_text == "240.0"
    assert row.target_text == "230.0"
    assert row.variance_text == "+10.0"
    assert row.previous_text == "230.0"  # Feb 2025
    assert row.last_year_text == "120.0"  # Mar 2024
    assert row.trend == [float(130 + 10 * i) for i in range(12)]  # Apr 2024 .. Mar 2025
    assert row.sparkline.startswith("M0.0,22.0")  # lowest first: bottom left
    assert row.goal_target_text == "250.0"
    assert card.goals[0].score.value == 100.0


def test_outcomes_and_drivers_sit_side_by_side_and_sub_goals_roll_up(board):
    revenue = board.kpi("revenue", department=board.finance)
    otd = board.kpi("on_time_delivery", unit="percent", department=board.ops)
    board.values(revenue, JAN, ["100"], target="120", status="red")
    board.values(otd, JAN, ["0.95"], target="0.9", status="green")
    shared = board.goal("G1")
    ops_goal = board.goal("G1-OPS", parent=shared, department=board.ops, weight=Decimal("3"))
    board.link(shared, revenue)
    board.link(ops_goal, otd, role="driver")

    card = scorecard(scorecard_filters({"period": "2025-01-01"}))

    (goal,) = card.goals
    assert [row.code for row in goal.outcomes] == ["revenue"]
    assert goal.drivers == []
    (child,) = goal.children
    assert [row.code for row in child.drivers] == ["on_time_delivery"]
    assert child.drivers[0].value_text == "95.0%"
    # own red (0 x 1) and the child's 100 x 3 -> 75
    assert goal.score.value == 75.0
    assert card.status_counts == {"green": 1, "amber": 0, "red": 1, "none": 0, "empty": 0}


def test_the_department_filter_keeps_that_departments_kpis(board):
    revenue = board.kpi("revenue", department=board.finance)
    otd = board.kpi("on_time_delivery", unit="percent", department=board.ops)
    board.values(revenue, JAN, ["100"])
    board.values(otd, JAN, ["0.9"])
    goal = board.goal("G1")
    board.link(goal, revenue)
    board.link(goal, otd, role="driver")

    card = scorecard(scorecard_filters({"period": "2025-01-01", "department": "OPS"}))

    assert [row.code for row in card.rows] == ["on_time_delivery"]


def test_quarter_grain_compares_with_the_previous_quarter_and_last_years(board):
    revenue = board.kpi("revenue")
    board.values(revenue, date(2024, 1, 1), ["10", "20", "30", "40", "50"], grain="quarter", step=3)
    board.link(board.goal("G1"), revenue)

    filters = scorecard_filters({"grain": "quarter"})
    (row,) = scorecard(filters).goals[0].outcomes

    assert filters.period == JAN  # latest quarter with values
    assert filters.period_label == "2025 Q1"
    assert (row.value_text, row.previous_text, row.last_year_text) == ("50.0", "40.0", "10.0")


def test_bad_filters_are_reported_and_replaced_by_defaults(board):
    revenue = board.kpi("revenue")
    board.values(revenue, JAN, ["1"])
    filters = scorecard_filters(
        {"grain": "week", "period": "2025-13-01", "entity": "nope", "department": "X"}
    )
    assert filters.grain == "month"
    assert filters.period == JAN
    assert filters.entity.code == "G"
    assert len(filters.problems) == 4
    assert any("'week'" in problem for problem in filters.problems)
    assert any("not a date" in problem for problem in filters.problems)


def test_goals_of_another_period_are_shown_with_a_note(board):
    revenue = board.kpi("revenue")
    board.values(revenue, JAN, ["1"])
    board.link(board.goal("G1", year=2026), revenue)
    card = scorecard(scorecard_filters({"period": "2025-01-01"}))
    assert [goal.code for goal in card.goals] == ["G1"]
    assert "No goal covers Jan 2025" in card.goals_note


def test_the_page_explains_what_to_do_without_values(client, board):
    client.force_login(factories.leadership_user())
    response = client.get(reverse("scorecard"))
    assert response.status_code == 200
    assert b"No KPI values yet" in response.content


def test_the_page_shows_status_in_words_not_only_colour(client, board):
    revenue = board.kpi("revenue")
    board.values(revenue, JAN, ["100"], target="120", status="red")
    board.link(board.goal("G1"), revenue)
    client.force_login(factories.leadership_user())
    body = client.get(reverse("scorecard")).content.decode()
    assert "Off target" in body
    assert "revenue is red" in body  # the stored reason
    assert "Goal G1" in body


def test_an_htmx_request_gets_only_the_scorecard_body(client, board):
    revenue = board.kpi("revenue")
    board.values(revenue, JAN, ["100"])
    board.link(board.goal("G1"), revenue)
    client.force_login(factories.leadership_user())
    body = client.get(reverse("scorecard"), headers={"HX-Request": "true"}).content.decode()
    assert body.lstrip().startswith('<div id="scorecard"')
    assert "<html" not in body


@pytest.mark.parametrize("count", [5, 200])
def test_the_scorecard_makes_a_fixed_number_of_queries(client, board, count):
    goal = board.goal("G1")
    sub = board.goal("G1-OPS", parent=goal, department=board.ops)
    for i in range(count):
        kpi = board.kpi(f"kpi_{i}", department=board.finance if i % 2 else board.ops)
        board.values(kpi, date(2024, 1, 1), [str(i + m) for m in range(13)], target=str(i), status="green")
        board.link(sub if i % 2 else goal, kpi, role="outcome" if i % 2 else "driver")
    client.force_login(factories.leadership_user())
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("scorecard"), {"grain": "month"})
    assert response.status_code == 200
    # session, user, the published version (with the newest run for the layout's banner);
    # the page's body: filter options, periods, goals with their links, stored values
    assert len(queries) == 7, [q["sql"] for q in queries]
    assert response.content.decode().count('class="spark"') == count
    # Seen again before anything is published: the body comes from the cache.
    with CaptureQueriesContext(connection) as queries:
        again = client.get(reverse("scorecard"), {"grain": "month"})
    assert len(queries) == 3, [q["sql"] for q in queries]

    def body(page):  # the CSRF token in the layout is masked differently each time
        html = page.content.decode()
        return html[html.index('<div id="scorecard"') : html.index("</main>")]

    assert body(again) == body(response)


def test_a_new_refresh_or_an_edited_goal_shows_at_once(client, board):
    revenue = board.kpi("revenue")
    board.values(revenue, JAN, ["100"], target="120", status="red")
    goal = board.goal("G1")
    board.link(goal, revenue)
    client.force_login(factories.leadership_user())
    assert "Goal G1" in client.get(reverse("scorecard")).content.decode()

    goal.title = "Grow revenue"
    goal.save()
    assert "Grow revenue" in client.get(reverse("scorecard")).content.decode()

    KPIValue.objects.filter(kpi=revenue).update(status="green", status_reason="now green")
    assert "now green" not in client.get(reverse("scorecard")).content.decode()  # not published yet
    RefreshRun.objects.create(status=RefreshRun.Status.SUCCEEDED)
    assert "now green" in client.get(reverse("scorecard")).content.decode()


def test_the_default_period_is_the_latest_complete_one(board):
    revenue = board.kpi("revenue")
    board.values(revenue, date(2024, 10, 1), ["30", "40"], grain="quarter", step=3)
    KPIValue.objects.filter(period=JAN).update(partial=True)  # Q1 2025: only January loaded

    filters = scorecard_filters({"grain": "quarter"})

    assert filters.period == date(2024, 10, 1)
    assert filters.periods == [JAN, date(2024, 10, 1)]  # the partial quarter can still be chosen
    assert filters.partial_periods == {JAN}


def test_the_default_skips_a_month_in_which_few_kpis_have_values(board):
    # Three KPIs through January; in February only one source has reported.
    for code in ("a", "b", "c"):
        board.values(board.kpi(code), date(2024, 12, 1), ["1", "2"])
    board.values(board.kpi("calls"), date(2024, 12, 1), ["1", "2", "3"])

    filters = scorecard_filters({})

    assert filters.periods[0] == date(2025, 2, 1)  # still offered
    assert filters.period == JAN
