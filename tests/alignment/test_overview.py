from datetime import date

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from alignment.selectors import overview, scorecard_filters
from finops.models import RefreshRun
from tests import factories
from tests.alignment.builders import Board

DEC, JAN = date(2024, 12, 1), date(2025, 1, 1)


@pytest.fixture
def board(db) -> Board:
    return Board()


def test_it_lists_kpis_that_changed_status_worst_first(board):
    revenue = board.kpi("revenue")
    margin = board.kpi("margin", unit="percent")
    steady = board.kpi("steady")
    board.values(revenue, DEC, ["100"], target="100", status="green")
    board.values(revenue, JAN, ["80"], target="100", status="red")
    board.values(margin, DEC, ["0.30"], target="0.32", status="red")
    board.values(margin, JAN, ["0.31"], target="0.32", status="amber")
    board.values(steady, DEC, ["5", "5"], target="5", status="green")

    view = overview(scorecard_filters({}))

    assert view.filters.period == JAN
    assert [row.code for row in view.changed_status] == ["revenue", "margin"]
    assert view.status_counts == {"green": 1, "amber": 1, "red": 1, "none": 0, "empty": 0}


def test_movers_are_ranked_by_relative_change_and_judged_by_direction(board):
    revenue = board.kpi("revenue")
    costs = board.kpi("costs", direction="lower")
    margin = board.kpi("margin", unit="percent")
    variance = board.kpi("variance")
    board.values(revenue, DEC, ["100", "90"])  # -10 %, worse
    board.values(costs, DEC, ["100", "50"])  # -50 %, better (lower is better)
    board.values(margin, DEC, ["0.30", "0.33"])  # +10 %, shown as +3.0 pts
    board.values(variance, DEC, ["-10", "20"])  # turns around: not a relative move

    movers = overview(scorecard_filters({})).movers

    assert [(m.row.code, m.change_text, m.better) for m in movers] == [
        ("costs", "-50.0%", True),
        ("margin", "+3.0 pts", True),
        ("revenue", "-10.0%", False),
    ]


def test_it_shows_the_last_complete_refresh_and_a_running_one(client, board):
    revenue = board.kpi("revenue")
    board.values(revenue, JAN, ["1"])
    RefreshRun.objects.create(status=RefreshRun.Status.SUCCEEDED, finished_at="2025-02-01T06:00:00Z")
    RefreshRun.objects.create(status=RefreshRun.Status.RUNNING)
    client.force_login(factories.leadership_user())
    body = client.get(reverse("overview")).content.decode()
    assert "A refresh is running" in body  # the layout's banner
    assert "Last complete refresh" in body


def test_home_opens_the_overview(client, board):
    client.force_login(factories.leadership_user())
    assert client.get("/").url == reverse("overview")


@pytest.mark.parametrize("count", [5, 200])
def test_the_overview_makes_a_fixed_number_of_queries(client, board, count):
    goal = board.goal("G1")
    for i in range(count):
        kpi = board.kpi(f"kpi_{i}")
        board.values(kpi, DEC, [str(i + 1), str(i + 2)], target=str(i + 2), status="green")
        board.link(goal, kpi)
    client.force_login(factories.leadership_user())
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("overview"))
    assert response.status_code == 200
    # session, user, published version (with the newest run); the body: options, periods,
    # goals with links, goal values, all KPIs' values, refresh runs
    assert len(queries) == 9, [q["sql"] for q in queries]
