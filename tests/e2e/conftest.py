"""Browser tests: Debian's headless Chromium driven by Playwright against pytest-django's live server.

No browser is downloaded: Playwright launches the system Chromium (``/usr/bin/chromium``, or the
path in ``FINOPS_CHROMIUM``); without it every browser test skips with the reason.

Fixtures:

- ``browser``: one Chromium for the whole session.
- ``page``: a fresh context per test (own cookies), 1366 x 900, ``base_url`` set to the live
  server, so ``page.goto("/data/")`` works. Console errors and uncaught page errors are collected
  in ``browser_errors``; any left at teardown fail the test ("no console errors on any page").
  A test that provokes an error on purpose asserts on ``browser_errors`` and clears it.
- ``logged_in``: ``logged_in(username, password)`` logs in through the real login form.

Every test in this folder is marked ``browser`` (``make test-fast`` leaves them out) and runs
after all other tests: Playwright's sync API keeps an asyncio loop running in the main thread
while the browser is open, which other tests must not see.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).parent
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
VIEWPORT = {"width": 1366, "height": 900}
TIMEOUT_MS = 15_000


def _in_e2e(item: pytest.Item) -> bool:
    return E2E_DIR in Path(item.path).parents


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    # Before the other hooks, so that `-m "not browser"` sees the mark ...
    for item in items:
        if _in_e2e(item):
            item.add_marker(pytest.mark.browser)
    result = yield
    # ... and after them (pytest-django sorts by database use), so the browser tests run last.
    items[:] = [item for item in items if not _in_e2e(item)] + [item for item in items if _in_e2e(item)]
    return result


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (install Debian's chromium or set FINOPS_CHROMIUM)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -r requirements-dev.txt)"
    )
    with pytest.MonkeyPatch.context() as patch:
        # Playwright's sync API runs an asyncio loop in this thread, and Django refuses ORM calls
        # made while a loop runs (SynchronousOnlyOperation). Tests here call the ORM between
        # browser steps on purpose, never concurrently: Django's documented escape hatch.
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_api.sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()


@pytest.fixture
def browser_errors() -> list[str]:
    """Console errors and uncaught exceptions seen by ``page``, in order."""
    return []


@pytest.fixture
def page(browser, live_server, browser_errors) -> Iterator:
    context = browser.new_context(base_url=live_server.url, viewport=VIEWPORT, locale="en-GB")
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()

    def on_console(message) -> None:
        if message.type == "error":
            browser_errors.append(f"console error on {page.url}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: browser_errors.append(f"page error on {page.url}: {error}"))
    yield page
    context.close()
    if browser_errors:
        pytest.fail("The browser reported errors:\n" + "\n".join(browser_errors), pytrace=False)


@pytest.fixture
def logged_in(page) -> Callable:
    """``logged_in(username, password)``: log in through the login form; returns the page."""

    def login(username: str, password: str):
        page.goto("/accounts/login/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        with page.expect_navigation():
            page.get_by_role("button", name="Log in").click()
        assert "/accounts/login/" not in page.url, f"login as {username!r} failed"
        return page

    return login
