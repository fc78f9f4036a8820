// api.js — the public API client: the bearer key (kept in localStorage), JSON and
// multipart calls, OpenAI-shaped errors ({error: {message, param, code}}) as ApiError, and
// the fields each image endpoint takes, read from the server's OpenAPI description.

const KEY_STORAGE = "unclip.apiKey";
let onUnauthorized = () => {};

/** An error answered by the API (or by an `error` event of a stream). */
export class ApiError extends Error {
  constructor(status, detail = {}) {
    super(detail.message || `HTTP ${status}`);
    this.status = status;
    this.param = detail.param ?? null;
    this.code = detail.code ?? null;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

/** `handler(error)` runs whenever a call answers 401. */
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

function headers(json, prefer) {
  const out = json ? { "Content-Type": "application/json" } : {};
  if (prefer) out.Prefer = prefer;
  const key = apiKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function errorOf(response) {
  let detail = {};
  try {
    detail = (await response.json()).error || {};
  } catch {
    detail = { message: `HTTP ${response.status} ${response.statusText}` };
  }
  const error = new ApiError(response.status, detail);
  if (response.status === 401) onUnauthorized(error);
  return error;
}

/** fetch `path`; POST with `json` or `form` (FormData) when given (`method` overrides),
 * with a `Prefer` header when given. Resolves to the Response when it is OK, rejects with
 * ApiError otherwise. */
export async function call(path, { json, form, signal, prefer, method } = {}) {
  const init = { method: method ?? (json || form ? "POST" : "GET"), headers: headers(Boolean(json), prefer), signal };
  if (json) init.body = JSON.stringify(json);
  if (form) init.body = form;
  const response = await fetch(path, init);
  if (!response.ok) throw await errorOf(response);
  return response;
}

/** A multipart body: text fields (arrays repeat `name[]`) plus files {name: Blob | Blob[]}. */
export function formOf(fields, files = {}) {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    if (Array.isArray(value)) value.forEach((v) => form.append(`${name}[]`, String(v)));
    else form.append(name, String(value));
  }
  for (const [name, blobs] of Object.entries(files)) {
    const list = Array.isArray(blobs) ? blobs : [blobs];
    const field = Array.isArray(blobs) ? `${name}[]` : name;
    list.forEach((blob, i) => form.append(field, blob, `${name}-${i}.png`));
  }
  return form;
}

const IMAGE_ENDPOINT = /^\/v1\/images\/([\w-]+)$/;

/** A schema itself, following a local `$ref` ("#/components/schemas/…") of `spec`. */
function resolved(spec, schema) {
  if (!schema?.$ref?.startsWith("#/")) return schema ?? {};
  return schema.$ref.slice(2).split("/").reduce((node, key) => node?.[key], spec) ?? {};
}

/** The fields of each image endpoint's request body (JSON for generations, multipart for
 * the others) as the server's /openapi.json publishes them: {endpoint ("generations",
 * "edits", "variations", …): [field name]}. */
export async function bodyFields() {
  const spec = await (await call("/openapi.json")).json();
  const fields = {};
  for (const [path, item] of Object.entries(spec.paths ?? {})) {
    const endpoint = IMAGE_ENDPOINT.exec(path)?.[1];
    const content = item.post?.requestBody?.content;
    if (!endpoint || !content) continue;
    const schemas = Object.values(content).map((media) => resolved(spec, media.schema));
    fields[endpoint] = schemas.flatMap((schema) => Object.keys(schema.properties ?? {}));
  }
  return fields;
}

/** The served model's card (id, sizes, suggested_size, world). */
export async function modelCard() {
  const body = await (await call("/v1/models")).json();
  return body.data[0];
}

/** A random caption of the world the model draws. */
export async function randomCaption(modelId) {
  const body = await (await call(`/v1/models/${encodeURIComponent(modelId)}/random-caption`)).json();
  return body.caption;
}

/** Cancel an async job; a job already ended or gone is no error here. */
export async function cancelJob(id) {
  try {
    await call(`/v1/images/jobs/${id}/cancel`, { method: "POST" });
  } catch (error) {
    console.warn(`Cancelling job ${id} failed.`, error);
  }
}
