// The demo page: a thin client of the JSON API (/api/...). It keeps the view state (dataset, reference,
// caption, mode, trail) and renders what the server returns; all ranking happens on the server.
"use strict";

const $ = (sel) => document.querySelector(sel);
const PER_PAGE = 24;

const state = {
  info: null,            // GET /api/datasets
  dataset: null,         // current dataset name
  vocab: {},             // dataset name -> tag vocabulary
  page: 1, pages: 1, q: "",
  randomList: null,      // the shuffled references after Random: Next/Previous page through these
  ref: null,             // {kind: "dataset"|"upload", id, dataset, title, thumb}
  mode: "composed",
  tags: {},              // attribute -> value (tags mode)
  trail: [],             // past steps: {ref, caption, mode, target, seen (the results it showed)}
  shown: [],             // ids of the results on screen (a turn's `seen` when one of them is clicked)
  target: null,          // the annotated target of the picked caption (cleared when the caption is edited)
  captions: {},          // "dataset/reference" -> its annotated captions (GET /api/datasets/<name>/captions)
  busy: 0,
  gridTicket: 0,         // numbers the grid and search requests: an answer that is no longer the latest
  searchTicket: 0,       // is dropped (switching dataset while the first grid loads must not show the old one)
  lastQuery: null,       // the body of the search whose results are shown (the "why?" overlays explain it)
  overlays: new Map(),   // JSON of (query, result) -> object URL of its /api/explain PNG, or its pending fetch
};

// ---------------------------------------------------------------------------------------------- helpers

async function api(path, options) {
  const resp = await fetch(path, options);
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) throw new Error((body && body.message) || `HTTP ${resp.status}`);
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function imageCard(item, onClick, score) {
  const btn = el("button", {type: "button", class: "thumb-card", title: item.title, "data-id": item.id,
                            onclick: () => onClick(item)});
  const wrap = el("div", {class: "thumb-wrap"}, el("img", {src: item.thumb, alt: item.title, loading: "lazy"}));
  if (score !== undefined) wrap.append(el("span", {class: "badge bg-dark score adv-only", text: score.toFixed(3)}));
  btn.append(wrap, el("div", {class: "cap", text: item.title}));
  const col = el("div", {class: "col card-col"}, btn);
  if (score !== undefined) {   // results: a closer look without searching again
    col.append(el("button", {type: "button", class: "btn btn-light btn-sm preview-btn", text: "⤢",
                             title: "Look closer", "aria-label": `look closer at ${item.title}`,
                             onclick: () => openPreview(item)}));
  }
  return col;
}

// A message above the results; an error (kind "error") also takes the results' place: results left on screen
// would look like the answer to the request that failed.
function showStatus(msg, kind = "info") {
  const s = $("#status");
  s.textContent = msg || "";
  s.hidden = !msg;
  s.classList.toggle("alert-danger", kind === "error");
  s.classList.toggle("alert-warning", kind !== "error");
  if (msg && kind === "error") clearResults();
}

function clearResults() {
  $("#results").replaceChildren();
  $("#results").dataset.mode = "";
  $("#results").dataset.reference = "";
  $("#group-grid").replaceChildren();
  $("#group-section").hidden = true;
  $("#latency").textContent = "";
  $("#summary").textContent = "";
  markTarget(null);
  state.lastQuery = null;
}

function modeInfo(name) { return state.info.modes.find((m) => m.name === name); }

// ---------------------------------------------------------------------------------------------- home

async function loadGrid() {
  if (state.randomList) { showRandomPage(); return; }
  const params = new URLSearchParams({page: state.page, per_page: PER_PAGE});
  if (state.q) params.set("q", state.q);
  const ticket = ++state.gridTicket;
  try {
    const data = await api(`/api/datasets/${encodeURIComponent(state.dataset)}/images?${params}`);
    if (ticket !== state.gridTicket) return;
    state.pages = data.pages;
    renderGrid(data.images, `${data.total.toLocaleString("en")} image${data.total === 1 ? "" : "s"}${data.q ? ` matching “${data.q}”` : ""}`);
    $("#page-info").textContent = `page ${data.page} of ${data.pages}`;
    $("#prev-page").disabled = data.page <= 1;
    $("#next-page").disabled = data.page >= data.pages;
  } catch (e) {
    if (ticket === state.gridTicket) renderGrid([], e.message);
  }
}

