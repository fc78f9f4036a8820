// results.js — the latest results: one slot per image (partial previews replace each
// other, then the final image), or, for interpolations and text diffs, the frames as a
// strip with a player (play/pause, a frame slider, a button per frame).

import { el } from "./dom.js";

const FRAME_MS = 300;
const MAX_SLOTS = 16; // more than any request may ask (n <= 10, frames <= 16)
// A waiting slot's picture: one transparent pixel (no src would show a broken image).
const EMPTY = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7";

class Player {
  constructor(frames) {
    this.frames = frames;
    this.index = 0;
    this.timer = null;
    this.view = el("img", { class: "frame-view", alt: "" });
    this.play = el("button", { type: "button", "aria-pressed": "false", onclick: () => this.toggle() }, "Play");
    this.slider = el("input", { type: "range", min: 1, max: frames.length, value: 1, "aria-label": "Frame",
      oninput: () => this.show(Number(this.slider.value) - 1) });
    this.buttons = frames.map((f, i) => this.frameButton(f, i));
    this.node = el("div", { class: "player" }, this.view,
      el("div", { class: "row" }, this.play, el("label", {}, "Frame ", this.slider)),
      el("ol", { class: "strip", "aria-label": "Frames" }, ...this.buttons.map((b) => el("li", {}, b))));
    this.show(0);
  }

  frameButton(frame, i) {
    const label = `Frame ${i + 1}${frame.theta != null ? `, θ ${frame.theta.toFixed(2)}` : ""}`;
    return el("button", { type: "button", class: "frame", "aria-label": label, onclick: () => this.show(i) },
      el("img", { src: frame.src, alt: "" }));
  }

  show(i) {
    this.index = i;
    this.view.src = this.frames[i].src;
    this.view.alt = this.buttons[i].getAttribute("aria-label");
    this.slider.value = i + 1;
    this.buttons.forEach((b, k) => b.setAttribute("aria-pressed", String(k === i)));
  }

  toggle() {
    if (this.timer) this.stop();
    else this.timer = setInterval(() => this.show((this.index + 1) % this.frames.length), FRAME_MS);
    this.play.textContent = this.timer ? "Pause" : "Play";
    this.play.setAttribute("aria-pressed", String(Boolean(this.timer)));
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }
}

export class Results {
  constructor(root) {
    this.root = root;
    this.player = null;
    this.slots = [];
  }

  clear() {
    this.player?.stop();
    this.player = null;
    this.slots = [];
    this.root.replaceChildren();
  }

  /** n empty slots (at most MAX_SLOTS), filled by `setImage` as partial or final images arrive. */
  expect(n) {
    this.clear();
    const count = Math.max(0, Math.min(MAX_SLOTS, Math.trunc(n) || 0));
    this.slots = Array.from({ length: count }, (_, i) => el("img", { class: "slot", src: EMPTY, alt: `Image ${i + 1}: waiting` }));
    this.root.append(el("div", { class: "slots" }, ...this.slots));
  }

  setImage(index, src, partial) {
    const slot = this.slots[index];
    if (!slot) return;
    slot.src = src;
    slot.alt = partial ? `Image ${index + 1}: preview` : `Image ${index + 1}`;
    slot.classList.toggle("partial", partial);
  }

  /** frames: [{src, theta}]. */
  showFrames(frames) {
    this.clear();
    this.player = new Player(frames);
    this.root.append(this.player.node);
  }
}
