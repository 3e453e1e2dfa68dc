import json
from datetime import date
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from alignment.links import DriverLink
from alignment.map import alignment_figure, map_layout
from alignment.models import KPIDriver
from alignment.scoring import Score
from alignment.selectors import GoalCard, KPIRow
from tests import factories
from tests.alignment.builders import Board

JAN = date(2025, 1, 1)


# --- the pure layout and figure ----------------------------------------------------------


def kpi(pk: int, name: str, role: str = "outcome", status: str = "none") -> KPIRow:
    row = KPIRow(
        kpi_id=pk,
        code=name.lower(),
        name=name,
        description="",
        unit="count",
        decimals=0,
        direction="higher",
        department="Finance",
        role=role,
    )
    if status != "none":
        row.current = {
            "value": Decimal(1),
            "target": Decimal(2),
            "status": status,
            "status_reason": f"{name} is {status}",
            "empty_reason": "",
            "partial": False,
        }
    return row


def goal(
    pk: int, title: str, *, score: float | None = None, outcomes=(), drivers=(), children=()
) -> GoalCard:
    return GoalCard(
        id=pk,
        code=f"G{pk}",
        title=title,
        description="",
        department="",
        owner="",
        period_start=JAN,
        period_end=JAN,
        score=Score(value=score, counted=1 if score is not None else 0),
        outcomes=list(outcomes),
        drivers=list(drivers),
        children=list(children),
    )


def link(driver: KPIRow, outcome: KPIRow, pk: int = 1) -> DriverLink:
    return DriverLink(id=pk, driver=driver, outcome=outcome, explanation="")


def example():
    revenue = kpi(1, "Revenue", status="red")
    otif = kpi(2, "OTIF", role="driver", status="amber")
    service = kpi(3, "Service level", role="driver", status="green")
    otd = kpi(4, "On-time delivery", role="driver")
    sub = goal(11, "Deliver on time", score=90, drivers=[otd])
    top = goal(10, "Grow revenue", score=40, outcomes=[revenue], drivers=[otif], children=[sub])
    links = [link(otif, revenue, 1), link(service, otif, 2), link(otd, revenue, 3)]
    return top, links


def test_goals_sit_left_outcomes_in_the_middle_and_drivers_right_of_what_they_drive():
    top, links = example()
    layout = map_layout([top], links)
    column = {node.label: node.column for node in layout.nodes.values()}
    assert column == {
        "Grow revenue": 0,
        "Deliver on time": 1,
        "Revenue": 2,
        "OTIF": 3,
        "On-time delivery": 3,
        "Service level": 4,  # drives OTIF, itself a driver
    }
    assert layout.columns == [
        "Goals",
        "Sub-goals",
        "Financial outcomes",
        "Operational drivers",
        "Drivers of drivers",
    ]
    kinds = sorted((edge.source, edge.target, edge.kind) for edge in layout.edges)
    assert ("goal:10", "goal:11", "subgoal") in kinds
    assert ("goal:10", "kpi:1", "measures") in kinds
    assert ("kpi:3", "kpi:2", "drives") in kinds
    assert len(kinds) == 7  # 1 sub-goal, 3 goal-KPI links, 3 driver links
    # one row apart at least in every column
    for index in range(5):
        rows = sorted(node.y for node in layout.nodes.values() if node.column == index)
        assert all(b - a >= 1 for a, b in zip(rows, rows[1:], strict=False))


def test_a_cycle_of_driver_links_does_not_loop():
    a, b = kpi(1, "A", role="driver"), kpi(2, "B", role="driver")
    layout = map_layout([], [link(a, b, 1), link(b, a, 2)])
    assert len(layout.nodes) == 2
    assert {node.column for node in layout.nodes.values()} <= {0, 1, 2}


