"""Model folders served as they are (pipelines/model_dir.py): our layout, a Karlo snapshot and
a Kandinsky 2.2 folder told apart by their files; a folder that is none of them refused with
what was expected; a Karlo snapshot (tiny, written by diffusers' save_pretrained) generating
what diffusers' UnCLIPPipeline generates from the same folder, stage by stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from pipelines.errors import InvalidInput  # noqa: E402
from pipelines.model_dir import ModelDirError, describe  # noqa: E402
from pipelines.operations import variations  # noqa: E402
from pipelines.sizes import SizeRule  # noqa: E402
from pipelines.unclip import Sampling, UnCLIP, make_generator, run_direct  # noqa: E402
from tests.pipelines._diffusers_ref import Latents, RecordingScheduler, use_float64_tables  # noqa: E402

TOL = 1e-4
STEPS = (6, 8, 4)
GUIDANCE = (4.0, 3.0)
PROMPT = "a red cat"


@pytest.fixture(scope="module")
def karlo_dir(karlo_snapshot_dir: Path) -> Path:
    return karlo_snapshot_dir


@pytest.fixture(scope="module")
def karlo(karlo_dir: Path) -> UnCLIP:
    return describe(karlo_dir).load("cpu", torch.float32)


def test_each_layout_is_told_apart(tiny_model_dir: Path, karlo_dir: Path, kandinsky_model_dir: Path) -> None:
    ours, snap = describe(tiny_model_dir), describe(karlo_dir)
    assert (ours.family, ours.size_rule, ours.stages) == ("unclip", SizeRule.squares([32, 64]),
                                                           ("prior", "decoder", "upsampler.0"))
    assert (snap.family, snap.name, snap.size_rule.listed) == ("karlo-snapshot", "karlo-v1-alpha", ((32, 32), (64, 64)))
    kandinsky = describe(kandinsky_model_dir)
    assert (kandinsky.family, kandinsky.stages) == ("kandinsky-2.2", ("prior", "decoder", "movq"))
    assert kandinsky.size_rule.listed[0] == (32, 32) and kandinsky.size_rule.allows((48, 16))


def test_an_upload_s_aspect_picks_the_output_size_where_the_model_makes_it() -> None:
    """Kandinsky 2.2's rule (512 native, 64 grid): the grid size nearest the image's aspect
    at about 512 x 512 pixels, at most 3:1; a model of listed squares: its default."""
    rule = SizeRule.latent_grid(512, 64)
    assert rule.for_aspect((1920, 1080)) == (704, 384)
    assert rule.for_aspect((1080, 1920)) == (384, 704)
    assert rule.for_aspect((3000, 2000)) == (576, 384)
    assert rule.for_aspect((777, 777)) == (512, 512)
    wide = rule.for_aspect((10000, 100))
    assert rule.allows(wide) and wide[0] == 3 * wide[1]
    assert SizeRule.squares([32, 64]).for_aspect((1920, 1080)) == (64, 64)


def test_a_folder_of_no_model_says_what_was_expected(kandinsky_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="Karlo snapshot .* Kandinsky 2.2"):
        describe(tmp_path)
    with pytest.raises(ModelDirError, match="not a folder"):
        describe(tmp_path / "nothing-here")
    other = tmp_path / "sd"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ModelDirError, match="StableDiffusionPipeline"):
        describe(other)
    half = tmp_path / "half-kandinsky"
    shutil.copytree(kandinsky_model_dir / "prior", half / "prior")
    with pytest.raises(ModelDirError, match="decoder/model_index.json does not exist"):
        describe(half)


def staged(pipe: UnCLIP, seed: int, opts: Sampling, small: Optional[torch.Tensor] = None):
    """generate()'s building blocks, keeping every stage's output; small [1, 3, S, S]: the
    upsampler's input instead of our decoder's (the upsampler stage alone)."""
    text = pipe.encode_text([PROMPT])
    gens = [make_generator(seed)]
    z = yield from pipe.sample_prior(text, [seed], gens, opts)
    decoded = yield from pipe.decode(z, text, gens, opts)
    big = yield from pipe.upsample(decoded if small is None else small, gens, opts, 1)
    return {"image_emb": z, "decoder": decoded, "images": big}


def diffusers_karlo(folder: Path):
    """UnCLIPPipeline over the folder's components, each loaded by its diffusers or
    transformers class (`from_pretrained` of the whole pipeline cannot resolve the deprecated
    UnCLIPTextProjModel by name in this diffusers)."""
    from diffusers import PriorTransformer, UnCLIPPipeline, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    classes = {"prior": PriorTransformer, "decoder": UNet2DConditionModel, "text_proj": UnCLIPTextProjModel,
               "super_res_first": UNet2DModel, "super_res_last": UNet2DModel,
               "text_encoder": CLIPTextModelWithProjection, "tokenizer": CLIPTokenizer,
               "prior_scheduler": UnCLIPScheduler, "decoder_scheduler": UnCLIPScheduler,
               "super_res_scheduler": UnCLIPScheduler}
    return UnCLIPPipeline(**{name: cls.from_pretrained(folder / name, local_files_only=True)
                             for name, cls in classes.items()})


def reference(karlo_dir: Path, pipe: UnCLIP, latents: Latents, seed: int) -> dict[str, torch.Tensor]:
    """diffusers' UnCLIPPipeline from the same folder, prompting with its own tokenizer and
    text encoder; its schedulers get our float64 tables and record each stage's samples."""
    ref = diffusers_karlo(karlo_dir)
    ref.set_progress_bar_config(disable=True)
    stack = pipe.stack
    schedules = (stack.prior_schedule, stack.decoder_schedule, stack.upsampler_schedules[0])
    for name, schedule in zip(("prior_scheduler", "decoder_scheduler", "super_res_scheduler"), schedules):
        use_float64_tables(getattr(ref, name), schedule.alphas_cumprod)
        object.__setattr__(ref, name, RecordingScheduler(getattr(ref, name)))
    out = ref(PROMPT, prior_num_inference_steps=STEPS[0], decoder_num_inference_steps=STEPS[1],
              super_res_num_inference_steps=STEPS[2], prior_guidance_scale=GUIDANCE[0],
              decoder_guidance_scale=GUIDANCE[1], generator=torch.Generator().manual_seed(seed), output_type="pt",
              **latents.theirs())
    return {"image_emb": ref.prior.post_process_latents(ref.prior_scheduler.samples[-1]),
            "decoder": ref.decoder_scheduler.samples[-1].clamp(-1, 1), "images": as_nchw(out.images) * 2 - 1}


