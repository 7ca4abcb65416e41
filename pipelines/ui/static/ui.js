// germline lineage explorer: search, a node's neighbourhood drawn with Cytoscape.js, at-risk
// against plain descendants, and each node's details. Every name and value from the lake is
// written as text (textContent, or a Cytoscape label drawn on the canvas), never as HTML.
"use strict";

const KIND_COLOURS = {model: "#0969da", dataset: "#1a7f37", run: "#8250df",
                      probe: "#bf8700", suite: "#6e7781"};
const KIND_SHAPES = {model: "round-rectangle", dataset: "barrel", run: "diamond",
                     probe: "triangle", suite: "hexagon"};
const $ = (id) => document.getElementById(id);
const ui = {cy: null, focus: null, mode: "graph", timings: []};
window.germlineUI = ui;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function busy(action) {
  document.body.dataset.state = "loading";
  return {action, start: performance.now()};
}

function done(mark) {
  const end = performance.now();
  ui.timings.push({action: mark.action, ms: end - mark.start,  // and where it went:
                   fetch_ms: mark.fetched ? mark.fetched - mark.start : null,
                   draw_ms: mark.drawn ? mark.drawn - mark.fetched : null});
  // For tests and bench/ui.py: wait on attributes (the CSP forbids their evaluated scripts).
  document.body.dataset.done = String(ui.timings.length);
  document.body.dataset.mode = ui.mode;
  document.body.dataset.focus = ui.focus ? ui.focus.id : "";
  document.body.dataset.state = "ready";
}

