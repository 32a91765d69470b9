"use strict";
// The DeepLens search page: one script, no framework, talking only to this origin.
const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const MAX_QUERY = 1000;  // serve_apps/search.py TextQuery.text max_length (a test checks)
const PAGE_SIZE = 24;
const UPLOAD_CONCURRENCY = 4;
const HAS_THUMBNAIL = new Set(["processed", "indexed"]);  // the Embedder made one

// The key lives in this tab's sessionStorage only: gone when the tab closes, never
// shared with other tabs or left on disk for other pages of this origin.
let apiKey = sessionStorage.getItem("deeplens-key") || "";
localStorage.removeItem("deeplens-key");  // left there by older versions of this page
$("key").value = apiKey;
// Everything on screen belongs to one key. A new key or "Forget key" starts a new
// session; whatever answer arrives for an older session is dropped, never drawn.
let session = 0;

// ---- plain words ------------------------------------------------------------------
// The pipeline's reason codes (deeplens/events.py FailureReason), said for people.
const REASONS = {
  corrupt: "the file is damaged and cannot be read",
  truncated: "the file is incomplete: it ends before the image does",
  unsupported_format: "not a JPEG, PNG or WebP image",
  decompression_bomb: "too many pixels to open safely",
  too_small: "too small: a side is below the minimum",
  too_large: "too large: a side is above the maximum",
  missing_object: "its stored file is missing",
  embedding_error: "the model could not process it",
  index_error: "it could not be written to the search index",
  dedup_error: "the duplicate check failed on it",
  transient_exhausted: "the service stayed busy; upload it again later",
  internal_error: "an internal error stopped it; upload it again later",
  malformed_json: "an internal message about it was unreadable",
  unknown_schema_version: "an internal message about it was unreadable",
  invalid_event: "an internal message about it was unreadable",
};

function reasonWords(code, message) {
  const words = REASONS[code] || (code ? code.replace(/_/g, " ") : "no reason was given");
  const size = /^(\d+)x(\d+)\b/.exec(message || "");
  return size ? words + " (" + size[1] + " × " + size[2] + " px)" : words;
}

const plural = (n, word) => n + " " + word + (n === 1 ? "" : "s");

// ---- errors: one banner; a later success of the same view takes it away ----------
let errorFrom = "";
function showError(message, from = "action") {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
  errorFrom = message ? from : "";
}
function clearError(from) { if (errorFrom === from) showError(""); }
function report(error, from) { if (!error.stale) showError(error.message, from); }

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

function staleError() {
  const error = new Error("the key changed");
  error.stale = true;
  return error;
}