// Random: one shuffled list of references (the most the API gives at once), paged here, so that Next shows
// more random ones instead of page 2 of the whole dataset.
async function loadRandom() {
  const ticket = ++state.gridTicket;
  try {
    const data = await api(`/api/datasets/${encodeURIComponent(state.dataset)}/random?n=100`);
    if (ticket !== state.gridTicket) return;
    state.randomList = data.images;
    state.page = 1;
    state.pages = Math.max(1, Math.ceil(data.images.length / PER_PAGE));
    showRandomPage();
  } catch (e) { if (ticket === state.gridTicket) renderGrid([], e.message); }
}

function showRandomPage() {
  const lo = (state.page - 1) * PER_PAGE;
  renderGrid(state.randomList.slice(lo, lo + PER_PAGE), "random references");
  $("#page-info").textContent = `random page ${state.page} of ${state.pages}`;
  $("#prev-page").disabled = state.page <= 1;
  $("#next-page").disabled = state.page >= state.pages;
}

function renderGrid(images, info) {
  $("#grid-info").textContent = info + " — click one to use it as the reference";
  const grid = $("#ref-grid");
  grid.replaceChildren(...images.map((im) => imageCard(im, pickReference)));
}

// A new reference starts a new session: the old caption was about another item, so it is not run on this one;
// the shopper types the change (the caption box has the focus).
function pickReference(item) {
  state.trail = [];
  startTurn({kind: "dataset", id: item.id, dataset: state.dataset, title: item.title, thumb: item.thumb});
}

function startTurn(ref) {
  state.target = null;
  state.ref = ref;
  $("#caption").value = "";
  if (!modeInfo(state.mode).needs_reference) setMode(defaultMode(), false);
  showSearch();
  clearResults();
  if (canSearch()) runSearch();
  else { showStatus("Now say how the wanted item differs from this one, then Search."); pushUrl(); }
  $("#caption").focus();
}

async function uploadFile(file) {
  const status = $("#upload-status");
  status.textContent = "uploading…";
  const form = new FormData();
  form.append("file", file);
  try {
    const data = await api("/api/upload", {method: "POST", body: form});
    status.textContent = `uploaded (${data.width}×${data.height})`;
    state.trail = [];
    if (!modeInfo(state.mode).needs_reference) setMode("image", false);
    startTurn({kind: "upload", id: data.id, title: "Your upload", thumb: data.thumb});
  } catch (e) {
    status.textContent = `upload failed: ${e.message}`;
  } finally {
    $("#upload-input").value = "";
  }
}

function showHome() {
  $("#search-view").hidden = true;
  $("#home-view").hidden = false;
}

function goHome() { showHome(); pushUrl(); }

// ---------------------------------------------------------------------------------------------- search view

function showSearch() {
  $("#home-view").hidden = true;
  $("#search-view").hidden = false;
  renderReference();
  renderTrail();
  renderTags();
  loadCaptions();
  window.scrollTo(0, 0);
}

// ---------------------------------------------------------------------------------------------- caption picker

function datasetInfo(name) { return state.info.datasets.find((d) => d.name === name); }

async function loadCaptions() {
  const box = $("#caption-pick-box");
  const ref = state.ref;
  const ds = ref && ref.kind === "dataset" ? datasetInfo(ref.dataset) : null;
  box.hidden = true;
  if (!ds || !ds.has_captions) return;
  const key = `${ref.dataset}/${ref.id}`;
  if (!(key in state.captions)) {
    try {
      const q = new URLSearchParams({reference: ref.id});
      state.captions[key] = (await api(`/api/datasets/${encodeURIComponent(ref.dataset)}/captions?${q}`)).captions;
    } catch (e) { showStatus(e.message); return; }
  }
  if (state.ref !== ref) return;   // another reference was picked meanwhile
  const list = state.captions[key];
  const sel = $("#caption-pick");
  sel.replaceChildren(el("option", {value: "", text: `${list.length} annotated caption${list.length === 1 ? "" : "s"}…`}),
                      ...list.map((c, i) => el("option", {value: String(i), text: c.kind ? `${c.caption} (${c.kind})` : c.caption})));
  const current = list.findIndex((c) => c.caption === $("#caption").value.trim() && c.target === state.target);
  sel.value = current >= 0 ? String(current) : "";
  box.hidden = !list.length || !modeInfo(state.mode).needs_caption;
}

