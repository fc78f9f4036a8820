// gallery.js — the results so far, newest first (one result's images in their order),
// kept in the browser (store.js) up to a cap. Each card: the image, a download link, its
// parameters (shown, copyable), "reuse" (fills the Generate form) and the actions that
// take it as their source image. The frames of one interpolation or text diff are one
// card (an entry with `frames`): a strip, whose chosen frame the card shows and acts on.

import { copyText, el } from "./dom.js";

export const GALLERY_CAP = 60;
const ACTIONS = [["variations", "Variations"], ["edit", "Edit"], ["interpolate", "Interpolate with…"],
  ["textdiff", "Text diff"]];

const LABEL_CHARS = 40;

/** `text` cut to at most `max` characters at a word boundary, with "…" when cut. */
export function shorten(text, max) {
  if (text.length <= max) return text;
  const cut = text.slice(0, max);
  const space = cut.lastIndexOf(" ");
  return `${(space > 0 ? cut.slice(0, space) : cut).trimEnd()}…`;
}

/** A short name of an entry (or of one frame of it), for captions and pickers. */
export function entryLabel(entry) {
  const what = entry.params.prompt ? `: ${shorten(String(entry.params.prompt), LABEL_CHARS)}` : "";
  const frame = entry.frame != null ? ` frame ${entry.frame + 1}` : "";
  return `#${entry.id} ${entry.kind}${frame}${what}`;
}

/** Frame i of a strip entry as an entry of its own (src, params); any other entry as it is. */
export function frameOf(entry, i) {
  if (!entry.frames) return entry;
  const { src, params } = entry.frames[i];
  return { id: entry.id, kind: entry.kind, created: entry.created, src, params, frame: i };
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

function downloadName(entry) {
  return `unclip-${entry.id}${entry.frame != null ? `-frame-${entry.frame + 1}` : ""}.png`;
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

  /** The card of an entry; of a strip, showing frame `chosen`. */
  card(entry, chosen = 0) {
    const id = `card-${entry.id}`;
    const shown = frameOf(entry, chosen);
    const button = (label, onclick) => el("button", { type: "button", "aria-describedby": id, onclick }, label);
    const actions = ACTIONS.map(([name, label]) => button(label, () => this.handlers.action(name, shown)));
    const card = el("li", { class: "card", "data-id": entry.id },
      el("img", { src: shown.src, alt: entryLabel(shown), loading: "lazy" }),
      entry.frames ? this.strip(entry, chosen, (i) => this.choose(card, entry, i)) : null,
      el("p", { class: "caption", id }, caption(shown)),
      el("div", { class: "card-actions" },
        el("a", { class: "button", href: shown.src, download: downloadName(shown), "aria-describedby": id },
          "Download"),
        button("Reuse", () => this.handlers.reuse(shown)), ...actions,
        button("Delete", () => this.remove(entry.id))),
      parametersBlock(shown));
    return card;
  }

  /** A strip entry's frames as buttons; `choose(i)` shows frame i. */
  strip(entry, chosen, choose) {
    const frames = entry.frames.map((frame, i) => el("li", {},
      el("button", { type: "button", class: "frame", "aria-pressed": String(i === chosen),
        "aria-label": `Frame ${i + 1} of ${entry.frames.length}`, onclick: () => choose(i) },
      el("img", { src: frame.src, alt: "", loading: "lazy" }))));
    return el("ol", { class: "strip", "aria-label": `Frames of #${entry.id}` }, ...frames);
  }

  /** Show frame i of a strip card (the card is redrawn; focus stays on that frame's button). */
  choose(card, entry, i) {
    const next = this.card(entry, i);
    card.replaceWith(next);
    next.querySelectorAll(".strip .frame")[i].focus();
  }
}