def test_status_is_carried_by_colour_symbol_and_words():
    top, links = example()
    figure = alignment_figure([top], links, period_label="Jan 2025").to_plotly_json()

    assert {trace["type"] for trace in figure["data"]} == {"scatter"}
    nodes = {trace["name"]: trace for trace in figure["data"] if trace["mode"] == "markers"}
    assert set(nodes) == {"On target", "Watch", "Off target", "No target or score"}
    assert set(nodes["Off target"]["marker"]["symbol"]) == {"x"}
    assert nodes["Off target"]["marker"]["color"] == "#c62828"
    assert set(nodes["Watch"]["marker"]["symbol"]) == {"triangle-up"}
    hover = " ".join(text for trace in nodes.values() for text in trace["hovertext"])
    assert "<b>Revenue</b><br>Off target<br>Actual 1, target 2" in hover
    assert "Goal: Grow revenue</b><br>Off target<br>40 of 100" in hover  # score 40: red band
    assert figure["layout"]["title"]["text"].endswith("Jan 2025")
    assert figure["layout"]["xaxis"]["visible"] is False
    assert figure["layout"]["yaxis"]["visible"] is False
    labels = {annotation["text"] for annotation in figure["layout"]["annotations"]}
    assert {"Revenue", "Service level", "<b>Goals</b>"} <= labels
    json.dumps(figure)  # what the page embeds


def test_labels_are_escaped_and_wrapped():
    odd = goal(1, "Cut <costs> & waste in every plant we run today", outcomes=[kpi(1, "Cost")])
    figure = alignment_figure([odd], []).to_plotly_json()
    labels = [annotation["text"] for annotation in figure["layout"]["annotations"]]
    assert "Cut &lt;costs&gt; &amp; waste in<br>every plant we run today" in labels


def test_nothing_to_draw_gives_no_figure():
    assert alignment_figure([], []) is None


# --- the page ----------------------------------------------------------------------------


@pytest.fixture
def board(db) -> Board:
    return Board()


def test_the_page_embeds_the_figure_and_the_same_links_in_words(client, board):
    revenue = board.kpi("revenue", department=board.finance)
    otd = board.kpi("on_time_delivery", unit="percent", department=board.ops)
    board.values(revenue, JAN, ["100"], target="120", status="red")
    board.values(otd, JAN, ["0.95"], target="0.9", status="green")
    goal_ = board.goal("G1")
    board.link(goal_, revenue)
    KPIDriver.objects.create(driver=otd, outcome=revenue, explanation="Late orders are paid late.")
    client.force_login(factories.leadership_user())

    response = client.get(reverse("alignment-map"))

    body = response.content.decode()
    assert 'data-figure-id="alignment-map-figure"' in body
    assert '<script id="alignment-map-figure" type="application/json">' in body
    assert "vendor/plotly/plotly-basic" in body and "js/charts.js" in body
    figure = response.context["figure"]
    names = {trace["name"] for trace in figure["data"]}
    assert {"On target", "Off target", "Driver → outcome it moves"} <= names
    # the text alternative
    assert "The map in words" in body
    assert "judged by" in body and "Late orders are paid late." in body
    assert "Off target" in body and "On target" in body


def test_without_goals_or_links_the_page_says_what_to_do(client, board):
    client.force_login(factories.leadership_user())
    body = client.get(reverse("alignment-map")).content.decode()
    assert "Nothing to draw yet" in body
    assert "data-figure-id" not in body


def test_login_is_required(client, board):
    response = client.get(reverse("alignment-map"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


@pytest.mark.parametrize("count", [5, 50])
def test_the_map_makes_a_fixed_number_of_queries(client, board, count):
    goal_ = board.goal("G1")
    sub = board.goal("G1-OPS", parent=goal_, department=board.ops)
    for i in range(count):
        outcome = i % 2 == 0
        kpi_ = board.kpi(f"kpi_{i}", department=board.finance if outcome else board.ops)
        board.values(kpi_, JAN, [str(i)], target="1", status="green" if i % 3 else "red")
        board.link(goal_ if outcome else sub, kpi_, role="outcome" if outcome else "driver")
        if not outcome:
            KPIDriver.objects.create(driver=kpi_, outcome_id=kpi_.pk - 1)
    client.force_login(factories.leadership_user())
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("alignment-map"))
    assert response.status_code == 200
    # session, user, groups; filter options, periods; goals with links, their values; driver links
    assert len(queries) == 8, [q["sql"] for q in queries]
    nodes = sum(len(t["x"]) for t in response.context["figure"]["data"] if t["mode"] == "markers")
    assert nodes == count + 2
