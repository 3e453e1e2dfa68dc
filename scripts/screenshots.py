"""Full-page screenshots of the dashboard, for the docs and for reviewing the layout.

Drives Debian's headless Chromium through Playwright against a server that is already running:

    .venv/bin/python manage.py runserver 127.0.0.1:8000 &      # with the demo company loaded
    .venv/bin/python scripts/screenshots.py [--base-url URL] [--user U --password P]
    .venv/bin/python scripts/screenshots.py --only data,run --page costs=/kpis/costs/

    # against a server with the AdventureWorksDW export loaded: writes overview-aw.png, ...
    .venv/bin/python scripts/screenshots.py --dataset adventureworks --base-url http://127.0.0.1:8001

Writes docs/screenshots/NAME.png (NAME-SUFFIX.png with --suffix; the adventureworks set's
default suffix is "aw") for each page of the dataset's set (PAGES for the demo company) and each
--page NAME=/path/. The sets differ only in the KPIs, departments and entities they show, which
must exist in that dataset (DATASETS). To add a page for good, add a Shot to `pages`: its target
is a path, or a function that is given the logged-in page and returns the path (as `latest_run`
finds the newest run's link on the Data page).

kpi-admin-history saves a change to a KPI in the admin (an equivalent formula: gross_margin_pct
as `gross_margin / revenue`) when that KPI's history holds only its creation, so take the set
on a scratch database. Console errors seen on a page, and charts that fail to draw, are printed
and make the script exit with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "finops.settings")

import django  # noqa: E402

django.setup()

from django.urls import reverse  # noqa: E402
from playwright.sync_api import Page, sync_playwright  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402

from finops.roles import DEMO_PASSWORD  # noqa: E402

CHROMIUM = os.environ.get("FINOPS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP_WIDTH, TABLET_WIDTH, HEIGHT = 1366, 768, 900

# Who looks at a page: the --user login, the --analyst-user login, or nobody (logged out).
USER, ANALYST, ANONYMOUS = "user", "analyst", "anonymous"

# Every Plotly chart on the page drawn (or marked as failed by charts.js).
CHARTS_SETTLED = """() => [...document.querySelectorAll('div.chart[data-figure-id]')]
    .every(el => el._fullLayout || el.hasAttribute('data-chart-error'))"""
# The admin's navigation sidebar is sticky: in a full-page capture it lands mid-page.
ADMIN_STATIC_SIDEBAR = "#nav-sidebar { position: static !important; max-height: none !important; }"


def latest_run(page: Page) -> str:
    """The newest run's report: the first link in the Data page's list of recent runs."""
    page.goto(reverse("data"))
    link = page.locator("section[aria-labelledby=runs-h] tbody a").first
    if not link.count():
        raise SystemExit("The Data page lists no runs: load the demo company first (manage.py demo).")
    return link.get_attribute("href")


def kpi_change(code: str) -> Callable[[Page], str]:
    """A KPI's change page in the admin (its URL holds the primary key: found by searching)."""

    def find(page: Page) -> str:
        page.goto(reverse("admin:kpis_kpi_changelist") + "?" + urlencode({"q": code}))
        link = page.locator("#result_list a", has_text=code).first
        if not link.count():
            raise SystemExit(f"The admin lists no KPI {code!r}.")
        return link.get_attribute("href").partition("?")[0]

    return find


def refuse_formula(formula: str) -> Callable[[Page], None]:
    """Save a formula the admin refuses, and bring the field with its message into view."""

    def refuse(page: Page) -> None:
        page.locator("#id_formula").fill(formula)
        with page.expect_navigation():
            page.locator("input[name=_continue]").click()
        page.locator(".field-formula").scroll_into_view_if_needed()
        page.evaluate("window.scrollBy(0, -140)")

    return refuse


def edit_formula_once(formula: str) -> Callable[[Page], None]:
    """Save a new formula when the KPI's history holds only its creation, so the page shows
    the saved message and a change in the history; later runs show the history as it is."""

    def edit(page: Page) -> None:
        if page.locator("#changes-group tr.form-row").count() > 1:
            return
        page.locator("#id_formula").fill(formula)
        with page.expect_navigation():
            page.locator("input[name=_continue]").click()

    return edit


