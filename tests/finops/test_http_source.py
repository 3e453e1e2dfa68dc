"""The HTTP JSON data source against a real local HTTP server started by the test.

The server listens on 127.0.0.1, so the sources here set ``allow_internal: true``; without it
127.0.0.1 and 169.254.169.254 are refused before any request. Each bad case ends with a clear
message on the run and the facts exactly as they were; a good load twice changes nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from django.urls import reverse

from finops.errors import ImportRejected
from finops.models import DataSource, FinancialFact, RefreshRun
from finops.refresh import refresh
from finops.sources import LOADERS, Report, http, loader_for
from finops.sources.mapping import ConfigInvalid
from tests import factories
from tests.finops.source_checks import GOOD_FACTS, facts, good_then_bad, snapshot

pytestmark = pytest.mark.django_db


MAPPING = {
    "fact_kind": "financial",
    "columns": {"date": "posted", "entity": "org.code", "account": "gl.account", "amount": "amount.net"},
    "constants": {"department": "sales", "scenario": "actual"},
}
RECORDS = [
    {"posted": "2024-01-15", "org": {"code": "acme"}, "gl": {"account": "4000"}, "amount": {"net": 1200.50}},
    {"posted": "2024-01-20", "org": {"code": "acme"}, "gl": {"account": 4000}, "amount": {"net": "300"}},
    {"posted": "2024-02-03", "org": {"code": "acme"}, "gl": {"account": "4000"}, "amount": {"net": 999.99}},
    {"posted": "2024-02-29", "org": {"code": "acme"}, "gl": {"account": "1000"}, "amount": {"net": 5000}},
]


# Jan 4000: 1200.50 + 300 = 1500.50; Feb 4000: 999.99; Feb 1000: 5000 (JSON numbers read as Decimal).
class Api(BaseHTTPRequestHandler):
    """Routes: /all, /pages?page=N (2 records a page), /cursor?cursor=X, /slow, /error, /broken,
    /wrong-path, /redirect. Every request is recorded on the server."""

    def log_message(self, *args):  # quiet
        pass

    def send(self, status: int, body: bytes | str, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - the http.server API
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.server.seen.append((parts.path, query, dict(self.headers)))
        route = parts.path
        if route == "/all":
            self.send(200, json.dumps({"data": {"lines": RECORDS}}))
        elif route == "/pages":
            page = int(query.get("page", "1"))
            chunk = RECORDS[(page - 1) * 2 : page * 2]
            self.send(200, json.dumps({"items": chunk, "page": page}))
        elif route == "/cursor":
            cursors = {None: ("c2", RECORDS[:1]), "c2": ("c3", RECORDS[1:3]), "c3": (None, RECORDS[3:])}
            following, chunk = cursors[query.get("cursor")]
            self.send(200, json.dumps({"items": chunk, "meta": {"next": following}}))
        elif route == "/slow":
            time.sleep(2)
            self.send(200, json.dumps({"items": RECORDS}))
        elif route == "/error":
            self.send(500, "<html>database is down, try later</html>", "text/html")
        elif route == "/broken":
            self.send(200, '{"items": [{"posted": "2024-01-15", "amount": {"net": 1,}}]}')
        elif route == "/wrong-path":
            self.send(200, json.dumps({"results": RECORDS, "count": 4}))
        elif route == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route == "/big":
            self.send(200, json.dumps({"items": RECORDS * 200}))
        else:
            self.send(404, "not found", "text/plain")


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    """A local HTTP server on a free port, answering with ``handler``, for the block."""
    api = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    api.seen = []
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.shutdown()
        api.server_close()


@pytest.fixture
def server():
    with serving(Api) as api:
        yield api


def base(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(autouse=True)
def real_loader(monkeypatch, settings, tmp_path):
    monkeypatch.setitem(LOADERS, DataSource.Kind.HTTP, "finops.sources.http")
    settings.FINOPS_SOURCE_SECRETS_DIR = tmp_path / "secrets"


@pytest.fixture
def dims():
    return factories.dimensions()


def api_source(url: str, slug: str = "api", **config) -> DataSource:
    settings = {
        "url": url,
        "records_path": "items",
        "allow_internal": True,
        "timeout_seconds": 5,
        "backoff_seconds": 0.01,
        "mapping": MAPPING,
        **config,
    }
    return DataSource.objects.create(slug=slug, name=slug.upper(), kind=DataSource.Kind.HTTP, config=settings)


# --- good loads -------------------------------------------------------------------------------


def test_one_request_with_an_auth_header_from_a_secret_loads_twice_without_change(dims, server, monkeypatch):
    monkeypatch.setenv("FINOPS_SECRET_API_TOKEN", "t0ken")
    source = api_source(
        f"{base(server)}/all?company=acme",
        records_path="data.lines",
        auth_header="Authorization",
        auth_env="FINOPS_SECRET_API_TOKEN",
        auth_prefix="Bearer ",
    )
    first = refresh(source_slug=source.slug)
    assert first.status == RefreshRun.Status.SUCCEEDED, first.errors
    assert facts() == GOOD_FACTS and first.rows_read == 4 and first.rows_inserted == 3
    path, query, headers = server.seen[0]
    assert (path, query, headers["Authorization"]) == ("/all", {"company": "acme"}, "Bearer t0ken")
    assert "t0ken" not in json.dumps(source.config)
    before = snapshot()
    second = refresh(source_slug=source.slug)
    assert (second.status, second.rows_inserted, second.rows_updated, second.rows_deleted) == (
        RefreshRun.Status.SUCCEEDED,
        0,
        0,
        0,
    )
    assert snapshot() == before


def test_page_number_pagination_stops_on_the_empty_page(dims, server):
    source = api_source(f"{base(server)}/pages", pagination="page", page_param="page", page_start=1)
    run = refresh(source_slug=source.slug)
    assert run.status == RefreshRun.Status.SUCCEEDED, run.errors
    assert facts() == GOOD_FACTS
    assert [query["page"] for _path, query, _headers in server.seen] == ["1", "2", "3"]


def test_cursor_pagination_follows_the_cursor_until_it_is_null(dims, server):
    source = api_source(
        f"{base(server)}/cursor", pagination="cursor", cursor_param="cursor", cursor_path="meta.next"
    )
    run = refresh(source_slug=source.slug)
    assert run.status == RefreshRun.Status.SUCCEEDED, run.errors
    assert facts() == GOOD_FACTS
    assert [query.get("cursor") for _path, query, _headers in server.seen] == [None, "c2", "c3"]


def test_more_pages_than_max_pages_is_an_error_not_a_partial_load(dims, server):
    source = api_source(f"{base(server)}/pages", pagination="page")
    run = good_then_bad(source, max_pages=2)
    assert "more than 2 pages (max_pages)" in run.errors[0]["reason"]


# --- bad answers: one test each -----------------------------------------------------------------


def test_a_server_that_does_not_answer_in_time(dims, server):
    source = api_source(f"{base(server)}/all", records_path="data.lines")
    started = time.monotonic()
    run = good_then_bad(source, url=f"{base(server)}/slow", records_path="items", timeout_seconds=0.5)
    assert time.monotonic() - started < 5
    reason = run.errors[0]["reason"]
    assert "no complete answer from" in reason and "/slow within 0.5 s (timeout_seconds)" in reason


def test_a_500_is_retried_then_reported_with_the_status_and_the_body(dims, server):
    source = api_source(f"{base(server)}/all", records_path="data.lines")
    run = good_then_bad(source, url=f"{base(server)}/error", retries=2)
    reason = run.errors[0]["reason"]
    assert "HTTP 500 Internal Server Error from" in reason and "after 3 attempts" in reason
    assert "database is down, try later" in reason
    assert [path for path, _query, _headers in server.seen].count("/error") == 3


def test_a_404_is_not_retried(dims, server):
    source = api_source(f"{base(server)}/nowhere")
    with pytest.raises(ImportRejected) as caught:
        loader_for(source)(source, report=Report())
    assert "HTTP 404 Not Found" in str(caught.value) and "not found" in str(caught.value)
    assert len(server.seen) == 1


def test_malformed_json_names_the_position(dims, server):
    source = api_source(f"{base(server)}/all", records_path="data.lines")
    run = good_then_bad(source, url=f"{base(server)}/broken", records_path="items")
    reason = run.errors[0]["reason"]
    assert "malformed JSON in the response of" in reason
    assert "Expecting property name enclosed in double quotes at line 1, column 57 (character 56)" in reason


def test_a_missing_records_path_lists_the_keys_the_response_has(dims, server):
    source = api_source(f"{base(server)}/all", records_path="data.lines")
    run = good_then_bad(source, url=f"{base(server)}/wrong-path", records_path="items")
    reason = run.errors[0]["reason"]
    assert "the records path 'items' is missing" in reason and "top-level keys are: results, count" in reason


def test_a_response_larger_than_max_bytes_is_refused(dims, server):
    source = api_source(f"{base(server)}/all", records_path="data.lines")
    run = good_then_bad(source, url=f"{base(server)}/big", max_bytes=4096)
    assert "more than max_bytes (4,096)" in run.errors[0]["reason"]


def test_a_record_with_a_bad_field_is_reported_by_row_and_path(dims, server):
    source = api_source(f"{base(server)}/all", records_path="data.lines")
    source.config["mapping"] = {**MAPPING, "columns": {**MAPPING["columns"], "entity": "org.name"}}
    source.save()
    with pytest.raises(ImportRejected) as caught:
        loader_for(source)(source, report=Report())
    first = caught.value.errors[0]
    assert (first.row, first.column, first.reason) == (1, "org.name", "missing field")


# --- addresses ----------------------------------------------------------------------------------


def test_127_0_0_1_is_refused_without_allow_internal(dims, server):
    source = api_source(f"{base(server)}/all", records_path="data.lines")
    run = good_then_bad(source, allow_internal=False)
    reason = run.errors[0]["reason"]
    assert "refused: 127.0.0.1 is a loopback address" in reason and "allow_internal" in reason
    assert len(server.seen) == 1, "the refused source reached the server"


def test_169_254_169_254_is_refused_without_a_request(dims, server):
    source = api_source(f"{base(server)}/all", records_path="data.lines")
    run = good_then_bad(source, url="http://169.254.169.254/latest/meta-data/", allow_internal=False)
    assert "169.254.169.254 is a link-local address" in run.errors[0]["reason"]


def test_a_name_that_resolves_to_an_internal_address_is_refused(dims):
    source = api_source("http://localhost:9/x", allow_internal=False)
    with pytest.raises(ImportRejected) as caught:
        loader_for(source)(source, report=Report())
    assert "localhost (" in str(caught.value) and "loopback" in str(caught.value)


def test_redirects_are_not_followed(dims, server):
    source = api_source(f"{base(server)}/all", records_path="data.lines")
    run = good_then_bad(source, url=f"{base(server)}/redirect")
    reason = run.errors[0]["reason"]
    assert "HTTP 302" in reason and "redirects are not followed" in reason
    assert "169.254.169.254" in reason


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("172.16.5.4", "private"),
        ("169.254.169.254", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - the address under test
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("fd00::1", "private"),
        ("100.64.0.1", "public"),
        ("240.0.0.1", "address"),  # reserved (Python counts 240/4 as private too)
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
    ],
)
def test_internal_addresses(address, refused):
    reason = http.internal_reason(address)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason


# --- the config ---------------------------------------------------------------------------------


def test_the_config_lists_every_problem():
    with pytest.raises(ConfigInvalid) as caught:
        http.validate_http_config(
            {
                "url": "ftp://user:pw@example.com/x",
                "pagination": "cursor",
                "auth_header": "Bad Header",
                "retries": 99,
                "timeout_seconds": 0,
                "mapping": {**MAPPING, "columns": {**MAPPING["columns"], "amount": "amount..net"}},
            }
        )
    problems = dict(caught.value.problems)
    urls = [message for name, message in caught.value.problems if name == "url"]
    assert any("use an http:// or https:// address" in message for message in urls)
    assert any("holds credentials" in message for message in urls)
    assert "cursor pagination needs the path" in problems["cursor_path"]
    assert "is not a header name" in problems["auth_header"]
    assert {"retries", "timeout_seconds", "mapping.columns.amount", "auth_env"} <= set(problems)


# --- the admin ----------------------------------------------------------------------------------


def test_the_admin_preview_of_an_http_source(dims, server, client):
    source = api_source(f"{base(server)}/pages", pagination="page")
    client.force_login(factories.analyst_user())
    response = client.get(reverse("admin:finops_datasource_preview", args=[source.pk]))
    assert response.status_code == 200
    preview = response.context["preview"]
    assert preview.records == 4 and preview.ok
    assert preview.rows[0].value == Decimal("1200.50") and preview.rows[0].codes["entity"] == "acme"
    text = response.content.decode()
    assert "No problems in the 4 rows checked" in text and "pages by ?page=" in text
    assert not FinancialFact.objects.exists() and not RefreshRun.objects.exists()


def test_the_admin_preview_shows_a_refused_address(dims, client):
    source = api_source("http://169.254.169.254/latest/", allow_internal=False)
    client.force_login(factories.analyst_user())
    text = client.get(reverse("admin:finops_datasource_preview", args=[source.pk])).content.decode()
    assert "link-local address" in text and "A refresh would reject" in text


def test_an_analyst_creates_an_http_source_in_the_admin_form(dims, server, client):
    client.force_login(factories.analyst_user())
    data = {
        "name": "API",
        "slug": "api",
        "kind": "http",
        "is_active": "on",
        "config": "{}",
        "http_url": f"{base(server)}/cursor",
        "http_records_path": "items",
        "http_pagination": "cursor",
        "http_cursor_param": "cursor",
        "http_cursor_path": "",
        "http_timeout_seconds": "5",
        "http_retries": "1",
        "http_backoff_seconds": "0",
        "http_max_pages": "10",
        "http_max_bytes": "1000000",
        "http_allow_internal": "on",
        "fact_kind": "financial",
        "date_column": "posted",
        "date_format": "iso",
        "period_rule": "calendar_month",
        "decimal_separator": ".",
        "thousands_separator": "",
        "amount_column": "amount.net",
        "entity_column": "org.code",
        "account_column": "gl.account",
        "department_value": "sales",
        "scenario_value": "actual",
    }
    bad = client.post(reverse("admin:finops_datasource_add"), data)
    assert bad.status_code == 200
    assert "cursor pagination needs the path" in bad.context["adminform"].form.errors["http_cursor_path"][0]
    response = client.post(reverse("admin:finops_datasource_add"), {**data, "http_cursor_path": "meta.next"})
    assert response.status_code == 302, response.context["adminform"].form.errors
    source = DataSource.objects.get(slug="api")
    assert source.config["cursor_path"] == "meta.next" and source.config["allow_internal"] is True
    assert source.config["mapping"]["columns"]["amount"] == "amount.net"
    assert loader_for(source)(source, report=Report()).rows_inserted == 3
    page = client.get(reverse("admin:finops_datasource_change", args=[source.pk])).content.decode()
    assert "Test connection / preview" in page and 'value="meta.next"' in page
