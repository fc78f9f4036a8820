// runner.js — runs one operation at a time: the busy state, the cancel button (an
// AbortController: the server cancels the job when the client disconnects, or ops.js
// cancels an async job), the progress bar and status (brought into view when the run
// starts: on a phone they are far below the run buttons), errors (their message and
// `param`), then the results view and the gallery (a strip of frames is one entry).

import { bringIntoView, el } from "./dom.js";
import { pngParameters } from "./images.js";
import { finished, StageProgress } from "./progress.js";

/** An error's text: the API's message, the field it names, its code. */
export function describe(error) {
  const detail = [error.param ? `parameter: ${error.param}` : null, error.code ? `code: ${error.code}` : null];
  const extra = detail.filter(Boolean).join(", ");
  return extra ? `${error.message} (${extra})` : error.message;
}

/** An image's parameters: what its PNG records, else what was asked (image i: seed + i). */
function paramsOf(image, asked, index) {
  const recorded = pngParameters(image.src);
  if (recorded) return recorded;
  const params = { ...asked, seed: asked.seed + index };
  if (image.theta != null) params.theta = image.theta;
  return params;
}

export class Runner {
  /** head: the element holding bar, status and cancel; results: the Results view;
   * gallery: the Gallery; model: {sizes, stages} (the model's card, for the stages' names). */
  constructor({ head, bar, status, cancel, error, results, gallery, model }) {
    this.head = head;
    this.bar = bar;
    this.status = status;
    this.cancel = cancel;
    this.error = error;
    this.results = results;
    this.gallery = gallery;
    this.model = model;
    this.controller = null;
    this.cancel.addEventListener("click", () => this.controller?.abort());
  }

  get busy() {
    return this.controller !== null;
  }

  /** Show an error (an ApiError, or a message of the page's own). */
  fail(error) {
    const text = typeof error === "string" ? error : describe(error);
    this.error.replaceChildren(el("strong", {}, "Error: "), text);
    this.error.hidden = false;
    this.status.textContent = "Failed.";
  }

  /** While a job runs, every run button is disabled (one job at a time). */
  setRunnable(on) {
    document.querySelectorAll("button.primary").forEach((b) => { b.disabled = !on; });
    document.body.classList.toggle("busy", !on);
  }

  begin(job) {
    this.controller = new AbortController();
    this.error.hidden = true;
    this.cancel.disabled = false;
    this.setRunnable(false);
    this.status.textContent = `${job.label}…`;
    this.results.expect(job.frames ? 0 : job.count);
    this.bar.value = 0;
    bringIntoView(this.head);
    return new StageProgress(this.bar, this.status,
      { expected: job.stages, sizes: this.model.sizes, inversions: job.inversions ?? 0,
        latent: Object.values(this.model.stages).some((stages) => stages.includes("movq")) });
  }

  end(complete) {
    this.controller = null;
    this.cancel.disabled = true;
    this.setRunnable(true);
    finished(this.bar, complete);
  }

  /** job: {kind, label, stages (how many it runs), inversions (how many of its decoder
   * stages invert an image first), count (images), frames (bool), asked (the request's
   * fields), start(hooks) -> images}. */
  async run(job) {
    if (this.busy) return;
    const progress = this.begin(job);
    const started = performance.now();
    const hooks = { signal: this.controller.signal, progress: (p) => progress.update(p),
      partial: (i, src) => this.results.setImage(i, src, true) };
    try {
      const images = await job.start(hooks);
      if (!images.length) throw new Error("The server answered without any image.");
      await this.show(job, images);
      this.end(true);
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      this.status.textContent = `Done: ${images.length} image(s) in ${seconds} s.`;
    } catch (error) {
      this.end(false);
      this.results.clear(); // no boxes left waiting for images that will not come
      if (error.name === "AbortError") this.status.textContent = "Cancelled.";
      else this.fail(error);
    }
  }

  async show(job, images) {
    const entries = images.map((image, i) => ({ kind: job.kind, src: image.src,
      params: paramsOf(image, job.asked, i) }));
    await this.gallery.add(job.frames ? [{ ...entries[0], frames: entries }] : entries);
    if (job.frames) this.results.showFrames(images);
    else {
      this.results.expect(images.length);
      images.forEach((image, i) => this.results.setImage(i, image.src, false));
    }
  }
}