@dataclass(frozen=True)
class Shot:
    name: str
    target: str | Callable[[Page], str]
    viewer: str = USER
    width: int = DESKTOP_WIDTH
    then: Callable[[Page], None] | None = None  # after loading the page, before the capture
    height: int | None = None  # the viewport's height only, not the full page
    css: str = ""  # extra CSS for the capture only


@dataclass(frozen=True)
class Dataset:
    """The KPIs, department and entities a set of shots shows: they must exist in the data."""

    suffix: str
    kpi_detail: str  # code?query
    kpi_facts: str  # code?query with the measure
    department: str
    month: str = ""  # query for the month-grain pages (overview, scorecard, department, map)
    quarter: str = "grain=quarter"  # query for the quarter scorecard


DATASETS = {
    # DSO by quarter (chart, values, inputs, drivers); the facts behind net sales for one
    # entity (accounts with their signs, reconciled to the stored value); Finance's scorecard.
    "demo": Dataset(
        suffix="",
        kpi_detail="dso?grain=quarter",
        kpi_facts="revenue?grain=quarter&period=2026-07-01&entity=NW-US&measure=net_sales",
        department="NW-FIN",
    ),
    # AdventureWorksDW has finance facts (Jan 2011 - Jan 2014, budget for 2011 only) and the
    # call centre (May 2014): net sales of the five US divisions in 2011 against their budget.
    # The default period is May 2014, the call centre's only month, where no finance KPI has a
    # value: the pages show the budget year instead (December and Q4 2011). No KPI has an owner
    # department there, so every department's page is empty.
    "adventureworks": Dataset(
        suffix="aw",
        kpi_detail="revenue?grain=quarter&entity=usa-operations&period=2011-07-01",
        kpi_facts="revenue?grain=quarter&period=2011-07-01&entity=usa-operations&measure=net_sales",
        department="executive-general-and-administration",
        month="period=2011-12-01",
        quarter="grain=quarter&period=2011-10-01",
    ),
}


def pages(dataset: Dataset) -> list[Shot]:
    def url(name: str, query: str = "", args: tuple = ()) -> str:
        return reverse(name, args=args) + (f"?{query}" if query else "")

    def kpi_url(name: str, spec: str) -> str:
        code, _, query = spec.partition("?")
        return url(name, query, (code,))

    return [
        Shot("login", reverse("login"), viewer=ANONYMOUS),
        Shot("overview", url("overview", dataset.month)),
        Shot("scorecard", url("scorecard", dataset.quarter)),
        Shot("scorecard-month", url("scorecard", dataset.month)),
        Shot("kpi-detail", kpi_url("kpi-detail", dataset.kpi_detail)),
        Shot("kpi-facts", kpi_url("kpi-facts", dataset.kpi_facts)),
        Shot("departments", reverse("departments")),
        Shot("department", url("department", dataset.month, (dataset.department,))),
        Shot("alignment-map", url("alignment-map", dataset.month)),
        Shot("alignment-gaps", reverse("alignment-gaps")),
        Shot("data", reverse("data")),
        Shot("data-tablet", reverse("data"), width=TABLET_WIDTH),
        Shot("run", latest_run),
        # The admin, as an analyst: the KPI list and one KPI's form (the top of each), a
        # formula refused with its reason, and a saved change in the KPI's history.
        Shot("admin", reverse("admin:index"), viewer=ANALYST, css=ADMIN_STATIC_SIDEBAR),
        Shot("kpi-admin-list", reverse("admin:kpis_kpi_changelist"), viewer=ANALYST, height=1000),
        Shot("kpi-admin", kpi_change("gross_margin_pct"), viewer=ANALYST, height=1000),
        Shot(
            "kpi-admin-refused",
            kpi_change("cash_conversion_cycle"),
            viewer=ANALYST,
            then=refuse_formula("dso + dio - dpoo"),
            height=700,
        ),
        Shot(
            "kpi-admin-history",
            kpi_change("gross_margin_pct"),
            viewer=ANALYST,
            then=edit_formula_once("gross_margin / revenue"),
            css=ADMIN_STATIC_SIDEBAR,
        ),
    ]


