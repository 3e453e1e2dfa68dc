import secrets

import pytest
from django.core.exceptions import ImproperlyConfigured

from finops.security import DEVELOPMENT_SECRET_KEY, MIN_SECRET_KEY_LENGTH, check_production_settings

STRONG = secrets.token_urlsafe(64)
HOSTS = ["finops.example.com"]


def test_it_accepts_a_safe_configuration():
    check_production_settings(debug=False, secret_key=STRONG, allowed_hosts=HOSTS)


def test_it_accepts_a_key_of_exactly_the_minimum_length():
    check_production_settings(debug=False, secret_key=STRONG[:MIN_SECRET_KEY_LENGTH], allowed_hosts=HOSTS)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"debug": True}, "DEBUG is on"),
        ({"secret_key": ""}, "SECRET_KEY is missing or a known default"),
        ({"secret_key": DEVELOPMENT_SECRET_KEY}, "SECRET_KEY is missing or a known default"),
        ({"secret_key": "django-insecure-" + STRONG}, "SECRET_KEY is missing or a known default"),
        ({"secret_key": STRONG[: MIN_SECRET_KEY_LENGTH - 1]}, "SECRET_KEY is too short or too simple"),
        ({"secret_key": "abcd" * 20}, "SECRET_KEY is too short or too simple"),
        ({"allowed_hosts": []}, "ALLOWED_HOSTS is empty"),
    ],
)
def test_it_refuses_an_unsafe_setting(kwargs, problem):
    settings = {"debug": False, "secret_key": STRONG, "allowed_hosts": HOSTS, **kwargs}
    with pytest.raises(ImproperlyConfigured, match="Refusing to start in production") as refused:
        check_production_settings(**settings)
    assert problem in str(refused.value)


def test_it_reports_every_problem_in_one_message():
    with pytest.raises(ImproperlyConfigured) as refused:
        check_production_settings(debug=True, secret_key="", allowed_hosts=[])
    message = str(refused.value)
    assert "DEBUG is on" in message
    assert "SECRET_KEY is missing" in message
    assert "ALLOWED_HOSTS is empty" in message


def test_the_refusal_never_shows_the_key():
    key = "k" * 10 + "ey-that-is-too-short"
    with pytest.raises(ImproperlyConfigured) as refused:
        check_production_settings(debug=False, secret_key=key, allowed_hosts=HOSTS)
    assert key not in str(refused.value)
