// The "why?" switch of the search page (static/app.js, whose globals it uses): Grad-CAM overlays on the results.
"use strict";

// ---------------------------------------------------------------------------------------------- "why?"
// Grad-CAM overlays from POST /api/explain, fetched only when the toggle is on and a card scrolls into view
// (never during the search itself), one at a time, and cached per (query, result) for the page's life.

const whyObserver = new IntersectionObserver((entries) => {
  for (const e of entries) if (e.isIntersecting) { whyObserver.unobserve(e.target); showOverlay(e.target); }
});

function applyWhy() {
  const on = $("#why-toggle").checked;
  $("#why-legend").hidden = !on;
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