PAGES = pages(DATASETS["demo"])


def parse_page(value: str) -> Shot:
    name, sep, path = value.partition("=")
    if not sep or not name or not path.startswith("/"):
        raise argparse.ArgumentTypeError(f"expected NAME=/path/, got {value!r}")
    return Shot(name, path)


def log_in(page: Page, username: str, password: str) -> None:
    page.goto(reverse("login"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()
    if reverse("login") in page.url:
        raise SystemExit(f"Could not log in as {username!r} at {page.url}: wrong user or password?")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--user", default="cfo")
    parser.add_argument("--password", default=DEMO_PASSWORD)
    parser.add_argument("--analyst-user", default="analyst", help="login for the admin pages")
    parser.add_argument("--analyst-password", default=DEMO_PASSWORD)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="demo",
        help="which set of pages: the KPIs and departments it shows exist in that data",
    )
    parser.add_argument(
        "--suffix", help="written as NAME-SUFFIX.png (default: none for demo, 'aw' for adventureworks)"
    )
    parser.add_argument(
        "--page", type=parse_page, action="append", default=[], metavar="NAME=/PATH/", help="add a page"
    )
    parser.add_argument("--only", help="comma-separated names: take only these pages")
    args = parser.parse_args(argv)

    dataset = DATASETS[args.dataset]
    suffix = dataset.suffix if args.suffix is None else args.suffix
    shots = pages(dataset) + args.page
    if args.only:
        wanted = set(args.only.split(","))
        shots = [shot for shot in shots if shot.name in wanted]
        if unknown := wanted - {shot.name for shot in shots}:
            parser.error(f"no such page: {', '.join(sorted(unknown))}")
    if not Path(CHROMIUM).exists():
        parser.error(f"Chromium not found at {CHROMIUM} (set FINOPS_CHROMIUM)")
    credentials = {USER: (args.user, args.password), ANALYST: (args.analyst_user, args.analyst_password)}
    args.out.mkdir(parents=True, exist_ok=True)
    base_url = args.base_url.rstrip("/")  # the server's root: paths are site-absolute

    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pages_by_viewer: dict[str, Page] = {}  # one logged-in browser context per viewer
        for shot in shots:
            page = pages_by_viewer.get(shot.viewer)
            if page is None:
                context = browser.new_context(
                    base_url=base_url, viewport={"width": DESKTOP_WIDTH, "height": HEIGHT}
                )
                page = pages_by_viewer[shot.viewer] = context.new_page()
                page.on(
                    "console",
                    lambda m, page=page: m.type == "error" and problems.append(f"{page.url}: {m.text}"),
                )
                page.on("pageerror", lambda error, page=page: problems.append(f"{page.url}: {error}"))
                if shot.viewer != ANONYMOUS:
                    log_in(page, *credentials[shot.viewer])
            page.set_viewport_size({"width": shot.width, "height": shot.height or HEIGHT})
            path = shot.target(page) if callable(shot.target) else shot.target
            page.goto(path, wait_until="networkidle")
            if shot.then is not None:
                shot.then(page)
            try:
                page.wait_for_function(CHARTS_SETTLED, timeout=15_000)
            except PlaywrightTimeout:
                problems.append(f"{page.url}: charts not drawn after 15 s")
            if broken := page.locator("div.chart[data-chart-error]").count():
                problems.append(f"{page.url}: {broken} chart(s) could not be drawn")
            if shot.css:
                page.add_style_tag(content=shot.css)
            page.evaluate("document.activeElement && document.activeElement.blur()")
            file = args.out / (f"{shot.name}-{suffix}.png" if suffix else f"{shot.name}.png")
            page.screenshot(path=file, full_page=shot.height is None)
            print(f"{file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}  <- {page.url}")
        browser.close()
    for problem in problems:
        print(f"browser error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
