// settings.js — the shared settings of the Generate form (size, seed, quality, per-stage
// steps and guidance), which fields each endpoint accepts, and filling the form back from
// a gallery entry's parameters ("reuse").

import { $, valueOf } from "./dom.js";

const PRIOR = ["prior_steps", "prior_guidance", "best_of"];
const DECODER = ["decoder_steps", "decoder_guidance", "upsampler_steps"];
const COMMON = ["size", "seed", "quality", ...DECODER];

/** The settings each endpoint takes (the server refuses fields it does not know). */
export const ACCEPTS = {
  generations: [...COMMON, ...PRIOR, "partial_images"],
  edits: [...COMMON, ...PRIOR, "partial_images"],
  variations: COMMON,
  interpolations: [...COMMON, ...PRIOR],
  "text-diffs": COMMON,
};
const ALL = [...new Set(Object.values(ACCEPTS).flat())];
// A field sent only when it asks for something: quality "auto" and 0 previews are the defaults.
const UNSET = { quality: "auto", partial_images: 0 };

/** A random seed, so that every image's seed is known (image i uses seed + i). */
export function randomSeed() {
  return Math.floor(Math.random() * 2 ** 31);
}

/** The settings the form gives for `endpoint` (empty fields left out, seed always set). */
export function settingsFor(endpoint) {
  const out = {};
  for (const name of ACCEPTS[endpoint]) {
    const value = valueOf($(name));
    if (value !== undefined && value !== UNSET[name]) out[name] = value;
  }
  if (out.seed === undefined) out.seed = randomSeed();
  return out;
}

/** How many stages an operation at `size` runs: prior, decoder, one upsampler per size step. */
export function stageCount(sizes, size) {
  const index = sizes.indexOf(size);
  return 2 + Math.max(0, index);
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
  for (const name of ALL) setField(name, params[name]);
  if ([...PRIOR, ...DECODER].some((name) => params[name] != null)) $("advanced").open = true;
}