async function api(path, params) {
  const query = new URLSearchParams(params || {}).toString();
  const response = await fetch(path + (query ? "?" + query : ""),
                               {credentials: "same-origin"});
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function showError(err) {
  const box = $("error");
  box.textContent = String(err.message || err);
  box.hidden = false;
  document.body.dataset.state = "ready";
}

function fingerprintColour(fp) {
  if (!fp) return "#ffffff";
  let h = 0;
  for (const c of fp) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${h % 360}, 85%, 45%)`;
}

function short(text, n) {
  text = String(text);
  return text.length > n ? text.slice(0, n - 1) + "\u2026" : text;
}

// -- the list on the left ----------------------------------------------------------------
function fillList(title, note, items, risk) {
  $("list-title").textContent = title;
  $("list-note").textContent = note || "";
  const list = $("list");
  list.replaceChildren();
  for (const item of items) {
    const li = el("li", null, risk ? "risk" : "");
    li.dataset.id = item.id;
    li.append(el("span", item.name), el("span", " " + item.kind +
      (item.depth !== undefined ? ", depth " + item.depth : ""), "kind"));
    li.title = item.id;
    li.addEventListener("click", () => openNode(item.id));
    list.append(li);
  }
}

// -- the graph ---------------------------------------------------------------------------
function ensureCy() {
  if (ui.cy) return ui.cy;
  ui.cy = cytoscape({
    container: $("graph"),
    style: [
      {selector: "node", style: {
        "label": "data(label)", "font-size": 9, "text-valign": "bottom", "text-margin-y": 3,
        "background-color": "data(colour)", "shape": "data(shape)",
        "border-width": "data(border)", "border-color": "data(fp)",
        "width": 22, "height": 22, "text-wrap": "wrap", "text-max-width": 110,
        "min-zoomed-font-size": 6}},
      {selector: "node.focus", style: {"width": 34, "height": 34, "font-weight": "bold",
                                       "font-size": 11}},
      {selector: "node.plain", style: {"opacity": 0.4}},
      {selector: "node.at-risk", style: {"background-color": "#cf222e", "opacity": 1,
                                         "font-weight": "bold", "color": "#cf222e"}},
      {selector: "edge", style: {
        "width": 1.2, "line-color": "#8c959f", "target-arrow-color": "#8c959f",
        "target-arrow-shape": "triangle", "curve-style": "bezier", "arrow-scale": 0.8,
        "label": "data(kind)", "font-size": 7, "color": "#57606a",
        "text-rotation": "autorotate", "text-background-color": "#fff",
        "text-background-opacity": 0.8, "text-background-padding": 1,
        // labels too small to read at the current zoom are not drawn
        "min-zoomed-font-size": 6}},
    ],
  });
  ui.cy.on("tap", "node", (event) => openNode(event.target.id()));
  return ui.cy;
}

function draw(data, atRisk) {
  const cy = ensureCy();
  const incoming = new Set(data.edges.map((e) => e.target));
  const elements = data.nodes.map((n) => {
    let cls = n.id === data.focus ? "focus" : "";
    if (atRisk && n.distance > 0) cls += n.at_risk ? " at-risk" : " plain";
    return {group: "nodes", classes: cls.trim(), data: {
      // zero-width spaces after - / _ let a long name wrap onto a second line
      id: n.id, label: short(n.name, 48).replace(/([-/_])/g, "$1\u200b"), kind: n.kind,
      colour: KIND_COLOURS[n.kind] || "#999", shape: KIND_SHAPES[n.kind] || "ellipse",
      fp: fingerprintColour(n.fingerprint), border: n.fingerprint ? 4 : 0,
      fingerprint: n.fingerprint || "", atRisk: !!n.at_risk}};
  });
  for (const e of data.edges) {
    elements.push({group: "edges", data: {id: e.source + "->" + e.target,
      source: e.source, target: e.target, kind: e.kind}});
  }
  cy.batch(() => {
    cy.elements().remove();
    cy.add(elements);
  });
  const roots = cy.nodes().filter((n) => !incoming.has(n.id()));
  cy.layout({name: "breadthfirst", directed: true, roots, spacingFactor: 1.25,
             animate: false, fit: true, padding: 24}).run();
  drawLegend(data.nodes);
  $("graph-note").textContent = `${data.nodes.length} nodes, ${data.edges.length} edges` +
    (data.truncated ? ` (the nearest ${data.limit}: the neighbourhood is larger)` : "") +
    (atRisk ? `; red: at risk (${data.at_risk_total} in all), faded: other descendants` : "");
}

function drawLegend(nodes) {
  const legend = $("legend");
  legend.replaceChildren();
  const kinds = [...new Set(nodes.map((n) => n.kind))].sort();
  for (const kind of kinds) {
    const swatch = el("i");
    swatch.style.background = KIND_COLOURS[kind] || "#999";
    const item = el("span");
    item.append(swatch, el("span", kind));
    legend.append(item);
  }
  const fps = [...new Set(nodes.map((n) => n.fingerprint).filter(Boolean))].sort();
  for (const fp of fps.slice(0, 8)) {
    const swatch = el("i");
    swatch.style.border = "3px solid " + fingerprintColour(fp);
    const item = el("span");
    item.title = fp;
    item.append(swatch, el("span", "base " + short(fp.replace("sha256:", ""), 9)));
    legend.append(item);
  }
}

// -- details -----------------------------------------------------------------------------
function table(rows, header) {
  const t = el("table");
  if (header) {
    const tr = el("tr");
    for (const h of header) tr.append(el("th", h));
    t.append(tr);
  }
  for (const row of rows) {
    const tr = el("tr");
    row.forEach((cell, i) => tr.append(el(header || i > 0 ? "td" : "th",
      cell === null || cell === undefined ? "-" :
      typeof cell === "object" ? JSON.stringify(cell) : cell)));
    t.append(tr);
  }
  return t;
}

function pre(text) { return el("pre", text); }

function links(title, items, total) {
  const box = el("div");
  box.append(el("h3", `${title} (${total})`));
  const list = el("ol");
  for (const item of items) {
    const li = el("li");
    li.dataset.id = item.id;
    li.append(el("span", item.edge + " "), el("span", item.name), el("span", " " + item.kind,
                                                                       "kind"));
    li.addEventListener("click", () => openNode(item.id));
    list.append(li);
  }
  box.append(list);
  return box;
}

function details(d) {
  const box = $("details");
  box.replaceChildren();
  $("right").scrollTop = 0;
  box.append(el("h3", d.name, "node-name"));
  box.append(table([["kind", d.kind], ["id", d.id], ["version", d.version],
                    ["base", d.fingerprint], ["uri", d.uri], ["created", d.created_at]]));
  if (d.probe) {
    const p = d.probe;
    box.append(el("h3", "probe"));
    box.append(el("p", `${p.target}: ${fmt(p.share)} [${fmt(p.low)}, ${fmt(p.high)}]` +
                        ` (${p.method}, ${p.trials} trials)`, "probe-share"));
    const rows = p.shares.map(([name, share]) => {
      const bar = el("span", null, "bar");
      bar.style.width = Math.round(share * 150) + "px";
      const tr = el("tr");
      tr.append(el("th", name), el("td", fmt(share)));
      const td = el("td");
      td.append(bar);
      tr.append(td);
      return tr;
    });
    const t = el("table");
    t.append(...rows);
    box.append(t);
  }
  if (d.dataset) datasetDetails(box, d.dataset);
  if (d.model) {
    if (d.model.germline) {
      box.append(el("h3", "germline.json"), pre(JSON.stringify(d.model.germline, null, 2)));
    }
    if (d.model.card) box.append(el("h3", "model card (README.md)"), pre(d.model.card));
  }
  if (d.report) {
    box.append(el("h3", "report " + d.report.run));
    for (const name of d.report.pictures) {
      const img = el("img");
      img.alt = name;
      img.src = `/api/report/${encodeURIComponent(d.report.run)}/${encodeURIComponent(name)}`;
      box.append(img);
    }
    box.append(pre(d.report.markdown));
  }
  if (Object.keys(d.attrs).length) {
    box.append(el("h3", d.kind === "run" ? "parameters" : "attributes"),
               pre(JSON.stringify(d.attrs, null, 2)));
  }
  box.append(links("parents", d.parents, d.parents_total));
  box.append(links("children", d.children, d.children_total));
}

function datasetDetails(box, ds) {
  if (ds.error) { box.append(el("p", ds.error, "muted")); return; }
  box.append(el("h3", "dataset"), table([["version", ds.version], ["rows", ds.rows],
    ["quarantined", ds.quarantine ? ds.quarantine.rows : 0]]));
  if (ds.quarantine && ds.quarantine.rows) {
    box.append(el("h3", "quarantine by reason"),
               table(Object.entries(ds.quarantine.by_reason), ["reason", "rows"]));
  }
  const history = table(ds.history.map((c) => [c.version, c.timestamp, c.operation,
    c.added_rows, JSON.stringify(c.germline)]), ["v", "time", "operation", "rows", "germline.*"]);
  history.className = "history";
  box.append(el("h3", "Delta history"), history);
  if (ds.sample.length) {
    const cols = Object.keys(ds.sample[0]);
    box.append(el("h3", "sample rows"), table(ds.sample.map((r) => cols.map((c) => r[c])),
                                               cols));
  }
}

function fmt(x) { return typeof x === "number" ? x.toFixed(3) : String(x); }

// -- actions -----------------------------------------------------------------------------
async function openNode(id, mode) {
  const mark = busy(mode === "at-risk" ? "at-risk" : "open");
  try {
    const depth = $("depth").value;
    const [graph, node] = await Promise.all([
      api(mode === "at-risk" ? "/api/at-risk" : "/api/graph", {id, depth}),
      api("/api/node", {id}),
    ]);
    mark.fetched = performance.now();
    ui.focus = node;
    ui.mode = mode || "graph";
    draw(graph, mode === "at-risk");
    mark.drawn = performance.now();
    details(node);
    $("at-risk").disabled = node.kind !== "model";
    if (mode === "at-risk") {
      fillList(`at risk from ${short(node.name, 30)}`,
               `${graph.at_risk_total} model${graph.at_risk_total === 1 ? "" : "s"}: ` +
               "same base, trained on its data, directly or not",
               graph.at_risk, true);
    }
    history.replaceState(null, "", "#" + new URLSearchParams({node: id, mode: ui.mode}));
    done(mark);
  } catch (err) { showError(err); }
}

async function search(event) {
  if (event) event.preventDefault();
  const mark = busy("search");
  try {
    const found = await api("/api/search", {q: $("search").value, kind: $("kind").value});
    fillList("search", `${found.total} found` +
             (found.total > found.hits.length ? `, the first ${found.hits.length} shown` : ""),
             found.hits, false);
    done(mark);
  } catch (err) { showError(err); }
}

async function start() {
  const mark = busy("first-paint");
  $("search-form").addEventListener("submit", search);
  $("at-risk").addEventListener("click", () => ui.focus && openNode(ui.focus.id, "at-risk"));
  $("depth").addEventListener("change", () => ui.focus && openNode(ui.focus.id, ui.mode));
  try {
    const summary = await api("/api/summary");
    $("lake").textContent = `${summary.lake}: ${summary.nodes} nodes, ${summary.edges} edges`;
    fillList("teachers", "models whose outputs became data", summary.teachers, false);
    ensureCy();
    const hash = new URLSearchParams(location.hash.slice(1));
    if (hash.get("node")) {
      await openNode(hash.get("node"), hash.get("mode") === "at-risk" ? "at-risk" : undefined);
    }
    done(mark);
  } catch (err) { showError(err); }
}

document.addEventListener("DOMContentLoaded", start);
