// The Switchyard console: a page per view, each one bounded call to the public API with the
// workspace API key kept in this tab's session storage. Every value from the API is put in the
// page as text (never as HTML): response bodies come from receivers we do not control.
"use strict";

const KEY = "switchyard.apiKey";
const main = () => document.getElementById("main");

// ---- DOM ------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function show(...nodes) {
  main().replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
}

function flash(text, error) {
  const box = document.getElementById("flash");
  box.replaceChildren(h("div", { class: error ? "msg error" : "msg" }, text));
  if (!error) setTimeout(() => { if (box.textContent === text) box.replaceChildren(); }, 4000);
}

// A message that stays until dismissed (a new secret must not vanish before it is copied).
function notice(text) {
  const box = document.getElementById("flash");
  box.replaceChildren(h("div", { class: "msg" }, h("span", { class: "mono" }, text), " ", h("button", { onclick: () => box.replaceChildren() }, "Dismiss")));
}

// A click handler whose failure is shown, not lost.
const act = (fn) => async (e) => {
  try { await fn(e); } catch (err) { flash(err.message, true); }
};

function table(headers, rows) {
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "Nothing here."))));
}

const json = (v) => h("pre", { class: "mono" }, JSON.stringify(v, null, 2));
const when = (t) => (t ? new Date(t).toLocaleString() : "—");
const statusCell = (s) => h("td", { class: "status-" + s }, s);
const httpCell = (code) => h("td", { class: code ? "http-" + String(code)[0] : "muted" }, code ?? "—");
const link = (href, text) => h("a", { href }, text);

// ---- API ------------------------------------------------------------------------------------