function pickCaption() {
  const list = state.captions[`${state.ref.dataset}/${state.ref.id}`] || [];
  const c = list[Number($("#caption-pick").value)];
  if (!$("#caption-pick").value || !c) return;
  $("#caption").value = c.caption;
  state.target = c.target;
  if (!modeInfo(state.mode).needs_reference) setMode(state.info.models.composed_available ? "composed" : "sum", false);
  runSearch();
}

function renderReference() {
  const ref = state.ref;
  const img = $("#ref-img");
  const used = modeInfo(state.mode).needs_reference;
  $("#ref-card").hidden = !ref;
  if (!ref) return;
  img.src = ref.thumb;
  img.classList.toggle("unused", !used);
  $("#ref-title").textContent = ref.title;
  $("#ref-note").textContent = used ? (ref.kind === "upload" ? "uploaded reference" : `reference ${ref.id}`)
                                    : "not used in this mode";
}

function renderTrail() {
  const ol = $("#trail");
  const home = el("li", {class: "breadcrumb-item"}, el("a", {href: "#", id: "home-link", text: "Home",
                                                             onclick: (e) => { e.preventDefault(); goHome(); }}));
  const items = state.trail.map((step, i) => {
    const label = step.mode === "tags" ? Object.values(step.tags || {}).join(" ") : step.caption;
    const a = el("a", {href: "#", title: label || (step.ref ? step.ref.title : ""),
                       onclick: (e) => { e.preventDefault(); goBackTo(i); }},
                 step.ref ? el("img", {src: step.ref.thumb, alt: ""}) : null,
                 el("span", {class: "trail-cap", text: label || modeName(modeInfo(step.mode))}));
    return el("li", {class: "breadcrumb-item trail-item"}, a);
  });
  const current = el("li", {class: "breadcrumb-item active", "aria-current": "page",
                            text: state.ref ? "current" : "text search"});
  ol.replaceChildren(home, ...items, current);
}

function goBackTo(i) {
  const step = state.trail[i];
  state.trail = state.trail.slice(0, i);
  state.ref = step.ref;
  state.target = step.target || null;
  state.tags = {...(step.tags || {})};
  $("#caption").value = step.mode === "tags" ? "" : (step.caption || "");
  setMode(step.mode, false);
  showSearch();
  if (canSearch()) runSearch(); else { clearResults(); pushUrl(); }
}

function renderModes() {
  const box = $("#modes");
  box.replaceChildren();
  const ds = datasetInfo(state.dataset);
  for (const m of state.info.modes) {
    if (m.name === "tags" && ds && !ds.has_tags) continue;   // nothing to pick from
    const id = `mode-${m.name}`;
    const input = el("input", {type: "radio", class: "btn-check", name: "mode", id, value: m.name,
                               autocomplete: "off", onchange: () => setMode(m.name, true)});
    if (!m.available) { input.disabled = true; }
    input.checked = m.name === state.mode;
    const extra = m.name === "sum" ? " adv-only" : "";   // a research baseline
    const label = el("label", {class: `btn btn-outline-primary${extra}`, for: id, text: modeName(m),
                               title: m.available ? m.label : state.info.models.image_only
                                 ? "the encoder is image-only: search by image" : "no Combiner checkpoint is loaded"});
    box.append(input, label);
  }
}

// the server's default: composed with a Combiner, sum without, image for an image-only encoder (bof)
function defaultMode() {
  const models = state.info.models;
  return models.default_mode || (models.composed_available ? "composed" : "sum");
}

function setMode(name, search) {
  const m = modeInfo(name);
  if (!m || !m.available) return;
  state.mode = name;
  const input = document.getElementById(`mode-${name}`);
  if (input) input.checked = true;
  $("#caption").disabled = !m.needs_caption;
  $("#tags-box").hidden = name !== "tags";
  $("#combiner-select").hidden = name !== "composed" || !state.info.models.combiners.length;
  $("#text-encoder-select").hidden = name === "image" || state.info.models.text_encoders.length < 2;
  renderReference();
  renderTags();
  $("#caption-pick-box").hidden = !m.needs_caption || !$("#caption-pick").options.length ||
    !state.ref || state.ref.kind !== "dataset";
  showStatus("");
  if (search && canSearch()) runSearch();
}

