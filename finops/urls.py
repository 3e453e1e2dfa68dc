from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from alignment import views as alignment_views
from finops import views
from kpis import views as kpi_views

admin.site.site_header = "FinOps Review administration"
admin.site.site_title = "FinOps Review"
admin.site.index_title = "Define data sources, accounts, KPIs and targets"

urlpatterns = [
    path("", views.home, name="home"),
    path("health/", views.health, name="health"),
    path("overview/", alignment_views.overview_page, name="overview"),
    path("scorecard/", alignment_views.scorecard_page, name="scorecard"),
    path("departments/", alignment_views.departments_page, name="departments"),
    path("departments/<str:code>/", alignment_views.department_page, name="department"),
    path("alignment/map/", alignment_views.alignment_map_page, name="alignment-map"),
    path("alignment/gaps/", alignment_views.alignment_gaps_page, name="alignment-gaps"),
    path("kpis/<slug:code>/", kpi_views.kpi_detail, name="kpi-detail"),
    path("kpis/<slug:code>/facts/", kpi_views.kpi_facts, name="kpi-facts"),
    path("data/", views.data_page, name="data"),
    path("data/refresh/", views.refresh_now, name="refresh-now"),
    path("data/progress/", views.refresh_progress, name="refresh-progress"),
    path("data/runs/<int:run_id>/", views.run_detail, name="run-detail"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("finops.api_urls", namespace="api")),
]
