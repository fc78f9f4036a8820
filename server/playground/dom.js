// dom.js — small DOM helpers shared by the playground's modules.

export const $ = (id) => document.getElementById(id);

/** An element with attributes (on* keys become listeners) and children. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else if (value !== false && value != null) node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c != null));
  return node;
}

/** A text or number input's value: "" -> undefined; number inputs as numbers. */
export function valueOf(input) {
  const raw = input.value.trim();
  if (raw === "") return undefined;
  return input.type === "number" || input.type === "range" ? Number(raw) : raw;
}

/** Keep an <output> showing its range input's value (with an optional unit). */
export function mirror(input, output, unit = "") {
  const show = () => { output.value = `${input.value}${unit}`; };
  input.addEventListener("input", show);
  show();
}

/** Copy text; resolves to whether it worked (the clipboard may be refused). */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}

/** Scroll `node` to the top of the window unless it is wholly in view already. */
export function bringIntoView(node) {
  const box = node.getBoundingClientRect();
  if (box.top < 0 || box.bottom > window.innerHeight) node.scrollIntoView({ block: "start" });
}
