// ops.js — the API calls behind each operation. Generations and edits stream (SSE:
// progress, partial images, one completed event per image); the other operations run as
// async jobs (Prefer: respond-async) whose events carry their progress, the job's result
// at the end. Every call resolves to the images as [{src (data URL), theta}].

import { ApiError, call, cancelJob, formOf } from "./api.js";
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

const JOB_EVENT = "image.job.";
const ENDS = ["completed", "failed", "cancelled", "expired"];

/** The job object at its end: from its terminal event, else (gone from the event) asked for. */
async function followJob(id, hooks) {
  let end = null;
  const response = await call(`/v1/images/jobs/${id}/events`, { signal: hooks.signal });
  await readEvents(response, (type, data) => {
    if (type === `${JOB_EVENT}progress`) hooks.progress(data);
    else if (ENDS.some((status) => type === `${JOB_EVENT}${status}`)) end = data;
  });
  return end?.job ?? (await call(`/v1/images/jobs/${id}`, { signal: hooks.signal })).json();
}

function imagesOf(job) {
  if (job.status !== "completed") throw new ApiError(0, job.error ?? { message: `The job ended ${job.status}.` });
  const body = job.result;
  return body.data.map((d) => ({ src: dataUrl(d.b64_json, imageType(body)), theta: d.theta ?? undefined }));
}

/** POST /v1/images/{variations, interpolations, text-diffs} (multipart) as an async job,
 * followed step by step; aborting cancels the job on the server (it outlives the request,
 * so the POST itself, answered at once, is never aborted: its job would run unseen). */
export async function transform(endpoint, fields, files, hooks) {
  const form = formOf({ ...fields, response_format: "b64_json" }, files);
  const job = await (await call(`/v1/images/${endpoint}`, { form, prefer: "respond-async" })).json();
  try {
    hooks.signal.throwIfAborted();
    return imagesOf(await followJob(job.id, hooks));
  } catch (error) {
    if (error.name === "AbortError") await cancelJob(job.id);
    throw error;
  }
}