// Every call: the key, 429s waited out (Retry-After) and retried, errors made readable,
// and an answer for a key that is no longer in use turned into a stale error.
async function api(path, options = {}) {
  if (!apiKey) throw new Error("Paste an API key first.");
  const mine = session;
  const headers = Object.assign({ Authorization: "Bearer " + apiKey }, options.headers || {});
  for (let attempt = 0; ; attempt++) {
    let response;
    try {
      response = await fetch(path, Object.assign({}, options, { headers }));
    } catch (e) {
      if (mine !== session) throw staleError();
      throw new Error("The DeepLens service is not reachable. Is it running?");
    }
    if (mine !== session) throw staleError();
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

// ---- pictures: the Embedder's thumbnail, or a placeholder that says why not -------
// Never the original: a failed file may be a decompression bomb (48 KB on disk, 2 GB
// decoded), and even a good original can be far too big for a phone.
let thumbs = new Map();  // image id -> Promise<blob URL | "">
function thumbnail(imageId) {
  if (!thumbs.has(imageId)) {
    const mine = session;
    thumbs.set(imageId, api("/v1/images/" + imageId + "/thumbnail").then((r) => r.blob())
      .then((b) => {
        if (mine !== session) return "";
        return URL.createObjectURL(b);
      }).catch(() => ""));
  }
  return thumbs.get(imageId);
}

function forgetThumbnails() {
  for (const url of thumbs.values()) url.then((u) => { if (u) URL.revokeObjectURL(u); });
  thumbs = new Map();
}

function placeholder(text, failed) {
  const box = document.createElement("span");
  box.className = "placeholder" + (failed ? " failed" : "");
  box.textContent = text;
  return box;
}

// status: the image's, when known (search hits and similar images are indexed).
function picture(item, status) {
  if (status === "failed") {
    return placeholder("Failed: " + reasonWords(item.failure_reason, item.failure_message), true);
  }
  if (status && !HAS_THUMBNAIL.has(status)) return placeholder("No preview until it is processed");
  const img = document.createElement("img");
  img.alt = "";
  const mine = session;
  thumbnail(item.image_id).then((url) => {
    if (mine !== session) return;
    if (url) img.src = url; else img.replaceWith(placeholder("No preview"));
  });
  return img;
}

// A card's face is one button (open the image); other controls sit beside it.
function card(item, { status, score, extra } = {}) {
  const el = document.createElement("div");
  el.className = "card";
  el.dataset.imageId = item.image_id;
  const open = document.createElement("button");
  open.type = "button";
  open.className = "open";
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.innerHTML = '<span class="score"></span> <span class="name"></span>';
  meta.querySelector(".score").textContent = score !== undefined ? score.toFixed(3) : "";
  meta.querySelector(".name").textContent = item.original_file_name || item.image_id;
  open.append(picture(item, status), meta);
  open.addEventListener("click", () => openImage(item.image_id));
  el.append(open);
  if (extra) { extra.classList.add("extra"); el.append(extra); }
  return el;
}

// ---- search -------------------------------------------------------------------------
function clearResults() {
  $("results").replaceChildren();
  $("search-info").textContent = "";
}

function showHits(target, hits) {
  target.replaceChildren(...hits.map((h) => card(h, { status: "indexed", score: h.score })));
}

function describe(body, what) {
  $("search-info").textContent = body.hits.length
    ? plural(body.hits.length, "result") + " " + what + " (model " + body.model + ")"
    : "No matching images yet " + what + " (model " + body.model + ").";
}

// Over-long text is said while typing, not refused after sending.
function checkQuery() {
  const length = $("query").value.trim().length;
  const over = length > MAX_QUERY;
  $("query-hint").textContent = over ? "Too long: " + length + " characters; a search takes at most "
                                       + MAX_QUERY + ". Shorten it to search." : "";
  $("query").setAttribute("aria-invalid", over ? "true" : "false");
  $("search-text").disabled = over;
  return !over;
}

async function searchText() {
  showError("");
  const text = $("query").value.trim();
  if (!text) { clearResults(); showError("Type a few words to search for.", "search"); return; }
  if (!checkQuery()) return;
  $("query-image").value = "";
  try {
    const r = await api("/v1/search", { method: "POST", headers: { "Content-Type": "application/json" },
                                        body: JSON.stringify({ text, k: 24 }) });
    const body = await r.json();
    showHits($("results"), body.hits);
    describe(body, 'for "' + text + '"');
  } catch (e) { if (!e.stale) { clearResults(); report(e, "search"); } }
}

async function searchImage(file) {
  showError("");
  $("query").value = "";  // the results below come from the image, not from old words
  checkQuery();
  try {
    const form = new FormData();
    form.append("file", file);
    form.append("k", "24");
    const r = await api("/v1/search/image", { method: "POST", body: form });
    const body = await r.json();
    showHits($("results"), body.hits);
    describe(body, "similar to the image " + file.name);
  } catch (e) {
    if (e.stale) return;
    clearResults();
    showError(e.status === 415 || e.status === 413 || e.status === 422
      ? "That file cannot be used as a search image: " + e.message : e.message, "search");
  }
}

// ---- the detail: a modal dialog; Escape or Close returns focus where it was ---------
let detailSeq = 0;
let detailId = null;
let detailOpener = null;

function clearDetail(text = "") {
  detailId = null;
  $("detail-title").textContent = text || "Image";
  $("detail-delete-name").textContent = "";
  $("detail-delete").onclick = null;
  $("detail-img").removeAttribute("src");
  $("detail-img").hidden = true;
  $("detail-placeholder").hidden = true;
  for (const id of ["detail-status", "detail-dups", "detail-similar"]) $(id).replaceChildren();
}

function closeDetail() { if ($("detail").open) $("detail").close(); }

async function openImage(imageId) {
  const seq = ++detailSeq;
  const dialog = $("detail");
  if (!dialog.open) { detailOpener = document.activeElement; dialog.showModal(); }
  clearDetail("Loading\u2026");
  $("detail-title").focus();
  try {
    const row = await (await api("/v1/images/" + imageId)).json();
    if (seq !== detailSeq) return;
    detailId = imageId;
    renderDetailHead(row);
    const failed = row.status === "failed";
    await Promise.all([renderDuplicates(row, seq, failed), renderSimilar(row, seq, failed)]);
  } catch (e) {
    if (e.stale || seq !== detailSeq) return;
    $("detail-title").textContent = "Image";
    const line = document.createElement("p");
    line.id = "detail-status-line";
    line.textContent = e.status === 404 ? "This image no longer exists." : e.message;
    $("detail-status").replaceChildren(line);
  }
}

function renderDetailHead(row) {
  $("detail-title").textContent = row.original_file_name + " (" + row.image_id + ")";
  $("detail-delete-name").textContent = " " + row.original_file_name;
  $("detail-delete").onclick = () => deleteImage(row.image_id, row.original_file_name);
  const failed = row.status === "failed";
  const shown = $("detail-placeholder");
  if (failed || !HAS_THUMBNAIL.has(row.status)) {
    shown.textContent = failed ? "No preview: it failed." : "No preview until it is processed.";
    shown.className = "placeholder" + (failed ? " failed" : "");
    shown.hidden = false;
  } else {
    const seq = detailSeq;
    thumbnail(row.image_id).then((url) => {
      if (seq !== detailSeq) return;
      if (url) { $("detail-img").src = url; $("detail-img").hidden = false; }
      else { shown.textContent = "No preview."; shown.className = "placeholder"; shown.hidden = false; }
    });
  }
  const head = document.createElement("p");
  head.id = "detail-status-line";
  head.innerHTML = "Status: <strong></strong>";
  head.querySelector("strong").textContent = failed
    ? "failed: " + reasonWords(row.failure_reason, row.failure_message) : row.status;
  const parts = [head];
  if (failed && row.failure_message) {  // the raw words, for whoever reports it
    const more = document.createElement("details");
    more.innerHTML = "<summary>Technical detail</summary><code></code>";
    more.querySelector("code").textContent = row.failure_reason + ": " + row.failure_message;
    parts.push(more);
  }
  const t = row.timestamps;
  for (const [name, at] of [["uploaded", t.uploaded_at], ["validated", t.validated_at],
    ["processed", t.processed_at], ["indexed", t.indexed_at], ["failed", t.failed_at]]) {
    if (!at) continue;
    const line = document.createElement("div");
    line.className = "muted";
    line.textContent = name + " at " + new Date(at).toLocaleString();
    parts.push(line);
  }
  $("detail-status").replaceChildren(...parts);
}

async function renderDuplicates(row, seq, failed) {
  const box = $("detail-dups");
  const tiers = document.createElement("p");
  if (failed) {
    tiers.textContent = "Not checked for duplicates: it failed before that step.";
    box.replaceChildren(tiers);
    return;
  }
  const dups = await (await api("/v1/images/" + row.image_id + "/duplicates")).json();
  // The names and statuses of the matches, together rather than one after another.
  const others = await Promise.all(dups.matches.map((m) => api("/v1/images/" + m.image_id)
    .then((r) => r.json()).catch(() => ({ image_id: m.image_id, original_file_name: m.image_id }))));
  if (seq !== detailSeq) return;
  tiers.textContent = "Tiers checked: " + (dups.tiers.join(", ") || "not yet");
  const grid = document.createElement("div");
  grid.className = "grid small";
  dups.matches.forEach((m, i) => {
    const kind = document.createElement("div");
    kind.className = "dup";
    kind.innerHTML = '<span class="kind"></span> <span class="muted"></span>';
    kind.querySelector(".kind").textContent = m.kind;
    kind.querySelector(".muted").textContent = "score " + m.score.toFixed(3);
    grid.append(card(others[i], { status: others[i].status, extra: kind }));
  });
  box.replaceChildren(tiers, ...(dups.matches.length ? [] : ["No duplicates found."]), grid);
}

async function renderSimilar(row, seq, failed) {
  const box = $("detail-similar");
  if (failed) {
    box.textContent = "This image will never be searchable: it failed ("
      + reasonWords(row.failure_reason, row.failure_message) + ").";
    return;
  }
  try {
    const body = await (await api("/v1/images/" + row.image_id + "/similar?k=8")).json();
    if (seq === detailSeq) showHits(box, body.hits);
  } catch (e) {
    if (e.stale || seq !== detailSeq) return;
    box.textContent = e.status === 404 ? "Not in the search index yet." : e.message;
  }
}

$("detail").addEventListener("close", () => {
  if ($("detail").open) return;  // reopened before this event ran
  detailSeq++;  // answers still on their way are for a closed view
  clearDetail();
  const back = detailOpener && detailOpener.isConnected ? detailOpener : $("library-h");
  detailOpener = null;
  back.focus();
});
$("detail-close").addEventListener("click", closeDetail);

async function deleteImage(imageId, name) {
  if (!confirm("Delete " + (name || imageId) + "? This cannot be undone.")) return;
  try {
    await api("/v1/images/" + imageId, { method: "DELETE" });
    clearError("delete");
    // Focus moves to the neighbouring card's control of the same kind, never to nowhere.
    const focused = document.activeElement;
    const gone = focused && focused.closest("#library .card");
    let next = null;
    if (gone && gone.dataset.imageId === imageId) {
      const near = gone.nextElementSibling || gone.previousElementSibling;
      next = near ? near.querySelector(focused.matches(".delete") ? ".delete" : ".open") : $("library-h");
    }
    document.querySelectorAll('.card[data-image-id="' + imageId + '"]').forEach((el) => el.remove());
    libraryCards.delete(imageId);
    document.querySelectorAll('#uploads .file[data-image-id="' + imageId + '"]').forEach((line) => {
      line.querySelector(".state").textContent = "deleted";
      line.querySelector(".open").disabled = true;
      delete line.dataset.imageId;
    });
    if (detailId === imageId) { detailOpener = next || detailOpener; closeDetail(); }
    if (next) next.focus();
    // A load begun before the delete may still list the image and its old counts.
    library.seq++;
    library.loading = false;
    if (library.pages > 1) await refreshCounts(); else await loadLibrary();
    renderCounts("Deleted " + (name || imageId) + ".");
    // The API counts a tenant at most once a second (TenantCounts): ask again after that.
    setTimeout(() => { if (apiKey) refreshCounts(); }, 1500);
  } catch (e) { report(e, "delete"); }
}

// ---- the library: the tenant's images, newest first, paged, by status ------------
let library = { after: null, seq: 0, loading: false, pages: 0, counts: {}, timer: null };
let libraryCards = new Map();  // image id -> { el, status }: unchanged cards are kept

function libraryCard(row) {
  const known = libraryCards.get(row.image_id);
  if (known && known.status === row.status) return known.el;
  const extra = document.createElement("div");
  const state = document.createElement("div");
  state.className = "muted status";
  state.textContent = row.status;
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "secondary small delete";
  remove.append("Delete");
  const named = document.createElement("span");
  named.className = "sr-only";
  named.textContent = " " + (row.original_file_name || row.image_id);
  remove.append(named);
  remove.addEventListener("click", () => deleteImage(row.image_id, row.original_file_name));
  extra.append(state, remove);
  const el = card(row, { status: row.status, extra });
  libraryCards.set(row.image_id, { el, status: row.status });
  return el;
}

// Puts ``els`` into ``container`` moving as little as possible, so a focused card
// that is still there keeps its focus; a focused card rebuilt (its status changed)
// hands focus to the same control of its new card.
function syncChildren(container, els) {
  const focused = document.activeElement;
  const was = focused && container.contains(focused) ? focused.closest(".card") : null;
  const keep = new Set(els);
  for (const child of [...container.children]) if (!keep.has(child)) child.remove();
  let cursor = container.firstElementChild;
  for (const el of els) {
    if (el === cursor) { cursor = cursor.nextElementSibling; continue; }
    container.insertBefore(el, cursor);
  }
  if (was && !focused.isConnected) {
    const again = container.querySelector('.card[data-image-id="' + was.dataset.imageId + '"]');
    const same = again && again.querySelector(focused.matches(".delete") ? ".delete" : ".open");
    if (same) same.focus();
  }
}

async function loadLibrary(more = false) {
  if (!apiKey) return;
  if (more && library.loading) return;  // a second click while that page is on its way
  const seq = ++library.seq;
  library.loading = true;
  $("library-more").setAttribute("aria-disabled", "true");
  try {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    const status = $("library-status").value;
    if (status) params.set("status", status);
    if (more && library.after) params.set("after", library.after);
    const page = await (await api("/v1/images?" + params)).json();
    if (seq !== library.seq) return;  // a newer load (another filter) owns the view
    const cards = page.items.map(libraryCard);
    if (more) {
      $("library").append(...cards.filter((el) => !el.isConnected));
    } else {
      syncChildren($("library"), cards);
      const ids = new Set(page.items.map((row) => row.image_id));
      for (const id of [...libraryCards.keys()]) if (!ids.has(id)) libraryCards.delete(id);
    }
    library.after = page.next_after;
    library.pages = more ? library.pages + 1 : 1;
    $("library-more").hidden = !page.next_after;
    library.counts = page.counts;
    renderCounts();
    clearError("library");
  } catch (e) {
    if (seq === library.seq) report(e, "library");
  } finally {
    if (seq === library.seq) {
      library.loading = false;
      $("library-more").removeAttribute("aria-disabled");
    }
  }
}

// While uploads settle the library follows, at most once a second; with more pages
// loaded than the first only the counts do, so nobody loses their place.
function scheduleLibraryRefresh() {
  if (library.timer) return;
  library.timer = setTimeout(() => {
    library.timer = null;
    if (library.pages > 1) refreshCounts(); else loadLibrary();
  }, 1000);
}

async function refreshCounts(note = "") {
  try {
    const page = await (await api("/v1/images?limit=1")).json();
    library.counts = page.counts;
    renderCounts(note);
  } catch (e) { report(e, "library"); }
}

function renderCounts(note = "") {
  if (!apiKey) return;
  const total = Object.values(library.counts).reduce((a, b) => a + b, 0);
  const sending = uploads.queue.length + uploads.sending;
  $("who").textContent = "key accepted: " + plural(total, "image") + " in this tenant"
    + (sending ? ", " + sending + " uploading" : "");
  const info = total
    ? plural(total, "image") + ": " + Object.entries(library.counts).filter(([, v]) => v)
      .map(([k, v]) => v + " " + k).join(", ")
    : sending ? plural(sending, "upload") + " in progress: they appear here once accepted."
      : "No images yet: upload some.";
  $("library-info").textContent = (note ? note + " " : "") + info;
}

// ---- uploads: a few at a time, 429/503 waited out, statuses polled in bulk --------
// An exact copy within what this tab sends goes once: the copy waits for the first.
let uploads = { queue: [], sending: 0, xhrs: new Set(), following: new Map(), bySize: new Map(),
                pollTimer: null, pollDelay: 1000 };

function upload(file) {
  const line = document.createElement("div");
  line.className = "file";
  line.innerHTML = '<button type="button" class="open" disabled></button>'
    + '<progress max="100" value="0"></progress><span class="state">waiting</span>';
  line.querySelector(".open").textContent = file.name;
  line.querySelector("progress").setAttribute("aria-label", "upload of " + file.name);
  line.querySelector(".open").addEventListener("click", () => openImage(line.dataset.imageId));
  line.addEventListener("click", (ev) => {
    if (line.dataset.imageId && !ev.target.closest("button")) openImage(line.dataset.imageId);
  });
  $("uploads").prepend(line);
  const job = { file, line };
  job.settled = new Promise((resolve) => { job.settle = resolve; });
  const sameSize = uploads.bySize.get(file.size) || [];
  sameSize.push(job);
  uploads.bySize.set(file.size, sameSize);
  uploads.queue.push(job);
  renderCounts();
  pump();
}

function pump() {
  while (uploads.sending < UPLOAD_CONCURRENCY && uploads.queue.length) {
    const job = uploads.queue.shift();
    const mine = session;
    uploads.sending++;
    send(job, mine).finally(() => {
      if (mine !== session) return;
      uploads.sending--;
      renderCounts();
      pump();
    });
  }
}

async function sameBytes(a, b) {
  const [x, y] = await Promise.all([a.arrayBuffer(), b.arrayBuffer()]);
  if (x.byteLength !== y.byteLength) return false;
  const p = new Uint8Array(x), q = new Uint8Array(y);
  for (let i = 0; i < p.length; i++) if (p[i] !== q[i]) return false;
  return true;
}

async function twinOf(job) {
  for (const other of uploads.bySize.get(job.file.size) || []) {
    if (other === job) return null;
    if (await sameBytes(other.file, job.file)) return other;
  }
  return null;
}

function accepted(line, imageId) {
  line.dataset.imageId = imageId;
  line.querySelector(".open").disabled = false;
  line.querySelector("progress").value = 100;
}

function failed(line, reason) {
  const state = line.querySelector(".state");
  state.textContent = "failed: " + reason;
  state.className = "state failed";
  line.classList.add("failed");
  line.querySelector("progress").hidden = true;  // nothing was, or will be, done
}

function post(file, bar) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    uploads.xhrs.add(xhr);
    const done = (answer) => { uploads.xhrs.delete(xhr); resolve(answer); };
    xhr.open("POST", "/v1/images");
    xhr.setRequestHeader("Authorization", "Bearer " + apiKey);
    xhr.upload.onprogress = (ev) => { if (ev.lengthComputable) bar.value = 100 * ev.loaded / ev.total; };
    xhr.onerror = xhr.onabort = () => done({ status: 0, body: {}, retry: 2000 });
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (_) {}
      const seconds = parseFloat(xhr.getResponseHeader("Retry-After") || "1");
      done({ status: xhr.status, body, retry: Math.min(30, Math.max(1, seconds || 1)) * 1000 });
    };
    const form = new FormData();
    form.append("file", file);
    xhr.send(form);
  });
}

