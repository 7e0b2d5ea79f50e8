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
  ref: null,             // {kind: "dataset"|"upload", id, dataset, title, thumb}
  mode: "composed",
  tags: {},              // attribute -> value (tags mode)
  trail: [],             // past steps: {ref, caption, mode, target}
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
  if (score !== undefined) wrap.append(el("span", {class: "badge bg-dark score", text: score.toFixed(3)}));
  btn.append(wrap, el("div", {class: "cap", text: item.title}));
  return el("div", {class: "col"}, btn);
}

function showStatus(msg) {
  const s = $("#status");
  s.textContent = msg || "";
  s.hidden = !msg;
}

function modeInfo(name) { return state.info.modes.find((m) => m.name === name); }

// ---------------------------------------------------------------------------------------------- home

async function loadGrid() {
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

async function loadRandom() {
  const ticket = ++state.gridTicket;
  try {
    const data = await api(`/api/datasets/${encodeURIComponent(state.dataset)}/random?n=${PER_PAGE}`);
    if (ticket !== state.gridTicket) return;
    renderGrid(data.images, "random references");
    $("#page-info").textContent = "";
  } catch (e) { if (ticket === state.gridTicket) renderGrid([], e.message); }
}

function renderGrid(images, info) {
  $("#grid-info").textContent = info + " — click one to use it as the reference";
  const grid = $("#ref-grid");
  grid.replaceChildren(...images.map((im) => imageCard(im, pickReference)));
}

function pickReference(item) {
  state.trail = [];
  state.target = null;
  state.ref = {kind: "dataset", id: item.id, dataset: state.dataset, title: item.title, thumb: item.thumb};
  showSearch();
  if (canSearch()) runSearch();
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
    state.ref = {kind: "upload", id: data.id, title: "Your upload", thumb: data.thumb};
    state.target = null;
    if (!modeInfo(state.mode).needs_reference) setMode("image", false);
    showSearch();
    if (canSearch()) runSearch(); else showStatus("Type how the wanted item differs, then Search.");
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
                                                             onclick: (e) => { e.preventDefault(); showHome(); }}));
  const items = state.trail.map((step, i) => {
    const label = step.mode === "tags" ? Object.values(step.tags || {}).join(" ") : step.caption;
    const a = el("a", {href: "#", title: label || (step.ref ? step.ref.title : ""),
                       onclick: (e) => { e.preventDefault(); goBackTo(i); }},
                 step.ref ? el("img", {src: step.ref.thumb, alt: ""}) : null,
                 el("span", {class: "trail-cap", text: label || modeInfo(step.mode).label}));
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
  if (canSearch()) runSearch();
}

function renderModes() {
  const box = $("#modes");
  box.replaceChildren();
  for (const m of state.info.modes) {
    const id = `mode-${m.name}`;
    const input = el("input", {type: "radio", class: "btn-check", name: "mode", id, value: m.name,
                               autocomplete: "off", onchange: () => setMode(m.name, true)});
    if (!m.available) { input.disabled = true; }
    const label = el("label", {class: "btn btn-outline-primary", for: id, text: m.label,
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
    const row = el("div", {class: "tag-row"}, el("span", {class: "tag-key", text: key}));
    values.slice(0, 10).forEach(({value}) => {
      const on = state.tags[key] === value;
      row.append(el("button", {type: "button", class: `btn btn-sm chip ${on ? "btn-primary" : "btn-outline-secondary"}`,
                               "data-key": key, "data-value": value, text: value,
                               onclick: () => toggleTag(key, value)}));
    });
    if (values.length > 10) {
      const sel = el("select", {class: "form-select form-select-sm d-inline-block w-auto chip", "aria-label": `more ${key}`,
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

async function runSearch() {
  const m = modeInfo(state.mode);
  const caption = $("#caption").value.trim();
  if (m.needs_reference && !state.ref) { showStatus("Pick a reference image first."); return; }
  if (m.needs_caption && !caption) { showStatus("Type how the wanted item differs (e.g. “is red with longer sleeves”)."); return; }
  if (state.mode === "tags" && !Object.keys(state.tags).length) { showStatus("Pick at least one tag."); return; }
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
  state.busy += 1;
  $("#search-btn").disabled = true;
  const ticket = ++state.searchTicket;
  try {
    const data = await api("/api/search", {method: "POST", headers: {"Content-Type": "application/json"},
                                           body: JSON.stringify(body)});
    if (ticket !== state.searchTicket) return;
    state.lastQuery = body;
    renderResults(data);
    showStatus(data.warning || "");
  } catch (e) {
    if (ticket === state.searchTicket) showStatus(e.message);
  } finally {
    state.busy -= 1;
    $("#search-btn").disabled = false;
  }
}

function renderResults(data) {
  const results = $("#results");
  results.dataset.mode = data.mode;
  results.dataset.reference = data.reference ? data.reference.id : "";
  results.replaceChildren(...data.results.map((r) => imageCard(r, followResult, r.score)));
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
  $("#latency").textContent =
    `${data.results.length} results in ${data.latency_ms.toFixed(1)} ms (text ${t.encode_text_ms.toFixed(1)}` +
    `${t.text_cached ? " cached" : ""}, fuse ${t.fuse_ms.toFixed(1)}, search ${t.search_ms.toFixed(1)} ms)${model}${text}${query}${words}`;
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

// ---------------------------------------------------------------------------------------------- "why?"
// Grad-CAM overlays from POST /api/explain, fetched only when the toggle is on and a card scrolls into view
// (never during the search itself), one at a time, and cached per (query, result) for the page's life.

const whyObserver = new IntersectionObserver((entries) => {
  for (const e of entries) if (e.isIntersecting) { whyObserver.unobserve(e.target); showOverlay(e.target); }
});

function applyWhy() {
  const on = $("#why-toggle").checked;
  for (const card of document.querySelectorAll("#results .thumb-card, #group-grid .thumb-card")) {
    const img = card.querySelector("img");
    if (!img.dataset.thumb) img.dataset.thumb = img.getAttribute("src");
    card.classList.toggle("why", on);
    if (on) whyObserver.observe(card);
    else { whyObserver.unobserve(card); img.src = img.dataset.thumb; }
  }
}

let whyQueue = Promise.resolve();   // one explanation at a time: the server's model lock serialises them anyway

function overlayFor(query, result) {
  const key = JSON.stringify([query, result]);
  if (!state.overlays.has(key)) {
    const job = whyQueue.then(async () => {
      const resp = await fetch("/api/explain", {method: "POST", headers: {"Content-Type": "application/json"},
                                                body: JSON.stringify({...query, result})});
      if (!resp.ok) {
        let msg = `HTTP ${resp.status}`;
        try { msg = (await resp.json()).message || msg; } catch (e) { /* not JSON */ }
        throw new Error(msg);
      }
      return URL.createObjectURL(await resp.blob());
    });
    whyQueue = job.catch(() => null);
    job.catch(() => state.overlays.delete(key));   // a failure is not cached: the next toggle tries again
    state.overlays.set(key, job);
  }
  return state.overlays.get(key);
}

async function showOverlay(card) {
  const query = state.lastQuery;
  if (!query || !$("#why-toggle").checked) return;
  try {
    const url = await overlayFor(query, card.dataset.id);
    const img = card.querySelector("img");
    if ($("#why-toggle").checked && state.lastQuery === query && img.isConnected) img.src = url;
  } catch (e) {
    showStatus(`No explanation: ${e.message}`);
  }
}

function followResult(item) {
  // the current step goes on the trail; the clicked result becomes the next reference
  state.trail.push({ref: state.ref, caption: $("#caption").value.trim(), mode: state.mode, tags: {...state.tags},
                    target: state.target});
  state.target = null;
  state.ref = {kind: "dataset", id: item.id, dataset: state.dataset, title: item.title, thumb: item.thumb};
  if (!modeInfo(state.mode).needs_reference) {
    // from a text or tags query: the user now says how the next item should differ from this one
    $("#caption").value = "";
    setMode(defaultMode(), false);
  }
  showSearch();
  if (canSearch()) runSearch(); else showStatus("Type how the wanted item differs, then Search.");
}

function goBack() {
  if (state.trail.length) goBackTo(state.trail.length - 1); else showHome();
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

  sel.addEventListener("change", () => {
    state.dataset = sel.value; state.page = 1; state.tags = {};
    loadGrid();
  });
  let timer = null;
  $("#filter").addEventListener("input", (e) => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.q = e.target.value.trim(); state.page = 1; loadGrid(); }, 250);
  });
  $("#random-btn").addEventListener("click", loadRandom);
  $("#prev-page").addEventListener("click", () => { if (state.page > 1) { state.page -= 1; loadGrid(); } });
  $("#next-page").addEventListener("click", () => { if (state.page < state.pages) { state.page += 1; loadGrid(); } });
  $("#upload-input").addEventListener("change", (e) => { if (e.target.files.length) uploadFile(e.target.files[0]); });
  $("#text-only-btn").addEventListener("click", () => {
    state.trail = []; state.ref = null; state.target = null; setMode("text", false); showSearch(); $("#caption").focus();
  });
  $("#search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
  $("#caption-pick").addEventListener("change", pickCaption);
  $("#caption").addEventListener("input", () => { state.target = null; $("#caption-pick").value = ""; });
  $("#back-btn").addEventListener("click", goBack);
  $("#why-toggle").addEventListener("change", applyWhy);
  $("#metadata-toggle").addEventListener("change", () => { if (canSearch()) runSearch(); });
  $("#home-btn").addEventListener("click", showHome);
  $("#brand").addEventListener("click", (e) => { e.preventDefault(); showHome(); });
  for (const id of ["#combiner-select", "#text-encoder-select", "#k-select"]) {
    $(id).addEventListener("change", () => { if (canSearch()) runSearch(); });
  }
  state.q = $("#filter").value.trim();   // what was typed before the page was ready still filters
  loadGrid();
}

document.addEventListener("DOMContentLoaded", init);
