"""Full-page screenshots of the dashboard, for the docs and for reviewing the layout.

Drives Debian's headless Chromium through Playwright against a server that is already running:

    .venv/bin/python manage.py runserver 127.0.0.1:8000 &      # with the demo company loaded
    .venv/bin/python scripts/screenshots.py [--base-url URL] [--user U --password P]
    .venv/bin/python scripts/screenshots.py --only data,run --page costs=/kpis/costs/

Writes docs/screenshots/NAME.png for each page in PAGES (and each --page NAME=/path/). To add a
page for good, add a Shot to PAGES: its target is a path, or a function that is given the logged-in
page and returns the path (as `latest_run` finds the newest run's link on the Data page).
Console errors seen on a page are printed, and make the script exit with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "finops.settings")

import django  # noqa: E402

django.setup()

from django.urls import reverse  # noqa: E402
from playwright.sync_api import Page, sync_playwright  # noqa: E402

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


def latest_run(page: Page) -> str:
    """The newest run's report: the first link in the Data page's list of recent runs."""
    page.goto(reverse("data"))
    link = page.locator("section[aria-labelledby=runs-h] tbody a").first
    if not link.count():
        raise SystemExit("The Data page lists no runs: load the demo company first (manage.py demo).")
    return link.get_attribute("href")


@dataclass(frozen=True)
class Shot:
    name: str
    target: str | Callable[[Page], str]
    viewer: str = USER
    width: int = DESKTOP_WIDTH


PAGES = [
    Shot("login", reverse("login"), viewer=ANONYMOUS),
    Shot("data", reverse("data")),
    Shot("run", latest_run),
    Shot("admin", reverse("admin:index"), viewer=ANALYST),
    Shot("data-tablet", reverse("data"), width=TABLET_WIDTH),
    # KPI pages of the demo company: DSO by quarter (chart, values, inputs, drivers), and the facts
    # behind net sales for one entity (accounts with their signs, reconciled to the stored value).
    Shot("kpi-detail", reverse("kpi-detail", args=["dso"]) + "?grain=quarter"),
    Shot(
        "kpi-facts",
        reverse("kpi-facts", args=["revenue"])
        + "?grain=quarter&period=2026-07-01&entity=NW-US&measure=net_sales",
    ),
]


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
        "--page", type=parse_page, action="append", default=[], metavar="NAME=/PATH/", help="add a page"
    )
    parser.add_argument("--only", help="comma-separated names: take only these pages")
    args = parser.parse_args(argv)

    shots = PAGES + args.page
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
        pages: dict[str, Page] = {}  # one logged-in browser context per viewer
        for shot in shots:
            page = pages.get(shot.viewer)
            if page is None:
                context = browser.new_context(
                    base_url=base_url, viewport={"width": DESKTOP_WIDTH, "height": HEIGHT}
                )
                page = pages[shot.viewer] = context.new_page()
                page.on(
                    "console",
                    lambda m, page=page: m.type == "error" and problems.append(f"{page.url}: {m.text}"),
                )
                page.on("pageerror", lambda error, page=page: problems.append(f"{page.url}: {error}"))
                if shot.viewer != ANONYMOUS:
                    log_in(page, *credentials[shot.viewer])
            page.set_viewport_size({"width": shot.width, "height": HEIGHT})
            path = shot.target(page) if callable(shot.target) else shot.target
            page.goto(path, wait_until="networkidle")
            page.evaluate("document.activeElement && document.activeElement.blur()")
            file = args.out / f"{shot.name}.png"
            page.screenshot(path=file, full_page=True)
            print(f"{file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}  <- {page.url}")
        browser.close()
    for problem in problems:
        print(f"browser error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
