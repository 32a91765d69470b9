"use strict";
// The DeepLens search page: one script, no framework, talking only to this origin.
const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// The key lives in this tab's sessionStorage only: gone when the tab closes, never
// shared with other tabs or left on disk for other pages of this origin.
let apiKey = sessionStorage.getItem("deeplens-key") || "";
localStorage.removeItem("deeplens-key");  // left there by older versions of this page
$("key").value = apiKey;

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.style.display = message ? "block" : "none";
}

// Server answers in plain words: FastAPI's validation lists become one sentence.
function plainDetail(body, status) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail) && detail.length) {
    const first = detail[0];
    const field = (first.loc || []).filter((p) => p !== "body").join(" ");
    return (field ? field + ": " : "") + (first.msg || "is not valid");
  }
  return "the service answered " + status;
}

function retryAfter(response) {
  const seconds = parseFloat(response.headers.get("Retry-After") || "1");
  return Math.min(30, Math.max(1, isNaN(seconds) ? 1 : seconds)) * 1000;
}

// Every call: the key, 429s waited out (Retry-After) and retried, errors made readable.
async function api(path, options = {}) {
  if (!apiKey) throw new Error("Paste an API key first.");
  const headers = Object.assign({ Authorization: "Bearer " + apiKey }, options.headers || {});
  for (let attempt = 0; ; attempt++) {
    let response;
    try {
      response = await fetch(path, Object.assign({}, options, { headers }));
    } catch (e) {
      throw new Error("The DeepLens service is not reachable. Is it running?");
    }
    if (response.status === 429 && attempt < 6) { await sleep(retryAfter(response)); continue; }
    if (response.ok) return response;
    let body = null;
    try { body = await response.json(); } catch (_) {}
    let detail = plainDetail(body, response.status);
    if (response.status === 401) detail = "The API key was not accepted. Check it and press Enter.";
    else if (response.status === 429) detail = "Too many requests right now; try again in a moment.";
    else if (response.status === 503) detail = "The service is busy or restarting: " + detail;
    const error = new Error(detail.charAt(0).toUpperCase() + detail.slice(1));
    error.status = response.status;
    throw error;
  }
}

const thumbs = new Map();
async function thumbnail(imageId) {
  if (!thumbs.has(imageId)) {
    // The Embedder's thumbnail (a few KB); the original only for images embedded before
    // thumbnails existed.
    const base = "/v1/images/" + imageId;
    thumbs.set(imageId, api(base + "/thumbnail").catch(() => api(base + "/content"))
      .then((r) => r.blob()).then((b) => URL.createObjectURL(b)).catch(() => ""));
  }
  return thumbs.get(imageId);
}

function card(item, extra) {
  const el = document.createElement("div");
  el.className = "card";
  el.dataset.imageId = item.image_id;
  el.innerHTML = '<img alt=""><div class="meta"><span class="score"></span> <span class="name"></span></div>';
  el.querySelector(".score").textContent = item.score !== undefined ? item.score.toFixed(3) : "";
  el.querySelector(".name").textContent = item.original_file_name || item.image_id;
  el.title = item.original_file_name || item.image_id;
  thumbnail(item.image_id).then((url) => { if (url) el.querySelector("img").src = url; });
  el.addEventListener("click", () => openImage(item.image_id));
  if (extra) el.querySelector(".meta").append(extra);
  return el;
}

function clearResults() {
  $("results").replaceChildren();
  $("search-info").textContent = "";
}

function showResults(target, body, info) {
  target.replaceChildren(...body.hits.map((h) => card(h)));
  if (info) info.textContent = body.hits.length ? body.hits.length + " results from model " + body.model
                                               : "No matching images yet (model " + body.model + ").";
}

async function searchText() {
  showError("");
  const text = $("query").value.trim();
  if (!text) { clearResults(); showError("Type a few words to search for."); return; }
  try {
    const r = await api("/v1/search", { method: "POST", headers: { "Content-Type": "application/json" },
                                        body: JSON.stringify({ text, k: 24 }) });
    showResults($("results"), await r.json(), $("search-info"));
  } catch (e) { clearResults(); showError(e.message); }
}

