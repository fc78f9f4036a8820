// sse.js — reads a Server-Sent Events response (fetch + ReadableStream) and hands each
// event to a callback as (type, data), data parsed from JSON.

/** One event block ("event: x\ndata: {...}") -> {type, data}. */
export function parseBlock(block) {
  let type = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith("event:")) type = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  return { type, data: data.length ? JSON.parse(data.join("\n")) : null };
}

/** Split complete blocks off `buffer`, dispatch them, return the incomplete rest. */
function drain(buffer, onEvent) {
  const blocks = buffer.split(/\r?\n\r?\n/);
  const rest = blocks.pop();
  for (const block of blocks) {
    if (block.trim() && !block.startsWith(":")) {
      const { type, data } = parseBlock(block);
      onEvent(type, data);
    }
  }
  return rest;
}

/** Read the whole stream; resolves when the server ends it. */
export async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer = drain(buffer + value, onEvent);
  }
  drain(buffer + "\n\n", onEvent);
}
