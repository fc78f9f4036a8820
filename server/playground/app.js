// app.js — the playground's entry module: loads the served model's card (its sizes, the
// size to start at, and what it draws: a description, example prompts, random captions)
// and which settings each endpoint accepts (the server's OpenAPI description),
// asks for an API key when the API answers 401, and wires the Generate form, the gallery,
// the actions and the runner together.

import { Actions } from "./actions.js";
import { apiKey, modelCard, randomCaption, setApiKey, whenUnauthorized } from "./api.js";
import { $, el, valueOf } from "./dom.js";
import { GALLERY_CAP, Gallery } from "./gallery.js";
import { MaskPainter } from "./mask.js";
import { generate } from "./ops.js";
import { Results } from "./results.js";
import { Runner } from "./runner.js";
import { loadAccepted, reuse, settingsFor } from "./settings.js";
import { openStore } from "./store.js";

const RETRY_MS = 2000;
// The served model's card: its sizes ("WxH"), default size, and the stages a generation at
// each size runs (their names and count drive the progress bar).
const model = { id: null, sizes: [], defaultSize: null, stages: {} };

/** The stages an operation at `size` ("WxH"; none or "auto": the default's) runs, in order. */
function stagesAt(size) {
  return model.stages[size] ?? model.stages[model.defaultSize] ?? [];
}

/** How many stages an operation at `size` runs. */
function stages(size) {
  return stagesAt(size).length;
}

function askForKey() {
  $("key-form").hidden = false;
  $("key-note").textContent = apiKey() ? "The API key was refused; enter another." : "This server needs an API key.";
  $("model-status").textContent = "API key needed.";
  $("api-key").focus();
}

/** The size menu: the model's sizes as listed, starting at the one it suggests (else its
 * default); where the model makes other shapes than squares, "auto" last: an upload's
 * aspect for the operations on an image (the server picks the size), the default otherwise. */
function fillSizes(sizes, start) {
  const select = $("size");
  const keep = select.value;
  const options = sizes.map((s) => el("option", { value: s }, s.replace("x", " × ")));
  const shaped = sizes.some((s) => { const [w, h] = s.split("x"); return w !== h; });
  if (shaped) options.push(el("option", { value: "auto" }, "Auto: an upload's aspect"));
  select.replaceChildren(...options);
  select.value = sizes.includes(keep) || (shaped && keep === "auto") ? keep : start;
}

function usePrompt(text) {
  $("prompt").value = text;
  $("prompt").focus();
}

async function useRandomCaption() {
  try {
    usePrompt(await randomCaption(model.id));
  } catch (error) {
    $("world-description").textContent = `No random caption (${error.message}).`;
  }
}

/** What the model draws (its card's `world`), with its example prompts; hidden when unknown. */
function showWorld(world) {
  $("world").hidden = !world;
  if (!world) return;
  $("world-description").textContent = world.description;
  $("examples").replaceChildren(...world.examples.map((text) =>
    el("button", { type: "button", class: "example", onclick: () => usePrompt(text) }, text)));
}

/** The model's card and the endpoints' settings; "Model: …" once both are read. */
async function loadModel() {
  try {
    const [card] = await Promise.all([modelCard(), loadAccepted()]);
    model.id = card.id;
    Object.assign(model, { sizes: card.sizes, defaultSize: card.default_size, stages: card.stages });
    fillSizes(model.sizes, card.suggested_size ?? card.default_size);
    showWorld(card.world);
    $("model-status").textContent = `Model: ${card.id}`;
  } catch (error) {
    if (error.status === 401) return;
    $("model-status").textContent = `The server is not ready (${error.message}); retrying…`;
    setTimeout(loadModel, RETRY_MS);
  }
}

function saveKey(event) {
  event.preventDefault();
  setApiKey($("api-key").value.trim());
  $("key-form").hidden = true;
  $("model-status").textContent = "Key saved.";
  loadModel();
}

function generateJob() {
  const body = { prompt: $("prompt").value, n: valueOf($("n")) ?? 1, ...settingsFor("generations") };
  return { kind: "generation", label: "Generating", stages: stages(body.size), count: body.n, asked: body,
    start: (hooks) => generate(body, hooks) };
}

function painter() {
  return new MaskPainter({ canvas: $("mask-canvas"), image: $("edit-image"), cursor: $("brush-cursor"),
    size: $("brush-size"), eraser: $("eraser"), show: $("show-mask"), undo: $("mask-undo"), clear: $("mask-clear") });
}

async function main() {
  whenUnauthorized(askForKey);
  $("key-form").addEventListener("submit", saveKey);
  $("random-caption").addEventListener("click", useRandomCaption);
  $("gallery-cap").textContent = String(GALLERY_CAP);
  const handlers = { reuse: (entry) => { reuse(entry.params); $("prompt").focus(); } };
  const gallery = new Gallery($("gallery"), await openStore(), handlers);
  const runner = new Runner({ head: $("run-head"), bar: $("progress"), status: $("run-status"), cancel: $("cancel"),
    error: $("error"), results: new Results($("results")), gallery, model });
  const actions = new Actions({ gallery, runner, painter: painter(), stages });
  handlers.action = (name, entry) => actions.open(name, entry); // the cards' actions, once they exist
  actions.init();
  $("generate-form").addEventListener("submit", (e) => {
    e.preventDefault();
    try {
      runner.run(generateJob());
    } catch (error) {
      runner.fail(error); // no job: the endpoints' settings are not known yet
    }
  });
  await gallery.load();
  await loadModel();
}

main();
