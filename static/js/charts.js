/*
 * FinOps Review charts: draws every <div class="chart" data-figure-id="X"> with Plotly, using
 * the figure JSON in <script type="application/json" id="X"> (from fig.to_json() or Django's
 * json_script). Runs when the page loads and again after each HTMX swap; charts already drawn
 * are left alone, and a chart that cannot be drawn is reported once on the console and marked
 * data-chart-error. Needs window.Plotly (static/vendor/plotly/plotly-basic.min.js) loaded first.
 * No dependencies of its own.
 */
(function () {
  "use strict";

  var CONFIG = { displaylogo: false, responsive: true };

  function readFigure(id) {
    var source = document.getElementById(id);
    if (!source) {
      throw new Error("no <script type=\"application/json\" id=\"" + id + "\">");
    }
    var figure = JSON.parse(source.textContent);
    // json_script(fig.to_json()) wraps the JSON text in a JSON string: unwrap it.
    if (typeof figure === "string") {
      figure = JSON.parse(figure);
    }
    return figure || {};
  }

  function drawCharts() {
    var charts = document.querySelectorAll("div.chart[data-figure-id]");
    if (!charts.length) {
      return;
    }
    if (typeof window.Plotly === "undefined") {
      if (typeof console !== "undefined") {
        console.error("charts.js: Plotly is not loaded; add vendor/plotly/plotly-basic.min.js before it.");
      }
      return;
    }
    for (var i = 0; i < charts.length; i++) {
      var el = charts[i];
      if (el._fullLayout || el.hasAttribute("data-chart-error")) {
        continue; // already drawn by Plotly and still live, or already reported as broken
      }
      try {
        var figure = readFigure(el.getAttribute("data-figure-id"));
        // A copy restored from HTMX's history cache keeps Plotly's markup but not its state.
        while (el.firstChild) {
          el.removeChild(el.firstChild);
        }
        var drawn = window.Plotly.newPlot(el, figure.data || [], figure.layout || {}, CONFIG);
        if (drawn && typeof drawn.catch === "function") {
          drawn.catch(reportError(el));
        }
      } catch (error) {
        reportError(el)(error);
      }
    }
  }

  function reportError(el) {
    return function (error) {
      el.setAttribute("data-chart-error", "");
      if (typeof console !== "undefined") {
        console.error("charts.js: cannot draw chart " + el.getAttribute("data-figure-id") + ":", error);
      }
    };
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawCharts);
  } else {
    drawCharts();
  }
  document.addEventListener("htmx:afterSettle", drawCharts);
  document.addEventListener("htmx:historyRestore", drawCharts);
})();
