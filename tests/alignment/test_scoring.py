from decimal import Decimal

from alignment.scoring import GoalNode, goal_scores

ONE = Decimal("1")


def node(pk, parent=None, kpis=(), weight=ONE):
    return GoalNode(id=pk, parent_id=parent, weight=weight, kpis=tuple(kpis))


def test_it_weights_kpi_statuses():
    scores = goal_scores([node(1, kpis=[(10, Decimal("3")), (11, ONE)])], {10: "green", 11: "red"})
    # (100 * 3 + 0 * 1) / 4
    assert scores[1].value == 75.0
    assert scores[1].status == "amber"
    assert scores[1].counted == 2


def test_kpis_without_a_status_do_not_count_but_are_reported():
    scores = goal_scores([node(1, kpis=[(10, ONE), (11, ONE)])], {10: "amber", 11: "none"})
    assert scores[1].value == 50.0
    assert scores[1].uncounted == 1
    assert "1 without a value or target not counted" in scores[1].explanation


def test_a_parent_rolls_up_its_children_with_their_weights():
    goals = [
        node(1, kpis=[(10, ONE)]),
        node(2, parent=1, kpis=[(11, ONE)], weight=Decimal("2")),
        node(3, parent=1, kpis=[(12, ONE)]),
    ]
    scores = goal_scores(goals, {10: "green", 11: "red", 12: "amber"})
    assert scores[2].value == 0.0
    assert scores[3].value == 50.0
    # own KPI 100 x 1, child 2: 0 x 2, child 3: 50 x 1 -> 150 / 4
    assert scores[1].value == 37.5
    assert scores[1].status == "red"
    assert scores[1].counted == 3


def test_a_goal_without_any_status_has_no_score():
    scores = goal_scores([node(1), node(2, parent=1, kpis=[(10, ONE)])], {})
    assert scores[1].value is None
    assert scores[1].status == "none"
    assert "No KPI" in scores[1].explanation


def test_a_cycle_in_bad_data_does_not_loop_forever():
    scores = goal_scores([node(1, parent=2, kpis=[(10, ONE)]), node(2, parent=1)], {10: "green"})
    assert scores[1].value == 100.0
