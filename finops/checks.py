"""System checks for the project's own setup (registered in FinopsConfig.ready)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.checks import Warning

# Static path -> npm package that provides it (versions pinned in package-lock.json).
VENDOR_FILES = {
    "vendor/plotly/plotly-basic.min.js": "plotly.js-basic-dist-min",
    "vendor/htmx/htmx.min.js": "htmx.org",
}


def vendor_files_missing() -> list[str]:
    """Vendor files that neither a static finder nor STATIC_ROOT (collectstatic) provides."""
    static_root = Path(settings.STATIC_ROOT) if settings.STATIC_ROOT else None
    return [
        name
        for name in VENDOR_FILES
        if not finders.find(name) and not (static_root and (static_root / name).is_file())
    ]


def check_vendor_assets(app_configs=None, **kwargs):
    missing = vendor_files_missing()
    if not missing:
        return []
    packages = ", ".join(VENDOR_FILES[name] for name in missing)
    return [
        Warning(
            f"Front-end files not found: {', '.join(missing)} (npm packages: {packages}). "
            "Pages will load without charts or HTMX.",
            hint="Run `npm ci` in the project folder (or `make install`): it installs the versions "
            "pinned in package-lock.json into node_modules/, which settings.STATICFILES_DIRS serves "
            "as static/vendor/. Restart the server afterwards.",
            id="finops.W001",
        )
    ]