function renderModels() {
  const models = state.info.models;
  const cs = $("#combiner-select");
  cs.replaceChildren(...models.combiners.map((c) => el("option", {value: c.name, text: `Combiner: ${c.name}`})));
  const ts = $("#text-encoder-select");
  ts.replaceChildren(el("option", {value: "auto", text: "text encoder: auto"}),
                     ...models.text_encoders.map((t) => el("option", {value: t, text: `text encoder: ${t}`})));
}

async function renderTags() {
  const box = $("#tags-box");
  if (state.mode !== "tags") return;
  if (!(state.dataset in state.vocab)) {
    try { state.vocab[state.dataset] = (await api(`/api/datasets/${encodeURIComponent(state.dataset)}`)).vocabulary; }
    catch (e) { showStatus(e.message); return; }
  }
  const vocab = state.vocab[state.dataset];
  box.replaceChildren();
  if (!Object.keys(vocab).length) { box.append(el("div", {class: "small text-muted", text: "this dataset has no tags"})); return; }
  for (const [key, values] of Object.entries(vocab)) {
    const row = el("div", {class: "tag-row"}, el("span", {class: "tag-key", text: attrName(key)}));
    values.slice(0, 10).forEach(({value}) => {
      const on = state.tags[key] === value;
      row.append(el("button", {type: "button", class: `btn btn-sm chip ${on ? "btn-primary" : "btn-outline-secondary"}`,
                               "data-key": key, "data-value": value, text: value,
                               onclick: () => toggleTag(key, value)}));
    });
    if (values.length > 10) {
      const sel = el("select", {class: "form-select form-select-sm d-inline-block w-auto chip", "aria-label": `more ${attrName(key)}`,
                                onchange: (e) => { if (e.target.value) toggleTag(key, e.target.value, true); }},
                     el("option", {value: "", text: "more…"}),
                     ...values.slice(10).map(({value}) => el("option", {value, text: value})));
      if (state.tags[key] && values.slice(10).some((v) => v.value === state.tags[key])) sel.value = state.tags[key];
      row.append(sel);
    }
    box.append(row);
  }
}

function toggleTag(key, value, forceOn) {
  if (state.tags[key] === value && !forceOn) delete state.tags[key]; else state.tags[key] = value;
  renderTags();
  if (Object.keys(state.tags).length) runSearch();
}

function canSearch() {
  const m = modeInfo(state.mode);
  if (m.needs_reference && !state.ref) return false;
  if (m.needs_caption && !$("#caption").value.trim()) return false;
  if (state.mode === "tags" && !Object.keys(state.tags).length) return false;
  return true;
}

// What stops a search before it is sent, said in place of the results; "" when it can go.
function searchProblem(m, caption) {
  if (m.needs_reference && !state.ref) return "Pick a reference image first.";
  if (m.needs_caption && !caption) return "Type how the wanted item differs (e.g. “is red with longer sleeves”).";
  if (m.needs_caption) return captionProblem(caption);
  if (state.mode === "tags" && !Object.keys(state.tags).length) return "Pick at least one tag.";
  return "";
}

function searchBody(m, caption) {
  const body = {mode: state.mode, dataset: state.dataset, k: Number($("#k-select").value)};
  if (m.needs_caption) body.caption = caption;
  if (state.mode === "tags") body.tags = state.tags;
  if (m.needs_reference) {
    if (state.ref.kind === "upload") body.upload = state.ref.id; else body.reference = state.ref.id;
  }
  if (state.target && m.needs_caption) body.target = state.target;
  if (state.mode === "composed" && $("#combiner-select").value) body.combiner = $("#combiner-select").value;
  if (state.mode !== "image" && $("#text-encoder-select").value !== "auto") body.text_encoder = $("#text-encoder-select").value;
  if (m.needs_caption) body.metadata = $("#metadata-toggle").checked;
  const history = sessionHistory(m);
  if (history.length) body.history = history;
  return body;
}

