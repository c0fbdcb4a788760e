// Quota dashboard: the only script. Everything works without it; it adds copy buttons, the
// chart's hover/focus readout and the live markup example on an app's page.
(function () {
  "use strict";
  function copy(text, done) {
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () {});
      return;
    }
    var t = document.createElement("textarea");
    t.value = text;
    document.body.appendChild(t);
    t.select();
    try { document.execCommand("copy"); done(); } catch (e) { /* nothing to do */ }
    document.body.removeChild(t);
  }
  document.querySelectorAll("button[data-copy]").forEach(function (b) {
    b.hidden = false;
    b.addEventListener("click", function () {
      var el = document.getElementById(b.getAttribute("data-copy"));
      if (!el) return;
      copy(el.textContent, function () {
        b.textContent = "Copied";
        setTimeout(function () { b.textContent = "Copy"; }, 1500);
      });
    });
  });
  document.querySelectorAll("svg.chart").forEach(function (svg) {
    var out = document.getElementById(svg.getAttribute("data-readout"));
    if (!out) return;
    svg.querySelectorAll(".bar").forEach(function (bar) {
      var show = function () { out.textContent = bar.getAttribute("aria-label"); };
      bar.addEventListener("mouseenter", show);
      bar.addEventListener("focus", show);
    });
  });
  // Markup example: the same integer rules as the server (credits; markup = ceil(base × bps / 10000)).
  var margin = document.getElementById("markup_percent");
  if (margin) {
    var update = function () {
      var m = /^\s*(\d{1,4})(?:\.(\d{1,2}))?\s*$/.exec(margin.value);
      document.querySelectorAll("[data-base-credits]").forEach(function (el) {
        var target = document.getElementById(el.getAttribute("data-total-id"));
        if (!target) return;
        if (!m) { target.textContent = "—"; return; }
        var bps = parseInt(m[1], 10) * 100 + parseInt(((m[2] || "") + "00").slice(0, 2), 10);
        if (bps > 100000) { target.textContent = "—"; return; }
        var base = parseInt(el.getAttribute("data-base-credits"), 10);
        var total = base + Math.ceil((base * bps) / 10000);
        var s = (total / 1e6).toFixed(6).replace(/0+$/, "");
        var parts = s.split(".");
        target.textContent = "$" + parts[0] + "." + (parts[1] + "00").slice(0, Math.max(2, parts[1].length));
      });
    };
    margin.addEventListener("input", update);
  }
})();
