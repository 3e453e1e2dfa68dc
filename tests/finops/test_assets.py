"""Front-end libraries: installed from npm (package-lock.json) into node_modules, served as
static/vendor/..., checked at start-up, loaded by base.html, and collected with gzip variants."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import AnonymousUser
from django.contrib.staticfiles import finders
from django.template import engines
from django.test import RequestFactory
from django.urls import reverse

from finops.checks import VENDOR_FILES, check_vendor_assets
from tests import factories

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "node_modules"
PLOTLY = NODE_MODULES / "plotly.js-basic-dist-min" / "plotly-basic.min.js"
HTMX = NODE_MODULES / "htmx.org" / "dist" / "htmx.min.js"
CHARTS_JS = ROOT / "static" / "js" / "charts.js"
PLOTLY_GZIP_BUDGET = 500_000  # bytes: the one shared Plotly bundle, gzipped

needs_node_modules = pytest.mark.skipif(
    not (PLOTLY.is_file() and HTMX.is_file()),
    reason="front-end libraries not installed: run `npm ci` (or `make install`) to create node_modules/",
)


def gzipped_size(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=9))


def lock_version(package: str) -> str:
    lock = json.loads((ROOT / "package-lock.json").read_text())
    return lock["packages"][f"node_modules/{package}"]["version"]


def test_package_json_pins_exact_versions_that_the_lock_file_records():
    dependencies = json.loads((ROOT / "package.json").read_text())["dependencies"]
    assert dependencies == {"htmx.org": "2.0.11", "plotly.js-basic-dist-min": "4.1.1"}
    for package, version in dependencies.items():
        assert lock_version(package) == version


@needs_node_modules
def test_the_installed_libraries_are_the_pinned_versions():
    for package in ("htmx.org", "plotly.js-basic-dist-min"):
        installed = json.loads((NODE_MODULES / package / "package.json").read_text())["version"]
        assert installed == lock_version(package)
    assert b"plotly.js (basic - minified) v4.1.1" in PLOTLY.read_bytes()[:200]


@needs_node_modules
def test_the_vendor_files_are_found_under_their_static_names():
    assert Path(finders.find("vendor/plotly/plotly-basic.min.js")) == PLOTLY
    assert Path(finders.find("vendor/htmx/htmx.min.js")) == HTMX


@needs_node_modules
def test_the_plotly_bundle_is_within_the_gzip_budget():
    size = gzipped_size(PLOTLY)
    assert size <= PLOTLY_GZIP_BUDGET, f"plotly-basic.min.js is {size} bytes gzipped (budget 500000)"


def fake_vendor_tree(root: Path) -> list[tuple[str, Path]]:
    """STATICFILES_DIRS entries holding empty stand-ins for every vendor file."""
    dirs = []
    for name in VENDOR_FILES:
        prefix, filename = name.rsplit("/", 1)
        folder = root / prefix.replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / filename).write_text("/* stand-in */")
        dirs.append((prefix, folder))
    return dirs


def test_the_system_check_warns_and_names_npm_ci_when_the_vendor_files_are_missing(settings, tmp_path):
    settings.STATICFILES_DIRS = [ROOT / "static"]
    settings.STATIC_ROOT = tmp_path / "not-collected"
    [warning] = check_vendor_assets()
    assert warning.id == "finops.W001"
    assert "vendor/plotly/plotly-basic.min.js" in warning.msg
    assert "vendor/htmx/htmx.min.js" in warning.msg
    assert "npm ci" in warning.hint


def test_the_system_check_names_only_what_is_missing(settings, tmp_path):
    plotly_only = [entry for entry in fake_vendor_tree(tmp_path) if entry[0] == "vendor/plotly"]
    settings.STATICFILES_DIRS = [ROOT / "static", *plotly_only]
    settings.STATIC_ROOT = tmp_path / "not-collected"
    [warning] = check_vendor_assets()
    assert "vendor/htmx/htmx.min.js" in warning.msg
    assert "plotly-basic" not in warning.msg


def test_the_system_check_is_silent_when_the_vendor_files_are_there(settings, tmp_path):
    settings.STATICFILES_DIRS = [ROOT / "static", *fake_vendor_tree(tmp_path / "npm")]
    settings.STATIC_ROOT = tmp_path / "not-collected"
    assert check_vendor_assets() == []


def test_the_system_check_accepts_collected_files_without_node_modules(settings, tmp_path):
    settings.STATICFILES_DIRS = [ROOT / "static"]
    settings.STATIC_ROOT = tmp_path / "staticfiles"
    for name in VENDOR_FILES:
        (settings.STATIC_ROOT / name).parent.mkdir(parents=True, exist_ok=True)
        (settings.STATIC_ROOT / name).write_text("/* collected */")
    assert check_vendor_assets() == []


@needs_node_modules
def test_the_system_check_is_silent_with_the_real_installation():
    assert check_vendor_assets() == []


@pytest.mark.django_db
def test_every_page_loads_htmx_and_sends_the_csrf_token_with_htmx_requests(client):
    client.force_login(factories.leadership_user())
    response = client.get(reverse("data"))
    assert response.status_code == 200
    body = response.content.decode()
    assert '<script src="/static/vendor/htmx/htmx.min.js" defer></script>' in body
    token = response.context["csrf_token"]
    assert f"""<body hx-headers='{{"X-CSRFToken": "{token}"}}'>""" in body
    assert "plotly" not in body  # only pages with charts load the Plotly bundle


@pytest.mark.django_db
@needs_node_modules
def test_the_vendor_files_are_served(client):
    client.force_login(factories.leadership_user())
    for url in ("/static/vendor/htmx/htmx.min.js", "/static/vendor/plotly/plotly-basic.min.js"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert "javascript" in response["Content-Type"]
        response.close()


def test_pages_with_charts_add_their_scripts_at_the_end_of_the_body():
    template = engines["django"].from_string(
        "{% extends 'base.html' %}{% load static %}{% block scripts %}"
        "<script src=\"{% static 'vendor/plotly/plotly-basic.min.js' %}\" defer></script>"
        "<script src=\"{% static 'js/charts.js' %}\" defer></script>{% endblock %}"
    )
    request = RequestFactory().get("/")
    request.user = AnonymousUser()
    body = template.render({}, request)
    plotly = body.index('<script src="/static/vendor/plotly/plotly-basic.min.js" defer></script>')
    charts = body.index('<script src="/static/js/charts.js" defer></script>')
    assert body.index("</main>") < plotly < charts < body.index("</body>")
    assert body.index("vendor/htmx/htmx.min.js") < body.index("</head>")


# charts.js, run by Node against a minimal stand-in for the DOM and Plotly.
CHARTS_HARNESS = r"""
const fs = require("fs");
const vm = require("vm");
const [script, scenario] = [process.argv[2], JSON.parse(process.argv[3])];
const listeners = {};
const calls = [];
function chart(id) {
  return {
    children: ["old markup"],
    get firstChild() { return this.children[0]; },
    removeChild(c) { this.children.splice(this.children.indexOf(c), 1); },
    attributes: { "data-figure-id": id },
    getAttribute(name) { return name in this.attributes ? this.attributes[name] : null; },
    hasAttribute(name) { return name in this.attributes; },
    setAttribute(name, value) { this.attributes[name] = String(value); },
  };
}
const charts = scenario.charts.map(chart);
const document = {
  readyState: "interactive",
  querySelectorAll: () => charts,
  getElementById: (id) => (id in scenario.json ? { textContent: scenario.json[id] } : null),
  addEventListener: (name, fn) => { (listeners[name] = listeners[name] || []).push(fn); },
};
const errors = [];
const window = {};
if (scenario.plotly) {
  window.Plotly = {
    newPlot(el, data, layout, config) {
      const id = el.getAttribute("data-figure-id");
      calls.push({ id, data, layout, config, children: el.children.length });
      el._fullLayout = layout;
      return Promise.resolve(el);
    },
  };
}
const context = { window, document, console: { error: (...a) => errors.push(a.join(" ")) } };
vm.runInNewContext(fs.readFileSync(script, "utf8"), context);
const afterFirstLoad = calls.length;
for (const fn of listeners["htmx:afterSettle"] || []) fn({});
const marked = charts
  .filter((c) => c.hasAttribute("data-chart-error"))
  .map((c) => c.getAttribute("data-figure-id"));
