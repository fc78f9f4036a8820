// actions.js — "Transform an image": the source image (a gallery entry or an upload) and
// the four operations on it, one tab each: variations (η), edit (mask painter),
// interpolation (with another gallery image, an upload, or between two prompts) and text
// diff (source and target prompts, max θ). Each submits a job to the runner.

import { $, el, mirror, valueOf } from "./dom.js";
import { entryLabel } from "./gallery.js";
import { blobOf, readAsDataUrl } from "./images.js";
import { edit, transform } from "./ops.js";
import { settingsFor } from "./settings.js";

const TABS = ["variations", "edit", "interpolate", "textdiff"];

/** The tab a key moves to from tab i of count (null: the key does not move). */
function tabTarget(key, i, count) {
  if (key === "Home") return 0;
  if (key === "End") return count - 1;
  const move = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[key];
  return move == null ? null : (i + move + count) % count;
}

/** Tabs with the usual keys: arrows, Home and End move between them. */
function setupTabs(select) {
  const tabs = TABS.map((name) => $(`tab-${name}`));
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(TABS[i]));
    tab.addEventListener("keydown", (e) => {
      const to = tabTarget(e.key, i, tabs.length);
      if (to === null) return;
      e.preventDefault();
      select(TABS[to]);
      tabs[to].focus();
    });
  });
}

export class Actions {
  /** painter: the MaskPainter of edits; stages(size): how many stages an operation at
   * that size runs. */
  constructor({ gallery, runner, painter, stages }) {
    this.gallery = gallery;
    this.runner = runner;
    this.painter = painter;
    this.stages = stages;
    this.source = null; // {src, blob, label, params} of the image the operations take
  }

  init() {
    setupTabs((name) => this.selectTab(name));
    $("source-upload").addEventListener("change", (e) => this.upload(e.target.files[0]));
    mirror($("var-eta"), $("var-eta-out"));
    mirror($("brush-size"), $("brush-size-out"), " %");
    mirror($("interp-frames"), $("interp-frames-out"));
    mirror($("td-frames"), $("td-frames-out"));
    mirror($("td-theta"), $("td-theta-out"));
    const submits = { variations: () => this.variations(), edit: () => this.edit(),
      interpolate: () => this.interpolate(), textdiff: () => this.textDiff() };
    for (const [name, submit] of Object.entries(submits)) {
      $(`panel-${name}`).addEventListener("submit", async (e) => {
        e.preventDefault();
        try {
          await submit();
        } catch (error) {
          this.runner.fail(error); // no job: the endpoints' settings are not known yet
        }
      });
    }
    this.gallery.onChange((entries) => this.fillPicker(entries));
  }

  selectTab(name) {
    for (const tab of TABS) {
      const on = tab === name;
      $(`tab-${tab}`).setAttribute("aria-selected", String(on));
      $(`tab-${tab}`).tabIndex = on ? 0 : -1;
      $(`panel-${tab}`).hidden = !on;
    }
  }

  /** A gallery card's action: that image becomes the source, its tab opens. */
  async open(tab, entry) {
    await this.setSource({ src: entry.src, blob: blobOf(entry.src), label: entryLabel(entry), params: entry.params });
    this.selectTab(tab);
    if (tab === "interpolate") this.pickOther(entry.id);
    $("actions").scrollIntoView({ block: "start" });
    $(`tab-${tab}`).focus({ preventScroll: true });
  }

  async upload(file) {
    if (!file) return;
    try {
      await this.setSource({ src: await readAsDataUrl(file), blob: file, label: `uploaded ${file.name}`, params: {} });
    } catch (error) {
      this.runner.fail(error.message);
    }
  }

  async setSource(source) {
    await this.painter.setSource(source.src);
    this.source = source;
    Object.assign($("source-image"), { src: source.src, alt: `Source image: ${source.label}`, hidden: false });
    $("source-label").textContent = `Source: ${source.label}`;
    if (typeof source.params.prompt === "string") $("td-source").value = source.params.prompt;
  }

