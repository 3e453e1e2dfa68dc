"""API tokens: how a BI tool or a script signs in to the REST API.

A request sends ``Authorization: Bearer <key>``. Keys are random (256 bits) and start with
``fr_`` so that a leaked one is easy to recognise; only their SHA-256 digest is stored
(``finops.models.ApiToken``), so the database never holds a usable key. A browser session works
as well, so a signed-in user can open the API's JSON in a tab.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from finops.models import ApiToken

KEY_PREFIX = "fr_"
SHOWN_CHARS = 8  # of the key, kept to tell tokens apart in the admin
LAST_USED_EVERY = timedelta(minutes=5)  # last_used_at is written at most this often


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def issue_token(user: AbstractBaseUser, name: str, *, expires_at=None) -> tuple[ApiToken, str]:
    """A new token for ``user``: the stored row and the key, which is not stored and can't be
    shown again."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=key[: len(KEY_PREFIX) + SHOWN_CHARS],
        digest=digest(key),
        expires_at=expires_at,
    )
    return token, key


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <key>`` (DRF's ``Token <key>`` keyword is accepted too)."""

    keywords = ("bearer", "token")

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode(errors="replace").lower() not in self.keywords:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Send the header as 'Authorization: Bearer <key>'.")
        try:
            key = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("The API key holds characters a key never has.") from None
        token = ApiToken.objects.select_related("user").filter(digest=digest(key)).first()
        now = timezone.now()
        if token is None:
            raise exceptions.AuthenticationFailed("Unknown or revoked API key.")
        if token.expires_at is not None and token.expires_at <= now:
            raise exceptions.AuthenticationFailed(
                f"This API key expired on {token.expires_at:%Y-%m-%d %H:%M %Z}."
            )
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("The user of this API key is deactivated.")
        if token.last_used_at is None or now - token.last_used_at >= LAST_USED_EVERY:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI schema describes the token: an HTTP bearer scheme."""

    target_class = BearerTokenAuthentication
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token (fr_...), made in the admin.",
        }
