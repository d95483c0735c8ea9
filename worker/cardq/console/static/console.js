// The cardq console: polls api/state and renders it. No framework, no build step; every
// value is inserted as text (never as HTML), so a destination name cannot inject markup.
"use strict";

const POLL_MS = 2000;
let state = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function td(value, cls) { return el("td", cls ? { class: cls } : {}, value ?? ""); }
function badge(text, cls) { return el("span", { class: `badge ${cls || text}` }, text); }

function fill(tableId, rows, columns, emptyText) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren();
  if (!rows.length) {
    body.append(el("tr", { class: "empty" }, el("td", { colSpan: columns }, emptyText)));
    return;
  }
  for (const row of rows) body.append(row);
}

function seconds(s) {
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${(s / 3600).toFixed(1)} h`;
}

function pausedKey(kind, name) {
  return (state.pauses || []).find((p) => p.kind === kind && p.name === name);
}

function actionButton(kind, name) {
  if (!state.actions) return td("", "act");
  const paused = pausedKey(kind, name);
  const button = el("button", { type: "button" }, paused ? "Resume" : "Pause");
  button.setAttribute("data-action", paused ? "resume" : "pause");
  button.setAttribute("data-target", `${kind}:${name}`);
  button.addEventListener("click", () =>
    act(paused ? "resume" : "pause", kind, name, paused ? paused.reach : reach()));
  return el("td", { class: "act" }, button);
}

function reach() { return document.getElementById("act-reach").value; }

function windows(scope) {
  const cell = el("td");
  for (const w of scope.windows) {
    const ratio = w.limit ? Math.min(1, w.used / w.limit) : 0;
    const bar = el("i", { class: ratio >= 1 ? "full" : ratio >= 0.8 ? "hot" : "" });
    bar.style.width = `${Math.round(ratio * 100)}%`;
    cell.append(el("span", { class: "win" }, el("span", { class: "bar" }, bar),
      `${w.used}/${w.limit} per ${w.seconds} s`));
  }
  if (!scope.windows.length) cell.append(el("span", { class: "muted" }, "no limit"));
  return cell;
}

function budgetRows(snapshot) {
  return snapshot.scopes.map((scope) => el("tr", { "data-scope": scope.key },
    td(scope.key, "mono"), windows(scope),
    td(scope.cooling_s > 0 ? seconds(scope.cooling_s) : "", "num")));
}

function render() {
  const s = state;
  document.getElementById("worker").textContent = `pod ${s.worker_id}`;
  document.getElementById("updated").textContent =
    `updated ${new Date().toLocaleTimeString()}`;
  const lanes = s.lanes;
  const results = s.results || {};
  const deadTotal = Object.values(s.dead_letters).reduce((a, b) => a + b, 0);
  const tiles = [
    ["lanes", lanes.total], ["queued", lanes.queued], ["sending or retrying", lanes.in_progress],
    ["paused lanes", lanes.paused], ["delivered", results.delivered || 0],
    ["failed", (results.failed || 0) + (results.expired || 0) + (results.rejected || 0)],
    ["dead letters", deadTotal], ["troubled destinations", s.troubled.length],
  ];
  document.getElementById("summary").replaceChildren(...tiles.map(([label, n]) =>
    el("div", { class: "tile", "data-tile": label },
      el("div", { class: "n" }, n), el("div", { class: "l" }, label))));

  fill("lanes", lanes.top.map((lane) => el("tr", { "data-destination": lane.destination },
    td(lane.destination, "mono"), td(lane.queued, "num"),
    el("td", {}, badge(lane.phase, lane.phase)), td(seconds(lane.waiting_s), "num"),
    td(lane.attempts || "", "num"), actionButton("destination", lane.destination))),
  6, "No lane has work: every destination is idle.");

  fill("troubled", s.troubled.map((t) => el("tr", { "data-destination": t.destination },
    el("td", {}, badge(t.state)), td(t.destination, "mono"), td(t.bot),
    td(t.throttled, "num"), td(t.failed, "num"), td(`${t.last_kind} (${t.last_code})`),
    td(t.platform_code === null ? "" :
      `${t.platform_code}${t.platform_msg ? ` ${t.platform_msg}` : ""}`),
    td(seconds(t.seconds_ago), "num"), td(t.delivered_since, "num"),
    actionButton("destination", t.destination))),
  10, "No destination was throttled or failing in the last 5 minutes.");

  fill("failures", s.failures.map((f) => el("tr", { "data-request": f.request_id || "" },
    td(new Date(f.at).toLocaleTimeString()), td(f.request_id, "mono"),
    el("td", {}, badge(f.status)), td(f.destination, "mono"),
    td(f.kind ? `${f.kind} (${f.code})` : ""), td(f.platform_code ?? ""),
    td(f.attempts, "num"), td(f.message))),
  8, "No request has failed since this pod started.");

  fill("dead-letters", Object.entries(s.dead_letters).sort((a, b) => b[1] - a[1])
    .map(([reason, n]) => el("tr", { "data-reason": reason }, td(reason), td(n, "num"))),
  2, "No dead letters.");

  fill("pauses", s.pauses.map((p) => el("tr", { "data-pause": `${p.kind}:${p.name}` },
    td(p.kind), td(p.name, "mono"), td(p.reach),
    td(new Date(p.since * 1000).toLocaleTimeString()), actionButton(p.kind, p.name))),
  5, "Nothing is paused.");

  const pod = s.budgets.pod;
  fill("budgets", pod ? budgetRows(pod) : [], 3,
    pod ? "No budget used yet." : "This pod's limiter shows no budgets.");
  const pool = s.budgets.pool;
  document.getElementById("pool-budgets").hidden = !pool;
  document.getElementById("pool-budgets-none").textContent = pool ? "" :
    "This pool shares no budgets: each pod paces its own sends (the table above).";
  if (pool) fill("pool-budgets", budgetRows(pool), 3, "No budget used yet.");

  document.getElementById("actions-off").hidden = s.actions;
  document.getElementById("act-form").hidden = !s.actions;
  document.querySelector("#act-reach option[value=pool]").disabled = !s.pool;
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("api/state", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    state = await response.json();
    render();
    status.textContent = "live";
    status.className = "badge ok";
  } catch (error) {
    status.textContent = `unreachable (${error.message})`;
    status.className = "badge error";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

async function act(action, kind, name, where) {
  const out = document.getElementById("act-result");
  const token = document.getElementById("token").value;
  sessionStorage.setItem("cardq-console-token", token);
  try {
    const response = await fetch(`api/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify({ kind, name, reach: where }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(`${response.status}: ${body.error || response.statusText}`);
    out.textContent = `${action === "pause" ? "Paused" : "Resumed"} ${kind} ${name} (${where}).`;
    out.className = "";
    state.pauses = body.pauses;
    render();
  } catch (error) {
    out.textContent = `Refused: ${error.message}`;
    out.className = "error";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token").value = sessionStorage.getItem("cardq-console-token") || "";
  const form = document.getElementById("act-form");
  const named = () => [document.getElementById("act-kind").value,
    document.getElementById("act-name").value.trim()];
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const [kind, name] = named();
    if (name) act("pause", kind, name, reach());
  });
  document.getElementById("act-resume").addEventListener("click", () => {
    const [kind, name] = named();
    if (name) act("resume", kind, name, reach());
  });
  poll();
});