// The turns that led here, as the API's `history` (cir.index.session ranks with them: earlier wishes kept
// unless this caption overrides them, results already shown demoted). Only composed turns on this dataset's
// own images: an upload may have expired, and another dataset's ids mean nothing here.
function sessionHistory(m) {
  if (!m.needs_reference || !m.needs_caption) return [];
  return state.trail
    .filter((s) => s.ref && s.ref.kind === "dataset" && s.ref.dataset === state.dataset && s.caption &&
                   (s.mode === "composed" || s.mode === "sum"))
    .slice(-20)
    .map((s) => ({reference: s.ref.id, caption: s.caption, feedback: s.seen ? {seen: s.seen} : undefined}));
}

async function runSearch(opts = {}) {
  const m = modeInfo(state.mode);
  const caption = $("#caption").value.trim();
  const problem = searchProblem(m, caption);
  if (problem) { showStatus(problem, "error"); return; }
  const body = searchBody(m, caption);
  if (!opts.fromUrl) pushUrl();
  state.busy += 1;
  $("#search-btn").disabled = true;
  const ticket = ++state.searchTicket;
  try {
    const data = await api("/api/search", {method: "POST", headers: {"Content-Type": "application/json"},
                                           body: JSON.stringify(body)});
    if (ticket !== state.searchTicket) return;
    renderResults(data);
    state.lastQuery = body;
    state.shown = data.ids || [];
    const notice = notUnderstood(data);
    showStatus(notice || data.warning || "");
  } catch (e) {
    if (ticket === state.searchTicket) showStatus(e.message, "error");
  } finally {
    state.busy -= 1;
    $("#search-btn").disabled = false;
  }
}

function renderResults(data) {
  const results = $("#results");
  results.dataset.mode = data.mode;
  results.dataset.reference = data.reference ? data.reference.id : "";
  results.replaceChildren(...collapseDuplicates(data.results).map((r) => imageCard(r, followResult, r.score)));
  if (data.reference && state.ref && data.reference.id === state.ref.id && data.reference.title !== state.ref.title) {
    state.ref.title = data.reference.title;   // a reference restored from the URL knew only its id
    $("#ref-title").textContent = state.ref.title;
  }
  const groupSection = $("#group-section");
  groupSection.hidden = !(data.group && data.group.length);
  $("#group-grid").replaceChildren(...(data.group || []).map((r) => imageCard(r, followResult, r.score)));
  markTarget(data.target);
  applyWhy();
  const t = data.timings;
  const model = data.model.combiner ? ` · ${data.model.combiner}` : "";
  const text = data.model.text_encoder ? ` · text: ${data.model.text_encoder}` : "";
  const query = data.mode === "tags" ? ` · query “${data.query_text}”` : "";
  const u = data.understood;
  const words = u && (u.boost.length || u.avoid.length)
    ? ` · shop words: ${[...u.boost, ...u.avoid.map((w) => `not ${w}`)].join(", ")}` : "";
  $("#summary").textContent = summaryOf(data, u);
  $("#latency").textContent =
    `${data.results.length} results in ${data.latency_ms.toFixed(1)} ms (text ${t.encode_text_ms.toFixed(1)}` +
    `${t.text_cached ? " cached" : ""}, fuse ${t.fuse_ms.toFixed(1)}, search ${t.search_ms.toFixed(1)} ms)${model}${text}${query}${words}`;
}

// Results showing the same picture as a higher one (the server marks them `duplicate_of`) are left out; the
// one kept says how many it stands for.
function collapseDuplicates(results) {
  const kept = results.filter((r) => !r.duplicate_of);
  const extra = new Map();
  for (const r of results) if (r.duplicate_of) extra.set(r.duplicate_of, (extra.get(r.duplicate_of) || 0) + 1);
  return kept.map((r) => extra.has(r.id) ? {...r, title: `${r.title} (+${extra.get(r.id)} identical)`} : r);
}

// The shopper's line over the results: how many, and which shop words were read.
function summaryOf(data, u) {
  const shown = $("#results").children.length;
  const words = u && (u.boost.length || u.avoid.length)
    ? ` · looking for ${[...u.boost, ...u.avoid.map((w) => `not ${w}`)].join(", ")}` : "";
  return `${shown} result${shown === 1 ? "" : "s"}${words}`;
}

