/* taskmill dashboard: confirmations, live updates and the per-minute chart.
 * Served from the package (the CSP allows no inline script and no other host). Values from the
 * server are only ever set as text (textContent / attributes), never parsed as HTML. */
(function () {
  "use strict";
  var POLL_MS = 2000;
  var SAFETY_MS = 5000;
  var safetyTimer = null;
  var SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = String(text); }
    return node;
  }
  function ago(seconds) {
    if (seconds === null || seconds === undefined) { return "—"; }
    if (seconds < 1) { return "now"; }
    if (seconds < 90) { return Math.round(seconds) + " s"; }
    if (seconds < 5400) { return Math.round(seconds / 60) + " min"; }
    if (seconds < 172800) { return (seconds / 3600).toFixed(1) + " h"; }
    return (seconds / 86400).toFixed(1) + " d";
  }
  function pct(v) { return v === null || v === undefined ? "—" : (v * 100).toFixed(1) + "%"; }
  function num(v) { var c = el("td", { "class": "num" }, v); return c; }

  /* ---- confirmations ------------------------------------------------------------------------ */
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { ev.preventDefault(); }
  });

  /* ---- polling with back-off ---------------------------------------------------------------- */
  function poll(url, onData, statusNode) {
    var delay = POLL_MS;
    var stopped = false;
    function tick() {
      if (stopped) { return; }
      if (document.hidden) { setTimeout(tick, delay); return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) {
          if (r.status === 401) { window.location.assign(window.location.pathname); return null; }
          if (!r.ok) { throw new Error("HTTP " + r.status); }
          return r.json();
        })
        .then(function (data) {
          if (data === null) { return; }
          delay = POLL_MS;
          if (statusNode) { statusNode.textContent = "Live · updated " + new Date().toLocaleTimeString(); }
          if (onData(data) === false) { stopped = true; return; }
          setTimeout(tick, delay);
        })
        .catch(function (err) {
          delay = Math.min(delay * 2, 30000);
          if (statusNode) { statusNode.textContent = "Connection problem (" + err.message + "); retrying in " + Math.round(delay / 1000) + " s"; }
          setTimeout(tick, delay);
        });
    }
    setTimeout(tick, delay);
  }

  /* ---- chart -------------------------------------------------------------------------------- */
  function drawChart(figure, series) {
    var old = figure.querySelector("svg");
    if (old) { old.remove(); }
    var W = Math.max(280, Math.round(figure.clientWidth - 16)), H = 220, L = 36, R = 8, T = 10, B = 22;
    var keys = ["submitted", "completed", "failed"];
    var n = (series.minutes || []).length;
    var max = 1;
    keys.forEach(function (k) { (series[k] || []).forEach(function (v) { if (v > max) { max = v; } }); });
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-label": "tasks submitted, completed and failed per minute over the last hour" });
    root.appendChild(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, "class": "axis" }));
    root.appendChild(svg("line", { x1: L, y1: T, x2: L, y2: H - B, "class": "axis" }));
    root.appendChild(svg("text", { x: 2, y: T + 10, "class": "tick" }, max));
    root.appendChild(svg("text", { x: 2, y: H - B, "class": "tick" }, 0));
    root.appendChild(svg("text", { x: L, y: H - 6, "class": "tick" }, "−60 min"));
    root.appendChild(svg("text", { x: (L + W - R) / 2 - 16, y: H - 6, "class": "tick" }, "−30 min"));
    root.appendChild(svg("text", { x: W - R - 26, y: H - 6, "class": "tick" }, "now"));
    var step = n > 1 ? (W - L - R) / (n - 1) : 0;
    keys.forEach(function (k) {
      var values = series[k] || [];
      var points = values.map(function (v, i) {
        var x = L + i * step;
        var y = H - B - (v / max) * (H - B - T);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      root.appendChild(svg("polyline", { points: points.join(" "), "class": "line l-" + k }));
    });
    var total = {};
    keys.forEach(function (k) { total[k] = (series[k] || []).reduce(function (a, b) { return a + b; }, 0); });
    root.appendChild(svg("title", {}, "last hour: " + total.submitted + " submitted, " + total.completed + " completed, " + total.failed + " failed"));
    figure.insertBefore(root, figure.firstChild);
  }

  /* ---- overview and workers ----------------------------------------------------------------- */
  function taskLink(base, id) {
    var a = el("a", { "class": "mono", href: base.replace(/\/tasks$/, "/tasks/") + encodeURIComponent(id) }, id.slice(0, 8));
    return a;
  }
  function renderQueues(table, queues, tasksUrl) {
    var body = table.querySelector("tbody");
    var rows = queues.map(function (q) {
      var tr = el("tr", { "data-queue": q.name });
      var th = el("th", { scope: "row" });
      th.appendChild(el("a", { href: tasksUrl + "?queue=" + encodeURIComponent(q.name) }, q.name));
      if (q.paused) { th.appendChild(document.createTextNode(" ")); th.appendChild(el("span", { "class": "badge paused" }, "paused")); }
      tr.appendChild(th);
      ["queued", "running", "scheduled", "waiting", "failed"].forEach(function (s) { tr.appendChild(num(q.depth[s])); });
      tr.appendChild(num(ago(q.oldest_queued_age)));
      tr.appendChild(num(q.windows["5m"].throughput_per_min));
      tr.appendChild(num(q.windows["1h"].throughput_per_min));
      tr.appendChild(num(q.windows["24h"].completed));
      tr.appendChild(num(pct(q.windows["5m"].failure_rate)));
      tr.appendChild(num(pct(q.windows["1h"].failure_rate)));
      return tr;
    });
    body.replaceChildren.apply(body, rows);
    table.hidden = queues.length === 0;
    var empty = table.closest("section").querySelector(".empty");
    if (empty) { empty.hidden = queues.length !== 0; }
  }
  function renderWorkers(table, workers, tasksUrl) {
    var body = table.querySelector("tbody");
    var rows = workers.map(function (w) {
      var tr = el("tr");
      tr.appendChild(el("th", { scope: "row", "class": "mono" }, w.id));
      tr.appendChild(el("td", {}, w.queues.join(", ")));
      tr.appendChild(num(w.concurrency));
      var running = el("td");
      if (w.current_tasks.length === 0) { running.appendChild(el("span", { "class": "muted" }, "idle")); }
      w.current_tasks.forEach(function (id) { running.appendChild(taskLink(tasksUrl, id)); running.appendChild(document.createTextNode(" ")); });
      tr.appendChild(running);
      tr.appendChild(num(ago(w.heartbeat_age)));
      tr.appendChild(num(w.processed));
      tr.appendChild(num(w.failed));
      return tr;
    });
    body.replaceChildren.apply(body, rows);
    table.hidden = workers.length === 0;
    var empty = document.getElementById("workers-empty");
    if (empty) { empty.hidden = workers.length !== 0; }
  }

  function startOverview(section) {
    var url = section.getAttribute("data-live-overview");
    var tasksUrl = section.getAttribute("data-task-url");
    var status = document.querySelector("[data-live-status]");
    var chart = document.getElementById("chart");
    if (chart) {
      try { drawChart(chart, JSON.parse(chart.getAttribute("data-series"))); } catch (e) { /* keep the page */ }
    }
    function show(data) {
      var queues = document.getElementById("queues-table");
      var workers = document.getElementById("workers-table");
      if (queues) { renderQueues(queues, data.queues, tasksUrl); }
      if (workers) { renderWorkers(workers, data.workers, tasksUrl); }
      if (chart) { drawChart(chart, data.series); }
      var gen = document.querySelector("[data-generated]");
      if (gen) { gen.textContent = data.generated_at || "—"; }
    }
    follow(section.getAttribute("data-events"), function (source) {
      source.addEventListener("overview", function (ev) {
        if (status) { status.textContent = "Live (stream) · updated " + new Date().toLocaleTimeString(); }
        show(JSON.parse(ev.data));
      });
    }, function () { poll(url, show, status); });
  }

  /* ---- server-sent events, with polling when the stream is unavailable --------------------- */
  var openSource = null;
  function follow(eventsUrl, listen, fallback) {
    if (!eventsUrl || !window.EventSource) { fallback(); return; }
    if (openSource) { openSource.close(); }
    var source = new EventSource(eventsUrl, { withCredentials: true });
    openSource = source;
    var fellBack = false;
    listen(source);
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED && !fellBack) {  // refused (503, 401, …): poll
        fellBack = true;
        fallback();
      }
    };
  }

  /* ---- one task ----------------------------------------------------------------------------- */
  function swapMain() {
    return fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("main");
        var main = document.getElementById("main");
        if (fresh && main) {
          // keep the keyboard focus where it was (same button or field in the new content)
          var active = document.activeElement;
          var testid = active && active.getAttribute && active.getAttribute("data-testid");
          var id = active && active.id;
          main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes).map(function (n) { return document.importNode(n, true); }));
          var again = testid ? main.querySelector("[data-testid='" + testid + "']") : (id ? document.getElementById(id) : null);
          if (again) { again.focus(); } else if (active && active !== document.body && !document.contains(active)) { main.focus(); }
          start();
        }
      });
  }
  function stateKey(t) { return [t.status, t.attempts, String(t.cancel_requested), t.worker || ""].join("|"); }
  function startTask(head) {
    var url = head.getAttribute("data-live-task");
    var status = document.querySelector("[data-live-status]");
    if (head.getAttribute("data-final") === "true") {
      if (status) { status.textContent = "This task has ended."; }
      return;
    }
    var last = head.getAttribute("data-state");
    var changes = ["task.submitted", "task.started", "task.retry_scheduled", "task.completed",
      "task.failed", "task.cancelled", "task.requeued"];
    follow(head.getAttribute("data-events"), function (source) {
      function check() {
        fetch(url, { credentials: "same-origin" }).then(function (r) { return r.ok ? r.json() : null; })
          .then(function (t) {
            if (t && stateKey(t) !== last && source.readyState !== EventSource.CLOSED) {
              source.close();
              swapMain();
            }
          });
      }
      source.onopen = function () {
        if (status) { status.textContent = "Live (stream)"; }
        check();  // whatever changed between the page and the stream's start
      };
      // a safety net while the stream is open: one cheap read every few seconds
      clearInterval(safetyTimer);
      safetyTimer = setInterval(function () {
        if (source.readyState === EventSource.CLOSED) { clearInterval(safetyTimer); return; }
        if (!document.hidden) { check(); }
      }, SAFETY_MS);
      source.addEventListener("task.progress", function (ev) {
        var t = JSON.parse(ev.data);
        var bar = document.querySelector("[data-field=progress]");
        if (bar) { bar.value = t.progress || 0; }
        var text = document.querySelector("[data-field=progress-text]");
        if (text) { text.textContent = Math.round((t.progress || 0) * 100) + "%"; }
      });
      changes.forEach(function (name) {
        source.addEventListener(name, function () { clearInterval(safetyTimer); source.close(); swapMain(); });
      });
    }, function () { pollTask(url, last, status); });
  }
  function pollTask(url, last, status) {
    poll(url, function (t) {
      var key = stateKey(t);
      var bar = document.querySelector("[data-field=progress]");
      if (bar) { bar.value = t.progress || 0; }
      var text = document.querySelector("[data-field=progress-text]");
      if (text) { text.textContent = Math.round((t.progress || 0) * 100) + "%"; }
      if (key !== last) { swapMain(); return false; }
      last = key;
      return !t.final;
    }, status);
  }

  function start() {
    var overview = document.querySelector("[data-live-overview]");
    if (overview) { startOverview(overview); }
    var task = document.querySelector("[data-live-task]");
    if (task) { startTask(task); }
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
