// ravis page: upload an image (or pick a sample), show the prediction and the neighbours it
// leaned on; where the server allows edits, add entries to the memory and delete them again.
"use strict";

const $ = (id) => document.getElementById(id);
const FIRST_TILES = 12;  // the most decisive neighbours shown before "show all"
const state = { model: null, file: null, data: null, showAll: false, sample: null, request: 0 };

// How the tiles are ordered and what their bar shows, by the response's decided_by.
const DECIDED = {
  vote_weight: ["Neighbours by their share of the vote", "vote share"],
  contribution: ["Neighbours by their term in the predicted class's score", "term"],
  attention: ["Neighbours by attention (how much of each value was mixed into the embedding)", "attention"],
};

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.appendChild(c);
  return node;
}

function fmt(x, digits = 3) { return x === null || x === undefined ? "-" : Number(x).toFixed(digits); }

function query() {  // ?experiment=&method= of the chosen model
  if (!state.model) return "";
  return "?" + new URLSearchParams(state.model).toString();
}

function setStatus(id, text, isError = false) {
  $(id).textContent = text;
  $(id).className = isError ? "error" : "";
}

async function loadModels() {
  try {
    const m = await (await fetch("/models")).json();
    state.model = { experiment: m.default.experiment, method: m.default.method };
    const select = $("model");
    select.replaceChildren(...m.models.map((c) => {
      const option = el("option", { value: JSON.stringify({ experiment: c.experiment, method: c.method }),
                                    text: `${c.experiment} / ${c.label || c.method}` });
      if (c.experiment === m.default.experiment && c.method === m.default.method) option.selected = true;
      return option;
    }));
    select.addEventListener("change", () => {
      state.model = JSON.parse(select.value);
      state.sample = null;
      loadInfo();
      loadSamples();
      if (state.file) predict(state.file);
    });
  } catch (e) {
    state.model = null;
  }
  loadInfo();
  loadSamples();
}

async function loadInfo() {
  try {
    const h = await (await fetch("/healthz" + query())).json();
    $("model-info").textContent = `${h.experiment} / ${h.method_label || h.method}: ${h.classes} classes, ` +
      `k = ${h.k} neighbours; served memory of ${h.memory_size} entries`;
    $("kept-note").textContent = h.kept ? `Validation kept this model: ${h.kept.reason}.` : "";
    $("edit-section").hidden = !h.edits_allowed;
  } catch (e) {
    $("model-info").textContent = "model information unavailable";
  }
}

async function loadSamples() {
  try {
    const s = await (await fetch("/samples" + query())).json();
    $("samples").replaceChildren(...(s.samples || []).map((x) => {
      const img = el("img", { src: x.url, alt: x.label, title: `${x.id}: true class ${x.label}` });
      const caption = el("span", { class: "sample-label", text: x.label });
      const button = el("button", { type: "button", class: "sample", "data-label": x.label, "data-id": x.id },
                        [img, caption]);
      button.addEventListener("click", async () => {
        const blob = await (await fetch(x.url)).blob();
        state.sample = x;
        predict(new File([blob], x.id.split("/").pop() || "sample", { type: blob.type }), true);
      });
      return button;
    }));
    $("samples-note").textContent = s.note || "";
  } catch (e) {
    $("samples").replaceChildren();
  }
}

async function predict(file, fromSample = false) {
  if (!fromSample) state.sample = null;
  state.file = file;
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("drop-text").textContent = file.name;
  setStatus("status", "predicting...");
  const body = new FormData();
  body.append("image", file, file.name);
  const request = ++state.request;  // a slower earlier answer must not replace a newer one
  let data;
  try {
    const r = await fetch("/predict" + query(), { method: "POST", body });
    data = await r.json();
    if (request !== state.request) return;
    if (!r.ok) {
      setStatus("status", `refused (${r.status} ${data.error.kind}): ${data.error.message}`, true);
      return;
    }
  } catch (e) {
    setStatus("status", `request failed: ${e}`, true);
    return;
  }
  setStatus("status", "");
  state.data = data;
  render();
}

function tile(n, prediction, decided, maxWeight) {
  const image = n.thumbnail
    ? el("img", { src: n.thumbnail, alt: n.text, loading: "lazy" })
    : el("div", { class: "noimg", text: "no image" });
  const agrees = n.label !== null && n.label === prediction;
  const children = [
    image,
    el("div", { class: "text", text: n.text }),
    el("div", { class: "label", text: n.label && n.label !== n.text ? `label: ${n.label}` : `from ${n.source}` }),
  ];
  const meta = [];
  if (decided) {
    const value = n[decided] || 0;
    const share = maxWeight > 0 ? Math.max(0, value) / maxWeight : 0;
    children.push(el("div", { class: "bar", title: `${DECIDED[decided][1]} ${fmt(value)}` },
                     [el("div", { style: `width:${(100 * share).toFixed(1)}%` })]));
    meta.push(el("span", { class: "weight", text: `${DECIDED[decided][1]} ${fmt(value)}` }));
  }
  if (decided !== "attention" && n.attention !== null && n.attention !== undefined) {
    meta.push(el("span", { class: "attention", title: "attention per layer: " + n.attention_by_layer.map((w) => fmt(w)).join(", "),
                           text: `attention ${fmt(n.attention)}` }));
  }
  meta.push(el("span", { class: "rank", text: `rank ${n.rank}` }));
  meta.push(el("span", { class: "sim", text: `similarity ${fmt(n.similarity, 2)}` }));
  children.push(el("div", { class: "meta" }, meta));
  if (agrees) children.splice(1, 0, el("span", { class: "agree-badge", text: "agrees" }));
  if (n.source === "edits" && !$("edit-section").hidden) {
    const del = el("button", { type: "button", class: "delete", text: "delete" });
    del.addEventListener("click", () => deleteEntry(n.memory_id));
    children.push(del);
  }
  return el("div", { class: "neighbor" + (agrees ? " agrees" : ""), "data-memory-id": n.memory_id }, children);
}

