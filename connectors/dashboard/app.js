// dpipe's dashboard: draws the pages from the page data (connectors/dashboard/data.py) with Chart.js.
// Static report: the data is inlined. Live: it is fetched from /api/data every few seconds.
"use strict";
(function () {
  const PAGES = [["overview", "Overview"], ["alarms", "Alarms"], ["counters", "Counters"],
    ["cardinality", "Cardinality"], ["statistics", "Statistics"], ["funnels", "Funnels"], ["issues", "Issues"]];
  const live = JSON.parse(document.getElementById("dpipe-live").textContent || "null");
  let data = JSON.parse(document.getElementById("dpipe-data").textContent);
  let charts = [];
  let pending = []; // [canvas, config] drawn once the page is in the document (Chart.js needs its size)
  let updates = 0;

  // ---- formatting for people ----
  const numberFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });
  const smallFormat = new Intl.NumberFormat("en-US", { maximumSignificantDigits: 3 });
  const num = (x) => (x === null || x === undefined ? "—"
    : (Math.abs(x) < 1 && x !== 0 ? smallFormat : numberFormat).format(x));
  const pct = (x) => (x === null || x === undefined ? "—" : (x * 100).toFixed(1) + "%");
  const utc = (ms) => (ms === null || ms === undefined ? "—"
    : new Date(ms).toISOString().slice(0, 16).replace("T", " ") + " UTC");
  function bytes(b) {
    if (b === null || b === undefined) return "—";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (b >= 1000 && i < units.length - 1) { b /= 1000; i++; }
    return numberFormat.format(Number(b.toFixed(1))) + " " + units[i];
  }
  function duration(s) {
    if (s === null || s === undefined) return "—";
    if (s < 120) return num(Math.round(s)) + " s";
    if (s < 7200) return num(Math.round(s / 60)) + " min";
    return num(Math.round(s / 360) / 10) + " h";
  }

  // ---- DOM helpers ----
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children.flat()) node.append(c instanceof Node ? c : String(c ?? ""));
    return node;
  }
  const card = (label, value, id, bad) => el("div", { class: "card" + (bad ? " bad" : ""), "data-card": id },
    el("div", { class: "label" }, label), el("div", { class: "value" }, value));
  function table(id, columns, rows) {
    // columns: [title, className]; rows: arrays of cells (strings or nodes)
    return el("table", { "data-table": id },
      el("thead", {}, el("tr", {}, columns.map(([t, c]) => el("th", { class: c || "" }, t)))),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((cell, i) => el("td", { class: columns[i][1] || "" }, cell))))));
  }
  function panel(title, note, ...body) {
    return el("div", { class: "panel" }, el("h3", {}, title), note ? el("div", { class: "note" }, note) : "", body);
  }
  function chart(id, config) {
    const canvas = el("canvas", { "data-chart": id });
    const box = el("div", { class: "chart" }, canvas);
    config.options = Object.assign({ animation: false, maintainAspectRatio: false, responsive: true },
      config.options || {});
    pending.push([canvas, config]);
    return box;
  }
  const empty = (what) => el("div", { class: "empty" }, what);
  const timeAxis = {
    type: "linear", ticks: { maxTicksLimit: 8, callback: (v) => utc(v).slice(5, 16) },
    title: { display: true, text: "time (UTC)" },
  };
  const tooltipTime = { callbacks: { title: (items) => items.length ? utc(items[0].parsed.x) : "" } };
  function lineChart(id, series, yTitle) {
    return chart(id, {
      type: "line",
      data: { datasets: series.map((s) => ({ label: s.label, data: s.points.map(([x, y]) => ({ x, y })),
        pointRadius: 0, borderWidth: 1.5 })) },
      options: { scales: { x: timeAxis, y: { beginAtZero: true, title: { display: true, text: yTitle },
        ticks: { callback: (v) => num(v) } } }, plugins: { tooltip: tooltipTime }, interaction: { mode: "nearest", intersect: false } },
    });
  }
  function barChart(id, labels, datasets, options) {
    const valueAxis = options && options.indexAxis === "y" ? "x" : "y";
    const scales = { [valueAxis]: { beginAtZero: true, ticks: { callback: (v) => num(v) } } };
    return chart(id, { type: "bar", data: { labels, datasets }, options: Object.assign({ scales }, options || {}) });
  }

  // ---- pages ----
  function overview(p) {
    const s = data.status;
    const out = [];
    if (s) {
      const lag = (s.inputs || []).filter((i) => i.kind !== "category").map((i) => i.watermark_lag_s).filter((x) => x !== null && x !== undefined);
      out.push(el("h2", {}, "Live"), el("div", { class: "cards" },
        card("state", s.state, "state", !s.healthy),
        card("runner", s.runner, "runner"),
        card("uptime", duration(s.uptime_s), "uptime"),
        card("lines/s in", num(s.lines_in_per_s), "lines_in_per_s"),
        card("lines/s out", num(s.lines_out_per_s), "lines_out_per_s"),
        card("lines in (gateway)", num(s.lines_in), "lines_in"),
        card("lines out", num(s.lines_out), "lines_out"),
        card("watermark lag", lag.length ? duration(Math.max(...lag)) : "n/a", "watermark_lag"),
        card("spool backlog", bytes((s.inputs || []).reduce((a, i) => a + (i.backlog_bytes || 0), 0)), "backlog"),
        card("late lines", num(Object.values(s.late_lines || {}).reduce((a, b) => a + b, 0)), "late")));
      if ((s.problems || []).length) out.push(el("div", { class: "panel", "data-problems": "" }, s.problems.join("; ")));
    }
    const t = p.totals;
    out.push(el("h2", {}, "Totals"), el("div", { class: "cards" },
      "lines_read" in t ? card("lines read", num(t.lines_read), "lines_read") : "",
      card("events", num(t.events), "events"),
      card("dead letters", num(t.dead_letters), "dead_letters", t.dead_letters > 0),
      "bytes_read" in t ? card("read", bytes(t.bytes_read), "bytes_read") : "",
      "files_read" in t ? card("files read", num(t.files_read), "files_read") : "",
      p.balanced === null || p.balanced === undefined ? "" :
        card("accounting", p.balanced ? "balanced" : "CHECK FAILED", "balanced", !p.balanced)));
    const cats = Object.keys(p.categories);
    const reasons = p.dead_letters.map((d) => d.reason);
    out.push(el("div", { class: "grid" },
      panel("Events by category", "", cats.length ? barChart("categories", cats,
        [{ label: "events", data: cats.map((c) => p.categories[c]) }], { plugins: { legend: { display: false } } })
        : empty("no events")),
      panel("Dead letters by reason", "", reasons.length ? barChart("dead_letters", reasons,
        [{ label: "dead letters", data: p.dead_letters.map((d) => d.count) }],
        { indexAxis: "y", plugins: { legend: { display: false } } }) : empty("no dead letters"))));
    out.push(el("h2", {}, "Dead letters"), p.dead_letters.length ? table("dead_letters",
      [["reason"], ["lines", "num"], ["samples (raw line, detail, where)"]],
      p.dead_letters.map((d) => [d.reason, num(d.count), el("div", {}, d.samples.map((x) => el("div", {},
        el("code", { class: "raw" }, x.raw || "(empty)"), " ", x.detail ? el("span", { class: "note" }, "(" + x.detail + ")") : "",
        " ", el("span", { class: "note" }, (x.source || "") + (x.offset === null || x.offset === undefined ? "" : " @" + num(x.offset))))))]))
      : empty("no dead letters"));
    out.push(el("h2", {}, "Outputs"), table("sinks", [["sink"], ["rows", "num"], ["files", "num"]],
      p.sinks.map((k) => [k.sink, num(k.rows), num(k.files)])));
    if (Object.keys(p.routes).length) {
      out.push(el("h2", {}, "Routes"), table("routes", [["route"], ["events", "num"]],
        Object.entries(p.routes).map(([r, n]) => [r, num(n)])));
    }
    return out;
  }

  function alarms(p) {
    if (!p.firings.length) return [empty("no alarm fired")];
    const rules = Object.keys(p.per_rule);
    return [
      el("div", { class: "grid" }, panel("Firings per rule", "", barChart("alarms_per_rule", rules,
        [{ label: "firings", data: rules.map((r) => p.per_rule[r]) }], { plugins: { legend: { display: false } } }))),
      el("h2", {}, "Recent firings (newest window first)"),
      table("alarms", [["rule"], ["sev", "num"], ["key"], ["window (UTC)"], ["value", "num"], ["condition"], ["samples"]],
        p.firings.map((f) => [f.rule, num(f.severity), f.key, utc(f.start) + " .. " + utc(f.end).slice(11),
          f.aggregate + " = " + num(f.value), f.condition,
          f.samples.length ? el("details", {}, el("summary", {}, num(f.samples.length) + " samples"),
            f.samples.map((x) => el("div", {}, el("code", { class: "raw" }, x)))) : "—"])),
    ];
  }

  function counters(p) {
    if (!p.counters.length) return [empty("no counters")];
    return [el("div", { class: "grid" }, p.counters.map((c) => panel(c.counter,
      c.measure + " per " + duration(c.interval_s) + ", per key",
      lineChart("counter:" + c.counter, c.series, c.measure),
      table("counter_totals:" + c.counter, [["key"], ["total", "num"]],
        Object.entries(c.totals).slice(0, 10).map(([k, v]) => [k, num(v)])))))];
  }

  function cardinality(p) {
    if (!p.cardinality.length) return [empty("no cardinality counters")];
    return [el("div", { class: "grid" }, p.cardinality.map((c) => panel(c.counter + " per " + c.period,
      "distinct values (HyperLogLog estimate), per key",
      lineChart("cardinality:" + c.counter + ":" + c.period, c.series, "uniques per " + c.period))))];
  }

  function statistics(p) {
    if (!p.stats.length) return [empty("no statistics")];
    return [el("div", { class: "grid" }, p.stats.map((s) => {
      if (s.kind === "top") {
        return panel(s.stat + " (top " + s.top.length + ")", "values of " + s.field + ", counts summed over windows",
          barChart("top:" + s.stat, s.top.map((t) => t.value), [{ label: "count", data: s.top.map((t) => t.count) }],
            { indexAxis: "y", plugins: { legend: { display: false } } }));
      }
      const keys = s.keys.slice(0, 8);
      const qs = Object.keys(s.keys[0] || {}).filter((k) => /^p\d+$/.test(k));
      return panel(s.stat, "histogram of " + s.field + " summed over windows; quantiles of the latest window",
        barChart("histogram:" + s.stat, s.bins, keys.map((k) => ({ label: k.key, data: s.bins.map((b) => s.histogram[k.key][b] || 0) }))),
        table("quantiles:" + s.stat, [["key"], ["count", "num"], ["min", "num"], ...qs.map((q) => [q, "num"]), ["max", "num"], ["latest window"]],
          s.keys.map((k) => [k.key, num(k.count), num(k.min), ...qs.map((q) => num(k[q])), num(k.max), utc(k.latest_start)])));
    }))];
  }

  function funnels(p) {
    if (!p.funnels.length) return [empty("no funnels")];
    return p.funnels.map((f) => el("div", {}, el("h2", {}, "funnel " + f.funnel + " (" + f.period + " from " + f.start + "): "
      + f.steps.join(" → ")), el("div", { class: "grid" },
      panel("Users per step", "", barChart("funnel:" + f.funnel + ":" + f.start, f.rows.map((r) => r.dimensions),
        f.steps.map((step, i) => ({ label: step, data: f.rows.map((r) => r.users[i]) })))),
      panel("Conversion", "", table("funnel:" + f.funnel + ":" + f.start,
        [["dimensions"], ...f.steps.map((s) => [s, "num"]), ...f.steps.slice(1).map((s, i) => [f.steps[i] + "→" + s, "num"]), ["overall", "num"]],
        f.rows.map((r) => [r.dimensions, ...r.users.map(num), ...r.conversion.slice(1).map(pct), pct(r.overall)]))))));
  }

  function issues(p) {
    if (!p || !p.rows.length) return [empty("no issues")];
    return [table("issues", p.columns.map((c) => [c]), p.rows.map((r) => r.map((v) => typeof v === "number" ? num(v) : v)))];
  }

  const BUILD = { overview, alarms, counters, cardinality, statistics, funnels, issues };

  function render() {
    const page = (location.hash || "#overview").slice(1);
    const known = PAGES.filter(([id]) => id in data.pages);
    const current = known.some(([id]) => id === page) ? page : "overview";
    document.getElementById("nav").replaceChildren(...known.map(([id, title]) =>
      el("a", { href: "#" + id, class: id === current ? "active" : "", "data-page": id }, title)));
    for (const c of charts) c.destroy();
    charts = [];
    const y = window.scrollY;
    const main = document.getElementById("page");
    pending = [];
    main.replaceChildren(...BUILD[current](data.pages[current]));
    charts = pending.map(([canvas, config]) => new Chart(canvas, config));
    main.dataset.page = current;
    window.scrollTo(0, y);
    document.getElementById("meta").textContent = (live ? "live, every " + live.every_s + " s · " : "report · ")
      + data.output + " · data of " + utc(data.generated_ms);
    document.body.dataset.generated = data.generated_ms;
    document.body.dataset.updates = updates;
  }

  async function refresh() {
    try {
      const answer = await fetch(live.url, { cache: "no-store" });
      if (answer.ok) { data = await answer.json(); updates++; render(); }
    } catch (err) { document.getElementById("meta").textContent = "cannot reach the dashboard: " + err; }
    setTimeout(refresh, live.every_s * 1000);
  }

  window.addEventListener("hashchange", render);
  render();
  if (live) setTimeout(refresh, live.every_s * 1000);
})();
