"""Login for every page, including the panels that htmx fetches into a page. The REST API
(``/api/``) signs its requests in itself (a token or the session) and answers 401 in JSON."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.contrib.auth import middleware as auth
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import resolve_url

API_PREFIX = "/api/"


class LoginRequiredMiddleware(auth.LoginRequiredMiddleware):
    """Django's, but a request htmx makes from a page whose session has ended (the Data page
    polling a refresh, a filter swapping a scorecard) sends the whole page to the login form
    and back to that page afterwards, instead of swapping the login form into a panel; and the
    API's own authentication answers for ``/api/``."""

    def process_view(self, request: HttpRequest, view_func, view_args, view_kwargs):
        if request.path_info.startswith(API_PREFIX):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)

    def handle_no_permission(self, request: HttpRequest, view_func) -> HttpResponse:
        if request.headers.get("HX-Request") != "true":
            return super().handle_no_permission(request, view_func)
        page = urlsplit(request.headers.get("HX-Current-URL", ""))
        same_site = page.netloc in ("", request.get_host())
        back_to = (page.path + (f"?{page.query}" if page.query else "")) if same_site and page.path else "/"
        login = redirect_to_login(back_to, resolve_url(self.get_login_url(view_func)))
        response = HttpResponse(status=200)
        response["HX-Redirect"] = login.url
        return response
