// progress.js — the progress bar: per-stage steps from the stream's progress events
// ({stage, step, total}) folded into one overall fraction, each stage weighing the same.

export class StageProgress {
  /** `expected`: how many stages the operation runs (prior, decoder, upsamplers). */
  constructor(bar, status, expected) {
    this.bar = bar;
    this.status = status;
    this.expected = expected;
    this.stages = [];
  }

  /** A new stage starts when the name changes or the step count starts again. */
  update({ stage, step, total }) {
    const last = this.stages.at(-1);
    if (!last || last.stage !== stage || step < last.step) this.stages.push({ stage, step, total });
    else Object.assign(last, { step, total });
    this.render();
  }

  overall() {
    const last = this.stages.at(-1);
    if (!last) return 0;
    const done = this.stages.length - 1 + (last.total ? last.step / last.total : 0);
    return Math.min(1, done / Math.max(this.expected, this.stages.length));
  }

  render() {
    const { stage, step, total } = this.stages.at(-1);
    const overall = this.overall();
    this.bar.value = overall;
    this.bar.setAttribute("aria-valuetext", `${Math.round(overall * 100)} %`);
    this.status.textContent = `${stage}: step ${step} of ${total} · ${Math.round(overall * 100)} % overall`;
  }
}

/** The bar while an operation that does not stream runs. */
export function indeterminate(bar) {
  bar.removeAttribute("value");
  bar.removeAttribute("aria-valuetext");
}

export function finished(bar, complete) {
  bar.value = complete ? 1 : 0;
  bar.removeAttribute("aria-valuetext");
}
