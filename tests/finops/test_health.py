"""``GET /health/``: what load balancers and the docker-compose healthcheck call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from finops.models import RefreshRun

pytestmark = pytest.mark.django_db


def run(status: str, finished_at: datetime | None) -> RefreshRun:
    return RefreshRun.objects.create(status=status, finished_at=finished_at)


def test_it_answers_without_a_login_in_one_query(client):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("health"))
    assert response.status_code == 200
    assert len(queries) == 1, [q["sql"] for q in queries]
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok", "database": "ok", "last_refresh": None}
    assert "no-store" in response["Cache-Control"]  # a proxy must never answer for the app


def test_last_refresh_is_when_the_latest_successful_run_finished(client):
    now = datetime(2025, 3, 1, 2, 0, tzinfo=UTC)
    run(RefreshRun.Status.SUCCEEDED, now - timedelta(days=2))
    run(RefreshRun.Status.SUCCEEDED, now)
    run(RefreshRun.Status.FAILED, now + timedelta(hours=1))  # finished, but refreshed nothing
    run(RefreshRun.Status.RUNNING, None)
    response = client.get(reverse("health"))
    assert response.json() == {"status": "ok", "database": "ok", "last_refresh": now.isoformat()}


def test_it_reveals_nothing_else(client):
    run(RefreshRun.Status.SUCCEEDED, datetime(2025, 3, 1, tzinfo=UTC))
    body = client.get(reverse("health")).json()
    assert set(body) == {"status", "database", "last_refresh"}


def test_it_is_read_only(client):
    assert client.post(reverse("health")).status_code == 405
    assert client.head(reverse("health")).status_code == 200


def test_a_failing_database_gives_503_and_no_details(client, caplog):
    def refuse(execute, sql, params, many, context):
        raise OperationalError("connection to server at 10.0.0.5 failed: password authentication failed")

    with connection.execute_wrapper(refuse):
        response = client.get(reverse("health"))
    assert response.status_code == 503
    assert response.json() == {"status": "error", "database": "error", "last_refresh": None}
    assert b"10.0.0.5" not in response.content and b"password" not in response.content
    assert "Health check: the database query failed" in caplog.text  # the reason is logged
