// mask.js — the mask painter of edits: a <canvas> of the image's own size over the image.
// Paint with the pointer (or the arrow keys and Space), erase, undo, clear, show/hide.
// The painted area is what gets repainted: `maskBlob()` is a PNG of the image's size whose
// painted pixels have alpha 0 and all others alpha 255 (the API's mask convention).

import { loadImage } from "./images.js";

const INK = "rgb(255, 40, 120)";
const HISTORY = 30;
const KEY_MOVES = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };

export class MaskPainter {
  /** The painter's elements: the canvas over the image, the keyboard brush's cursor, the
   * brush size range, the eraser and show-mask checkboxes, the undo and clear buttons. */
  constructor({ canvas, image, cursor, size, eraser, show, undo, clear }) {
    this.canvas = canvas;
    this.image = image;
    this.cursor = cursor;
    this.size = size;
    this.eraser = eraser;
    this.show = show;
    this.undo = undo;
    this.clear = clear;
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });
    this.history = [];
    this.last = null;
    this.keyAt = null;
    // A canvas without width/height attributes is 300 x 150: zero it, so that a width of 0
    // means "no image yet" for the handlers below (and for whoever waits for one).
    this.canvas.width = this.canvas.height = 0;
    this.listen();
  }

  listen() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => this.down(e));
    c.addEventListener("pointermove", (e) => this.move(e));
    ["pointerup", "pointercancel"].forEach((t) => c.addEventListener(t, () => { this.last = null; }));
    c.addEventListener("keydown", (e) => this.key(e));
    c.addEventListener("blur", () => { this.cursor.hidden = true; });
    this.show.addEventListener("change", () => c.classList.toggle("hidden-mask", !this.show.checked));
    this.undo.addEventListener("click", () => this.undoLast());
    this.clear.addEventListener("click", () => this.clearAll());
  }

  /** Show `src` and start an empty mask of its size. */
  async setSource(src) {
    const img = await loadImage(src);
    this.image.src = src;
    this.canvas.width = img.naturalWidth;
    this.canvas.height = img.naturalHeight;
    this.history = [];
    this.keyAt = { x: img.naturalWidth / 2, y: img.naturalHeight / 2 };
  }

  brush() {
    return Math.max(1, (Number(this.size.value) / 100) * this.canvas.width);
  }

  /** Canvas pixel coordinates of a pointer event. */
  at(event) {
    const r = this.canvas.getBoundingClientRect();
    return { x: ((event.clientX - r.left) * this.canvas.width) / r.width,
      y: ((event.clientY - r.top) * this.canvas.height) / r.height };
  }

  down(event) {
    if (!this.canvas.width) return;
    this.canvas.setPointerCapture(event.pointerId);
    this.snapshot();
    this.last = this.at(event);
    this.stroke(this.last, this.last);
  }

  move(event) {
    if (!this.last) return;
    const point = this.at(event);
    this.stroke(this.last, point);
    this.last = point;
  }

  /** Paint (or erase) a round-capped line; a dot when from and to are the same point. */
  stroke(from, to) {
    const ctx = this.ctx;
    ctx.globalCompositeOperation = this.eraser.checked ? "destination-out" : "source-over";
    Object.assign(ctx, { strokeStyle: INK, fillStyle: INK, lineWidth: this.brush(), lineCap: "round",
      lineJoin: "round" });
    ctx.beginPath();
    if (from.x === to.x && from.y === to.y) {
      ctx.arc(from.x, from.y, this.brush() / 2, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
  }

  /** Arrow keys move the brush (Shift: farther); Space or Enter paints there. */
  key(event) {
    if (!this.canvas.width) return;
    const move = KEY_MOVES[event.key];
    if (move) this.moveKeyBrush(move, event.shiftKey ? 4 : 1);
    else if (event.key === " " || event.key === "Enter") {
      this.snapshot();
      this.stroke(this.keyAt, this.keyAt);
    } else return;
    event.preventDefault();
    this.drawCursor();
  }

  moveKeyBrush([dx, dy], factor) {
    const step = Math.max(1, this.brush() / 2) * factor;
    const clamp = (v, max) => Math.min(max, Math.max(0, v));
    this.keyAt = { x: clamp(this.keyAt.x + dx * step, this.canvas.width),
      y: clamp(this.keyAt.y + dy * step, this.canvas.height) };
  }

  drawCursor() {
    const { width, height } = this.canvas;
    const d = this.brush();
    const percent = (v, of) => `${(v / of) * 100}%`;
    Object.assign(this.cursor.style, { left: percent(this.keyAt.x - d / 2, width),
      top: percent(this.keyAt.y - d / 2, height), width: percent(d, width), height: percent(d, height) });
    this.cursor.hidden = false;
  }

  pixels() {
    return this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height);
  }

  snapshot() {
    this.history.push(this.pixels());
    if (this.history.length > HISTORY) this.history.shift();
  }

  undoLast() {
    const previous = this.history.pop();
    if (previous) this.ctx.putImageData(previous, 0, 0);
  }

  clearAll() {
    this.snapshot();
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  painted() {
    const data = this.pixels().data;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) return true;
    return false;
  }

  /** The API's mask: painted -> alpha 0 (repaint), the rest alpha 255 (keep). */
  maskBlob() {
    const source = this.pixels();
    const out = new ImageData(source.width, source.height);
    for (let i = 3; i < source.data.length; i += 4) out.data[i] = source.data[i] > 0 ? 0 : 255;
    const canvas = document.createElement("canvas");
    Object.assign(canvas, { width: source.width, height: source.height });
    canvas.getContext("2d").putImageData(out, 0, 0);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }
}
