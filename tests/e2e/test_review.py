"""The monthly review in a real browser: the overview, the aligned scorecard and its filters,
and an analyst's new target showing on the scorecard after a refresh."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import call_command

from finops.roles import DEMO_PASSWORD
from kpis.models import KPI, KPIValue

pytestmark = pytest.mark.django_db(transaction=True)


def load_demo(months: int = 24) -> None:
    call_command("demo", stdout=io.StringIO(), months=months)


def test_leadership_opens_the_overview_and_the_scorecard_for_a_quarter(page, logged_in):
    load_demo()
    logged_in("cfo", DEMO_PASSWORD)

    assert page.get_by_role("heading", level=1).inner_text() == "Overview"
    goals = page.locator(".goallist li")
    assert goals.count() == 3
    assert "Grow profitable revenue" in goals.first.inner_text()
    assert re.search(r"\d+ of 35 KPIs on target", page.locator(".bigline").inner_text())

    page.get_by_role("link", name="Scorecard", exact=True).click()
    page.wait_for_url("**/scorecard/")
    first_goal = page.locator("section.goal").first
    assert "financial outcomes" in first_goal.inner_text().lower()
    assert "operational drivers" in first_goal.inner_text().lower()
    # Status in words, not only colour.
    assert re.search(r"On target|Watch|Off target", first_goal.locator(".status").first.inner_text())

    # Changing a filter updates the page in place (HTMX) and the address with it.
    page.get_by_label("Grain", exact=True).select_option("quarter")
    page.wait_for_url(re.compile(r"grain=quarter"))
    scope = page.locator(".scope")
    scope.filter(has_text=re.compile(r"\d{4} Q\d")).wait_for()
    quarter = scope.inner_text()
    page.get_by_label("Period", exact=True).select_option(index=1)  # the quarter before
    page.wait_for_function("previous => document.querySelector('.scope').innerText !== previous", arg=quarter)
    assert re.search(r"\d{4} Q\d", page.locator(".scope").inner_text())
    assert page.locator("section.goal").count() >= 1


def test_an_analysts_new_target_shows_on_the_scorecard_after_a_refresh(page, logged_in, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True  # "Refresh now" runs in the live server's request
    load_demo(months=12)
    kpi = KPI.objects.get(code="working_capital")
    latest = KPIValue.objects.filter(
        kpi=kpi, grain="month", entity__parent=None, scenario__code="actual", value__isnull=False
    ).latest("period")
    assert latest.value is not None, latest.empty_reason
    assert latest.status == "none"  # the demo sets no working-capital target
    wanted = int(latest.value) * 2  # far above: off target

    logged_in("analyst", DEMO_PASSWORD)
    page.goto("/scorecard/")
    row = page.locator("table.kpitable tbody tr").filter(has_text="Working capital").first
    assert "No target" in row.inner_text()

    page.goto("/admin/kpis/target/add/")
    page.locator(".field-kpi .select2-selection").click()
    page.locator(".select2-search__field").fill("Working capital")
    page.locator(".select2-results__option").filter(has_text="Working capital").first.click()
    page.get_by_label("Grain").select_option("month")
    page.get_by_label("Period").fill(latest.period.isoformat())
    page.get_by_label("Value").fill(str(wanted))
    with page.expect_navigation():
        page.get_by_role("button", name="Save", exact=True).click()
    assert "was added successfully" in page.locator(".messagelist").inner_text()

    page.goto("/data/")
    with page.expect_navigation():
        page.get_by_role("button", name="Refresh all sources now").click()

    page.goto("/scorecard/")
    row = page.locator("table.kpitable tbody tr").filter(has_text="Working capital").first
    assert "Off target" in row.inner_text()
    reason = row.locator("xpath=following-sibling::tr[1]").inner_text()
    assert "below the target" in reason


def test_every_page_opens_by_keyboard_navigation_without_console_errors(page, logged_in):
    load_demo(months=12)
    logged_in("coo", DEMO_PASSWORD)
    for name, heading in [
        ("Overview", "Overview"),
        ("Scorecard", "Aligned scorecard"),
        ("Departments", "Departments"),
        ("Map", "Alignment map"),
        ("Gaps", "Alignment gaps"),
        ("Data", "Data"),
    ]:
        link = page.locator(".mainnav").get_by_role("link", name=name, exact=True)
        link.focus()
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert page.get_by_role("heading", level=1).inner_text() == heading, page.url
    # The map is a drawn picture, not an empty div.
    page.goto("/alignment/map/")
    page.locator("div.chart .main-svg").first.wait_for()
    assert page.locator("div.chart .scatterlayer .trace").count() > 3
    # A department's own scorecard, reached from the index.
    page.goto("/departments/")
    page.locator("main").get_by_role("link", name="Operations").first.click()
    page.wait_for_url("**/departments/**")
    assert "Operations" in page.get_by_role("heading", level=1).inner_text()