function evidenceTable(data) {
  const names = [...new Set(data.evidence.flatMap((e) => Object.keys(e.parts)))];
  const head = el("tr", {}, [el("th", { text: "class" }), el("th", { text: "score" }),
                             ...names.map((n) => el("th", { text: n }))]);
  const rows = data.evidence.map((e) => el("tr", {}, [
    el("td", { text: e.class }), el("td", { text: fmt(e.score, 2) }),
    ...names.map((n) => el("td", { text: fmt(e.parts[n], 2) }))]));
  return [head, ...rows];
}

function render() {
  const data = state.data;
  const top = data.top5[0];
  $("prediction").textContent = data.prediction;
  $("explanation").textContent = data.explanation;
  $("in-memory").textContent = data.in_memory
    ? `This image is memory entry ${data.in_memory} (or a copy of it): its nearest neighbour is itself.` : "";
  $("in-memory").hidden = !data.in_memory;
  $("served-by").textContent = `Answered by ${data.experiment} / ${data.method_label}. ` +
    (data.calibrated ? `Probabilities calibrated on validation (temperature ${fmt(data.temperature, 2)}).`
                     : "Probabilities uncalibrated: this run recorded no temperature (fallback).");
  $("top5").replaceChildren(...data.top5.map((c) => el("li", {}, [
    el("span", { class: "pbar", style: `width:${Math.round(200 * c.probability)}px` }),
    el("span", { text: `${c.class} ${(100 * c.probability).toFixed(1)}%` }),
  ])));
  $("evidence").replaceChildren(...evidenceTable(data));
  const sample = state.sample;
  $("sample-check").hidden = !sample;
  if (sample) {
    const same = sample.evaluated && sample.evaluated.prediction === data.prediction;
    $("sample-check").textContent = `Test image ${sample.id}: true class ${sample.label}; the run evaluated ` +
      (sample.evaluated ? `${sample.evaluated.prediction} (${(100 * sample.evaluated.probability).toFixed(1)}%)` : "nothing") +
      (same ? ", as here." : ", which differs from this answer.");
  }
  const t = data.timings_ms;
  $("timings").textContent = "time (ms): " + Object.entries(t).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(", ");
  $("result").hidden = false;

  const decided = data.decided_by;
  $("neighbours-title").textContent = decided ? DECIDED[decided][0]
    : "What retrieval found (this model reads no memory: these did not affect the answer)";
  const maxWeight = decided ? Math.max(...data.neighbors.map((n) => n[decided] || 0), 1e-12) : 0;
  const shown = state.showAll ? data.neighbors : data.neighbors.slice(0, FIRST_TILES);
  $("gallery").replaceChildren(...shown.map((n) => tile(n, data.prediction, decided, maxWeight)));
  const more = data.neighbors.length > FIRST_TILES;
  $("show-all").hidden = !more;
  $("show-all").textContent = state.showAll ? `show the first ${FIRST_TILES}`
    : `show all ${data.neighbors.length} neighbours`;
  $("neighbours-section").hidden = false;
}

function authHeaders() {
  return { Authorization: `Bearer ${$("edit-token").value.trim()}` };
}

async function addEntry(event) {
  event.preventDefault();
  const file = $("edit-file").files[0];
  const label = $("edit-label").value.trim();
  const caption = $("edit-caption").value.trim();
  if (!file || (!label && !caption)) {
    setStatus("edit-status", "choose an image and give it a label or a caption", true);
    return;
  }
  const body = new FormData();
  if (label) body.append("label", label);
  if (caption) body.append("caption", caption);
  body.append("image", file, file.name);
  const r = await fetch("/memory" + query(), { method: "POST", body, headers: authHeaders() });
  const data = await r.json();
  if (!r.ok) {
    setStatus("edit-status", `refused (${r.status} ${data.error.kind}): ${data.error.message}`, true);
    return;
  }
  setStatus("edit-status", `added ${data.added.id}; the memory has ${data.memory.entries} entries`);
  loadInfo();
  predict(state.file || file);  // the new entry comes back as a neighbour of a similar image
}

async function deleteEntry(id) {
  const r = await fetch(`/memory/${id.split("/").map(encodeURIComponent).join("/")}` + query(),
                        { method: "DELETE", headers: authHeaders() });
  const data = await r.json();
  if (!r.ok) {
    setStatus("edit-status", `refused (${r.status} ${data.error.kind}): ${data.error.message}`, true);
    return;
  }
  setStatus("edit-status", `deleted ${id}; the memory has ${data.memory.entries} entries`);
  loadInfo();
  if (state.file) predict(state.file);
}

function setup() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => { if (e.target.files.length) predict(e.target.files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) predict(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  $("show-all").addEventListener("click", () => { state.showAll = !state.showAll; render(); });
  $("edit-form").addEventListener("submit", addEntry);
  loadModels();
}

setup();