async function send(job, mine) {
  const { file, line } = job;
  const state = line.querySelector(".state");
  const bar = line.querySelector("progress");
  const twin = await twinOf(job);
  if (mine !== session) return;
  if (twin) {
    state.textContent = "waiting for " + twin.file.name;
    const outcome = await twin.settled;
    if (mine !== session) return;
    if (outcome.imageId) {
      accepted(line, outcome.imageId);
      state.textContent = "same file as " + twin.file.name;
      state.className = "state done";
    } else failed(line, outcome.reason);
    job.settle(outcome);
    return;
  }
  state.textContent = "sending";
  const answers = [];  // kept on the row: what the service said, attempt by attempt
  for (let attempt = 0; attempt < 120; attempt++) {  // minutes of a busy service
    const { status, body, retry } = await post(file, bar);
    if (mine !== session) return;
    answers.push(status);
    line.dataset.answers = answers.join(",");
    if (status === 202) {
      accepted(line, body.image_id);
      state.textContent = body.duplicate_of ? "already uploaded" : "uploaded";
      if (!body.duplicate_of) uploads.following.set(body.image_id, line);
      job.settle({ imageId: body.image_id });
      scheduleLibraryRefresh();
      schedulePoll(500);
      return;
    }
    if (status === 429 || status === 503 || status === 0) {  // busy: wait, then the same file again
      state.textContent = status === 0 ? "service unreachable, retrying" : "waiting (busy)";
      bar.value = 0;
      await sleep(status === 0 ? Math.min(2000 * (attempt + 1), 10000) : retry);
      if (mine !== session) return;
      continue;
    }
    failed(line, plainDetail(body, status));
    job.settle({ reason: plainDetail(body, status) });
    return;
  }
  failed(line, "the service stayed busy; try again later");
  job.settle({ reason: "the service stayed busy" });
}

