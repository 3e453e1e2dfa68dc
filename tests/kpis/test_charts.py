from datetime import date

from kpis.charts import kpi_history_figure, sparkline_points


def test_a_sparkline_runs_from_the_lowest_at_the_bottom_to_the_highest_at_the_top():
    assert sparkline_points([1.0, 3.0]) == "M0.0,22.0 L100.0,2.0"


def test_a_missing_value_breaks_the_line():
    assert sparkline_points([1.0, 2.0, None, 3.0]) == "M0.0,22.0 L33.3,12.0 M100.0,2.0"


def test_a_flat_line_sits_in_the_middle_and_one_value_draws_nothing():
    assert sparkline_points([5.0, 5.0]) == "M0.0,12.0 L100.0,12.0"
    assert sparkline_points([5.0, None]) == ""


def test_a_partial_period_is_an_open_marker_and_says_so():
    figure = kpi_history_figure(
        title="DSO",
        unit="days",
        decimals=1,
        periods=[date(2026, 7, 1), date(2026, 10, 1)],
        labels=["2026 Q3", "2026 Q4"],
        actual=[50.3, 138.2],
        target=[50.0, 134.2],
        last_year=[62.4, 45.1],
        statuses=["amber", "amber"],
        partial=[False, True],
    )
    actual = figure.data[2]
    assert list(actual.marker.symbol) == ["circle", "circle-open"]
    assert "partial" in actual.customdata[1][0] and "partial" not in actual.customdata[0][0]
    assert figure.layout.yaxis.title.text == "Days"
