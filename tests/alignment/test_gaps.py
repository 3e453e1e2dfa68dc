from datetime import date

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from alignment.gaps import alignment_gaps
from alignment.models import KPIDriver
from finops.models import Department
from tests import factories
from tests.alignment.builders import Board

JAN, FEB = date(2025, 1, 1), date(2025, 2, 1)


@pytest.fixture
def board(db) -> Board:
    return Board()


def codes(gaps, key):
    return [item.code for item in gaps.section(key).items]


def test_goals_without_kpis_count_their_sub_goals(board):
    revenue = board.kpi("revenue", department=board.finance)
    old = board.kpi("old", department=board.finance, is_active=False)
    parent = board.goal("G1")  # no KPI itself, but its sub-goal has one
    board.link(board.goal("G1-A", parent=parent), revenue)
    board.goal("G2")  # nothing
    board.link(board.goal("G3"), old)  # only an inactive KPI

    gaps = alignment_gaps()

    assert codes(gaps, "goals-without-kpis") == ["G2", "G3"]


def test_kpis_without_an_owner(board):
    board.kpi("orphan")
    board.kpi("owned_by_department", department=board.ops)
    board.kpi("owned_by_person", owner=factories.leadership_user())
    board.kpi("inactive_orphan", is_active=False)

    assert codes(alignment_gaps(), "kpis-without-owner") == ["orphan"]


def test_kpis_without_a_target_read_the_latest_month_of_the_top_entity(board):
    with_target = board.kpi("with_target", department=board.finance)
    board.values(with_target, JAN, ["1", "2"], target="2", status="green")
    lost_target = board.kpi("lost_target", department=board.finance)
    board.values(lost_target, JAN, ["1"], target="1", status="green")
    board.values(lost_target, FEB, ["1"])  # the latest month has none
    only_us = board.kpi("only_us", department=board.finance, target_rule="manual")
    board.values(only_us, JAN, ["1"], target="1", entity=board.us)  # not the top entity
    only_quarter = board.kpi("only_quarter", department=board.finance)
    board.values(only_quarter, JAN, ["1"], target="1", grain="quarter")

    section = alignment_gaps().section("kpis-without-target")

    details = {item.code: item.detail for item in section.items}
    assert sorted(details) == ["lost_target", "only_quarter", "only_us"]
    assert details["lost_target"].startswith("Latest value (Feb 2025) has no target.")
    assert "budget" in details["lost_target"]
    assert details["only_us"].startswith("No value stored yet for Group at month grain.")
    assert "typed in or imported" in details["only_us"]


def test_kpis_in_no_goal(board):
    linked = board.kpi("linked", department=board.finance)
    board.kpi("loose", department=board.finance)
    board.link(board.goal("G1"), linked)
    assert codes(alignment_gaps(), "kpis-in-no-goal") == ["loose"]


def test_financial_goals_without_an_operational_driver_count_sub_goals_and_suggest_drivers(board):
    revenue = board.kpi("revenue", department=board.finance)
    dso = board.kpi("dso", department=board.finance)
    otd = board.kpi("otd", unit="percent", department=board.ops)
    KPIDriver.objects.create(driver=otd, outcome=dso)
    covered = board.goal("G1")
    board.link(covered, revenue)
    board.link(board.goal("G1-OPS", parent=covered, department=board.ops), otd, role="driver")
    bare = board.goal("G2")
    board.link(bare, dso)
    board.link(board.goal("G3"), otd, role="driver")  # drivers only: not a financial goal

    section = alignment_gaps().section("goals-without-drivers")

    (item,) = section.items
    assert item.code == "G2"
    assert item.detail == "Outcomes: Dso. Known drivers of these outcomes: Otd."


def test_operational_kpis_that_drive_nothing(board):
    drives_kpi = board.kpi("drives_kpi", department=board.ops)
    drives_goal = board.kpi("drives_goal", department=board.ops)
    board.kpi("idle", department=board.ops)
    board.kpi("finance_idle", department=board.finance)  # not operational
    revenue = board.kpi("revenue", department=board.finance)
    KPIDriver.objects.create(driver=drives_kpi, outcome=revenue)
    board.link(board.goal("G1"), drives_goal, role="driver")
    # a sub-department of operations is operational too
    logistics = Department.objects.create(
        code="LOG", name="Logistics", parent=board.ops, side=Department.Side.OPERATIONS
    )
    board.kpi("shipped", department=logistics)

    assert codes(alignment_gaps(), "operational-kpis-driving-nothing") == ["idle", "shipped"]


def test_a_driver_link_to_an_inactive_kpi_does_not_count(board):
    otd = board.kpi("otd", department=board.ops)
    KPIDriver.objects.create(driver=otd, outcome=board.kpi("gone", is_active=False))
    assert codes(alignment_gaps(), "operational-kpis-driving-nothing") == ["otd"]


def test_analysts_get_admin_links_and_leaders_do_not(client, board):
    kpi = board.kpi("orphan")
    goal = board.goal("G2")
    client.force_login(factories.analyst_user())
    body = client.get(reverse("alignment-gaps")).content.decode()
    assert reverse("admin:kpis_kpi_change", args=[kpi.pk]) in body
    assert reverse("admin:alignment_goal_change", args=[goal.pk]) in body
    assert "What to do:" in body

    client.force_login(factories.leadership_user())
    body = client.get(reverse("alignment-gaps")).content.decode()
    assert "/admin/" not in body
    assert "KPIs without an owner" in body and "orphan" in body


def test_with_everything_in_place_the_page_says_nothing_to_fix(client, board):
    revenue = board.kpi("revenue", department=board.finance)
    otd = board.kpi("otd", department=board.ops)
    board.values(revenue, JAN, ["1"], target="1", status="green")
    board.values(otd, JAN, ["1"], target="1", status="green")
    goal = board.goal("G1")
    board.link(goal, revenue)
    board.link(goal, otd, role="driver")

    assert alignment_gaps().total == 0
    client.force_login(factories.leadership_user())
    body = client.get(reverse("alignment-gaps")).content.decode()
    assert "Nothing to fix" in body
    assert "Every goal has at least one KPI." in body


def test_without_goals_or_kpis_the_page_says_where_to_start(client, db):
    client.force_login(factories.leadership_user())
    body = client.get(reverse("alignment-gaps")).content.decode()
    assert "No goals and no active KPIs yet" in body


def test_login_is_required(client, board):
    response = client.get(reverse("alignment-gaps"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


@pytest.mark.parametrize("count", [5, 50])
def test_the_gaps_page_makes_a_fixed_number_of_queries(client, board, count):
    parent = board.goal("G0")
    for i in range(count):
        kpi = board.kpi(f"kpi_{i}", department=[None, board.finance, board.ops][i % 3])
        board.values(kpi, JAN, [str(i)], target=str(i) if i % 2 else None)
        goal = board.goal(f"G{i + 1}", parent=parent if i % 2 else None)
        if i % 4:
            board.link(goal, kpi, role="outcome" if i % 3 != 2 else "driver")
        if i % 5 == 0 and i:
            KPIDriver.objects.create(driver=kpi, outcome_id=kpi.pk - 1)
    client.force_login(factories.analyst_user())
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("alignment-gaps"))
    assert response.status_code == 200
    # session, user, groups; the top entity, goals with links, KPIs with their latest value,
    # driver links
    assert len(queries) == 7, [q["sql"] for q in queries]
    assert response.context["gaps"].total > 0
