"""``/api/v1/``: the versioned REST API (docs/api.md). Each layer's endpoints live in its own
app's ``api`` module; this file only routes them."""

from __future__ import annotations

from django.urls import path, re_path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework.decorators import api_view
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse

from alignment import api as alignment_api
from finops import api as finops_api
from kpis import api as kpis_api

ENDPOINTS = (
    "kpi-values",
    "kpis",
    "measures",
    "goals",
    "entities",
    "departments",
    "scenarios",
    "refresh-runs",
    "schema",
)


@extend_schema(responses={200: OpenApiTypes.OBJECT})
@api_view(["GET"])
def root(request: Request) -> Response:
    """The API's endpoints, and the OpenAPI schema that describes them."""
    return Response({name: reverse(f"api:{name}", request=request) for name in ENDPOINTS})


@extend_schema(exclude=True)
@api_view(["GET"])
def not_found(request: Request, path: str) -> Response:
    """Any other path under /api/v1/: a 404 in JSON, as a client expects."""
    raise NotFound(f"No endpoint /api/v1/{path}. The endpoints are listed at /api/v1/.")


app_name = "api"
urlpatterns = [
    path("", root, name="root"),
    path("kpi-values/", kpis_api.KPIValueList.as_view(), name="kpi-values"),
    path("kpis/", kpis_api.KPIList.as_view(), name="kpis"),
    path("kpis/<slug:code>/", kpis_api.KPIDetail.as_view(), name="kpi"),
    path("measures/", kpis_api.MeasureList.as_view(), name="measures"),
    path("goals/", alignment_api.GoalList.as_view(), name="goals"),
    path("entities/", finops_api.EntityList.as_view(), name="entities"),
    path("departments/", finops_api.DepartmentList.as_view(), name="departments"),
    path("scenarios/", finops_api.ScenarioList.as_view(), name="scenarios"),
    path("refresh-runs/", finops_api.RefreshRunList.as_view(), name="refresh-runs"),
    path("refresh-runs/<int:pk>/", finops_api.RefreshRunDetail.as_view(), name="refresh-run"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    re_path(r"^(?P<path>.+)$", not_found),
]
