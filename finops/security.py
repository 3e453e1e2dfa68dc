"""Start-up checks that refuse an unsafe production configuration."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

DEVELOPMENT_SECRET_KEY = "dev-only-insecure-key-never-use-in-production"  # noqa: S105
MIN_SECRET_KEY_LENGTH = 50
MIN_SECRET_KEY_UNIQUE_CHARS = 5


def check_production_settings(*, debug: bool, secret_key: str, allowed_hosts: list[str]) -> None:
    """Raise ImproperlyConfigured, naming every problem, if production settings are unsafe."""
    problems = []
    if debug:
        problems.append("DEBUG is on (set DEBUG=false)")
    if not secret_key or secret_key == DEVELOPMENT_SECRET_KEY or secret_key.startswith("django-insecure"):
        problems.append("SECRET_KEY is missing or a known default")
    elif len(secret_key) < MIN_SECRET_KEY_LENGTH or len(set(secret_key)) < MIN_SECRET_KEY_UNIQUE_CHARS:
        problems.append(
            f"SECRET_KEY is too short or too simple (at least {MIN_SECRET_KEY_LENGTH} characters, "
            f"{MIN_SECRET_KEY_UNIQUE_CHARS} distinct)"
        )
    if not allowed_hosts:
        problems.append("ALLOWED_HOSTS is empty (a comma-separated list of host names)")
    if problems:
        raise ImproperlyConfigured("Refusing to start in production: " + "; ".join(problems) + ".")