async function searchImage(file) {
  showError("");
  try {
    const form = new FormData();
    form.append("file", file);
    form.append("k", "24");
    const r = await api("/v1/search/image", { method: "POST", body: form });
    showResults($("results"), await r.json(), $("search-info"));
  } catch (e) {
    clearResults();
    showError(e.status === 415 || e.status === 413 || e.status === 422
      ? "That file cannot be used as a search image: " + e.message : e.message);
  }
}

async function openImage(imageId) {
  showError("");
  try {
    const row = await (await api("/v1/images/" + imageId)).json();
    $("detail").hidden = false;
    $("detail-title").textContent = row.original_file_name + " (" + row.image_id + ")";
    $("detail-img").src = await thumbnail(imageId);
    const t = row.timestamps;
    const steps = [["uploaded", t.uploaded_at], ["validated", t.validated_at], ["processed", t.processed_at],
                   ["indexed", t.indexed_at], ["failed", t.failed_at]].filter(([, at]) => at);
    const status = $("detail-status");
    status.replaceChildren();
    const head = document.createElement("p");
    head.innerHTML = "Status: <strong></strong>";
    head.querySelector("strong").textContent = row.status + (row.failure_reason ? " (" + row.failure_reason + ": " + row.failure_message + ")" : "");
    head.id = "detail-status-line";
    status.append(head);
    for (const [name, at] of steps) {
      const line = document.createElement("div");
      line.className = "muted";
      line.textContent = name + " at " + new Date(at).toLocaleString();
      status.append(line);
    }
    const dups = await (await api("/v1/images/" + imageId + "/duplicates")).json();
    const box = $("detail-dups");
    box.replaceChildren();
    const tiers = document.createElement("p");
    tiers.textContent = "Tiers checked: " + (dups.tiers.join(", ") || "not yet");
    box.append(tiers);
    if (!dups.matches.length) box.append("No duplicates found.");
    const grid = document.createElement("div");
    grid.className = "grid small";
    box.append(grid);
    for (const m of dups.matches) {
      let other = { image_id: m.image_id, original_file_name: m.image_id };
      try { other = await (await api("/v1/images/" + m.image_id)).json(); } catch (_) {}
      const kind = document.createElement("div");
      kind.className = "dup";
      kind.innerHTML = '<span class="kind"></span> <span class="muted"></span>';
      kind.querySelector(".kind").textContent = m.kind;
      kind.querySelector(".muted").textContent = "score " + m.score.toFixed(3);
      grid.append(card(other, kind));
    }
    const similarBox = $("detail-similar");
    try {
      showResults(similarBox, await (await api("/v1/images/" + imageId + "/similar?k=8")).json());
    } catch (e) {
      similarBox.textContent = e.status === 404 ? "Not in the search index yet." : e.message;
    }
    $("detail-delete").onclick = () => deleteImage(imageId, row.original_file_name);
    $("detail").scrollIntoView({ behavior: "smooth" });
  } catch (e) { showError(e.message); }
}

async function deleteImage(imageId, name) {
  if (!confirm("Delete " + (name || imageId) + "? This cannot be undone.")) return;
  try {
    await api("/v1/images/" + imageId, { method: "DELETE" });
    document.querySelectorAll('[data-image-id="' + imageId + '"]').forEach((el) => el.remove());
    $("detail").hidden = true;
    showError("");
    $("library-info").textContent = "Deleted " + (name || imageId) + ".";
  } catch (e) { showError(e.message); }
}

// ---- library: the tenant's images, newest first, paged, by status ----------------
let libraryAfter = null;
async function loadLibrary(more = false) {
  if (!apiKey) return;
  try {
    const params = new URLSearchParams({ limit: "24" });
    const status = $("library-status").value;
    if (status) params.set("status", status);
    if (more && libraryAfter) params.set("after", libraryAfter);
    const page = await (await api("/v1/images?" + params)).json();
    const cards = page.items.map((row) => {
      const remove = document.createElement("button");
      remove.className = "secondary small delete";
      remove.textContent = "Delete";
      remove.addEventListener("click", (ev) => { ev.stopPropagation(); deleteImage(row.image_id, row.original_file_name); });
      const state = document.createElement("div");
      state.className = "muted status";
      state.textContent = row.status + (row.failure_reason ? ": " + row.failure_reason : "");
      const wrap = document.createElement("div");
      wrap.append(state, remove);
      return card(row, wrap);
    });
    if (more) $("library").append(...cards); else $("library").replaceChildren(...cards);
    libraryAfter = page.next_after;
    $("library-more").hidden = !page.next_after;
    const total = Object.values(page.counts).reduce((a, b) => a + b, 0);
    $("who").textContent = "key accepted: " + total + " images in this tenant";
    $("library-info").textContent = total ? total + " images: " +
      Object.entries(page.counts).map(([k, v]) => v + " " + k).join(", ") : "No images yet: drop some on the right.";
  } catch (e) { showError(e.message); }
}

