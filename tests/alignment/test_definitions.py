from datetime import date

import pytest

from alignment.definitions import goal_period, install_goals
from alignment.models import Goal, GoalKPI
from finops.models import DataSource, Department, PeriodCoverage, Scenario
from kpis.definitions import DefinitionsRejected


@pytest.fixture
def actual(db):
    return Scenario.objects.create(code="actual", name="Actual", kind=Scenario.Kind.ACTUAL)


def cover(actual, kind, *months):
    source, _ = DataSource.objects.get_or_create(slug="s", defaults={"name": "S", "kind": "file"})
    for month in months:
        PeriodCoverage.objects.create(source=source, scenario=actual, fact_kind=kind, period=month, rows=1)


def test_goals_cover_the_year_of_the_last_twelve_months_of_finance_data(actual, settings):
    settings.FISCAL_YEAR_START_MONTH = 1
    cover(actual, "financial", date(2013, 12, 1), date(2014, 1, 1))
    cover(actual, "operational", date(2014, 5, 1))  # one late call-centre month does not count
    # The latest financial month is Jan 2014: most of the last twelve months are 2013.
    assert goal_period() == (date(2013, 1, 1), date(2013, 12, 1))


def test_a_fiscal_year_starting_in_july(actual, settings):
    settings.FISCAL_YEAR_START_MONTH = 7
    cover(actual, "financial", date(2026, 3, 1))
    assert goal_period() == (date(2025, 7, 1), date(2026, 6, 1))


def test_without_data_the_goals_take_the_current_year(db, settings):
    settings.FISCAL_YEAR_START_MONTH = 1
    assert goal_period(today=date(2026, 11, 22)) == (date(2026, 1, 1), date(2026, 12, 1))


def test_an_unknown_dataset_is_refused_with_the_known_ones(db):
    with pytest.raises(DefinitionsRejected) as refused:
        install_goals("nope")
    assert "demo" in str(refused.value) and "adventureworks" in str(refused.value)


def test_installing_links_only_enabled_kpis_and_says_which_it_skipped(actual):
    for code in ("NW-OPS", "NW-FIN"):
        Department.objects.create(code=code, name=code)
    report = install_goals("demo")  # no KPIs enabled yet
    assert Goal.objects.count() == 5
    assert GoalKPI.objects.count() == 0
    assert "G1: revenue" in report.skipped
    again = install_goals("demo")
    assert (len(again.goals_created), Goal.objects.count()) == (0, 5)  # idempotent


def test_a_goal_file_naming_a_missing_department_is_refused_whole(actual):
    with pytest.raises(DefinitionsRejected) as refused:
        install_goals("demo")
    assert "goals[1] (G1-OPS).department: no department 'NW-OPS'" in str(refused.value)
    assert not Goal.objects.exists()
