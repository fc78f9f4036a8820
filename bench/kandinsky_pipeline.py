"""bench/pipeline.py's Kandinsky 2.2 row: ours (pipelines/kandinsky, diffusers' networks in
our engine's stages) against diffusers' KandinskyV22PriorPipeline + KandinskyV22Pipeline, the
same random-weight folder written by save_pretrained, same steps and guidance.

Ours as the server loads the folder (`ModelDir.load`: the server's dtype, `default_dtype`,
and channels-last UNet and MoVQ); diffusers as its users do (from_pretrained, fp32)."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from pipelines.checkpoints import default_dtype, dtype_named
from pipelines.kandinsky.networks import dtype_of
from pipelines.kandinsky.pipeline import Kandinsky
from pipelines.model_dir import describe
from pipelines.operations import generate
from pipelines.sampling import run_to_end
from pipelines.unclip import Sampling
from tests.pipelines._kandinsky_real import diffusers_pipelines, real_nets
from tests.pipelines._kandinsky_tiny import TINY, Dims, write_model_dir

PROMPT = "a red cat"
GUIDANCE = (4.0, 4.0)
# Bigger than the tests' tiny folder, still CPU-friendly: 64 px (16 x 16 latents, MoVQ scale
# 4), UNet 64-128-192 channels with 2 layers per block, embeddings 64 wide.
SMALL = Dims(embed=64, prior_layers=4, unet=(64, 128, 192), layers_per_block=2, head_dim=32, movq=(32, 64, 64),
             image=64)
DIMS = {"tiny": TINY, "small": SMALL}


def folder(config: str, root: Path) -> Path:
    return write_model_dir(root / f"kandinsky-{config}", dims=DIMS[config])


def ours(path: Path, dtype: str, channels_last: bool) -> Kandinsky:
    return describe(path).load("cpu", dtype_named(dtype), channels_last)


def theirs(path: Path) -> tuple[Any, Any]:
    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

    prior = KandinskyV22PriorPipeline.from_pretrained(path / "prior", local_files_only=True)
    decoder = KandinskyV22Pipeline.from_pretrained(path / "decoder", local_files_only=True)
    for p in (prior, decoder):
        p.set_progress_bar_config(disable=True)
    return prior, decoder


def run_ours(pipe: Kandinsky, batch: int, steps: tuple[int, ...], seed: int) -> dict[str, float]:
    """One generation of `batch` images, each stage request run to its end; {stage: seconds}."""
    import time

    opts = Sampling(prior_steps=steps[0], decoder_steps=steps[1], best_of=1, prior_guidance=GUIDANCE[0],
                    decoder_guidance=GUIDANCE[1])
    op = generate(pipe, PROMPT, n=batch, seed=seed, opts=opts)
    stages: dict[str, float] = defaultdict(float)
    t0 = time.perf_counter()
    request: Optional[Any] = next(op)
    stages["text+setup"] += time.perf_counter() - t0
    while request is not None:
        t1 = time.perf_counter()
        run_to_end(pipe.stages[request.stage], request.tracks)
        stages[request.stage] += time.perf_counter() - t1
        try:
            request = op.send(None)
        except StopIteration:
            request = None
    return dict(stages)


def run_theirs(ref: tuple[Any, Any], pipe: Kandinsky, batch: int, steps: tuple[int, ...], seed: int) -> None:
    prior, decoder = ref
    gen = torch.Generator().manual_seed(seed)
    emb = prior(PROMPT, num_images_per_prompt=batch, num_inference_steps=steps[0], guidance_scale=GUIDANCE[0],
                generator=gen, output_type="pt")
    side = pipe.size_rule.default[0]
    decoder(image_embeds=emb.image_embeds, negative_image_embeds=emb.negative_image_embeds, height=side, width=side,
            num_inference_steps=steps[1], guidance_scale=GUIDANCE[1], generator=gen, output_type="np")


def our_modules(pipe: Kandinsky) -> dict[str, nn.Module]:
    """The networks timed (MoVQ: its decoder, which `VQModel.decode` calls; decode is no forward)."""
    n = pipe.nets
    return {"prior": n.prior, "unet": n.unet, "movq": n.movq.decoder, "text": n.text_encoder, "vision": n.image_encoder}


def their_modules(ref: tuple[Any, Any]) -> dict[str, nn.Module]:
    prior, decoder = ref
    return {"prior": prior.prior, "unet": decoder.unet, "movq": decoder.movq.decoder, "text": prior.text_encoder,
            "vision": prior.image_encoder}


def contenders(config: str, dtype: str, channels_last: bool
               ) -> tuple[dict[str, Callable], dict[str, dict], str, Optional[str]]:
    """The two runs (batch, steps, seed) -> stage seconds, their networks, our dtype and how
    diffusers runs (None: its defaults, fp32, from its own folder)."""
    if config == "real":
        return real_contenders(dtype, channels_last)
    root = Path(tempfile.mkdtemp(prefix="bench-kandinsky-"))
    path = folder(config, root)
    return (*paired(ours(path, dtype, channels_last), theirs(path)), None)


def real_contenders(dtype: str, channels_last: bool) -> tuple[dict[str, Callable], dict[str, dict], str, str]:
    """Kandinsky 2.2's real architecture (4.9 B parameters) with seeded random weights built
    in memory in our dtype (no folder: it would be 10-20 GB), and diffusers' two pipelines
    around the very same modules: both run the same networks in the same dtype and memory
    format, so what differs is the code that drives them."""
    pipe = Kandinsky(real_nets("cpu", dtype_named(dtype) or default_dtype("cpu"))).use_channels_last(channels_last)
    calls, modules, dt = paired(pipe, diffusers_pipelines(pipe.nets))
    return calls, modules, dt, f"the same modules ({dt})"


def paired(pipe: Kandinsky, ref: tuple[Any, Any]) -> tuple[dict[str, Callable], dict[str, dict], str]:
    """Ours and diffusers' runs (batch, steps, seed), their networks, and our dtype."""
    calls = {"ours": lambda b, s, seed: run_ours(pipe, b, s, seed),
             "diffusers": lambda b, s, seed: run_theirs(ref, pipe, b, s, seed)}
    return calls, {"ours": our_modules(pipe), "diffusers": their_modules(ref)}, str(dtype_of(pipe.nets.unet))