function schedulePoll(ms) {
  if (uploads.pollTimer) clearTimeout(uploads.pollTimer);
  uploads.pollTimer = setTimeout(pollStatuses, ms);
}

async function showFailure(imageId, line) {
  try {
    const row = await (await api("/v1/images/" + imageId)).json();
    failed(line, reasonWords(row.failure_reason, row.failure_message));
  } catch (e) { if (!e.stale) failed(line, "the reason could not be read"); }
}

async function pollStatuses() {
  const mine = session;
  uploads.pollTimer = null;
  const following = uploads.following;
  const ids = [...following.keys()];
  if (!ids.length) return;
  let changed = false;
  const failures = [];
  try {
    for (let i = 0; i < ids.length; i += 500) {
      const r = await api("/v1/images/statuses", { method: "POST", headers: { "Content-Type": "application/json" },
                                                   body: JSON.stringify({ image_ids: ids.slice(i, i + 500) }) });
      const { statuses } = await r.json();
      for (const id of ids.slice(i, i + 500)) {
        const line = following.get(id);
        const state = line.querySelector(".state");
        const status = statuses[id];
        if (!status) { state.textContent = "deleted"; following.delete(id); changed = true; continue; }
        if (status === "failed") { failures.push(showFailure(id, line)); following.delete(id); changed = true; continue; }
        if (state.textContent !== status) { state.textContent = status; changed = true; }
        if (status === "indexed") { state.className = "state done"; following.delete(id); }
      }
    }
    await Promise.all(failures);
  } catch (e) { if (e.stale) return; /* the rows keep their last status; tried again */ }
  if (mine !== session) return;
  uploads.pollDelay = changed ? 1000 : Math.min(uploads.pollDelay * 1.5, 5000);  // back off
  if (changed) scheduleLibraryRefresh();
  if (following.size) schedulePoll(uploads.pollDelay);
}