console.log(JSON.stringify({ calls, afterFirstLoad, errors, marked, events: Object.keys(listeners).sort() }));
"""


def run_charts_js(tmp_path: Path, **scenario) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: charts.js is exercised with node")
    harness = tmp_path / "harness.js"
    harness.write_text(CHARTS_HARNESS)
    scenario = {"charts": [], "json": {}, "plotly": True, **scenario}
    result = subprocess.run(
        [node, str(harness), str(CHARTS_JS), json.dumps(scenario)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_charts_js_does_nothing_and_does_not_throw_without_charts(tmp_path):
    for plotly in (True, False):
        outcome = run_charts_js(tmp_path, plotly=plotly)
        assert outcome["calls"] == [] and outcome["errors"] == []
        assert outcome["events"] == ["htmx:afterSettle", "htmx:historyRestore"]


def test_charts_js_draws_each_figure_once_with_the_product_config(tmp_path):
    figure = {"data": [{"type": "scatter", "y": [1, 2]}], "layout": {"title": {"text": "Revenue"}}}
    outcome = run_charts_js(
        tmp_path,
        charts=["fig-a", "fig-b"],
        # fig-a as fig.to_json() written out directly, fig-b as json_script(fig.to_json()).
        json={"fig-a": json.dumps(figure), "fig-b": json.dumps(json.dumps(figure))},
    )
    assert outcome["afterFirstLoad"] == 2  # drawn on load; the HTMX settle skips live charts
    assert [call["id"] for call in outcome["calls"]] == ["fig-a", "fig-b"]
    for call in outcome["calls"]:
        assert call["data"] == figure["data"] and call["layout"] == figure["layout"]
        assert call["config"] == {"displaylogo": False, "responsive": True}
        assert call["children"] == 0  # stale markup (HTMX history copy) cleared first
    assert outcome["errors"] == []


def test_charts_js_reports_a_broken_chart_and_draws_the_others(tmp_path):
    outcome = run_charts_js(tmp_path, charts=["missing", "bad", "ok"], json={"bad": "{", "ok": "{}"})
    assert [call["id"] for call in outcome["calls"]] == ["ok"]
    assert outcome["marked"] == ["missing", "bad"]
    assert len(outcome["errors"]) == 2  # once each, not again after the HTMX settle


def test_charts_js_reports_missing_plotly_instead_of_throwing(tmp_path):
    outcome = run_charts_js(tmp_path, charts=["fig"], json={"fig": "{}"}, plotly=False)
    assert outcome["calls"] == []
    assert "Plotly is not loaded" in outcome["errors"][0]


@needs_node_modules
def test_production_collectstatic_hashes_and_gzips_the_vendor_files(tmp_path):
    """What the Dockerfile runs: WhiteNoise's compressed manifest storage over node_modules."""
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE", "DEBUG"}}
    env.update(
        FINOPS_ENV="production",
        SECRET_KEY="test-only-collectstatic-key-0123456789-abcdefghijklmnopqrstuvwxyz",
        ALLOWED_HOSTS="build",
        DATABASE_URL="sqlite:///:memory:",
        STATIC_ROOT=str(tmp_path / "staticfiles"),
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    static_root = tmp_path / "staticfiles"
    manifest = json.loads((static_root / "staticfiles.json").read_text())["paths"]
    for name, source in (
        ("vendor/plotly/plotly-basic.min.js", PLOTLY),
        ("vendor/htmx/htmx.min.js", HTMX),
        ("js/charts.js", CHARTS_JS),
    ):
        hashed = static_root / manifest[name]
        assert hashed.read_bytes() == source.read_bytes()
        assert gzip.decompress((static_root / f"{manifest[name]}.gz").read_bytes()) == source.read_bytes()
