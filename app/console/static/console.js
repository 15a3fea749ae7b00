// The dashboard's own script: the token kept for the browser session, confirmed writes, live updates over
// Server-Sent Events (sections re-rendered by the server when an event concerns them), and the PSI chart when
// the uPlot asset is installed. Text from events is added with textContent only: manifests are untrusted.
"use strict";
(function () {
  var TOKEN_KEY = "release-token";
  var body = document.body;
  var model = body.dataset.model || "";

  function $(id) { return document.getElementById(id); }
  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

  // ---------------------------------------------------------------------------------------- token
  function showTokenState() {
    var state = $("token-state");
    if (state) { state.textContent = token() ? "token kept for this session" : "no token: writes are refused"; }
  }
  function setToken(value) {
    if (value) { sessionStorage.setItem(TOKEN_KEY, value); } else { sessionStorage.removeItem(TOKEN_KEY); }
    if (body.dataset.readsNeedToken === "true") {
      // Reads that need a credential take it from this cookie (page loads and EventSource cannot send headers).
      document.cookie = "release_token=" + encodeURIComponent(value || "") + "; path=/; SameSite=Strict" +
        (value ? "" : "; max-age=0");
    }
    showTokenState();
  }
  var form = $("token-form");
  if (form) {
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      setToken($("token-input").value.trim());
      $("token-input").value = "";
    });
    $("token-forget").addEventListener("click", function () { setToken(""); });
  }
  showTokenState();

  // ---------------------------------------------------------------------------------------- actions
  var pending = null;
  var dialog = $("confirm");
  var PATHS = {
    promote: function (a) { return "/api/v1/models/" + a.model + "/versions/" + a.version + "/promote"; },
    retry: function (a) { return "/api/v1/models/" + a.model + "/versions/" + a.version + "/retry"; },
    rollback: function (a) { return "/api/v1/models/" + a.model + "/rollback"; }
  };
  function showError(target, problem) {
    target.hidden = false;
    target.textContent = "";
    var line = document.createElement("strong");
    line.textContent = problem.message + " [" + problem.reason + "]";
    var hint = document.createElement("div");
    hint.className = "hint";
    hint.textContent = "next: " + (problem.hint || "");
    target.appendChild(line);
    target.appendChild(hint);
  }
  document.addEventListener("click", function (e) {
    var button = e.target.closest ? e.target.closest("button[data-action]") : null;
    if (!button || !dialog) { return; }
    pending = { action: button.dataset.action, model: button.dataset.model, version: button.dataset.version };
    $("confirm-title").textContent = button.dataset.action.charAt(0).toUpperCase() + button.dataset.action.slice(1) +
      " " + button.dataset.model;
    $("confirm-move").textContent = button.dataset.confirm;
    $("confirm-error").hidden = true;
    $("confirm-reason").value = "";
    dialog.showModal();
  });
  if (dialog) {
    $("confirm-cancel").addEventListener("click", function () { dialog.close(); });
    $("confirm-form").addEventListener("submit", function (e) {
      e.preventDefault();
      if (!pending) { return; }
      var headers = { "Content-Type": "application/json" };
      if (token()) { headers.Authorization = "Bearer " + token(); }
      var sent = pending;
      fetch(PATHS[sent.action](sent), { method: "POST", headers: headers,
        body: JSON.stringify({ reason: $("confirm-reason").value }) })
        .then(function (r) { return r.json().then(function (j) { return { ok: r.ok, status: r.status, body: j }; }); })
        .then(function (r) {
          if (!r.ok) { showError($("confirm-error"), r.body); showError($("action-result"), r.body); return; }
          dialog.close();
          var result = $("action-result");
          result.hidden = false;
          result.textContent = sent.action + " accepted: " + JSON.stringify(r.body);
          refreshAll();
        })
        .catch(function (err) { showError($("confirm-error"), { message: String(err), reason: "network", hint: "" }); });
    });
  }

  // ---------------------------------------------------------------------------------------- live updates
  var timers = {};
  function refresh(section) {
    var el = document.querySelector("[data-section='" + section + "']");
    if (!el || timers[section]) { return; }
    timers[section] = setTimeout(function () {
      timers[section] = null;
      fetch(el.dataset.fragment, { credentials: "same-origin" }).then(function (r) {
        if (r.ok) { return r.text().then(function (html) { el.innerHTML = html; if (section === "drift") { drawChart(); } }); }
      });
    }, 150);
  }
  function refreshAll() {
    document.querySelectorAll("[data-section]").forEach(function (el) { refresh(el.dataset.section); });
  }
  function sectionsFor(type) {
    if (type.indexOf("drift.alert") === 0 || type.indexOf("drift.resolved") === 0) { return ["alerts", "drift", "timeline", "models"]; }
    if (type.indexOf("drift.") === 0 || type.indexOf("accuracy.") === 0) { return ["drift"]; }
    return ["summary", "versions", "timeline", "models", "alerts"];
  }
  function addToFeed(event) {
    var feed = $("feed");
    if (!feed) { return; }
    var item = document.createElement("li");
    var when = document.createElement("time");
    when.textContent = String(event.time || "").replace("T", " ").slice(0, 19);
    var kind = document.createElement("span");
    kind.className = "etype";
    kind.textContent = event.type;
    item.appendChild(when);
    item.appendChild(document.createTextNode(" "));
    item.appendChild(kind);
    item.appendChild(document.createTextNode(" " + (event.model || "") + " " + (event.subject || "")));
    feed.insertBefore(item, feed.firstChild);
    while (feed.children.length > Number(feed.dataset.limit || 50)) { feed.removeChild(feed.lastChild); }
  }
  function announceAlert(event) {
    var data = event.data || {};
    var banner = $("alert-banner");
    banner.hidden = false;
    banner.className = "banner banner-" + (data.severity || "warning");
    banner.textContent = "Drift alert " + (data.kind || "") + ": " + (data.model || "") + " v" + (data.version || "") +
      " is " + String(data.severity || "").toUpperCase() + " — " + (data.reasons || []).join("; ");
  }
  function setLive(state, text) {
    var live = $("live");
    live.dataset.state = state;
    live.textContent = text;
  }
  function connect() {
    if (!window.EventSource) { setLive("stale", "live updates unavailable in this browser"); return; }
    var url = "/api/v1/events/stream" + (model ? "?model=" + encodeURIComponent(model) : "");
    var source = new EventSource(url);
    source.onopen = function () { setLive("live", "live"); };
    source.onerror = function () {
      setLive("stale", "stale since " + new Date().toLocaleTimeString() + " — reconnecting");
    };
    source.onmessage = null;
    var handle = function (message) {
      var event;
      try { event = JSON.parse(message.data); } catch (err) { return; }
      setLive("live", "live");
      addToFeed(event);
      if (event.type.indexOf("drift.alert") === 0) { announceAlert(event); }
      sectionsFor(event.type).forEach(refresh);
    };
    ["model.registered", "artifact.rejected", "version.state_changed", "rollout.ready", "rollout.failed",
     "gates.evaluated", "alias.moved", "release.rolled_back", "release.rollback_requested", "drift.measured",
     "drift.alert", "drift.resolved", "accuracy.measured", "canary.step"].forEach(function (type) {
      source.addEventListener(type, handle);
    });
  }
  connect();

  // ---------------------------------------------------------------------------------------- chart
  function drawChart() {
    var holder = $("psi-chart");
    var raw = $("psi-data");
    if (!holder || !raw || !window.uPlot) { return; }
    var data = JSON.parse(raw.textContent);
    var windows = data.series.windows;
    var xs = windows.map(function (w) { return Date.parse(w.end) / 1000; });
    var names = Object.keys(data.series.features);
    var colours = ["#1f6feb", "#8250df", "#bf8700", "#1a7f37", "#cf222e"];
    var series = [{}];
    var columns = [xs];
    names.forEach(function (name, i) {
      series.push({ label: name, stroke: colours[i % colours.length], width: 2 });
      columns.push(data.series.features[name]);
    });
    ["psi_warning", "psi_critical"].forEach(function (key) {
      series.push({ label: key.replace("psi_", "") + " threshold", stroke: key === "psi_critical" ? "#cf222e" : "#9a6700", dash: [6, 4] });
      columns.push(xs.map(function () { return data.thresholds[key]; }));
    });
    var moves = data.moves.map(function (m) { return { x: Date.parse(m.at) / 1000, text: m.text }; });
    var annotate = { hooks: { draw: [function (u) {
      var ctx = u.ctx;
      ctx.save();
      ctx.strokeStyle = "#57606a";
      ctx.fillStyle = "#57606a";
      ctx.setLineDash([2, 3]);
      moves.forEach(function (m) {
        if (m.x < u.scales.x.min || m.x > u.scales.x.max) { return; }
        var left = u.valToPos(m.x, "x", true);
        ctx.beginPath(); ctx.moveTo(left, u.bbox.top); ctx.lineTo(left, u.bbox.top + u.bbox.height); ctx.stroke();
        ctx.fillText(m.text, left + 3, u.bbox.top + 12);
      });
      ctx.restore();
    }] } };
    holder.textContent = "";
    var width = Math.min(holder.clientWidth || 800, 900);
    new window.uPlot({ width: width, height: 220, title: "PSI per feature over windows (alias moves dashed)",
      series: series, plugins: [annotate], scales: { x: { time: true } } }, columns, holder);
  }
  window.addEventListener("load", drawChart);
})();