// ---- uploads: a few at a time, 429/503 waited out, statuses polled in bulk --------
const queue = [];
let sending = 0;
const UPLOAD_CONCURRENCY = 4;
const following = new Map();  // image id -> its row's state element

function upload(file) {
  const line = document.createElement("div");
  line.className = "file";
  line.innerHTML = '<span class="name"></span><progress max="100" value="0"></progress><span class="state">waiting</span>';
  line.querySelector(".name").textContent = file.name;
  line.title = file.name;
  $("uploads").prepend(line);
  queue.push({ file, line });
  pump();
}

function pump() {
  while (sending < UPLOAD_CONCURRENCY && queue.length) {
    const job = queue.shift();
    sending++;
    send(job.file, job.line).finally(() => { sending--; pump(); });
  }
}

function post(file, bar) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/images");
    xhr.setRequestHeader("Authorization", "Bearer " + apiKey);
    xhr.upload.onprogress = (ev) => { if (ev.lengthComputable) bar.value = 100 * ev.loaded / ev.total; };
    xhr.onerror = () => resolve({ status: 0, body: {}, retry: 2000 });
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (_) {}
      const seconds = parseFloat(xhr.getResponseHeader("Retry-After") || "1");
      resolve({ status: xhr.status, body, retry: Math.min(30, Math.max(1, seconds || 1)) * 1000 });
    };
    const form = new FormData();
    form.append("file", file);
    xhr.send(form);
  });
}

async function send(file, line) {
  const state = line.querySelector(".state");
  const bar = line.querySelector("progress");
  state.textContent = "sending";
  const answers = [];  // kept on the row: what the service said, attempt by attempt
  for (let attempt = 0; attempt < 120; attempt++) {  // minutes of a busy service
    const { status, body, retry } = await post(file, bar);
    answers.push(status);
    line.dataset.answers = answers.join(",");
    if (status === 202) {
      bar.value = 100;
      line.dataset.imageId = body.image_id;
      line.classList.add("link");
      line.addEventListener("click", () => openImage(body.image_id));
      state.textContent = body.duplicate_of ? "already uploaded" : "uploaded";
      if (!body.duplicate_of) following.set(body.image_id, state);
      schedulePoll(500);
      return;
    }
    if (status === 429 || status === 503 || status === 0) {  // busy: wait, then the same file again
      state.textContent = status === 0 ? "service unreachable, retrying" : "waiting (busy)";
      bar.value = 0;
      await sleep(status === 0 ? Math.min(2000 * (attempt + 1), 10000) : retry);
      continue;
    }
    state.textContent = "failed: " + plainDetail(body, status);
    state.className = "state failed";
    line.title = file.name + ": " + plainDetail(body, status);
    return;
  }
  state.textContent = "failed: the service stayed busy; try again later";
  state.className = "state failed";
}

let pollTimer = null;
let pollDelay = 1000;
function schedulePoll(ms) {
  if (pollTimer) clearTimeout(pollTimer);
  pollTimer = setTimeout(pollStatuses, ms);
}

async function pollStatuses() {
  pollTimer = null;
  const ids = [...following.keys()];
  if (!ids.length) return;
  let changed = false;
  try {
    for (let i = 0; i < ids.length; i += 500) {
      const r = await api("/v1/images/statuses", { method: "POST", headers: { "Content-Type": "application/json" },
                                                   body: JSON.stringify({ image_ids: ids.slice(i, i + 500) }) });
      const { statuses } = await r.json();
      for (const id of ids.slice(i, i + 500)) {
        const state = following.get(id);
        const status = statuses[id];
        if (!status) { state.textContent = "deleted"; following.delete(id); changed = true; continue; }
        if (state.textContent !== status) { state.textContent = status; changed = true; }
        if (status === "indexed") { state.className = "state done"; following.delete(id); }
        if (status === "failed") { state.className = "state failed"; following.delete(id); }
      }
    }
  } catch (e) { /* shown on the next success; the rows keep their last status */ }
  pollDelay = changed ? 1000 : Math.min(pollDelay * 1.5, 5000);  // back off while nothing moves
  if (following.size) schedulePoll(pollDelay);
  else loadLibrary();
}