function markTarget(target) {
  // the picked caption's annotated target: outlined where it is shown, its rank said in any case
  const note = $("#target-note");
  note.hidden = !target;
  if (!target) { note.replaceChildren(); return; }
  for (const btn of document.querySelectorAll("#results .thumb-card, #group-grid .thumb-card")) {
    if (btn.dataset.id !== target.id) continue;
    btn.classList.add("target");
    btn.querySelector(".thumb-wrap").append(el("span", {class: "badge bg-success target-badge", text: "target"}));
  }
  const where = target.shown ? "marked below" : "below the shown results";
  const group = target.group_rank ? ` · rank ${target.group_rank} within the reference's group` : "";
  note.replaceChildren(el("img", {src: target.thumb, alt: target.title}),
                       el("span", {id: "target-rank", "data-rank": String(target.rank),
                                   text: `Annotated target ${target.id}: rank ${target.rank} of the dataset (${where}), score ${target.score.toFixed(3)}${group}`}));
}

function followResult(item) {
  // the current step goes on the trail; the clicked result becomes the next reference, and the shopper says
  // the next change (the old caption described the step just taken, not this one)
  state.trail.push({ref: state.ref, caption: $("#caption").value.trim(), mode: state.mode, tags: {...state.tags},
                    target: state.target, seen: state.shown.slice(0, 24)});
  startTurn({kind: "dataset", id: item.id, dataset: state.dataset, title: item.title, thumb: item.thumb});
}

function goBack() {
  if (state.trail.length) goBackTo(state.trail.length - 1); else goHome();
}

// ---------------------------------------------------------------------------------------------- start

async function init() {
  try {
    state.info = await api("/api/datasets");
  } catch (e) {
    $("#grid-info").textContent = `cannot reach the server: ${e.message}`;
    return;
  }
  const sel = $("#dataset-select");
  sel.replaceChildren(...state.info.datasets.map((d) =>
    el("option", {value: d.name, text: `${d.label} · ${d.count.toLocaleString()}`})));
  state.dataset = state.info.default;
  sel.value = state.dataset;
  renderModes();
  renderModels();
  setMode(defaultMode(), false);
  initControls();
  state.q = $("#filter").value.trim();   // what was typed before the page was ready still filters
  loadGrid();
  restoreFromUrl();
  window.addEventListener("popstate", restoreFromUrl);
}

// A dataset switch starts afresh: its own first page, no filter text or random list of the other dataset.
function switchDataset(name) {
  state.dataset = name; state.page = 1; state.tags = {}; state.q = ""; state.randomList = null;
  $("#dataset-select").value = name;
  $("#filter").value = "";
  renderModes();
  if (!modeInfo(state.mode).available || (state.mode === "tags" && !datasetInfo(name).has_tags)) {
    setMode(defaultMode(), false);
  }
  loadGrid();
}

function initControls() {
  const sel = $("#dataset-select");
  sel.addEventListener("change", () => { switchDataset(sel.value); pushUrl(); });
  let timer = null;
  $("#filter").addEventListener("input", (e) => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.q = e.target.value.trim(); state.page = 1; state.randomList = null; loadGrid(); }, 250);
  });
  $("#random-btn").addEventListener("click", loadRandom);
  $("#prev-page").addEventListener("click", () => { if (state.page > 1) { state.page -= 1; loadGrid(); } });
  $("#next-page").addEventListener("click", () => { if (state.page < state.pages) { state.page += 1; loadGrid(); } });
  $("#upload-input").addEventListener("change", (e) => { if (e.target.files.length) uploadFile(e.target.files[0]); });
  $("#text-only-btn").addEventListener("click", () => {
    state.trail = []; state.ref = null; state.target = null; setMode("text", false); showSearch(); clearResults();
    pushUrl(); $("#caption").focus();
  });
  $("#search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
  $("#caption-pick").addEventListener("change", pickCaption);
  $("#caption").addEventListener("input", () => { state.target = null; $("#caption-pick").value = ""; });
  $("#back-btn").addEventListener("click", goBack);
  $("#why-toggle").addEventListener("change", applyWhy);
  $("#metadata-toggle").addEventListener("change", () => { if (canSearch()) runSearch(); });
  $("#home-btn").addEventListener("click", goHome);
  $("#brand").addEventListener("click", (e) => { e.preventDefault(); goHome(); });
  for (const id of ["#combiner-select", "#text-encoder-select", "#k-select"]) {
    $(id).addEventListener("change", () => { if (canSearch()) runSearch(); });
  }
  initAdvanced();
  initPreview();
}

document.addEventListener("DOMContentLoaded", init);
