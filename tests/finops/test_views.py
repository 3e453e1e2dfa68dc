import re
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from finops import sources
from finops.models import DataSource, RefreshRun
from finops.refresh import refresh
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fake_file_loader(monkeypatch):
    monkeypatch.setitem(sources.LOADERS, DataSource.Kind.FILE, "tests.finops.fake_source")


def make_sources(count: int) -> None:
    for i in range(count):
        src = factories.source(f"ledger{i}")
        src.config = {"rows": [["2024-01-01", "1"], ["2024-03-01", "2"]], "warnings": ["w"]}
        src.save()
        refresh(source_slug=src.slug)


@pytest.mark.parametrize("name,args", [("home", []), ("data", []), ("run-detail", [1])])
def test_every_page_requires_login(client, name, args):
    response = client.get(reverse(name, args=args))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_the_login_page_logs_a_user_in(client):
    factories.leadership_user()
    response = client.post(reverse("login"), {"username": "ceo", "password": "pw"}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("overview")
    assert b"Overview" in response.content


def test_the_data_page_explains_what_to_do_when_there_is_no_data(client):
    client.force_login(factories.leadership_user())
    response = client.get(reverse("data"))
    assert b"No data yet" in response.content
    assert b"Refresh all sources now" not in response.content


@pytest.mark.parametrize("count", [1, 6])
def test_the_data_page_makes_a_fixed_number_of_queries(client, count):
    factories.dimensions()
    make_sources(count)
    client.force_login(factories.leadership_user())
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("data"))
    assert response.status_code == 200
    # session, user, analyst check, user's groups (menu), sources, coverage, runs, last successes
    assert len(queries) == 8, [q["sql"] for q in queries]
    body = response.content.decode()
    assert body.count('class="cell-missing"') == count  # February has no rows in any source
    assert f"ledger{count - 1}".title() in body


def test_leadership_cannot_start_a_refresh(client):
    client.force_login(factories.leadership_user())
    assert client.post(reverse("refresh-now")).status_code == 403
    assert not RefreshRun.objects.exists()


def test_an_analyst_starts_a_refresh_that_runs_on_commit(client, django_capture_on_commit_callbacks):
    factories.dimensions()
    make_sources(1)
    analyst = factories.analyst_user()
    client.force_login(analyst)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("refresh-now"), {"source": "ledger0"})
    assert response.status_code == 302
    run = RefreshRun.objects.latest("started_at")
    assert (run.trigger, run.status, run.requested_by) == ("manual", "succeeded", analyst)


def test_refresh_of_an_unknown_source_is_refused_with_a_message(client):
    client.force_login(factories.analyst_user())
    response = client.post(reverse("refresh-now"), {"source": "nope"}, follow=True)
    assert b"There is no data source" in response.content
    assert not RefreshRun.objects.exists()


def test_a_runs_report_names_row_and_column_of_each_error(client):
    factories.dimensions()
    src = factories.source("ledger")
    src.config = {"reject": True}
    src.save()
    run = refresh()
    client.force_login(factories.leadership_user())
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("run-detail", args=[run.pk]))
    body = response.content.decode()
    assert "Failed" in body and "ledger.csv" in body and "12,x" in body and "is not a number" in body
    assert len(queries) == 4  # session, user, run, user's groups (menu)


# --- a refresh's progress, while it runs ------------------------------------------------------


def test_a_running_refresh_shows_its_progress_and_the_page_reloads_when_it_ends(client):
    from finops import progress

    run = RefreshRun.objects.create(status=RefreshRun.Status.RUNNING)
    progress.publish(run.pk, stage="Loading General ledger", done=1, total=3)
    client.force_login(factories.leadership_user())
    page = client.get(reverse("data")).content.decode()
    assert "Loading General ledger, step 2 of 3" in page
    assert f'hx-get="{reverse("refresh-progress")}"' in page and 'hx-trigger="every 2s"' in page
    with CaptureQueriesContext(connection) as queries:
        panel = client.get(reverse("refresh-progress"))
    assert len(queries) == 3, [q["sql"] for q in queries]  # session, user, the running run
    assert "Loading General ledger, step 2 of 3" in panel.content.decode()
    assert 'value="1"' in panel.content.decode()  # the <progress> bar
    run.status = RefreshRun.Status.SUCCEEDED
    run.save()
    ended = client.get(reverse("refresh-progress"))
    assert ended["HX-Redirect"] == reverse("data")


