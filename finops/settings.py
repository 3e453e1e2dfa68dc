"""Settings for FinOps Review, read only from environment variables.

Development defaults are safe and need nothing installed: SQLite and in-process task
execution. Set DATABASE_URL for PostgreSQL and REDIS_URL for a real Celery broker.
FINOPS_ENV=production turns on the production checks (see finops/security.py).
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url

from finops.env import envbool, envint, envlist, envstr
from finops.security import DEVELOPMENT_SECRET_KEY, check_production_settings

BASE_DIR = Path(__file__).resolve().parent.parent

FINOPS_ENV = envstr("FINOPS_ENV", "development")
if FINOPS_ENV not in {"development", "production", "test"}:
    raise ValueError(f"FINOPS_ENV={FINOPS_ENV!r}: use development, production or test")
PRODUCTION = FINOPS_ENV == "production"

DEBUG = envbool("DEBUG", default=FINOPS_ENV == "development")
SECRET_KEY = envstr("SECRET_KEY", "" if PRODUCTION else DEVELOPMENT_SECRET_KEY)
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "" if PRODUCTION else "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")

if PRODUCTION:
    check_production_settings(debug=DEBUG, secret_key=SECRET_KEY, allowed_hosts=ALLOWED_HOSTS)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_celery_beat",
    "rest_framework",
    "drf_spectacular",
    "finops",
    "kpis",
    "alignment",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Pages are compressed (a scorecard's 38 KB of HTML to a few KB). Django pads the gzip
    # header with random bytes and masks the CSRF token per response against BREACH.
    "django.middleware.gzip.GZipMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # Number formats (separators) follow the browser's language among LANGUAGES; the words
    # of the interface are English.
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every page requires a login unless its view is marked @login_not_required.
    "finops.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "finops.urls"
WSGI_APPLICATION = "finops.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "finops.context_processors.refresh_state",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        envstr("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", 60 if PRODUCTION else 0),
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if FINOPS_ENV == "test":
    # A fast hasher keeps the suite quick; never used outside tests.
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = envstr("LANGUAGE_CODE", "en-us")
LANGUAGES = [
    ("en-us", "English (US)"),
    ("en-gb", "English (UK)"),
    ("de", "German"),
    ("fr", "French"),
    ("es", "Spanish"),
    ("it", "Italian"),
    ("nl", "Dutch"),
]
TIME_ZONE = envstr("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
USE_THOUSAND_SEPARATOR = True

STATIC_URL = "static/"
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
# Front-end libraries come from npm (package.json, package-lock.json; `npm ci`, which
# `make install` and the Dockerfile run) and are served as static/vendor/<name>/...; nothing
# third-party is committed or loaded from a CDN. A folder is only added when it is there, so
# manage.py works without node_modules; the finops.W001 check names what is missing.
NODE_MODULES = BASE_DIR / "node_modules"
VENDOR_STATIC_DIRS = {
    "vendor/plotly": NODE_MODULES / "plotly.js-basic-dist-min",
    "vendor/htmx": NODE_MODULES / "htmx.org" / "dist",
}
STATICFILES_DIRS = [BASE_DIR / "static"] + [
    (prefix, path) for prefix, path in VENDOR_STATIC_DIRS.items() if path.is_dir()
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Outside production WhiteNoise serves straight from the app folders (no collectstatic).
WHITENOISE_USE_FINDERS = not PRODUCTION
WHITENOISE_AUTOREFRESH = not PRODUCTION
MEDIA_ROOT = Path(envstr("MEDIA_ROOT", str(BASE_DIR / "media")))

# File data sources (finops/sources/files.py, docs/data-sources.md). A source that reads a
# file from disk may only name a path inside FINOPS_SOURCE_FILES_DIR; uploads are stored under
# MEDIA_ROOT/sources/. Files larger than FINOPS_SOURCE_FILE_MAX_BYTES are refused, and so is an
# XLSX whose parts would inflate past FINOPS_SOURCE_XLSX_MAX_UNCOMPRESSED_BYTES (a zip bomb).
FINOPS_SOURCE_FILES_DIR = Path(envstr("FINOPS_SOURCE_FILES_DIR", str(BASE_DIR / "var" / "sources")))
FINOPS_SOURCE_FILE_MAX_BYTES = envint("FINOPS_SOURCE_FILE_MAX_BYTES", 200 * 1024 * 1024)
FINOPS_SOURCE_XLSX_MAX_UNCOMPRESSED_BYTES = envint("FINOPS_SOURCE_XLSX_MAX_UNCOMPRESSED_BYTES", 1024**3)
# The Data page flags an active source as stale when its last successful load is older than
# this: a night's refresh missed, with a margin.
FINOPS_STALE_AFTER_HOURS = envint("FINOPS_STALE_AFTER_HOURS", 36)

# After each recompute, check the engine's summary of the stored measure values against the
# values themselves (a scan of them all): the test suite turns it on.
FINOPS_ENGINE_SELF_CHECK = envbool("FINOPS_ENGINE_SELF_CHECK", False)
# A refresh of several sources pulls its SQL and HTTP sources ahead of their loads on this many
# threads, into spool files (finops/sources/pull.py); 0 pulls each source only as it loads.
FINOPS_PULL_THREADS = envint("FINOPS_PULL_THREADS", 4)

# Periods: the base grain is the calendar month; quarters and years follow the fiscal
# year, which starts in this month (1 = January, 7 = July).
FISCAL_YEAR_START_MONTH = envint("FISCAL_YEAR_START_MONTH", 1)
if not 1 <= FISCAL_YEAR_START_MONTH <= 12:
    raise ValueError(f"FISCAL_YEAR_START_MONTH={FISCAL_YEAR_START_MONTH}: use 1 to 12")

# Amounts in other currencies are translated into this one when entities roll up.
GROUP_CURRENCY = envstr("GROUP_CURRENCY", "USD")

# Celery: Redis is the broker when REDIS_URL is set; without it tasks run in-process.
REDIS_URL = envstr("REDIS_URL")
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = REDIS_URL or None
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TIMEZONE = TIME_ZONE
# One queue name per deployment (or per integration-test run sharing a Redis).
CELERY_TASK_DEFAULT_QUEUE = envstr("CELERY_QUEUE", "celery")
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_TIME_LIMIT = envint("CELERY_TASK_TIME_LIMIT", 3600)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 60

CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    if REDIS_URL and FINOPS_ENV != "test"
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}

# Security headers; production turns on HTTPS-only behaviour (check --deploy is clean).
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    if envbool("BEHIND_TLS_PROXY", default=False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# The REST API under /api/v1/ (docs/api.md): read-only JSON for BI tools and scripts, signed in
# with an API token (finops/api_auth.py) or a browser session; every request counts against
# FINOPS_API_RATE per user.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "finops.api_auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"user": envstr("FINOPS_API_RATE", "1200/min")},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "FinOps Review API",
    "DESCRIPTION": "Read-only access to the stored KPI values, their definitions, the goals they "
    "measure, the organisation and the refresh runs: the numbers the pages show.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "KPIValueStatusEnum": "kpis.models.KPIValue.Status",
        "RefreshRunStatusEnum": "finops.models.RefreshRun.Status",
    },
}

# Where the AdventureWorksDW sample lives on a developer's machine (tests skip without it).
FINOPS_SHARED_DATA = Path(envstr("FINOPS_SHARED_DATA", str(BASE_DIR.parent / "shared" / "data")))
