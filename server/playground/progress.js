// progress.js — the progress bar and status line: per-stage steps from the progress
// events ({stage, step, total}, and from async jobs the server's own `progress` fraction)
// folded into one overall fraction, each stage named for people ("drawing 64 px").

const side = (size) => (size ? String(size).split("x")[0] : "?");

/** What a stage does, in words: "prior" -> "choosing the image embedding", "decoder" ->
 * "drawing 64 px" (a latent model's: "drawing the latents"; "inverting image 1 of 2" for the
 * operation's inversions, which come first), "upsampler.i" -> "refining 64 → 256 px",
 * "movq" -> "decoding the latents into pixels". `sizes`: the model's ("WxH"), smallest first
 * for a model with upsamplers; `inverting`: {index, count} while the decoder inverts, else null. */
export function stageName(stage, sizes, inverting = null, latent = false) {
  if (stage === "prior") return "choosing the image embedding";
  if (stage === "movq") return "decoding the latents into pixels";
  if (stage === "decoder") {
    if (!inverting) return latent ? "drawing the latents" : `drawing ${side(sizes[0])} px`;
    return inverting.count > 1 ? `inverting image ${inverting.index + 1} of ${inverting.count}` : "inverting the image";
  }
  const upsampler = /^upsampler\.(\d+)$/.exec(stage);
  if (upsampler) {
    const i = Number(upsampler[1]);
    return `refining ${side(sizes[i])} → ${side(sizes[i + 1])} px`;
  }
  return stage;
}

const capitalized = (text) => text.charAt(0).toUpperCase() + text.slice(1);

export class StageProgress {
  /** `expected`: how many stages the operation runs (prior, decoder, upsamplers);
   * `sizes`: the model's; `latent`: whether its decoder draws latents; `inversions`: how many
   * decoder stages invert an image first. */
  constructor(bar, status, { expected, sizes, latent = false, inversions = 0 }) {
    this.bar = bar;
    this.status = status;
    this.expected = expected;
    this.sizes = sizes;
    this.latent = latent;
    this.inversions = inversions;
    this.stages = [];
    this.fraction = null; // the server's own overall fraction, where it sends one
  }

  /** A new stage starts when the name changes or the step count starts again. */
  update({ stage, step, total, progress }) {
    const last = this.stages.at(-1);
    if (!last || last.stage !== stage || step < last.step || total !== last.total) {
      this.stages.push({ stage, step, total, name: this.nameOf(stage) });
    } else Object.assign(last, { step, total });
    if (typeof progress === "number") this.fraction = progress;
    this.render();
  }

  /** The name of a stage starting now: the first `inversions` decoder stages invert. */
  nameOf(stage) {
    const index = this.stages.filter((s) => s.stage === "decoder").length;
    const inverting = stage === "decoder" && index < this.inversions ? { index, count: this.inversions } : null;
    return stageName(stage, this.sizes, inverting, this.latent);
  }

  overall() {
    if (this.fraction !== null) return this.fraction;
    const last = this.stages.at(-1);
    if (!last) return 0;
    const done = this.stages.length - 1 + (last.total ? last.step / last.total : 0);
    return Math.min(1, done / Math.max(this.expected, this.stages.length));
  }

  render() {
    const { name, step, total } = this.stages.at(-1);
    const percent = `${Math.round(this.overall() * 100)} %`;
    this.bar.value = this.overall();
    this.bar.setAttribute("aria-valuetext", percent);
    this.status.textContent = `${capitalized(name)}: step ${step} of ${total} · ${percent} overall`;
  }
}

export function finished(bar, complete) {
  bar.value = complete ? 1 : 0;
  bar.removeAttribute("aria-valuetext");
}