def test_the_refresh_reports_each_stage_and_clears_its_progress(monkeypatch):
    from finops import progress

    factories.dimensions()
    for slug in ("ledger0", "ledger1"):
        src = factories.source(slug)
        src.config = {"rows": [["2024-01-01", "1"]]}
        src.save()
    stages = []
    real_publish = progress.publish

    def publish(run_id, **report):
        stages.append((report["stage"], report["done"], report["total"]))
        real_publish(run_id, **report)

    monkeypatch.setattr(progress, "publish", publish)
    run = refresh()
    assert stages == [
        ("Loading Ledger0", 0, 3),
        ("Loading Ledger1", 1, 3),
        ("Recomputing the KPIs", 2, 3),
        ("Publishing", 3, 3),
    ]
    assert progress.read(run.pk) is None  # cleared when the run ended


def test_a_queued_refresh_is_followed_until_a_worker_has_run_it(client):
    factories.dimensions()
    make_sources(1)
    client.force_login(factories.analyst_user())
    response = client.post(reverse("refresh-now"), {"source": "ledger0"})  # no worker runs it here
    assert re.search(rf"\?after={RefreshRun.objects.latest('pk').pk}&at=\d+$", response.url)
    with CaptureQueriesContext(connection) as queries:
        page = client.get(response.url).content.decode()
    assert len(queries) == 9, [q["sql"] for q in queries]  # the data page's 8, and "a run since?"
    assert "waiting for a worker to start it" in page
    query = response.url.split("?")[1]
    panel = client.get(f"{reverse('refresh-progress')}?{query}")
    assert "waiting for a worker" in panel.content.decode() and "HX-Redirect" not in panel
    assert "no-cache" in panel["Cache-Control"]
    refresh(source_slug="ledger0")  # the worker's run
    assert client.get(f"{reverse('refresh-progress')}?{query}")["HX-Redirect"] == reverse("data")
    assert "waiting for a worker" not in client.get(response.url).content.decode()


def test_a_refresh_no_worker_starts_is_reported_and_no_longer_polled(client):
    factories.dimensions()
    make_sources(1)
    client.force_login(factories.analyst_user())
    after = RefreshRun.objects.latest("pk").pk
    queued_long_ago = int(time.time()) - 600
    panel = client.get(reverse("refresh-progress"), {"after": after, "at": queued_long_ago}).content.decode()
    assert "no worker has started it in 5 minutes" in panel
    assert "hx-trigger" not in panel


def test_a_panel_polled_after_the_session_ended_sends_the_page_to_the_login_form(client):
    panel = client.get(
        reverse("refresh-progress"),
        {"after": 1, "at": 2},
        HTTP_HX_REQUEST="true",
        HTTP_HX_CURRENT_URL="http://testserver/data/?after=1&at=2",
    )
    assert panel.status_code == 200 and panel.content == b""
    assert panel["HX-Redirect"] == "/accounts/login/?next=/data/%3Fafter%3D1%26at%3D2"
    # Another site's address is never where the login form sends the user back.
    elsewhere = client.get(
        reverse("refresh-progress"), HTTP_HX_REQUEST="true", HTTP_HX_CURRENT_URL="https://evil.example/x"
    )
    assert elsewhere["HX-Redirect"] == "/accounts/login/?next=/"
    # A plain request is redirected as always.
    assert client.get(reverse("refresh-progress")).status_code == 302
