"""The pages in a real browser: login, the Data page with the demo company, a run's report,
keyboard access, the analyst's refresh button and the layout at tablet width."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import call_command

from finops.models import RefreshRun
from finops.roles import DEMO_PASSWORD, ensure_demo_users

# The live server answers from another thread: the data must be committed, not in a test transaction.
pytestmark = pytest.mark.django_db(transaction=True)

TABLET = {"width": 768, "height": 1024}


def load_demo(**options) -> RefreshRun:
    """The demo company (three years by default, ~2 s; ``months=12`` is quicker) and its logins."""
    call_command("demo", stdout=io.StringIO(), **options)
    return RefreshRun.objects.latest("started_at")


def sources_table(page):
    return page.locator("section[aria-labelledby=sources-h] table")


def runs_table(page):
    return page.locator("section[aria-labelledby=runs-h] table")


def no_page_scroll(page) -> None:
    widths = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1] + 1, f"{page.url} scrolls sideways at {widths[1]} px: {widths[0]} px wide"


def test_leadership_logs_in_and_reads_the_demo_data(page, logged_in):
    run = load_demo()

    logged_in("cfo", DEMO_PASSWORD)
    assert page.url.endswith("/overview/")  # where leadership start
    page.get_by_role("link", name="Data", exact=True).click()
    page.wait_for_url("**/data/")
    assert page.get_by_role("heading", level=1).inner_text() == "Data"
    assert page.locator(".mainnav a[aria-current=page]").inner_text() == "Data"
    assert "Carla Finch" in page.locator(".usermenu").inner_text()

    source_row = sources_table(page).locator("tbody tr").filter(has_text="Demo")
    assert source_row.count() == 1
    assert "Succeeded" in source_row.inner_text()

    coverage = page.locator("table.coverage")
    assert coverage.is_visible()
    assert coverage.locator("thead th[title]").count() >= 36  # three years of months at least
    assert coverage.locator("tbody th").filter(has_text="Actual").count() >= 1
    assert coverage.locator("tbody th").filter(has_text="Budget").count() >= 1
    assert coverage.locator("td.cell-loaded").count() > 0

    run_link = runs_table(page).get_by_role("link", name=f"#{run.pk}")
    assert run_link.is_visible()
    assert "Succeeded" in runs_table(page).locator("tbody tr").first.inner_text()
    # Leadership reads; only analysts may start a refresh.
    assert page.get_by_role("button", name=re.compile("Refresh")).count() == 0

    run_link.click()
    page.wait_for_url(f"**/data/runs/{run.pk}/")
    assert page.get_by_role("heading", level=1).inner_text().startswith(f"Run #{run.pk}")
    steps = page.locator("section[aria-labelledby=steps-h] tbody tr")
    assert "loaded" in steps.filter(has_text="demo").inner_text()
    assert "recomputed" in steps.filter(has_text="KPI recompute").inner_text()
    page.locator(".crumbs").get_by_role("link", name="Data").click()
    page.wait_for_url("**/data/")


def test_an_anonymous_visitor_is_sent_to_the_login_page(page):
    page.goto("/data/")
    assert "/accounts/login/" in page.url and "next=/data/" in page.url
    assert page.get_by_role("heading", level=1).inner_text() == "Log in"
    assert page.locator(".mainnav").count() == 0
    # The login form has focus, so the user can type at once.
    assert page.evaluate("document.activeElement.id") == "id_username"


def test_a_wrong_password_is_refused_with_a_message(page):
    ensure_demo_users()
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("cfo")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    assert page.get_by_role("alert").inner_text().startswith("Your username and password didn't match")
    assert "/accounts/login/" in page.url


def test_the_skip_link_is_the_first_tab_stop_and_moves_focus_to_main(page, logged_in):
    load_demo(months=12)  # so that the content has links to move to
    logged_in("cfo", DEMO_PASSWORD)
    page.goto("/data/")

    page.keyboard.press("Tab")
    skip = page.locator(".skip-link")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    # Hidden until focused, then on screen.
    box = skip.bounding_box()
    assert box is not None and box["x"] >= 0 and box["y"] >= 0

    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    # The next Tab stop is inside the content, past the navigation.
    page.keyboard.press("Tab")
    assert page.evaluate("document.getElementById('main').contains(document.activeElement)")


def test_an_analyst_refreshes_all_sources_and_sees_the_new_run(page, logged_in, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the task runs in the live server's request
    first = load_demo(months=12)

    logged_in("analyst", DEMO_PASSWORD)
    page.goto("/data/")
    button = page.get_by_role("button", name="Refresh all sources now")
    assert button.is_enabled()
    with page.expect_navigation():
        button.click()

    assert re.search(r"/data/\?after=\d+&at=\d+$", page.url)  # the run had ended: nothing to follow
    assert "Refresh queued" in page.get_by_role("status").inner_text()
    assert page.locator("#refresh-progress").count() == 0
    new = RefreshRun.objects.latest("started_at")
    assert new.pk != first.pk
    assert (new.trigger, new.status, new.requested_by.username) == ("manual", "succeeded", "analyst")
    latest_row = runs_table(page).locator("tbody tr").first
    assert latest_row.get_by_role("link").inner_text() == f"#{new.pk}"
    assert "Refresh now (analyst)" in latest_row.inner_text()
    assert runs_table(page).locator("tbody tr").count() == RefreshRun.objects.count()


def test_the_data_page_follows_a_running_refresh_and_reloads_when_it_ends(page, logged_in):
    from finops import progress

    load_demo(months=12)
    run = RefreshRun.objects.create(status=RefreshRun.Status.RUNNING)
    progress.publish(run.pk, stage="Loading Demo company", done=0, total=2)
    logged_in("cfo", DEMO_PASSWORD)
    page.goto("/data/")
    panel = page.locator("#refresh-progress")
    assert "Loading Demo company, step 1 of 2" in panel.inner_text()
    progress.publish(run.pk, stage="Recomputing the KPIs", done=1, total=2)
    page.wait_for_function(
        "document.querySelector('#refresh-progress').innerText.includes('Recomputing the KPIs, step 2 of 2')"
    )
    RefreshRun.objects.filter(pk=run.pk).update(status=RefreshRun.Status.SUCCEEDED)
    page.wait_for_function("document.querySelector('#refresh-progress') === null")  # reloaded
    assert f"#{run.pk}" in runs_table(page).inner_text()


def test_the_pages_fit_a_tablet_without_sideways_scrolling(page, logged_in):
    run = load_demo()
    page.set_viewport_size(TABLET)

    page.goto("/accounts/login/")
    no_page_scroll(page)

    logged_in("cfo", DEMO_PASSWORD)
    no_page_scroll(page)  # the overview
    page.goto("/scorecard/")
    no_page_scroll(page)
    page.goto("/data/")
    no_page_scroll(page)
    # Wide tables scroll inside their own container instead of the page.
    coverage_wrap = page.locator(".tablewrap").filter(has=page.locator("table.coverage"))
    overflow = coverage_wrap.evaluate(
        "el => [getComputedStyle(el).overflowX, el.scrollWidth > el.clientWidth]"
    )
    assert overflow == ["auto", True]

    page.goto(f"/data/runs/{run.pk}/")
    no_page_scroll(page)
