"""The REST API under /api/v1/: tokens, the stored values as the pages show them, clear errors
for bad parameters, a fixed number of queries per list, and an OpenAPI schema that lists it all."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from alignment.models import Goal
from finops.api_auth import issue_token
from finops.models import Account, ApiToken, DataSource, Department, Entity, OperationalSeries, RefreshRun
from finops.roles import FINANCE, LEADERSHIP, OPERATIONS
from kpis.models import Measure
from tests import factories
from tests.alignment.builders import Board

pytestmark = pytest.mark.django_db

JAN, FEB, MAR = date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1)


@pytest.fixture
def board() -> Board:
    return Board()


@pytest.fixture
def reader():
    return factories.leadership_user()


@pytest.fixture
def api(client, reader):
    """A client that sends a fresh API key of a leadership user."""
    _token, key = issue_token(reader, "tests")
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


def get(client, name: str, **params):
    response = client.get(reverse(f"api:{name}"), params)
    return response, response.json()


# --- signing in -------------------------------------------------------------------------------


def test_without_credentials_the_api_answers_401_in_json_not_a_login_page(client, board):
    response = client.get(reverse("api:kpi-values"))
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "credentials were not provided" in response.json()["detail"]


def test_a_bearer_key_signs_in_and_only_its_digest_is_stored(client, board, reader):
    token, key = issue_token(reader, "Power BI")
    assert key.startswith("fr_") and len(key) > 40
    stored = ApiToken.objects.values().get(pk=token.pk)
    assert stored["digest"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in json.dumps(stored, default=str)  # not the key, only its first characters
    assert key.startswith(stored["prefix"])
    response = client.get(reverse("api:kpis"), HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200
    assert ApiToken.objects.get(pk=token.pk).last_used_at is not None


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Bearer fr_not-a-key", "Unknown or revoked API key."),
        ("Bearer", "Send the header as 'Authorization: Bearer <key>'."),
        ("Bearer two words", "Send the header as 'Authorization: Bearer <key>'."),
    ],
)
def test_a_bad_key_is_refused_with_the_reason(client, board, header, message):
    response = client.get(reverse("api:kpis"), HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response.json() == {"detail": message}


def test_an_expired_key_and_a_deactivated_users_key_are_refused(client, board, reader):
    _token, expired = issue_token(reader, "old", expires_at=timezone.now() - timedelta(days=1))
    response = client.get(reverse("api:kpis"), HTTP_AUTHORIZATION=f"Bearer {expired}")
    assert response.status_code == 401 and "expired on" in response.json()["detail"]
    _token, key = issue_token(reader, "current")
    reader.is_active = False
    reader.save()
    response = client.get(reverse("api:kpis"), HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 401 and "deactivated" in response.json()["detail"]


def test_a_deleted_token_no_longer_signs_in(client, board, reader):
    token, key = issue_token(reader, "revoked")
    token.delete()
    response = client.get(reverse("api:kpis"), HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 401


def test_a_signed_in_browser_reads_the_api_with_its_session(client, board, reader):
    client.force_login(reader)
    assert client.get(reverse("api:kpis")).status_code == 200


def test_the_api_is_read_only(api, board):
    response = api.post(reverse("api:kpis"), data={"code": "x"}, content_type="application/json")
    assert response.status_code == 405


# --- KPI values -------------------------------------------------------------------------------


def test_kpi_values_are_the_stored_ones_with_target_status_and_lineage(api, board):
    revenue = board.kpi("revenue", sort_order=1)
    margin = board.kpi("margin", unit="percent", sort_order=2)
    board.values(revenue, JAN, ["1000.5", "1200", "900"], target="1100", status="red")
    board.values(margin, JAN, ["0.42", "0.40", "0.38"], target="0.40", status="green")
    board.values(revenue, JAN, ["5"], entity=board.us)  # another entity: not the default
    board.values(revenue, JAN, ["3000"], grain="quarter")

    response, body = get(api, "kpi-values")
    assert response.status_code == 200
    rows = body["results"]
    assert body["count"] == 6
    assert [(r["kpi"], r["period"]) for r in rows] == [
        ("revenue", "2024-01-01"),
        ("revenue", "2024-02-01"),
        ("revenue", "2024-03-01"),
        ("margin", "2024-01-01"),
        ("margin", "2024-02-01"),
        ("margin", "2024-03-01"),
    ]
    first = rows[0]
    assert (first["scenario"], first["entity"], first["grain"]) == ("actual", "G", "month")
    assert Decimal(first["value"]) == Decimal("1000.5") and Decimal(first["target"]) == Decimal("1100")
    assert Decimal(first["variance"]) == Decimal("-99.5")
    assert (first["status"], first["status_reason"], first["formatted"]) == (
        "red",
        "revenue is red",
        "USD 1,000.5",
    )
    assert rows[3]["formatted"] == "42.0%"
    assert set(first) >= {"inputs", "formula_version", "refresh_run", "partial", "empty_reason"}


def test_kpi_values_filter_by_kpi_grain_entity_period_and_status(api, board):
    revenue = board.kpi("revenue")
    margin = board.kpi("margin")
    board.values(revenue, JAN, ["1", "2", "3"], status="green")
    board.values(margin, JAN, ["4", "5", "6"], status="red")
    board.values(revenue, JAN, ["7", "8"], entity=board.us)
    board.values(revenue, JAN, ["9"], grain="quarter")

    def periods(**params):
        return [
            (r["kpi"], r["period"][:7], r["value"][:1])
            for r in get(api, "kpi-values", **params)[1]["results"]
        ]

    assert periods(kpi="margin", period_from="2024-02") == [
        ("margin", "2024-02", "5"),
        ("margin", "2024-03", "6"),
    ]
    assert periods(kpi="revenue,margin", period_to="2024-01-01") == [  # in KPI order, then period
        ("margin", "2024-01", "4"),
        ("revenue", "2024-01", "1"),
    ]
    assert periods(entity="US") == [("revenue", "2024-01", "7"), ("revenue", "2024-02", "8")]
    assert periods(entity="us inc", grain="month", period_from="2024-02") == [("revenue", "2024-02", "8")]
    assert periods(grain="quarter") == [("revenue", "2024-01", "9")]
    assert periods(status="red", period_to="2024-01") == [("margin", "2024-01", "4")]
    assert periods(scenario="budget") == []


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"grain": "week"}, "grain", '"week" is not a valid choice'),
        ({"period_from": "March"}, "period_from", "write it as YYYY-MM"),
        ({"period_from": "2024-13"}, "period_from", "there is no month 13"),
        ({"period_to": "2024-03-15"}, "period_to", "periods start on the first of a month"),
        ({"period_from": "2024-03", "period_to": "2024-01"}, "period_to", "is before period_from"),
        ({"kpi": "revenue,nope"}, "kpi", "No KPI 'nope'. Known: revenue."),
        ({"scenario": "forecast"}, "scenario", "No scenario 'forecast'. Known:"),
        ({"entity": "Mars"}, "entity", "No entity 'Mars'. Known:"),
        ({"status": "purple"}, "status", '"purple" is not a valid choice'),
        ({"period_from": "0000-01"}, "period_from", "there is no year 0"),
        ({"kpi": " , "}, "kpi", "Give one or more KPI codes"),
        ({"kpis": "revenue"}, "kpis", "Unknown parameter. Known: kpi, grain,"),
        (
            {"period_from": "\u0662\u0660\u0662\u0664-03"},
            "period_from",
            "is not a month",
        ),  # Arabic-Indic digits
        ({"grain": ["month", "year"]}, "grain", "Give this parameter once"),
    ],
)
def test_a_bad_parameter_gets_400_naming_it(api, board, params, field, words):
    board.kpi("revenue")
    response, body = get(api, "kpi-values", **params)
    assert response.status_code == 400
    assert list(body) == [field]
    assert words in body[field][0]


def test_every_bad_parameter_is_named_at_once(api, board):
    response, body = get(api, "kpi-values", grain="week", period_from="2024-13", status="purple")
    assert response.status_code == 400 and set(body) == {"grain", "period_from", "status"}


def test_kpi_codes_may_be_repeated_or_comma_separated(api, board):
    for code in ("a", "b", "c"):
        board.values(board.kpi(code), JAN, ["1"])
    response = api.get(reverse("api:kpi-values") + "?kpi=a&kpi=b,c")
    assert [r["kpi"] for r in response.json()["results"]] == ["a", "b", "c"]


def test_without_an_actual_scenario_the_default_says_so(api, db):
    response, body = get(api, "kpi-values")
    assert response.status_code == 400
    assert body == {"scenario": ["No actual scenario: name one. Known: none yet."]}


def test_an_unknown_path_is_a_json_404(api, board):
    response = api.get("/api/v1/kpi-valuez/")
    assert response.status_code == 404
    assert response.json() == {
        "detail": "No endpoint /api/v1/kpi-valuez/. The endpoints are listed at /api/v1/."
    }


def test_the_token_keyword_works_too(client, board, reader):
    _token, key = issue_token(reader, "scripts")
    assert client.get(reverse("api:kpis"), HTTP_AUTHORIZATION=f"Token {key}").status_code == 200


def test_past_the_rate_a_user_gets_429(api, board, monkeypatch):
    from rest_framework.throttling import UserRateThrottle

    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "2/min"})
    codes = [api.get(reverse("api:kpis")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_pages_of_a_chosen_size(api, board):
    revenue = board.kpi("revenue")
    board.values(revenue, JAN, [str(n) for n in range(1, 6)])
    _response, body = get(api, "kpi-values", page_size=2)
    assert body["count"] == 5 and len(body["results"]) == 2
    assert "page=2" in body["next"] and body["previous"] is None
    _response, last = get(api, "kpi-values", page_size=2, page=3)
    assert [r["value"][:1] for r in last["results"]] == ["5"] and last["next"] is None


# --- definitions, goals, organisation and runs ---------------------------------------------


def test_kpi_definitions_list_and_one_by_code(api, board):
    board.kpi("revenue", department=board.finance, description="Net sales.", sort_order=2)
    board.kpi("on_time", unit="percent", department=board.ops, sort_order=1)
    _response, body = get(api, "kpis")
    assert [(k["code"], k["owner_department"], k["unit"]) for k in body["results"]] == [
        ("on_time", "OPS", "percent"),
        ("revenue", "FIN", "currency"),
    ]
    response = api.get(reverse("api:kpi", args=["revenue"]))
    assert response.json()["description"] == "Net sales." and response.json()["formula"] == "1"
    assert api.get(reverse("api:kpi", args=["nope"])).status_code == 404


def test_goals_list_their_kpis_with_role_and_the_organisation_lists_its_tree(api, board):
    parent = board.goal("G1", department=board.finance)
    child = board.goal("G1.1", parent=parent)
    board.link(child, board.kpi("revenue"), role="outcome")
    board.link(child, board.kpi("on_time"), role="driver")
    _response, goals = get(api, "goals")
    assert [(g["code"], g["parent"], g["department"]) for g in goals["results"]] == [
        ("G1", None, "FIN"),
        ("G1.1", "G1", None),
    ]
    assert [(k["kpi"], k["role"]) for k in goals["results"][1]["kpis"]] == [
        ("on_time", "driver"),
        ("revenue", "outcome"),
    ]
    _response, entities = get(api, "entities")
    assert [(e["code"], e["parent"]) for e in entities["results"]] == [("G", None), ("US", "G")]
    _response, scenarios = get(api, "scenarios")
    assert [s["kind"] for s in scenarios["results"]] == ["actual", "budget"]
    _response, departments = get(api, "departments")
    assert [(d["code"], d["side"]) for d in departments["results"]] == [
        ("FIN", "finance"),
        ("OPS", "operations"),
    ]


def test_refresh_runs_newest_first_and_one_with_its_errors(api, board):
    RefreshRun.objects.create(status=RefreshRun.Status.SUCCEEDED, rows_read=10)
    failed = RefreshRun.objects.create(
        status=RefreshRun.Status.FAILED,
        rows_rejected=1,
        errors=[
            {"source": "ledger", "row": 3, "column": "amount", "value": "12,x", "message": "not a number"}
        ],
    )
    _response, runs = get(api, "refresh-runs")
    assert [(r["id"], r["status"], r["errors"]) for r in runs["results"]][0] == (failed.pk, "failed", 1)
    detail = api.get(reverse("api:refresh-run", args=[failed.pk])).json()
    assert detail["errors"][0]["column"] == "amount" and detail["steps"] == []


# --- queries and schema -------------------------------------------------------------------


def queries_for(client, name: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse(f"api:{name}")).status_code == 200
    return len(queries)


def grow(board: Board, size: int) -> None:
    """``size`` more of everything the lists show, each with the relations a list reads."""
    goal = board.goal(f"G{size}", department=board.finance, parent=Goal.objects.filter(code="G5").first())
    source = DataSource.objects.create(slug=f"s{size}", name=f"S{size}", kind=DataSource.Kind.FILE)
    account = Account.objects.create(
        code=f"A{size}", name=f"A{size}", account_type="revenue", time_behaviour="flow"
    )
    series = OperationalSeries.objects.create(code=f"o{size}", name=f"O{size}")
    for i in range(size):
        kpi = board.kpi(f"k{size}_{i}", department=board.ops)
        board.values(kpi, JAN, ["1", "2"])
        board.link(goal, kpi)
        RefreshRun.objects.create(status=RefreshRun.Status.FAILED, source=source, errors=[{"row": 1}])
        Entity.objects.create(code=f"E{size}_{i}", name=f"E{size} {i}", currency="USD", parent=board.us)
        Department.objects.create(
            code=f"D{size}_{i}", name=f"D{size} {i}", side="finance", parent=board.finance
        )
        measure = Measure.objects.create(
            code=f"m{size}_{i}", name=f"m {i}", kind="account", time_behaviour="flow", scenario=board.budget
        )
        measure.accounts.add(account)
        Measure.objects.create(
            code=f"s{size}_{i}", name=f"s {i}", kind="series_value", series=series, time_behaviour="flow"
        )


@pytest.mark.parametrize(
    "name", ["kpi-values", "kpis", "goals", "measures", "entities", "departments", "refresh-runs"]
)
def test_each_list_makes_the_same_number_of_queries_for_5_or_60_rows(client, board, reader, name):
    client.force_login(reader)
    counts = []
    for size in (5, 60):
        grow(board, size)
        counts.append(queries_for(client, name))
    assert counts[0] == counts[1], f"{name}: {counts[0]} queries with fewer rows, {counts[1]} with more"
    assert counts[0] <= 8


def test_the_openapi_schema_describes_every_endpoint(api, board):
    response = api.get(reverse("api:schema"), {"format": "json"})
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    paths = set(schema["paths"])
    for name in (
        "kpi-values",
        "kpis",
        "measures",
        "goals",
        "entities",
        "departments",
        "scenarios",
        "refresh-runs",
    ):
        assert f"/api/v1/{name}/" in paths
    assert schema["components"]["securitySchemes"]["apiToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (fr_...), made in the admin.",
    }
    parameters = {p["name"] for p in schema["paths"]["/api/v1/kpi-values/"]["get"]["parameters"]}
    assert parameters >= {"kpi", "grain", "scenario", "entity", "period_from", "period_to", "status", "page"}


def test_references_that_may_be_empty_are_nullable_in_the_schema(api, board):
    components = api.get(reverse("api:schema"), {"format": "json"}).json()["components"]["schemas"]
    nullable = {
        (name, field)
        for name, component in components.items()
        for field, spec in component.get("properties", {}).items()
        if spec.get("nullable")
    }
    assert nullable >= {
        ("Entity", "parent"),
        ("Department", "parent"),
        ("Goal", "parent"),
        ("Goal", "department"),
        ("Measure", "series"),
        ("Measure", "department"),
        ("Measure", "scenario"),
        ("RefreshRun", "source"),
        ("KPI", "owner_department"),
    }
    assert ("KPIValue", "kpi") not in nullable


def test_the_root_lists_the_endpoints(api):
    body = api.get(reverse("api:root")).json()
    assert body["kpi-values"].endswith("/api/v1/kpi-values/") and body["schema"].endswith("/api/v1/schema/")


# --- making tokens ------------------------------------------------------------------------------


def test_the_admin_shows_a_new_key_once_and_stores_its_digest(client):
    analyst = factories.analyst_user()
    analyst.is_staff = True
    analyst.save()
    someone = factories.leadership_user()
    client.force_login(analyst)
    response = client.post(
        reverse("admin:finops_apitoken_add"),
        {"name": "Excel", "user": someone.pk, "expires_at_0": "", "expires_at_1": ""},
    )
    assert response.status_code == 200, response.content[:500]
    token = ApiToken.objects.get()
    assert token.user == analyst  # not a superuser: a token for themselves only
    body = response.content.decode()
    key = body.split('id="api-key"', 1)[1].split('value="', 1)[1].split('"', 1)[0]
    assert key.startswith(token.prefix) and hashlib.sha256(key.encode()).hexdigest() == token.digest
    assert "Copy this key now" in body and "no-store" in response["Cache-Control"]
    assert key not in client.get(reverse("admin:finops_apitoken_changelist")).content.decode()
    assert key not in client.get(reverse("admin:finops_apitoken_change", args=[token.pk])).content.decode()
    theirs, _ = issue_token(someone, "theirs")
    assert (
        client.get(reverse("admin:finops_apitoken_change", args=[theirs.pk])).status_code == 302
    )  # not found


@pytest.mark.parametrize("group", [LEADERSHIP, FINANCE, OPERATIONS])
def test_leaders_and_department_members_make_their_own_tokens_in_the_admin(client, group):
    member = factories.user_in(group, "member", is_staff=True)
    client.force_login(member)
    response = client.post(reverse("admin:finops_apitoken_add"), {"name": "Tableau"})
    assert response.status_code == 200 and "Copy this key now" in response.content.decode()
    assert ApiToken.objects.get().user == member


def test_the_schema_needs_a_key_too(client, db):
    assert client.get(reverse("api:schema")).status_code == 401


def test_a_superuser_makes_a_token_for_another_user(client, reader):
    admin_user = User.objects.create_superuser("root", password="pw")
    client.force_login(admin_user)
    response = client.post(reverse("admin:finops_apitoken_add"), {"name": "for the CEO", "user": reader.pk})
    assert response.status_code == 200 and ApiToken.objects.get().user == reader


def test_a_user_cannot_extend_their_token_or_make_one_already_expired(client):
    member = factories.user_in(LEADERSHIP, "member", is_staff=True)
    until = timezone.now() + timedelta(days=30)
    token, _key = issue_token(member, "given", expires_at=until)
    client.force_login(member)
    change = reverse("admin:finops_apitoken_change", args=[token.pk])
    client.post(change, {"name": "given", "expires_at_0": "", "expires_at_1": ""})
    token.refresh_from_db()
    assert token.expires_at == until
    response = client.post(
        reverse("admin:finops_apitoken_add"),
        {"name": "old", "expires_at_0": "2020-01-01", "expires_at_1": "00:00:00"},
    )
    assert "The expiry is already past" in response.content.decode()
    assert ApiToken.objects.count() == 1


def test_the_command_prints_a_key_that_signs_in(client, board, reader):
    out, err = io.StringIO(), io.StringIO()
    call_command("api_token", reader.username, name="nightly export", days=30, stdout=out, stderr=err)
    key = out.getvalue().strip()
    assert "copy the key" in err.getvalue()
    assert client.get(reverse("api:kpis"), HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200
    assert ApiToken.objects.get().expires_at > timezone.now() + timedelta(days=29)
