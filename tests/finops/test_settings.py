"""Production settings, checked the way a deployment starts: `manage.py check` in a subprocess
with only environment variables to configure it."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from finops.security import DEVELOPMENT_SECRET_KEY

ROOT = Path(__file__).resolve().parents[2]

# Everything that configures the app is cleared, so the machine's environment cannot leak in.
CONFIG_VARS = (
    "DJANGO_SETTINGS_MODULE",
    "FINOPS_ENV",
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "DATABASE_URL",
    "REDIS_URL",
    "STATIC_ROOT",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "BEHIND_TLS_PROXY",
)


def strong_key() -> str:
    return secrets.token_urlsafe(64)


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    """Run manage.py with production settings plus ``env``, and nothing from this machine."""
    clean = {name: value for name, value in os.environ.items() if name not in CONFIG_VARS}
    clean.update({"FINOPS_ENV": "production", "DATABASE_URL": "sqlite:///:memory:", **env})
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_deploy_is_clean_with_production_settings():
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SECRET_KEY=strong_key(),
        ALLOWED_HOSTS="finops.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNINGS" not in result.stdout + result.stderr


def test_production_turns_on_https_only_behaviour():
    code = (
        "from django.conf import settings as s; "
        "print(s.DEBUG, s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
        "s.SECURE_HSTS_SECONDS > 0)"
    )
    result = manage("shell", "-c", code, SECRET_KEY=strong_key(), ALLOWED_HOSTS="finops.example.com")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split() == ["False", "True", "True", "True", "True"]


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"ALLOWED_HOSTS": "finops.example.com"}, "SECRET_KEY is missing or a known default"),
        (
            {"SECRET_KEY": DEVELOPMENT_SECRET_KEY, "ALLOWED_HOSTS": "finops.example.com"},
            "SECRET_KEY is missing or a known default",
        ),
        (
            {"SECRET_KEY": "django-insecure-" + strong_key(), "ALLOWED_HOSTS": "finops.example.com"},
            "SECRET_KEY is missing or a known default",
        ),
        (
            {"SECRET_KEY": "s3cr3t-but-short", "ALLOWED_HOSTS": "finops.example.com"},
            "SECRET_KEY is too short or too simple",
        ),
        ({"SECRET_KEY": "ab" * 40, "ALLOWED_HOSTS": "finops.example.com"}, "too short or too simple"),
        (
            {"SECRET_KEY": strong_key(), "ALLOWED_HOSTS": "finops.example.com", "DEBUG": "true"},
            "DEBUG is on",
        ),
        ({"SECRET_KEY": strong_key(), "ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS is empty"),
        ({"SECRET_KEY": strong_key(), "ALLOWED_HOSTS": " , "}, "ALLOWED_HOSTS is empty"),
    ],
    ids=[
        "no-key",
        "development-key",
        "django-insecure-key",
        "short-key",
        "simple-key",
        "debug-on",
        "no-hosts",
        "blank-hosts",
    ],
)
def test_it_refuses_to_start_with_unsafe_production_settings(env, problem):
    result = manage("check", **env)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "Refusing to start in production" in last_line
    assert problem in last_line


def test_it_names_every_problem_at_once():
    result = manage("check", SECRET_KEY="short", ALLOWED_HOSTS="", DEBUG="true")
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "DEBUG is on" in last_line
    assert "SECRET_KEY is too short" in last_line
    assert "ALLOWED_HOSTS is empty" in last_line


def test_it_refuses_an_unknown_environment_name():
    result = manage("check", FINOPS_ENV="prod")
    assert result.returncode != 0
    assert "FINOPS_ENV='prod'" in result.stderr


def test_development_needs_no_configuration():
    result = manage("check", FINOPS_ENV="development")
    assert result.returncode == 0, result.stderr
