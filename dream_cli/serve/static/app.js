// The dream page: a form that posts to /dream/v1/txt2img, progress polled from /dream/v1/progress/{task},
// and a gallery of this server's results (/dream/v1/gallery) with Regenerate and Vary.
"use strict";

const $ = (id) => document.getElementById(id);
let apiKey = sessionStorage.getItem("dream-api-key") || "";
let models = [];
let polling = null;
let activeTask = null; // progress answers for any other task (one still in flight when its request ended) are dropped

function describe(body, status) {
  if (!body) return `HTTP ${status}`;
  if (Array.isArray(body.detail)) return body.detail.map((d) => `${d.loc.slice(1).join(".")}: ${d.msg}`).join("; ");
  if (typeof body.detail === "string") return body.detail;
  if (body.error && body.error.message) return body.error.message;
  return `HTTP ${status}`;
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (options.body) headers["Content-Type"] = "application/json";
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("api-key").hidden = false;
    throw new Error("this server needs an API key: enter it below and try again");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(describe(body, response.status));
  return body;
}

function numbers(text, parse) {
  const parts = text.split(",").map((p) => p.trim()).filter((p) => p !== "");
  if (parts.length === 0) return null;
  const values = parts.map(parse);
  return values.length === 1 ? values[0] : values;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function fillModels() {
  const select = $("model");
  select.replaceChildren(...models.map((m) => new Option(m.name, m.name, false, m.current)));
  modelChanged();
}

function modelChanged() {
  const m = models.find((x) => x.name === $("model").value) || models[0];
  if (!m) return;
  $("size").replaceChildren(new Option(`${m.size}x${m.size}`, m.size));
  $("steps").value = m.defaults.steps.join(",");
  $("guidance").value = m.defaults.cfg_scale.join(",");
  $("prior-steps").value = m.defaults.prior_steps ?? "";
  $("prior-steps").disabled = m.defaults.prior_steps == null;
}

function formSettings() {
  const size = Number($("size").value);
  return {
    prompt: $("prompt").value,
    negative_prompt: $("negative").value,
    model: $("model").value,
    width: size,
    height: size,
    steps: numbers($("steps").value, (p) => parseInt(p, 10)),
    cfg_scale: numbers($("guidance").value, Number),
    prior_steps: $("prior-steps").value === "" ? null : parseInt($("prior-steps").value, 10),
    seed: parseInt($("seed").value || "-1", 10),
    batch_size: parseInt($("count").value || "1", 10),
  };
}

function renderProgress(p) {
  if (p.state === "queued") {
    $("status").textContent = `waiting, place ${p.position} in the queue`;
    return;
  }
  if (p.state !== "running") return;
  $("status").textContent = "drawing";
  const rows = p.stages.map((s) => {
    const row = document.createElement("div");
    row.className = "stage";
    row.dataset.stage = s.name;
    const bar = document.createElement("progress");
    bar.max = s.steps;
    bar.value = s.done;
    row.append(Object.assign(document.createElement("span"), { textContent: s.name }), bar,
      Object.assign(document.createElement("span"), { className: "count", textContent: `${s.done}/${s.steps}` }));
    return row;
  });
  $("stages").replaceChildren(...rows);
  if (p.preview) {
    $("preview").src = p.preview;
    $("preview").hidden = false;
  }
}

function watch(task) {
  activeTask = task;
  polling = setInterval(async () => {
    try {
      const progress = await api(`/dream/v1/progress/${encodeURIComponent(task)}`);
      if (task === activeTask) renderProgress(progress);
    } catch (e) { /* the next poll tries again */ }
  }, 200);
}

function unwatch() {
  activeTask = null;
  clearInterval(polling);
}

async function run(path, body) {
  showError("");
  const task = `page-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("status").textContent = "sent";
  $("stages").replaceChildren();
  $("preview").hidden = true;
  watch(task);
  try {
    const answer = await api(path, { method: "POST", body: JSON.stringify({ ...body, force_task_id: task }) });
    unwatch();
    $("status").textContent = `${answer.results.length} image(s)`;
    await loadGallery();
  } catch (e) {
    unwatch();
    $("status").textContent = "";
    showError(e.message);
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

function settingsList(r) {
  const shown = {
    seed: r.seed, model: r.model, size: `${r.width}x${r.height}`, steps: r.steps.join(","),
    guidance: r.cfg_scale.join(","), sampler: r.sampler,
  };
  if (r.prior_steps != null) shown["prior steps"] = r.prior_steps;
  if (r.negative_prompt) shown.negative = r.negative_prompt;
  if (r.kind !== "txt2img") shown.kind = r.kind;
  return Object.entries(shown).flatMap(([k, v]) => [
    Object.assign(document.createElement("dt"), { textContent: k }),
    Object.assign(document.createElement("dd"), { textContent: String(v), className: k.replace(" ", "-") }),
  ]);
}

function card(r) {
  const node = $("card").content.firstElementChild.cloneNode(true);
  node.dataset.id = r.id;
  node.querySelector("img").src = r.url;
  node.querySelector("img").alt = r.prompt;
  node.querySelector(".prompt").textContent = r.prompt || "(variation)";
  node.querySelector(".settings").replaceChildren(...settingsList(r));
  node.querySelector(".regenerate").addEventListener("click", () => regenerate(r));
  node.querySelector(".vary").addEventListener("click", () => run("/dream/v1/variations", {
    source: r.id, model: r.model, seed: -1, batch_size: parseInt($("count").value || "1", 10),
    steps: r.steps, cfg_scale: r.cfg_scale,
  }));
  return node;
}

function regenerate(r) {
  $("prompt").value = r.prompt;
  $("negative").value = r.negative_prompt || "";
  $("model").value = r.model;
  $("seed").value = r.seed;
  $("count").value = 1;
  $("steps").value = r.steps.join(",");
  $("guidance").value = r.cfg_scale.join(",");
  if (r.prior_steps != null) $("prior-steps").value = r.prior_steps;
  run("/dream/v1/txt2img", formSettings());
}

async function loadGallery() {
  const { results } = await api("/dream/v1/gallery");
  $("gallery").replaceChildren(...results.map(card));
}

async function load() {
  showError("");
  try {
    models = await api("/dream/v1/models");
    $("server-info").textContent = `${models.length} model(s)`;
    fillModels();
    await loadGallery();
  } catch (e) {
    showError(e.message);
  }
}

$("api-key").addEventListener("change", () => {
  apiKey = $("api-key").value.trim();
  sessionStorage.setItem("dream-api-key", apiKey);
  load();
});
$("model").addEventListener("change", modelChanged);
$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  run("/dream/v1/txt2img", formSettings());
});
$("stop").addEventListener("click", () => api("/sdapi/v1/interrupt", { method: "POST" }).catch((e) => showError(e.message)));
load();
