// The shopper's session around the search page (static/app.js): plain words by default with an "Advanced"
// switch, the query kept in the URL (Back, Reload, sharing), a larger preview of a result, and notices when
// a request cannot be understood. Loaded before app.js; both are classic scripts sharing these globals.
"use strict";

// Plain names for shoppers; the server's own labels (researchers' terms) show with "Advanced" on.
const MODE_NAMES = {composed: "Change this item", sum: "Change this item (sum baseline)", image: "More like this",
                    text: "Describe it", tags: "Pick attributes"};
const ATTR_NAMES = {gender: "For", articleType: "Type", baseColour: "Colour", usage: "Occasion",
                    season: "Season", year: "Year", masterCategory: "Category", subCategory: "Kind"};
// A top score under this, with no word of the caption read as a shop word (the API's `understood`), means the
// caption was most likely not understood: the results are then only lookalikes of the reference. Measured with
// the shipped weights on the catalogue's test split (4 references): gibberish ("asdkjh", "xx") tops at 0.14 to
// 0.25, edits without a shop word ("is darker") at 0.22 to 0.25, edits with one at 0.22 to 0.46; 0.2 flags
// most gibberish and none of the edits measured.
const NOT_UNDERSTOOD_SCORE = 0.2;

function attrName(key) { return ATTR_NAMES[key] || key; }

function modeName(m) { return advanced() ? m.label : (MODE_NAMES[m.name] || m.label); }

function advanced() { return document.body.classList.contains("advanced"); }

function setAdvanced(on) {
  document.body.classList.toggle("advanced", on);
  $("#advanced-toggle").checked = on;
  try { localStorage.setItem("cir-advanced", on ? "1" : "0"); } catch (e) { /* storage off: not remembered */ }
  if (state.info) renderModes();
}

function initAdvanced() {
  let on = false;
  try { on = localStorage.getItem("cir-advanced") === "1"; } catch (e) { on = false; }
  setAdvanced(on);
  $("#advanced-toggle").addEventListener("change", (e) => setAdvanced(e.target.checked));
}

// ---------------------------------------------------------------------------------------------- notices

// Why the results may not answer the caption, or "" when they do.
function notUnderstood(data) {
  if (!data.caption || !["composed", "sum", "text"].includes(data.mode)) return "";   // a typed caption only
  const quoted = `“${data.caption.length > 60 ? data.caption.slice(0, 60) + "…" : data.caption}”`;
  if (!/[\p{L}\p{N}]/u.test(data.caption)) {
    return `Sorry, ${quoted} has no words we can read. Describe the change in words, e.g. “in red” or “with short sleeves”.`;
  }
  const u = data.understood;
  const read = u && u.available && (u.boost.length || u.avoid.length);
  const top = data.results.length ? data.results[0].score : 0;
  // the threshold was measured on composed scores; text->image scores run on another scale
  if (read || data.mode === "text" || top >= NOT_UNDERSTOOD_SCORE) return "";
  return `Sorry, we could not make sense of ${quoted}: these are only lookalikes. Try a colour, a type or a brand.`;
}

// The caption the page refuses before asking the server: too long (said with its count), or empty.
function captionProblem(caption) {
  const max = state.info.limits.max_caption_chars;
  if (caption.length > max) {
    return `Your request is ${caption.length.toLocaleString("en")} characters long; the limit is ` +
           `${max.toLocaleString("en")}. Please shorten it.`;
  }
  return "";
}

// ---------------------------------------------------------------------------------------------- URL state
// The query lives in the URL: ?dataset=&ref= or upload=&mode=&q=&tags=&trail= (trail: JSON of past steps).
// Each new turn is a history entry, so Back goes to the previous turn, Reload restores it, and a link shares it.

function refFromUrl(kind, id, dataset) {
  if (!id) return null;
  const thumb = kind === "upload" ? `/uploads/${encodeURIComponent(id)}/thumb`
                                  : `/thumb/${encodeURIComponent(dataset)}/${encodeURIComponent(id)}`;
  return {kind, id, dataset, title: kind === "upload" ? "Your upload" : id, thumb};
}

