// ravis page: upload an image, show the prediction and the neighbours it leaned on.
"use strict";

const $ = (id) => document.getElementById(id);

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

async function loadInfo() {
  try {
    const r = await fetch("/healthz");
    const h = await r.json();
    $("model-info").textContent =
      `${h.experiment} / ${h.method}: ${h.classes} classes, memory of ${h.memory_size} entries, k=${h.k}`;
  } catch (e) {
    $("model-info").textContent = "model information unavailable";
  }
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function predict(file) {
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("drop-text").textContent = file.name;
  setStatus("predicting...");
  const body = new FormData();
  body.append("image", file, file.name);
  let data;
  try {
    const r = await fetch("/predict", { method: "POST", body });
    data = await r.json();
    if (!r.ok) {
      setStatus(`refused (${r.status} ${data.error.kind}): ${data.error.message}`, true);
      return;
    }
  } catch (e) {
    setStatus(`request failed: ${e}`, true);
    return;
  }
  setStatus("");
  render(data);
}

function render(data) {
  $("prediction").textContent = data.prediction;
  const top = $("top5");
  top.replaceChildren(...data.top5.map((c) => el("li", {}, [
    el("span", { class: "pbar", style: `width:${Math.round(200 * c.probability)}px` }),
    el("span", { text: `${c.class} ${(100 * c.probability).toFixed(1)}%` }),
  ])));
  const t = data.timings_ms;
  $("timings").textContent = "time (ms): " + Object.entries(t).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(", ");
  $("result").hidden = false;

  const weights = data.neighbors.map((n) => n.weight || 0);
  const maxWeight = Math.max(...weights, 1e-12);
  const tiles = data.neighbors.map((n) => {
    const image = n.thumbnail
      ? el("img", { src: n.thumbnail, alt: n.text, loading: "lazy" })
      : el("div", { class: "noimg", text: "no image" });
    const perLayer = n.weights.length > 1 ? n.weights : [n.weight];
    const bars = el("div", { class: "bars", title: "attention per layer: " + n.weights.map((w) => fmt(w)).join(", ") },
      perLayer.filter((w) => w !== null).map((w) =>
        el("div", { class: "bar" }, [el("div", { style: `width:${(100 * w / maxWeight).toFixed(1)}%` })])));
    return el("div", { class: "neighbor", "data-memory-id": n.memory_id }, [
      image,
      el("div", { class: "text", title: n.text, text: n.text }),
      el("div", { class: "label", text: n.label && n.label !== n.text ? `label: ${n.label}` : n.source }),
      bars,
      el("div", { class: "meta" }, [
        el("span", { class: "weight", text: `w ${fmt(n.weight)}` }),
        el("span", { class: "rank", text: `rank ${n.rank}` }),
        el("span", { class: "sim", text: `sim ${fmt(n.similarity, 2)}` }),
      ]),
    ]);
  });
  $("gallery").replaceChildren(...tiles);
  $("neighbours-section").hidden = false;
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
  loadInfo();
}

setup();