  fillPicker(entries) {
    const picker = $("interp-gallery");
    const keep = picker.value;
    const options = entries.map((e) => el("option", { value: e.id }, entryLabel(e)));
    picker.replaceChildren(...(options.length ? options : [el("option", { value: "" }, "(the gallery is empty)")]));
    if (entries.some((e) => String(e.id) === keep)) picker.value = keep;
  }

  /** Preselect a gallery image other than the source as the interpolation's other end. */
  pickOther(id) {
    const other = this.gallery.entries.find((e) => e.id !== id);
    if (other) $("interp-gallery").value = String(other.id);
  }

  requireSource() {
    if (!this.source) this.runner.fail("Choose a source image first: an action of a gallery image, or upload one.");
    return this.source;
  }

  /** A job of an operation run as an async job (ops.js `transform`); `job`: {kind, label,
   * count, frames, inversions}. */
  runTransform(job, endpoint, fields, files) {
    const start = (hooks) => transform(endpoint, fields, files, hooks);
    return this.runner.run({ ...job, stages: this.stages(fields.size), asked: fields, start });
  }

  variations() {
    const source = this.requireSource();
    if (!source) return;
    const fields = { ...settingsFor("variations"), n: valueOf($("var-n")) ?? 1, eta: valueOf($("var-eta")) };
    const job = { kind: "variation", label: "Making variations", count: fields.n, inversions: 1 };
    this.runTransform(job, "variations", fields, { image: source.blob });
  }

  async edit() {
    const source = this.requireSource();
    if (!source) return;
    if (!this.painter.painted()) return this.runner.fail("Paint the area to repaint on the image first.");
    const fields = { ...settingsFor("edits"), prompt: $("edit-prompt").value, n: valueOf($("edit-n")) ?? 1 };
    const files = { image: source.blob, mask: await this.painter.maskBlob() };
    this.runner.run({ kind: "edit", label: "Repainting", stages: this.stages(fields.size), count: fields.n,
      asked: fields, start: (hooks) => edit(fields, files, hooks) });
  }

  /** The interpolation's ends: {fields, files} (two images, or two prompts), or null. */
  interpolationEnds() {
    const how = document.querySelector('input[name="interp-with"]:checked').value;
    if (how === "prompts") {
      return { fields: { prompt: [$("interp-prompt-a").value, $("interp-prompt-b").value] }, files: {} };
    }
    const source = this.requireSource();
    if (!source) return null;
    const entry = this.gallery.get(Number($("interp-gallery").value));
    const other = how === "gallery" ? entry && blobOf(entry.src) : $("interp-upload").files[0];
    if (!other) {
      this.runner.fail(how === "gallery" ? "Choose the other gallery image." : "Upload the second image.");
      return null;
    }
    return { fields: {}, files: { image: [source.blob, other] } };
  }

  interpolate() {
    const ends = this.interpolationEnds();
    if (!ends) return;
    const fields = { ...settingsFor("interpolations"), ...ends.fields, frames: valueOf($("interp-frames")),
      mode: $("interp-mode").value };
    const inversions = ends.files.image?.length ?? 0; // two images are inverted; two prompts are not
    const job = { kind: "interpolation", label: "Interpolating", frames: true, inversions };
    this.runTransform(job, "interpolations", fields, ends.files);
  }

  textDiff() {
    const source = this.requireSource();
    if (!source) return;
    const fields = { ...settingsFor("text-diffs"), source_prompt: $("td-source").value, prompt: $("td-target").value,
      frames: valueOf($("td-frames")), max_theta: valueOf($("td-theta")) };
    const job = { kind: "text_diff", label: "Applying the text diff", frames: true, inversions: 1 };
    this.runTransform(job, "text-diffs", fields, { image: source.blob });
  }
}