async function api(method, path, body) {
  const key = sessionStorage.getItem(KEY);
  const init = { method, headers: { Authorization: "Bearer " + key } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (res.status === 401) {
    sessionStorage.removeItem(KEY);
    location.hash = "#/login";
    throw new Error("the API key is not valid");
  }
  if (!res.ok) {
    const e = data && data.error;
    throw new Error(e ? `${e.code}: ${e.message}${e.field ? " (" + e.field + ")" : ""}` : "HTTP " + res.status);
  }
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}

// A datetime-local value as RFC 3339, or "".
function rfc3339(local) {
  return local ? new Date(local).toISOString() : "";
}

// ---- views ----------------------------------------------------------------------------------

function login() {
  const input = h("input", { type: "password", name: "apiKey", placeholder: "sy_…", autocomplete: "off", required: true });
  show(h("form", {
    class: "login", id: "login",
    onsubmit: async (e) => {
      e.preventDefault();
      sessionStorage.setItem(KEY, input.value.trim());
      try {
        await api("GET", "/v1/endpoints?limit=1");
        location.hash = "#/endpoints";
      } catch (err) {
        flash(err.message, true);
      }
    },
  }, h("h1", {}, "Sign in"),
  h("p", { class: "muted" }, "A workspace API key. It is kept in this tab only, and the console can do nothing the key cannot."),
  h("label", {}, "API key", input), h("p", {}, h("button", { class: "primary", type: "submit" }, "Sign in"))));
}

async function endpoints() {
  const page = await api("GET", "/v1/endpoints?limit=100");
  const types = await api("GET", "/v1/event-types");
  const rows = page.data.map((ep) => {
    const hl = ep.health || {};
    const rate = hl.successRate1h == null ? "—" : Math.round(hl.successRate1h * 100) + " %";
    const pick = h("select", { "aria-label": "event type" }, types.data.map((t) => h("option", { value: t.name }, t.name)));
    return h("tr", { "data-endpoint": ep.id },
      h("td", {}, h("div", { class: "mono" }, ep.url), h("div", { class: "muted" }, ep.description || ""), link("#/deliveries?endpointId=" + ep.id, "deliveries")),
      h("td", {}, ep.enabled ? "enabled" : "disabled"),
      h("td", { class: "state-" + (hl.breaker ? hl.breaker.state : "closed") }, hl.breaker ? hl.breaker.state : "closed"),
      h("td", {}, rate, h("div", { class: "muted" }, (hl.attempts1h || 0) + " attempts / 1 h")),
      h("td", {}, hl.lastError || "—", h("div", { class: "muted" }, hl.lastErrorAt ? when(hl.lastErrorAt) : "")),
      h("td", {}, ep.rateLimit ? `${ep.rateLimit.perSecond}/s (burst ${ep.rateLimit.burst})` : "none"),
      h("td", {}, ep.ordering + (ep.orderingKey ? " by " + ep.orderingKey : "") + (ep.ordering === "unordered" || ep.orderingKey ? `, ${ep.maxInFlight} in flight` : "")),
      h("td", {},
        h("button", { onclick: act(async () => { await api("PATCH", "/v1/endpoints/" + ep.id, { enabled: !ep.enabled }); flash(ep.enabled ? "Disabled." : "Enabled."); await route(); }) }, ep.enabled ? "Disable" : "Enable"),
        " ",
        h("button", { onclick: act(async () => { if (!confirm("Rotate this endpoint's signing secret? The old one keeps signing for the grace period.")) return; const r = await api("POST", `/v1/endpoints/${ep.id}/secret/rotate`, {}); notice("New secret: " + r.secret + " (the old one signs until " + when(r.previousSecretValidUntil) + ")"); }) }, "Rotate secret"),
        h("div", { class: "bar" }, pick, h("button", { class: "send-test", onclick: act(async () => { const r = await api("POST", `/v1/endpoints/${ep.id}/test`, { eventType: pick.value }); flash("Test sent: delivery " + r.deliveryId); }) }, "Send test"))));
  });
  show(h("h1", {}, "Endpoints"), table(["URL", "State", "Breaker", "Success (1 h)", "Last error", "Rate limit", "Ordering", ""], rows));
}

function filterForm(fields, params, target) {
  const inputs = {};
  const form = h("form", {
    class: "filters", id: "filters",
    onsubmit: (e) => {
      e.preventDefault();
      const q = {};
      for (const [name, el] of Object.entries(inputs)) q[name] = el.type === "datetime-local" ? rfc3339(el.value) : el.value;
      location.hash = target + query(q);
    },
  });
  for (const f of fields) {
    let el;
    if (f.options) el = h("select", { name: f.name }, h("option", { value: "" }, "any"), f.options.map((o) => h("option", { value: o, selected: params.get(f.name) === o }, o)));
    else el = h("input", { name: f.name, type: f.type || "text", placeholder: f.placeholder || "" });
    if (!f.options) {
      const v = params.get(f.name) || "";
      el.value = f.type === "datetime-local" && v ? toLocal(v) : v;
    }
    inputs[f.name] = el;
    form.append(h("label", {}, f.label, el));
  }
  form.append(h("button", { type: "submit", class: "primary" }, "Filter"), h("a", { href: target }, "clear"));
  return form;
}

function toLocal(iso) {
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function pager(target, params, next) {
  const q = Object.fromEntries(params.entries());
  return h("div", { class: "bar" },
    params.get("cursor") ? link(target + query({ ...q, cursor: "" }), "← newest") : null,
    next ? link(target + query({ ...q, cursor: next }), "next page →") : h("span", { class: "muted" }, "end of the list"));
}

const DELIVERY_FILTERS = (types) => [
  { name: "status", label: "Status", options: ["pending", "retrying", "succeeded", "failed"] },
  { name: "endpointId", label: "Endpoint id", placeholder: "ep_…" },
  { name: "eventType", label: "Event type", options: types },
  { name: "since", label: "Since", type: "datetime-local" },
  { name: "until", label: "Until", type: "datetime-local" },
];

function deliveryRows(data) {
  return data.map((d) => h("tr", { "data-delivery": d.id, "data-status": d.status },
    h("td", { class: "mono" }, link("#/deliveries/" + d.id, d.id), d.test ? h("div", { class: "muted" }, "test") : null),
    statusCell(d.status),
    h("td", { class: "mono" }, d.endpointId),
    h("td", {}, d.eventType),
    h("td", {}, when(d.createdAt)),
    h("td", {}, d.attemptCount),
    httpCell(d.lastResponseStatus),
    h("td", {}, d.lastDurationMs == null ? "—" : d.lastDurationMs + " ms")));
}

const DELIVERY_HEADERS = ["Delivery", "Status", "Endpoint", "Event type", "Created", "Attempts", "Last response", "Latency"];

async function deliveries(params) {
  const types = (await api("GET", "/v1/event-types")).data.map((t) => t.name);
  const q = {};
  for (const k of ["status", "endpointId", "eventType", "since", "until", "cursor"]) q[k] = params.get(k);
  const page = await api("GET", "/v1/deliveries" + query({ ...q, limit: "50" }));
  show(h("h1", {}, "Deliveries"), filterForm(DELIVERY_FILTERS(types), params, "#/deliveries"),
    table(DELIVERY_HEADERS, deliveryRows(page.data)), pager("#/deliveries", params, page.nextCursor));
}

function attemptView(a) {
  return h("div", { class: "attempt", "data-attempt": a.attempt },
    h("h2", {}, `Attempt ${a.attempt} — `, a.response ? h("span", { class: "http-" + String(a.response.status)[0], "data-response-status": a.response.status }, String(a.response.status)) : h("span", { class: "status-failed" }, a.error ? a.error.kind : "no response"),
      h("span", { class: "muted" }, ` · ${when(a.startedAt)} · ${a.durationMs} ms`)),
    a.error ? h("p", { class: "status-failed" }, `${a.error.kind}: ${a.error.message}`) : null,
    a.nextAttemptAt ? h("p", {}, "Next attempt: " + when(a.nextAttemptAt)) : null,
    h("div", { class: "muted" }, "Request: POST " + a.request.url), json(a.request.headers),
    a.request.body ? h("pre", { class: "mono" }, a.request.body) : null,
    a.response ? [h("div", { class: "muted" }, "Response headers"), json(a.response.headers), h("div", { class: "muted" }, "Response body" + (a.response.truncated ? " (truncated)" : "")), h("pre", { class: "mono response-body" }, a.response.body)] : null);
}

async function delivery(id) {
  const d = await api("GET", "/v1/deliveries/" + encodeURIComponent(id));
  const retry = h("button", {
    class: "primary", id: "retry",
    onclick: async () => {
      try {
        await api("POST", `/v1/deliveries/${encodeURIComponent(id)}/retry`);
        flash("Retry queued: a new attempt now.");
        await waitForAttempt(id, d.attempts.length);
      } catch (e) { flash(e.message, true); }
    },
  }, "Retry");
  show(h("h1", {}, "Delivery ", h("span", { class: "mono" }, d.id)),
    table(["Status", "Event", "Endpoint", "Rule", "Created", "Attempts"], [h("tr", {},
      statusCell(d.status), h("td", { class: "mono" }, link("#/events/" + d.eventId, d.eventId), h("div", {}, d.eventType)),
      h("td", { class: "mono" }, d.endpointId), h("td", {}, d.test ? "test send" : d.ruleId), h("td", {}, when(d.createdAt)), h("td", {}, d.attemptCount))]),
    h("div", { class: "bar" }, retry, h("span", { class: "muted" }, "One more attempt now, outside the schedule and whatever the breaker says.")),
    h("h2", {}, "Payload"), json(d.payload),
    h("h2", {}, "Attempts"), d.attempts.length ? d.attempts.slice().reverse().map(attemptView) : h("p", { class: "muted" }, "No attempt yet."));
}

// After a retry: reloads the delivery until its new attempt is there (at most 15 s).
async function waitForAttempt(id, had) {
  for (let i = 0; i < 60; i++) {
    await new Promise((r) => setTimeout(r, 250));
    const d = await api("GET", "/v1/deliveries/" + encodeURIComponent(id));
    if (d.attempts.length > had && d.status !== "pending") break;
  }
  if (location.hash === "#/deliveries/" + id) await delivery(id);
}

async function events(params) {
  const types = (await api("GET", "/v1/event-types")).data.map((t) => t.name);
  const q = { type: params.get("type"), since: params.get("since"), until: params.get("until"), cursor: params.get("cursor"), limit: "50" };
  const page = await api("GET", "/v1/events" + query(q));
  const rows = page.data.map((e) => h("tr", { "data-event": e.id }, h("td", { class: "mono" }, link("#/events/" + e.id, e.id)), h("td", {}, e.type), h("td", {}, when(e.createdAt)), h("td", {}, e.deliveries)));
  show(h("h1", {}, "Events"),
    filterForm([{ name: "type", label: "Type", options: types }, { name: "since", label: "Since", type: "datetime-local" }, { name: "until", label: "Until", type: "datetime-local" }], params, "#/events"),
    table(["Event", "Type", "Received", "Deliveries"], rows), pager("#/events", params, page.nextCursor));
}

async function eventView(id) {
  const e = await api("GET", "/v1/events/" + encodeURIComponent(id));
  show(h("h1", {}, "Event ", h("span", { class: "mono" }, e.id)), h("p", {}, `${e.type} · received ${when(e.createdAt)}`),
    h("h2", {}, "As received"), json(e.payload),
    h("h2", {}, "Deliveries"),
    table(["Delivery", "Status", "Endpoint", "Rule"], e.deliveries.map((d) => h("tr", {}, h("td", { class: "mono" }, link("#/deliveries/" + d.id, d.id)), statusCell(d.status), h("td", { class: "mono" }, d.endpointId), h("td", {}, d.test ? "test send" : d.ruleId)))));
}

async function rules(params) {
  const page = await api("GET", "/v1/event-rules" + query({ cursor: params.get("cursor"), limit: "100" }));
  const rows = page.data.map((r) => h("tr", { "data-rule": r.id },
    h("td", {}, link("#/rules/" + r.id, r.name)),
    h("td", {}, r.schedule ? `every ${r.schedule.cron} (${r.schedule.timezone})` : (r.events || []).join(", ")),
    h("td", {}, r.actions.map((a) => a.endpointId).join(", ")),
    h("td", {}, r.enabled ? "enabled" : "disabled"),
    h("td", {}, h("button", { onclick: act(async () => { await api("PATCH", "/v1/event-rules/" + r.id, { enabled: !r.enabled }); flash(r.enabled ? "Rule disabled." : "Rule enabled."); await route(); }) }, r.enabled ? "Disable" : "Enable"))));
  show(h("h1", {}, "Event rules"), table(["Name", "Events or schedule", "Endpoints", "State", ""], rows), pager("#/rules", params, page.nextCursor));
}

async function rule(id) {
  const r = await api("GET", "/v1/event-rules/" + encodeURIComponent(id));
  show(h("h1", {}, "Rule ", r.name), json(r));
}

async function eventTypes() {
  const page = await api("GET", "/v1/event-types");
  show(h("h1", {}, "Event types"), page.data.map((t) => h("div", { class: "attempt", "data-type": t.name },
    h("h2", {}, t.name, h("span", { class: "muted" }, t.clientSent ? " · sent by your platform" : " · emitted by Switchyard")),
    h("p", {}, t.description), h("div", { class: "muted" }, "Example"), json(t.example),
    h("details", {}, h("summary", {}, "JSON Schema"), json(t.schema)))));
}

async function replay() {
  const eps = await api("GET", "/v1/endpoints?limit=100");
  const ep = h("select", { name: "endpoint" }, eps.data.map((e) => h("option", { value: e.id }, e.url + " (" + e.id + ")")));
  const since = h("input", { type: "datetime-local", name: "since", required: true });
  const until = h("input", { type: "datetime-local", name: "until" });
  const out = h("div", { id: "replay-result" });
  const count = act(async (e) => {
    e.preventDefault();
    // Counts page by page (each page one bounded call), up to 10,000.
    let n = 0, cursor = "", pages = 0;
    do {
      const page = await api("GET", "/v1/deliveries" + query({ endpointId: ep.value, status: "failed", since: rfc3339(since.value), until: rfc3339(until.value), limit: "1000", cursor }));
      n += page.data.length;
      cursor = page.nextCursor || "";
      pages++;
    } while (cursor && pages < 10);
    const more = cursor ? "+" : "";
    out.replaceChildren(h("p", { id: "replay-count" }, `${n}${more} failed deliveries in this window.`),
      h("button", { class: "primary", id: "replay-confirm", onclick: act(async () => {
        const r = await api("POST", `/v1/endpoints/${ep.value}/replay`, { since: rfc3339(since.value), until: rfc3339(until.value) || undefined });
        out.replaceChildren(h("p", {}, `Replayed ${r.replayed} deliveries.`));
      }) }, `Replay ${n}${more}`));
  });
  show(h("h1", {}, "Replay failed deliveries"),
    h("form", { class: "filters", onsubmit: count }, h("label", {}, "Endpoint", ep), h("label", {}, "Since", since), h("label", {}, "Until", until), h("button", { type: "submit" }, "Count")),
    out);
}

let liveTimer = null;
let liveRun = 0;
async function live() {
  const run = ++liveRun;
  const seen = new Set();
  const body = h("div", {});
  show(h("h1", {}, "Live"), h("p", { class: "muted" }, "The newest deliveries, refreshed every second."), body);
  const tick = async () => {
    if (location.hash !== "#/live" || run !== liveRun) return;
    try {
      const page = await api("GET", "/v1/deliveries?limit=50");
      const rows = deliveryRows(page.data);
      rows.forEach((r, i) => { if (seen.size && !seen.has(page.data[i].id)) r.classList.add("new"); });
      page.data.forEach((d) => seen.add(d.id));
      body.replaceChildren(table(DELIVERY_HEADERS, rows));
    } catch (e) { flash(e.message, true); }
    liveTimer = setTimeout(tick, 1000);
  };
  await tick();
}

// ---- routing --------------------------------------------------------------------------------

async function route() {
  clearTimeout(liveTimer);
  liveRun++;
  const [path, qs] = (location.hash.slice(1) || "/endpoints").split("?");
  const params = new URLSearchParams(qs || "");
  const signedIn = !!sessionStorage.getItem(KEY);
  document.getElementById("nav").hidden = !signedIn;
  if (!signedIn || path === "/login") return login();
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.getAttribute("href") === "#" + path);
  const parts = path.split("/").filter(Boolean);
  try {
    switch (parts[0]) {
      case "deliveries": return parts[1] ? await delivery(decodeURIComponent(parts[1])) : await deliveries(params);
      case "events": return parts[1] ? await eventView(decodeURIComponent(parts[1])) : await events(params);
      case "rules": return parts[1] ? await rule(decodeURIComponent(parts[1])) : await rules(params);
      case "event-types": return await eventTypes();
      case "replay": return await replay();
      case "live": return await live();
      default: return await endpoints();
    }
  } catch (e) {
    flash(e.message, true);
  }
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("signout").addEventListener("click", () => { sessionStorage.removeItem(KEY); location.hash = "#/login"; });
  route();
});