// ---- the model: random weights get a banner ---------------------------------------
async function checkModel() {
  try {
    const info = await (await api("/v1/model")).json();
    $("random-banner").hidden = !info.random_weights;
    $("random-model").textContent = info.model;
    showReindexing(info.reindexing);
  } catch (_) { /* search routes absent (upload API only) */ }
}

// A model change under way: "re-indexing: N %"; search stays on the current model.
let reindexTimer = null;
function showReindexing(change) {
  const banner = $("reindex-banner");
  clearTimeout(reindexTimer);
  banner.hidden = !change;
  if (!change) return;
  const pct = Math.floor(change.percent);
  banner.textContent = change.state === "backfilling" || change.state === "deploying"
    ? "re-indexing: " + pct + " % (new model " + change.target_model + "; search answers from the current model until cutover)"
    : "re-indexing: " + pct + " % (" + change.state.replace("_", " ") + ", new model " + change.target_model + ")";
  reindexTimer = setTimeout(checkModel, 5000);
}

// ---- the pipeline: operator figures, when this host may read them -----------------
let previous = null;
async function refreshPipeline() {
  try {
    let response;
    try { response = await fetch("/metrics"); } catch (_) { throw new Error("the service is not reachable"); }
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
    // Figures that can no longer be read are not shown as if they were current.
    $("pipeline").tBodies[0].replaceChildren();
    previous = null;
    $("pipeline-info").textContent = "Pipeline figures unavailable: " + e.message + ".";
  }
}

