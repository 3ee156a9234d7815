// The embedd web page: same-origin calls to the daemon's API, nothing else. Every text from the
// API (document text above all) goes into the page through textContent, never as HTML.
"use strict";

const TOKEN_KEY = "embedd-token";
const MAX_EVENTS = 50;
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY) || "";
let indexedSeen = 0;
let statusTimer = null;
let wakeEvents = null; // ends the events loop's pause (a token was just given)

function pause(ms) {
  return new Promise((resolve) => { wakeEvents = resolve; setTimeout(resolve, ms); });
}

class Unauthorized extends Error {}

async function api(path, init = {}) {
  const headers = new Headers(init.headers || {});
  if (token) headers.set("Authorization", "Bearer " + token);
  const resp = await fetch(path, { ...init, headers, cache: "no-store" });
  if (resp.status === 401) {
    $("token-form").hidden = false;
    throw new Unauthorized("a token is needed");
  }
  return resp;
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function setText(id, value) {
  $(id).textContent = value === undefined || value === null ? "–" : String(value);
}

// -- search ------------------------------------------------------------------------------

async function probeModes() {
  // The API names an unknown field in "param": an empty query with a mode tells whether this
  // daemon's /v1/search takes modes without running a search.
  try {
    const resp = await api("/v1/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query: "", mode: "vector" }),
    });
    const doc = await resp.json();
    $("mode-field").hidden = !!(doc.error && doc.error.param === "mode");
  } catch (err) {
    $("mode-field").hidden = true;
  }
}

function where(hit) {
  const parts = [];
  if (hit.page !== null && hit.page !== undefined) parts.push("page " + hit.page);
  if (hit.section) parts.push(Array.isArray(hit.section) ? hit.section.join(" › ") : hit.section);
  if (hit.title && !hit.section) parts.push(hit.title);
  parts.push("chunk " + hit.chunk);
  return parts.join(" · ");
}

function showHits(doc) {
  const list = $("hits");
  list.replaceChildren();
  for (const hit of doc.results || []) {
    const li = el("li");
    li.dataset.source = hit.source;
    const head = el("div", null, "hit-head");
    head.append(el("span", hit.source, "hit-source"), el("span", where(hit), "hit-where"),
      el("span", "score " + Number(hit.score).toFixed(3), "hit-score"));
    li.append(head, el("p", hit.content, "hit-text"));
    list.append(li);
  }
  const n = (doc.results || []).length;
  $("search-info").textContent = n + " hit" + (n === 1 ? "" : "s") + " of " + doc.searched +
    " chunks in " + doc.took_ms + " ms";
}

