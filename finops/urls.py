from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from finops import views

admin.site.site_header = "FinOps Review administration"
admin.site.site_title = "FinOps Review"
admin.site.index_title = "Define data sources, accounts, KPIs and targets"

urlpatterns = [
    path("", views.home, name="home"),
    path("data/", views.data_page, name="data"),
    path("data/refresh/", views.refresh_now, name="refresh-now"),
    path("data/runs/<int:run_id>/", views.run_detail, name="run-detail"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
