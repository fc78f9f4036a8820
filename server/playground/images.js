// images.js — image plumbing: base64 / data URLs / Blobs, loading an <img>, and the
// generation parameters the server writes into every PNG (tEXt / iTXt chunks).

export function dataUrl(b64, type = "image/png") {
  return `data:${type};base64,${b64}`;
}

/** A data URL's bytes and type. */
function decodeDataUrl(src) {
  const [head, b64] = src.split(",", 2);
  const type = head.slice(5).split(";")[0] || "application/octet-stream";
  const binary = atob(b64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return { bytes, type };
}

/** A data URL as a Blob (the exact bytes: no re-encoding). */
export function blobOf(src) {
  const { bytes, type } = decodeDataUrl(src);
  return new Blob([bytes], { type });
}

export function readAsDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

export function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("The image could not be read."));
    img.src = src;
  });
}

const latin1 = new TextDecoder("latin1");
const utf8 = new TextDecoder("utf-8");

/** [keyword, text] of a tEXt or uncompressed iTXt chunk's data (null otherwise). */
function textChunk(type, data) {
  const zero = data.indexOf(0);
  const keyword = latin1.decode(data.subarray(0, zero));
  if (type === "tEXt") return [keyword, latin1.decode(data.subarray(zero + 1))];
  if (type !== "iTXt" || data[zero + 1] !== 0) return null;
  let at = zero + 3;
  at = data.indexOf(0, at) + 1; // language tag
  at = data.indexOf(0, at) + 1; // translated keyword
  return [keyword, utf8.decode(data.subarray(at))];
}

/** Every text chunk of a PNG as {keyword: text}. */
export function pngText(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const text = {};
  for (let at = 8; at + 8 <= bytes.length;) {
    const length = view.getUint32(at);
    const type = latin1.decode(bytes.subarray(at + 4, at + 8));
    const pair = textChunk(type, bytes.subarray(at + 8, at + 8 + length));
    if (pair) text[pair[0]] = pair[1];
    if (type === "IEND") break;
    at += 12 + length;
  }
  return text;
}

function parseJson(text) {
  try {
    const value = JSON.parse(text);
    return value && typeof value === "object" ? value : null;
  } catch {
    return null;
  }
}

/** The generation parameters a server PNG carries as JSON (`unclip`, or an older
 * server's `parameters`), or null. */
export function pngParameters(src) {
  const { bytes, type } = decodeDataUrl(src);
  if (type !== "image/png") return null;
  const text = pngText(bytes);
  return parseJson(text.unclip ?? "") || parseJson(text.parameters ?? "");
}