async function search(event) {
  event.preventDefault();
  const body = { query: $("query").value, k: Number($("k").value) || 5 };
  const prefix = $("prefix").value.trim();
  if (prefix) body.source_prefix = prefix;
  if (!$("mode-field").hidden) body.mode = $("mode").value;
  $("search-info").textContent = "searching…";
  try {
    const resp = await api("/v1/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const doc = await resp.json();
    if (!resp.ok) {
      $("hits").replaceChildren();
      $("search-info").textContent = (doc.error && doc.error.message) || "search failed (" + resp.status + ")";
      return;
    }
    showHits(doc);
  } catch (err) {
    $("search-info").textContent = err instanceof Unauthorized ? "enter the token above" : "search failed: " + err;
  }
}

// -- state -------------------------------------------------------------------------------

async function refreshStatus() {
  try {
    const doc = await (await api("/v1/status")).json();
    const d = doc.daemon || {};
    setText("phase", d.phase || "not running");
    setText("files", d.in_memory && d.in_memory.files);
    setText("chunks", d.in_memory && d.in_memory.chunks);
    setText("queued", d.queued_files);
    showSinks(doc.sinks || []);
  } catch (err) {
    if (!(err instanceof Unauthorized)) setText("phase", "unreachable");
  }
  refreshFailed();
}

function scheduleStatus() {
  if (statusTimer === null) statusTimer = setTimeout(() => { statusTimer = null; refreshStatus(); }, 300);
}

function showSinks(sinks) {
  const list = $("sinks");
  list.replaceChildren();
  for (const sink of sinks) {
    const lag = sink.lag;
    let text = sink.name + ": ";
    if (!lag) text += "no queue yet";
    else {
      text += lag.pending + " files waiting";
      if (lag.oldest_age_s !== null) text += ", oldest " + Math.round(lag.oldest_age_s) + " s";
      if (lag.full_sync) text += ", full sync pending";
      if (lag.error) text += ", last error: " + lag.error;
    }
    list.append(el("li", text));
  }
  $("sinks-box").hidden = sinks.length === 0;
}

async function refreshFailed() {
  // Files that are not indexed, with the reason: failed (unreadable, corrupt, an error) and
  // skipped (by a rule: binary, generated, too large). Without GET /v1/files nothing is shown.
  try {
    const files = [];
    for (const state of ["failed", "skipped"]) {
      const resp = await api("/v1/files?state=" + state + "&limit=100");
      if (!resp.ok) { $("failed-box").hidden = true; return; }
      files.push(...((await resp.json()).files || []));
    }
    const list = $("failed");
    list.replaceChildren();
    for (const f of files) {
      const li = el("li");
      li.dataset.source = f.source;
      li.dataset.state = f.state;
      li.append(el("strong", f.source), el("span", " (" + f.state + "): " + (f.reason || "")));
      list.append(li);
    }
    $("failed-box").hidden = list.childElementCount === 0;
  } catch (err) {
    $("failed-box").hidden = true;
  }
}

function showBulk(kind, data) {
  const total = data.total || 0;
  const done = kind === "bulk_done" ? total : data.done !== undefined ? data.done : total - (data.left || 0);
  $("bulk").hidden = false;
  setText("bulk-done", done);
  setText("bulk-total", total);
  $("bulk-progress").max = Math.max(total, 1);
  $("bulk-progress").value = done;
}

function describe(event) {
  const d = event.data || {};
  const subject = d.source || d.path || d.watch || "";
  let text = "#" + event.id + " " + event.type + (subject ? " " + subject : "");
  if (d.to) text += " → " + d.to;
  if (d.reason) text += " (" + d.reason + ")";
  if (event.type.startsWith("bulk_")) text += " " + (d.done !== undefined ? d.done : d.total - (d.left || 0)) + "/" + d.total;
  return text;
}

function onEvent(event) {
  const list = $("events");
  const li = el("li", describe(event));
  li.dataset.type = event.type;
  list.prepend(li);
  while (list.childElementCount > MAX_EVENTS) list.lastElementChild.remove();
  if (event.type === "file_indexed") setText("indexed-seen", ++indexedSeen);
  if (event.type.startsWith("bulk_")) showBulk(event.type, event.data || {});
  if (event.type.startsWith("file_") || event.type.startsWith("folder_") || event.type === "store_saved") scheduleStatus();
}

async function followEvents() {
  // A long poll (not EventSource): fetch can send the token, EventSource cannot.
  let since = null;
  for (;;) {
    try {
      const first = since === null;
      const url = first ? "/v1/events?since=0&timeout=0&limit=1000" : "/v1/events?since=" + since + "&timeout=25";
      const doc = await (await api(url)).json();
      if (doc.missed) onEvent({ id: "…", type: "events_missed", data: { reason: doc.missed + " events missed" } });
      // On the first read only the last few kept events are listed, and counters are not bumped.
      const events = first ? (doc.events || []).slice(-10) : doc.events || [];
      for (const event of events) {
        if (first) $("events").prepend(el("li", describe(event)));
        else onEvent(event);
      }
      since = doc.events && doc.events.length ? doc.events[doc.events.length - 1].id : doc.last_id;
      if (first) {
        since = doc.last_id;
        document.body.dataset.events = "live"; // counters move from here on
      }
    } catch (err) {
      await pause(err instanceof Unauthorized ? 5000 : 2000);
    }
  }
}

// -- start -------------------------------------------------------------------------------

function start() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-form").hidden = true;
    if (wakeEvents) wakeEvents();
    probeModes();
    refreshStatus();
  });
  $("search-form").addEventListener("submit", search);
  probeModes();
  refreshStatus();
  setInterval(refreshStatus, 10000);
  followEvents();
}

document.addEventListener("DOMContentLoaded", start);
