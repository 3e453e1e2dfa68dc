from datetime import date

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from alignment.departments import department_board, department_index
from alignment.models import KPIDriver
from finops.models import Department
from tests import factories
from tests.alignment.builders import Board

JAN = date(2025, 1, 1)


@pytest.fixture
def board(db) -> Board:
    return Board()


@pytest.fixture
def linked(board):
    """Revenue (Finance) is driven by on-time delivery (Operations); both measure goal G1."""
    revenue = board.kpi("revenue", department=board.finance)
    otd = board.kpi("on_time_delivery", unit="percent", department=board.ops)
    board.values(revenue, JAN, ["100"], target="120", status="red")
    board.values(otd, JAN, ["0.95"], target="0.9", status="green")
    goal = board.goal("G1")
    board.link(goal, revenue)
    board.link(goal, otd, role="driver")
    KPIDriver.objects.create(driver=otd, outcome=revenue, explanation="Late orders are paid late.")
    return revenue, otd


def test_finance_sees_its_kpis_and_the_operational_drivers_it_depends_on(board, linked):
    board_view = department_board(board.finance, {})

    assert [row.code for row in board_view.card.rows] == ["revenue"]
    assert board_view.heading == "What Finance depends on from Operations"
    (exchange,) = board_view.exchanges
    assert (exchange.own.code, exchange.other.code) == ("revenue", "on_time_delivery")
    assert exchange.other.status == "green"
    assert exchange.other.value_text == "95.0%"
    assert exchange.own.status == "red"
    assert exchange.explanation == "Late orders are paid late."


def test_operations_sees_the_financial_kpis_its_kpis_drive(board, linked):
    board_view = department_board(board.ops, {})

    assert [row.code for row in board_view.card.rows] == ["on_time_delivery"]
    assert board_view.heading == "What Finance depends on from Operations"
    (exchange,) = board_view.exchanges
    assert (exchange.own.code, exchange.other.code) == ("on_time_delivery", "revenue")
    assert exchange.other.status == "red"
    assert not exchange.other_drives


def test_kpis_of_sub_departments_count_and_links_inside_the_department_do_not(board, linked):
    revenue, _ = linked
    accounting = Department.objects.create(
        code="ACC", name="Accounting", parent=board.finance, side=Department.Side.FINANCE
    )
    dso = board.kpi("dso", unit="days", department=accounting)
    board.values(dso, JAN, ["45"], target="40", status="amber")
    board.link(board.goal("G2"), dso)
    KPIDriver.objects.create(driver=dso, outcome=revenue)  # Finance to Finance: not across

    board_view = department_board(board.finance, {})

    assert sorted(row.code for row in board_view.card.rows) == ["dso", "revenue"]
    assert [e.other.code for e in board_view.exchanges] == ["on_time_delivery"]


def test_an_operational_kpi_without_a_value_reads_no_value(board, linked):
    _, otd = linked
    otd.values.all().delete()
    (exchange,) = department_board(board.finance, {}).exchanges
    assert exchange.other.status == "none"
    assert exchange.other.value_text == "—"


def test_a_department_of_another_side_sees_links_both_ways(board, linked):
    revenue, otd = linked
    sales = Department.objects.create(code="SAL", name="Sales", side=Department.Side.OTHER)
    leads = board.kpi("leads", unit="count", department=sales)
    board.values(leads, JAN, ["10"])
    KPIDriver.objects.create(driver=leads, outcome=revenue, explanation="Leads become orders.")
    KPIDriver.objects.create(driver=otd, outcome=leads, explanation="Happy customers refer.")

    exchanges = department_board(sales, {}).exchanges

    assert {(e.other.code, e.other_drives) for e in exchanges} == {
        ("revenue", False),
        ("on_time_delivery", True),
    }


def test_the_page_shows_the_scorecard_and_the_dependencies_in_words(client, board, linked):
    client.force_login(factories.leadership_user())
    body = client.get(reverse("department", args=["FIN"])).content.decode()

    assert "Finance scorecard" in body
    assert "What Finance depends on from Operations" in body
    assert "Late orders are paid late." in body
    assert "On target" in body  # the driver's status in words
    assert "Off target" in body  # revenue's
    # the Operations-owned driver is not in Finance's goal tables, only in the dependency list
    assert body.count(reverse("kpi-detail", args=["on_time_delivery"])) == 1
    assert "aligned scorecard</a> has the whole goal" in body


