"""The KPI detail page and the drill-down to facts in a real browser: the chart is drawn (not an
empty div), the filters swap the page and redraw it, the drill-down reconciles, and both pages
fit a tablet."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from finops.roles import DEMO_PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)

TABLET = {"width": 768, "height": 1024}


@pytest.fixture
def demo():
    call_command("demo", stdout=io.StringIO(), months=12)


def chart_drawn(page) -> None:
    chart = page.locator("div.chart[data-figure-id=fig-kpi]")
    chart.locator(".main-svg").first.wait_for()  # Plotly's own SVG: the chart was drawn
    assert chart.get_attribute("data-chart-error") is None
    assert page.locator("div.chart .scatterlayer .trace").count() == 3  # target, last year, actual


def test_the_kpi_page_draws_its_chart_and_redraws_it_after_a_filter_change(demo, page, logged_in):
    logged_in("cfo", DEMO_PASSWORD)
    page.goto("/kpis/dso/?grain=quarter")
    assert page.get_by_role("heading", level=1).inner_text() == "Days sales outstanding (DSO)"
    chart_drawn(page)
    page.locator("select[name=grain]").select_option("month")
    page.wait_for_url("**grain=month**")
    chart_drawn(page)
    assert page.url.count("grain=") == 1
    assert page.locator("table.grid tbody tr").first.locator("th").inner_text()  # the values table


def test_a_measure_drills_down_to_facts_that_add_up(demo, page, logged_in):
    logged_in("cfo", DEMO_PASSWORD)
    page.goto("/kpis/revenue/?grain=quarter&entity=NW-US")
    with page.expect_navigation():
        page.get_by_role("link", name="facts behind it").first.click()
    assert page.get_by_role("heading", level=1).inner_text() == "Facts behind Net sales"
    assert "The facts add up to the stored value exactly." in page.locator(".reconcile").inner_text()
    assert page.locator("table.accounts tbody tr").count() >= 2
    # Another entity keeps the measure: the filters swap the page in place.
    page.locator("select[name=entity]").select_option("NW")
    page.wait_for_url(lambda url: url.endswith("entity=NW"))
    assert "measure=net_sales" in page.url
    assert "Facts behind Net sales" in page.get_by_role("heading", level=1).inner_text()


def test_the_kpi_pages_fit_a_tablet(demo, page, logged_in):
    logged_in("cfo", DEMO_PASSWORD)
    page.set_viewport_size(TABLET)
    for path in ("/kpis/dso/?grain=quarter", "/kpis/revenue/facts/?grain=quarter&measure=net_sales"):
        page.goto(path)
        widths = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1] + 1, f"{path} scrolls sideways at {widths[1]} px: {widths[0]} px wide"
