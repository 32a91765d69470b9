"use strict";
const $ = (id) => document.getElementById(id);
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

async function api(path, options = {}) {
  if (!apiKey) throw new Error("Paste an API key first.");
  const headers = Object.assign({ Authorization: "Bearer " + apiKey }, options.headers || {});
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (e) {
    throw new Error("The DeepLens service is not reachable (" + e.message + ").");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { const body = await response.json(); detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail); } catch (_) {}
    if (response.status === 401) detail = "The API key was not accepted (" + detail + ").";
    if (response.status === 503) detail = "The service is unavailable right now: " + detail;
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response;
}

const thumbs = new Map();
async function thumbnail(imageId) {
  if (!thumbs.has(imageId)) {
    thumbs.set(imageId, api("/v1/images/" + imageId + "/content")
      .then((r) => r.blob()).then((b) => URL.createObjectURL(b)).catch(() => ""));
  }
  return thumbs.get(imageId);
}

function card(hit) {
  const el = document.createElement("div");
  el.className = "card";
  el.dataset.imageId = hit.image_id;
  el.innerHTML = '<img alt=""><div class="meta"><span class="score"></span> <span class="name"></span></div>';
  el.querySelector(".score").textContent = hit.score !== undefined ? hit.score.toFixed(3) : "";
  el.querySelector(".name").textContent = hit.original_file_name || hit.image_id;
  thumbnail(hit.image_id).then((url) => { if (url) el.querySelector("img").src = url; });
  el.addEventListener("click", () => openImage(hit.image_id));
  return el;
}

function showResults(target, body, info) {
  target.replaceChildren(...body.hits.map(card));
  if (info) info.textContent = body.hits.length + " results from model " + body.model;
}

async function searchText() {
  showError("");
  try {
    const text = $("query").value;
    const r = await api("/v1/search", { method: "POST", headers: { "Content-Type": "application/json" },
                                        body: JSON.stringify({ text, k: 24 }) });
    showResults($("results"), await r.json(), $("search-info"));
  } catch (e) { showError(e.message); }
}

async function searchImage(file) {
  showError("");
  try {
    const form = new FormData();
    form.append("file", file);
    form.append("k", "24");
    const r = await api("/v1/search/image", { method: "POST", body: form });
    showResults($("results"), await r.json(), $("search-info"));
  } catch (e) { showError(e.message); }
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
    status.innerHTML = "";
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
    box.innerHTML = "";
    const tiers = document.createElement("p");
    tiers.textContent = "Tiers checked: " + (dups.tiers.join(", ") || "not yet");
    box.append(tiers);
    if (!dups.matches.length) box.append("No duplicates found.");
    for (const m of dups.matches) {
      const line = document.createElement("div");
      line.className = "dup";
      line.innerHTML = '<span class="kind"></span> <a href="#"></a> <span class="muted"></span>';
      line.querySelector(".kind").textContent = m.kind;
      line.querySelector("a").textContent = m.image_id;
      line.querySelector("a").addEventListener("click", (ev) => { ev.preventDefault(); openImage(m.image_id); });
      line.querySelector(".muted").textContent = "score " + m.score.toFixed(3);
      box.append(line);
    }
    const similarBox = $("detail-similar");
    try {
      showResults(similarBox, await (await api("/v1/images/" + imageId + "/similar?k=8")).json());
    } catch (e) {
      similarBox.textContent = e.status === 404 ? "Not in the search index yet." : e.message;
    }
    $("detail").scrollIntoView({ behavior: "smooth" });
  } catch (e) { showError(e.message); }
}

function upload(file) {
  const line = document.createElement("div");
  line.className = "file";
  line.innerHTML = '<span class="name"></span><progress max="100" value="0"></progress><span class="state">sending</span>';
  line.querySelector(".name").textContent = file.name;
  $("uploads").prepend(line);
  const state = line.querySelector(".state");
  const bar = line.querySelector("progress");
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/images");
  xhr.setRequestHeader("Authorization", "Bearer " + apiKey);
  xhr.upload.onprogress = (ev) => { if (ev.lengthComputable) bar.value = 100 * ev.loaded / ev.total; };
  xhr.onerror = () => { state.textContent = "service down"; state.className = "state failed"; };
  xhr.onload = () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (_) {}
    if (xhr.status !== 202) {
      state.textContent = "failed: " + (body.detail || xhr.status);
      state.className = "state failed";
      line.title = body.detail || "";
      return;
    }
    bar.value = 100;
    line.dataset.imageId = body.image_id;
    state.textContent = body.duplicate_of ? "already uploaded" : "uploaded";
    follow(body.image_id, state);
  };
  const form = new FormData();
  form.append("file", file);
  xhr.send(form);
}

async function follow(imageId, state) {
  for (let i = 0; i < 240; i++) {
    try {
      const row = await (await api("/v1/images/" + imageId)).json();
      state.textContent = row.status + (row.failure_reason ? ": " + row.failure_reason : "");
      if (row.status === "indexed") { state.className = "state done"; return; }
      if (row.status === "failed") { state.className = "state failed"; return; }
    } catch (e) { state.textContent = e.message; }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

let previous = null;
async function refreshPipeline() {
  try {
    const text = await (await fetch("/metrics")).text();
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
    $("pipeline-info").textContent = "metrics unavailable: " + e.message;
  }
}

async function applyKey() {
  apiKey = $("key").value.trim();
  sessionStorage.setItem("deeplens-key", apiKey);
  showError("");
  try {
    const page = await (await api("/v1/images?limit=1")).json();
    const total = Object.values(page.counts).reduce((a, b) => a + b, 0);
    $("who").textContent = "key accepted: " + total + " images in this tenant";
  } catch (e) { $("who").textContent = ""; showError(e.message); }
}
$("save-key").addEventListener("click", applyKey);
$("key").addEventListener("keydown", (ev) => { if (ev.key === "Enter") applyKey(); });
$("forget-key").addEventListener("click", () => {
  apiKey = ""; $("key").value = ""; sessionStorage.removeItem("deeplens-key");
  $("who").textContent = "key forgotten"; showError("");
});
$("search-text").addEventListener("click", searchText);
$("query").addEventListener("keydown", (ev) => { if (ev.key === "Enter") searchText(); });
$("query-image").addEventListener("change", (ev) => { if (ev.target.files[0]) searchImage(ev.target.files[0]); });
$("files").addEventListener("change", (ev) => { for (const f of ev.target.files) upload(f); });
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => {
  ev.preventDefault(); drop.classList.remove("over");
  if (!apiKey) { showError("Paste an API key first."); return; }
  for (const f of ev.dataTransfer.files) upload(f);
});
refreshPipeline();
setInterval(refreshPipeline, 3000);
