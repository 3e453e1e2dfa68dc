"""Shared test fixtures: which real services are here, and the sample data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

AW_DIR = Path(settings.FINOPS_SHARED_DATA) / "adventureworks-dw"


def pytest_report_header(config):
    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    db = settings.DATABASES["default"]
    where = f"{db.get('HOST') or 'local file'}:{db.get('PORT') or ''}" if engine != "sqlite3" else "SQLite"
    redis = settings.REDIS_URL or "not configured (tasks run in-process; Redis tests skip)"
    return [f"finops database: {engine} ({where})", f"finops broker: {redis}"]


def using_postgres() -> bool:
    return connection.vendor == "postgresql"


def pytest_collection_modifyitems(config, items):
    no_pg = pytest.mark.skip(
        reason="needs PostgreSQL: set DATABASE_URL=postgres://... (make test does when reachable)"
    )
    no_redis = pytest.mark.skip(
        reason="needs Redis: set REDIS_URL=redis://... (make test does when reachable)"
    )
    for item in items:
        if ("postgres" in item.keywords or "integration" in item.keywords) and not using_postgres():
            item.add_marker(no_pg)
        if ("redis" in item.keywords or "integration" in item.keywords) and not settings.REDIS_URL:
            item.add_marker(no_redis)


@pytest.fixture
def aw_dir() -> Path:
    """The AdventureWorksDW export from ../shared/data; tests that need it skip without it."""
    if not (AW_DIR / "FactFinance.csv").exists():
        pytest.skip(f"AdventureWorksDW sample data not found at {AW_DIR} (set FINOPS_SHARED_DATA)")
    return AW_DIR


@pytest.fixture(autouse=True)
def _no_real_broker_in_unit_tests(settings, request):
    """Unit tests run Celery tasks in-process; only integration tests talk to a real worker."""
    if "integration" not in request.keywords:
        settings.CELERY_TASK_ALWAYS_EAGER = True
    os.environ.setdefault("FINOPS_ENV", "test")


@pytest.fixture(autouse=True)
def _engine_self_check(settings):
    """Every recompute in the tests checks the engine's summary of the stored measure values
    against the values themselves."""
    settings.FINOPS_ENGINE_SELF_CHECK = True


@pytest.fixture(autouse=True)
def _empty_cache():
    """Each test starts with an empty cache (pages cache bodies under a published version)."""
    from django.core.cache import cache  # noqa: PLC0415 - settings are configured by now

    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _default_language():
    """A request's language (LocaleMiddleware) stays active in the thread: reset it."""
    from django.utils import translation  # noqa: PLC0415

    yield
    translation.activate(settings.LANGUAGE_CODE)