// ---- the key ---------------------------------------------------------------------------
// Everything that belonged to the key leaves the screen; requests on their way stop.
function resetTenantView() {
  session++;
  for (const xhr of uploads.xhrs) xhr.abort();
  if (uploads.pollTimer) clearTimeout(uploads.pollTimer);
  if (library.timer) clearTimeout(library.timer);
  uploads = { queue: [], sending: 0, xhrs: new Set(), following: new Map(), bySize: new Map(),
              pollTimer: null, pollDelay: 1000 };
  library = { after: null, seq: 0, loading: false, pages: 0, counts: {}, timer: null };
  libraryCards = new Map();
  $("uploads").replaceChildren();
  $("library").replaceChildren();
  $("library-more").hidden = true;
  $("library-more").removeAttribute("aria-disabled");
  $("library-info").textContent = "";
  $("library-status").value = "";
  detailOpener = null;
  closeDetail();
  clearDetail();
  clearResults();
  $("query").value = "";
  $("query-image").value = "";
  checkQuery();
  forgetThumbnails();
  $("who").textContent = "";
}

async function applyKey() {
  const key = $("key").value.trim();
  if (key !== apiKey) resetTenantView();  // a new key: nothing of the old one stays
  apiKey = key;
  sessionStorage.setItem("deeplens-key", apiKey);
  showError("");
  if (!apiKey) { showError("Paste an API key first.", "key"); return; }
  try {
    const page = await (await api("/v1/images?limit=1")).json();
    library.counts = page.counts;
    renderCounts();
    checkModel();
    loadLibrary();
  } catch (e) { if (!e.stale) { $("who").textContent = ""; report(e, "key"); } }
}