def as_nchw(images) -> torch.Tensor:
    """diffusers' "pt" output (a tensor, or an NHWC array in this diffusers) -> [n, 3, H, W]."""
    images = torch.as_tensor(images)
    return images.permute(0, 3, 1, 2) if images.shape[-1] == 3 else images


@pytest.fixture(scope="module")
def generations(karlo_dir: Path, karlo: UnCLIP) -> dict:
    """Ours and diffusers' from the same folder, initial noise and seed; "alone": ours with
    the upsampler fed diffusers' decoder output."""
    seed, latents = 7, Latents.draw(karlo.cfg, 1, seed=123)
    opts = Sampling(prior_steps=STEPS[0], decoder_steps=STEPS[1], upsampler_steps=STEPS[2],
                    prior_guidance=GUIDANCE[0], decoder_guidance=GUIDANCE[1], best_of=1, latents=latents.ours())
    theirs = reference(karlo_dir, karlo, latents, seed)
    return {"ours": run_direct(karlo, staged(karlo, seed, opts)), "theirs": theirs,
            "alone": run_direct(karlo, staged(karlo, seed, opts, theirs["decoder"]))}


@pytest.mark.parametrize("stage", ["image_emb", "decoder", "images"])
def test_karlo_snapshot_stages_match_diffusers(generations: dict, stage: str) -> None:
    """Each stage from the same input: prior embeddings, decoder images, upsampled images."""
    ours = generations["alone" if stage == "images" else "ours"][stage]
    diff = (ours - generations["theirs"][stage]).abs().max().item()
    print(f"{stage}: max |ours - diffusers| = {diff:.3g}")
    assert ours.abs().max() > 0.05 and diff <= TOL


def test_karlo_snapshot_generates_as_diffusers(generations: dict) -> None:
    """End to end, the same image: within TOL on average and within 1/255 at 99.9% of the
    values. The tiny random upsampler amplifies the decoder's fp32 rounding (~1e-5, which
    depends on the CPU's kernels) by up to ~500x at a few values: on an Intel Xeon host,
    5.2e-3 (1.3/255) at most, over 1/255 at 8e-5 of the values, 5e-6 on average."""
    diff = (generations["ours"]["images"] - generations["theirs"]["images"]).abs()
    off = (diff > 1 / 255).float().mean().item()
    print(f"end to end: |ours - diffusers| max {diff.max().item():.3g}, mean {diff.mean().item():.3g}, "
          f"share over 1/255 {off:.2g}")
    assert diff.mean() <= TOL and off <= 1e-3


def test_karlo_snapshot_takes_images_only_with_an_image_encoder(karlo: UnCLIP, karlo_dir: Path,
                                                                tmp_path: Path) -> None:
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    opts = Sampling(decoder_steps=2, upsampler_steps=2)
    assert run_direct(karlo, variations(karlo, image, size=32, opts=opts)).images.shape == (1, 3, 32, 32)
    bare = tmp_path / "karlo-text-only"
    shutil.copytree(karlo_dir, bare, ignore=shutil.ignore_patterns("image_encoder", "feature_extractor"))
    text_only = describe(bare).load("cpu", torch.float32)
    with pytest.raises(InvalidInput, match="no CLIP image encoder") as err:
        run_direct(text_only, variations(text_only, image, size=32, opts=opts))
    assert err.value.param == "image"


def test_token_counts_and_encodings_at_once_keep_the_padding(karlo_dir: Path) -> None:
    """The server counts tokens on its event loop while the engine encodes prompts: from four
    threads at once every encoding still has the tokenizer's full context (transformers'
    tokenizers-backed CLIPTokenizer sets padding on its shared backend per call: unlocked,
    about one call in a hundred came back unpadded, 15 tokens)."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.hf_clip import load_hf_clip

    clip = load_hf_clip(karlo_dir)

    def call(i: int) -> tuple[int, ...]:
        if i % 2:
            return (clip.count_tokens("a red cat on a blue mat"),)
        return tuple(clip.encode_text(["a cat number one"]).mask.shape)

    with ThreadPoolExecutor(4) as pool:
        results = set(pool.map(call, range(4000)))
    assert results == {call(1), (1, clip.context_length)}