def test_an_htmx_request_gets_only_the_department_body(client, board, linked):
    client.force_login(factories.leadership_user())
    body = client.get(reverse("department", args=["OPS"]), headers={"HX-Request": "true"}).content.decode()
    assert body.lstrip().startswith('<div id="department"')


def test_an_unknown_department_is_not_found(client, board):
    client.force_login(factories.leadership_user())
    assert client.get(reverse("department", args=["NOPE"])).status_code == 404


def test_empty_states_say_what_to_do(client, board):
    client.force_login(factories.leadership_user())
    body = client.get(reverse("department", args=["FIN"])).content.decode()
    assert "No KPI values yet" in body

    revenue = board.kpi("revenue", department=board.finance)
    board.values(revenue, JAN, ["1"])
    body = client.get(reverse("department", args=["FIN"])).content.decode()
    assert "No goal is measured by a KPI Finance owns" in body
    assert "No operational KPI is linked as a driver of a KPI owned by Finance" in body
    assert "KPI driver links" in body


def test_the_index_lists_top_departments_with_their_side_and_sub_departments(client, board):
    Department.objects.create(code="LOG", name="Logistics", parent=board.ops, side=Department.Side.OPERATIONS)
    board.kpi("revenue", department=board.finance)
    board.kpi("otd", department=board.ops)
    board.kpi("shipped", department=Department.objects.get(code="LOG"))
    board.kpi("old", department=board.ops, is_active=False)

    entries = department_index()

    assert [(e.code, e.side_label, e.kpis) for e in entries] == [
        ("FIN", "Finance", 1),
        ("OPS", "Operations", 2),
    ]
    assert [child.code for child in entries[1].children] == ["LOG"]

    client.force_login(factories.leadership_user())
    body = client.get(reverse("departments")).content.decode()
    assert reverse("department", args=["FIN"]) in body
    assert reverse("department", args=["LOG"]) in body


def test_the_index_without_departments_says_where_they_come_from(client, db):
    client.force_login(factories.leadership_user())
    body = client.get(reverse("departments")).content.decode()
    assert "No departments yet" in body


def test_the_nav_links_the_new_pages(client, board):
    client.force_login(factories.leadership_user())
    body = client.get(reverse("departments")).content.decode()
    for name in ("departments", "alignment-map", "alignment-gaps"):
        assert f'href="{reverse(name)}"' in body


@pytest.mark.parametrize("url", ["/departments/", "/departments/FIN/"])
def test_login_is_required(client, board, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


@pytest.mark.parametrize("count", [5, 50])
def test_the_department_page_makes_a_fixed_number_of_queries(client, board, count):
    goal = board.goal("G1")
    for i in range(count):
        finance = i % 2 == 0
        kpi = board.kpi(f"kpi_{i}", department=board.finance if finance else board.ops)
        board.values(kpi, date(2024, 1, 1), [str(i + m) for m in range(13)], target=str(i), status="green")
        board.link(goal, kpi, role="outcome" if finance else "driver")
        if not finance:
            KPIDriver.objects.create(driver=kpi, outcome_id=kpi.pk - 1, explanation=f"link {i}")
    client.force_login(factories.leadership_user())
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("department", args=["FIN"]))
    assert response.status_code == 200
    # session, user, the user's groups (menu); the department; filter options, periods; goals
    # with their links, stored values; the driver links with both ends' values
    assert len(queries) == 9, [q["sql"] for q in queries]
    assert response.content.decode().count('<td class="how">') == count // 2


@pytest.mark.parametrize("count", [5, 50])
def test_the_index_makes_a_fixed_number_of_queries(client, board, count):
    for i in range(count):
        Department.objects.create(code=f"D{i}", name=f"Dept {i}", parent=board.ops if i % 2 else None)
    client.force_login(factories.leadership_user())
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("departments")).status_code == 200
    assert len(queries) == 4, [q["sql"] for q in queries]