function forgetKey() {
  apiKey = "";
  $("key").value = "";
  sessionStorage.removeItem("deeplens-key");
  resetTenantView();
  showError("");
  $("who").textContent = "key forgotten";
}

$("key-form").addEventListener("submit", (ev) => { ev.preventDefault(); applyKey(); });
$("forget-key").addEventListener("click", forgetKey);
$("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); searchText(); });
$("query").addEventListener("input", checkQuery);
$("query-image").addEventListener("change", (ev) => { if (ev.target.files[0]) searchImage(ev.target.files[0]); });
$("library-status").addEventListener("change", () => loadLibrary());
$("library-more").addEventListener("click", () => loadLibrary(true));
$("choose-files").addEventListener("click", () => $("files").click());

function uploadAll(files) {
  if (!apiKey) { showError("Paste an API key first.", "key"); return; }
  for (const f of files) upload(f);
}
$("files").addEventListener("change", (ev) => {
  const files = [...ev.target.files];
  ev.target.value = "";  // choosing the same files again is a new choice
  uploadAll(files);
});
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => {
  ev.preventDefault(); drop.classList.remove("over");
  uploadAll([...ev.dataTransfer.files]);
});
if (apiKey) applyKey();
refreshPipeline();
setInterval(refreshPipeline, 3000);