// ---- the model: random weights get a banner ---------------------------------------
async function checkModel() {
  try {
    const info = await (await api("/v1/model")).json();
    $("random-banner").hidden = !info.random_weights;
    $("random-model").textContent = info.model;
  } catch (_) { /* search routes absent (upload API only) */ }
}

let previous = null;
async function refreshPipeline() {
  try {
    const response = await fetch("/metrics");
    if (!response.ok) throw new Error("pipeline figures are for operators on this host");
    const text = await response.text();
    const now = Date.now() / 1000;
    const stages = {};
    for (const line of text.split("\n")) {
      const m = line.match(/^(deeplens_consumer_lag|deeplens_stage_handled_total|deeplens_stage_failed_total)\{([^}]*)\} ([0-9.eE+-]+)/);
      if (!m) continue;
      const stage = (m[2].match(/(?:stage|group)="([^"]+)"/) || [])[1];
      if (!stage) continue;
      const s = stages[stage] = stages[stage] || { lag: 0, handled: 0, failed: 0 };
      const v = parseFloat(m[3]);
      if (m[1] === "deeplens_consumer_lag") s.lag += v;
      else if (m[1] === "deeplens_stage_handled_total") s.handled += v;
      else s.failed += v;
    }
    const rows = Object.keys(stages).sort().map((name) => {
      const s = stages[name];
      const before = previous && previous.stages[name];
      const rate = before ? Math.max(0, (s.handled - before.handled) / (now - previous.at)) : 0;
      const tr = document.createElement("tr");
      tr.dataset.stage = name;
      for (const v of [name, s.lag.toFixed(0), rate.toFixed(1), s.failed.toFixed(0)]) {
        const td = document.createElement("td"); td.textContent = v; tr.append(td);
      }
      return tr;
    });
    $("pipeline").tBodies[0].replaceChildren(...rows);
    $("pipeline-info").textContent = rows.length ? "updated " + new Date().toLocaleTimeString() : "no pipeline metrics (upload API only)";
    previous = { at: now, stages };
  } catch (e) {
    $("pipeline-info").textContent = "Pipeline figures unavailable: " + e.message;
  }
}

async function applyKey() {
  apiKey = $("key").value.trim();
  sessionStorage.setItem("deeplens-key", apiKey);
  showError("");
  if (!apiKey) { showError("Paste an API key first."); return; }
  try {
    const page = await (await api("/v1/images?limit=1")).json();
    const total = Object.values(page.counts).reduce((a, b) => a + b, 0);
    $("who").textContent = "key accepted: " + total + " images in this tenant";
    checkModel();
    loadLibrary();
  } catch (e) { $("who").textContent = ""; showError(e.message); }
}
$("save-key").addEventListener("click", applyKey);
$("key").addEventListener("keydown", (ev) => { if (ev.key === "Enter") applyKey(); });
$("forget-key").addEventListener("click", () => {
  apiKey = ""; $("key").value = ""; sessionStorage.removeItem("deeplens-key");
  $("who").textContent = "key forgotten"; showError("");
  $("library").replaceChildren(); clearResults();
});
$("search-text").addEventListener("click", searchText);
$("query").addEventListener("keydown", (ev) => { if (ev.key === "Enter") searchText(); });
$("query-image").addEventListener("change", (ev) => { if (ev.target.files[0]) searchImage(ev.target.files[0]); });
$("library-status").addEventListener("change", () => loadLibrary());
$("library-more").addEventListener("click", () => loadLibrary(true));
$("files").addEventListener("change", (ev) => {
  if (!apiKey) { showError("Paste an API key first."); return; }
  for (const f of ev.target.files) upload(f);
});
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => {
  ev.preventDefault(); drop.classList.remove("over");
  if (!apiKey) { showError("Paste an API key first."); return; }
  for (const f of ev.dataTransfer.files) upload(f);
});
if (apiKey) applyKey();
refreshPipeline();
setInterval(refreshPipeline, 3000);
