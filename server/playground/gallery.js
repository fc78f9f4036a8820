// gallery.js — the results so far, newest first (one result's images in their order),
// kept in the browser (store.js) up to a cap. Each card: the image, a download link, its
// parameters (shown, copyable), "reuse" (fills the Generate form) and the actions that
// take it as their source image.

import { copyText, el } from "./dom.js";

export const GALLERY_CAP = 60;
const ACTIONS = [["variations", "Variations"], ["edit", "Edit"], ["interpolate", "Interpolate with…"],
  ["textdiff", "Text diff"]];

/** A short name of an entry, for captions and pickers. */
export function entryLabel(entry) {
  const what = entry.params.prompt ? `: ${String(entry.params.prompt).slice(0, 40)}` : "";
  return `#${entry.id} ${entry.kind}${what}`;
}

/** Newest result first; one result's images (or frames) in their own order. */
function newestBatchFirst(a, b) {
  return b.created - a.created || a.id - b.id;
}

function caption(entry) {
  const { seed, theta, size } = entry.params;
  const parts = [entry.kind, size, seed != null ? `seed ${seed}` : null,
    typeof theta === "number" ? `θ ${theta.toFixed(2)}` : null];
  return parts.filter(Boolean).join(" · ");
}

function parametersBlock(entry) {
  const text = JSON.stringify(entry.params, null, 2);
  const note = el("span", { role: "status", class: "hint" });
  const copy = async () => {
    note.textContent = (await copyText(text)) ? "Copied." : "Copy refused: select the text.";
  };
  return el("details", { class: "params" }, el("summary", {}, "Parameters"),
    el("pre", { tabindex: "0", "aria-label": "Parameters" }, text),
    el("button", { type: "button", onclick: copy }, "Copy"), note);
}

export class Gallery {
  /** handlers: {reuse(entry), action(name, entry)}. */
  constructor(list, store, handlers) {
    this.list = list;
    this.store = store;
    this.handlers = handlers;
    this.entries = [];
    this.listeners = [];
  }

  async load() {
    this.entries = (await this.store.all()).sort(newestBatchFirst);
    await this.trim();
    this.changed();
  }

  /** Add one result's entries ({kind, src, params}), in their order; returns them with their ids. */
  async add(entries) {
    const added = [];
    const created = Date.now();
    for (const entry of entries) added.push(await this.store.add({ ...entry, created }));
    this.entries.unshift(...added);
    await this.trim();
    this.changed();
    return added;
  }

  async remove(id) {
    await this.store.remove(id);
    this.entries = this.entries.filter((e) => e.id !== id);
    this.changed();
  }

  async trim() {
    while (this.entries.length > GALLERY_CAP) await this.store.remove(this.entries.pop().id);
  }

  get(id) {
    return this.entries.find((e) => e.id === id);
  }

  onChange(listener) {
    this.listeners.push(listener);
  }

  changed() {
    this.list.replaceChildren(...this.entries.map((e) => this.card(e)));
    this.listeners.forEach((listener) => listener(this.entries));
  }

  card(entry) {
    const id = `card-${entry.id}`;
    const button = (label, onclick) => el("button", { type: "button", "aria-describedby": id, onclick }, label);
    const actions = ACTIONS.map(([name, label]) => button(label, () => this.handlers.action(name, entry)));
    return el("li", { class: "card", "data-id": entry.id },
      el("img", { src: entry.src, alt: entryLabel(entry), loading: "lazy" }),
      el("p", { class: "caption", id }, caption(entry)),
      el("div", { class: "card-actions" },
        el("a", { class: "button", href: entry.src, download: `unclip-${entry.id}.png`, "aria-describedby": id },
          "Download"),
        button("Reuse", () => this.handlers.reuse(entry)), ...actions,
        button("Delete", () => this.remove(entry.id))),
      parametersBlock(entry));
  }
}
