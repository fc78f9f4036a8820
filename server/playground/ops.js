// ops.js — the API calls behind each operation. Generations and edits stream (SSE:
// progress, partial images, one completed event per image); the other operations answer
// JSON. Every call resolves to the images as [{src (data URL), theta}].

import { ApiError, call, formOf } from "./api.js";
import { dataUrl } from "./images.js";
import { readEvents } from "./sse.js";

const imageType = (data) => `image/${data.output_format || "png"}`;
const srcOf = (data) => dataUrl(data.b64_json, imageType(data));

/** The images of an SSE response; hooks: {progress({stage, step, total}), partial(index, src)}. */
async function streamed(response, prefix, hooks) {
  const images = [];
  let failure = null;
  await readEvents(response, (type, data) => {
    if (type === `${prefix}.progress`) hooks.progress(data);
    else if (type === `${prefix}.partial_image`) hooks.partial(data.index ?? 0, srcOf(data));
    else if (type === `${prefix}.completed`) images[data.index ?? images.length] = { src: srcOf(data) };
    else if (type === "error") failure = new ApiError(0, data?.error); // status 0: after the stream began
  });
  if (failure) throw failure;
  return images.filter(Boolean);
}

/** POST /v1/images/generations, streamed. */
export async function generate(body, hooks) {
  const json = { ...body, stream: true, response_format: "b64_json" };
  return streamed(await call("/v1/images/generations", { json, signal: hooks.signal }), "image_generation", hooks);
}

/** POST /v1/images/edits (image + mask), streamed. */
export async function edit(fields, files, hooks) {
  const form = formOf({ ...fields, stream: true, response_format: "b64_json" }, files);
  return streamed(await call("/v1/images/edits", { form, signal: hooks.signal }), "image_edit", hooks);
}

/** POST /v1/images/{variations, interpolations, text-diffs}: multipart in, JSON out. */
export async function transform(endpoint, fields, files, hooks) {
  const form = formOf({ ...fields, response_format: "b64_json" }, files);
  const body = await (await call(`/v1/images/${endpoint}`, { form, signal: hooks.signal })).json();
  return body.data.map((d) => ({ src: dataUrl(d.b64_json, imageType(body)), theta: d.theta ?? undefined }));
}