function stepToJson(step) {
  // seen: the results the step showed, which the session demotes: a shared link must rank as the page did
  return [step.ref ? step.ref.kind[0] : "", step.ref ? step.ref.id : "", step.mode, step.caption || "",
          step.tags || {}, step.seen || []];
}

function stepFromJson(a, dataset) {
  const seen = Array.isArray(a[5]) ? a[5].filter((x) => typeof x === "string").slice(0, 200) : [];
  return {ref: refFromUrl(a[0] === "u" ? "upload" : "dataset", a[1], dataset), mode: a[2], caption: a[3],
          tags: a[4] || {}, target: null, seen: seen.length ? seen : undefined};
}

function urlOf() {
  const p = new URLSearchParams({dataset: state.dataset});
  if (!$("#search-view").hidden) {
    p.set("mode", state.mode);
    if (state.ref) p.set(state.ref.kind === "upload" ? "upload" : "ref", state.ref.id);
    const caption = $("#caption").value.trim();
    if (caption && modeInfo(state.mode).needs_caption) p.set("q", caption);
    if (state.mode === "tags" && Object.keys(state.tags).length) p.set("tags", JSON.stringify(state.tags));
    if (state.target) p.set("target", state.target);
    if (state.trail.length) p.set("trail", JSON.stringify(state.trail.map(stepToJson)));
  }
  return `?${p}`;
}

// A new history entry for the current view, unless it is the one shown (a re-run, or a restore).
function pushUrl() {
  const url = urlOf();
  if (url !== location.search) history.pushState(null, "", url);
}

function parseJson(text, fallback) {
  try { return text ? JSON.parse(text) : fallback; } catch (e) { return fallback; }
}

// Show what the URL says (a reload, a shared link, Back/Forward): returns false for a plain home URL.
function restoreFromUrl() {
  const p = new URLSearchParams(location.search);
  const ds = p.get("dataset") || state.info.default;   // "/" is the default dataset's home
  if (datasetInfo(ds) && ds !== state.dataset) switchDataset(ds);
  const mode = modeInfo(p.get("mode") || "");
  if (!mode || !mode.available) { showHome(); return false; }
  const ref = p.get("upload") ? refFromUrl("upload", p.get("upload"), state.dataset)
                              : refFromUrl("dataset", p.get("ref"), state.dataset);
  if (mode.needs_reference && !ref) { showHome(); return false; }
  const trail = parseJson(p.get("trail"), []);
  state.trail = Array.isArray(trail) ? trail.filter(Array.isArray).map((a) => stepFromJson(a, state.dataset)) : [];
  state.ref = ref;
  state.target = p.get("target");
  const tags = parseJson(p.get("tags"), {});
  state.tags = tags && typeof tags === "object" && !Array.isArray(tags) ? tags : {};
  $("#caption").value = p.get("q") || "";
  setMode(mode.name, false);
  showSearch();
  if (canSearch()) runSearch({fromUrl: true}); else clearResults();
  return true;
}

// ---------------------------------------------------------------------------------------------- preview
// A result seen larger, with its attributes, without searching again; "Use as reference" makes it the next one.

let previewItem = null;

function openPreview(item) {
  previewItem = item;
  const img = $("#preview-img");
  img.src = item.url;
  img.alt = item.title;
  $("#preview-title").textContent = item.title;
  const dl = $("#preview-attrs");
  dl.replaceChildren(...Object.entries(item.attrs || {}).flatMap(([k, v]) =>
    [el("dt", {text: attrName(k)}), el("dd", {text: String(v)})]));
  $("#preview").showModal();
}

function initPreview() {
  const dialog = $("#preview");
  $("#preview-close").addEventListener("click", () => dialog.close());
  $("#preview-use").addEventListener("click", () => { dialog.close(); if (previewItem) followResult(previewItem); });
  // a click on the backdrop (outside the dialog's box) closes it, as Escape does
  dialog.addEventListener("click", (e) => { if (e.target === dialog) dialog.close(); });
}
