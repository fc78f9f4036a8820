// settings.js — the shared settings of the Generate form (size, seed, quality, per-stage
// steps and guidance), which of them each endpoint accepts (from the server's OpenAPI
// description), and filling the form back from a gallery entry's parameters ("reuse").

import { bodyFields } from "./api.js";
import { $, valueOf } from "./dom.js";

const PRIOR = ["prior_steps", "prior_guidance", "best_of"];
const DECODER = ["decoder_steps", "decoder_guidance", "upsampler_steps"];
/** The form's settings fields, each named (its id) as the API names it. */
const SETTINGS = ["size", "seed", "quality", ...PRIOR, ...DECODER, "partial_images"];
// A field sent only when it asks for something: quality "auto" and 0 previews are the defaults.
const UNSET = { quality: "auto", partial_images: 0 };
/** The settings each endpoint accepts, {endpoint: [name]} (the server refuses fields it
 * does not know); null until `loadAccepted` has read them. */
let accepted = null;

/** Read which settings each endpoint accepts: the form's settings that its request body
 * schema names (once; a failure rejects, and the next call tries again). */
export async function loadAccepted() {
  if (accepted) return;
  const fields = await bodyFields();
  accepted = Object.fromEntries(Object.entries(fields).map(([endpoint, names]) =>
    [endpoint, SETTINGS.filter((name) => names.includes(name))]));
}

/** A random seed, so that every image's seed is known (image i uses seed + i). */
export function randomSeed() {
  return Math.floor(Math.random() * 2 ** 31);
}

/** The settings the form gives for `endpoint` (empty fields left out, seed always set
 * where the endpoint takes one). Throws before `loadAccepted` has succeeded. */
export function settingsFor(endpoint) {
  const names = accepted?.[endpoint];
  if (!names) throw new Error(`The server has not said yet which fields /v1/images/${endpoint} takes; try again.`);
  const out = {};
  for (const name of names) {
    const value = valueOf($(name));
    if (value !== undefined && value !== UNSET[name]) out[name] = value;
  }
  if (names.includes("seed") && out.seed === undefined) out.seed = randomSeed();
  return out;
}

/** Set one field; a select keeps its current choice for a value it does not offer. */
function setField(name, value) {
  const input = $(name);
  const before = input.value;
  input.value = value ?? UNSET[name] ?? "";
  if (input.tagName === "SELECT" && input.selectedIndex < 0) input.value = before;
}

/** Fill the Generate form from an entry's parameters (the image's own seed, one image). */
export function reuse(params) {
  if (typeof params.prompt === "string") $("prompt").value = params.prompt;
  $("n").value = 1;
  for (const name of SETTINGS) setField(name, params[name]);
  if ([...PRIOR, ...DECODER].some((name) => params[name] != null)) $("advanced").open = true;
}
