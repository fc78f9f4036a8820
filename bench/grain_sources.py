"""Where the grain of flat backgrounds comes from: background noise at every stage's output
under sampling variants of the upsamplers, with the seconds each variant costs.

The prior and decoder run once (the model's defaults) for `--per-prompt` seeds of each of
`bench.quality`'s grain prompts; every variant then runs the upsamplers on the same 32 px
images, with each image's upsampler noise drawn from its own seed. Noise is measured as
`bench.quality.grain` does (median over images of the median over channels of the standard
deviation of the top and bottom bands, 0-255 scale), with bands 1/16 of the side (16 px at
256). `clean` rows condition each upsampler on a render of the prompt's scene instead (the
grain an upsampler adds by itself).

    nice -n 19 .venv/bin/python -m bench.grain_sources [--per-prompt 4] [--variants "a;b"]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import torch

from pipelines import diffusion as D
from pipelines.checkpoints import load_model_dir
from pipelines.sampling import Track, run_to_end, sampling_pairs, upsample_for
from pipelines.stage_keys import DECODER, upsampler_key
from pipelines.unclip import Operation, Sampling, UnCLIP, make_generator, run_direct
from tools.evaluation import scene_images
from tools.shapes import Scene

from .quality import GRAIN_PROMPTS

SCENES = (("circle", "red", "blue", "small", "top left"), ("square", "green", "white", "large", "center"),
          ("triangle", "yellow", "purple", "small", "bottom right"), ("circle", "blue", "orange", "large", "left"))


def band_sigma(images: torch.Tensor) -> list[float]:
    """Per image: median over channels of the std of the top and bottom 1/16 bands (0-255)."""
    x = (images.clamp(-1, 1) + 1) * 127.5
    b = max(1, x.shape[-1] // 16)
    bands = torch.cat([x[..., :b, :].flatten(2), x[..., -b:, :].flatten(2)], dim=2)
    return bands.std(dim=2).median(dim=1).values.tolist()


def sigma(images: torch.Tensor) -> float:
    return statistics.median(band_sigma(images))


@dataclass
class Variant:
    """How the upsamplers sample: per upsampler steps, sampler, eta, spacing, condition noise."""

    name: str
    steps: tuple[int, ...] = (8, 5)
    sampler: str = "ddpm"
    eta: float = 0.0
    spacing: str = "even"  # even (respace: ends at t=0) | skip0 (even, without the t=0 step) | power | custom
    power: tuple[float, ...] = (1.0, 1.0)  # spacing "power": t_k = (T - 1) (k / (n - 1))^p per upsampler
    custom: dict = field(default_factory=dict)  # upsampler index -> descending timesteps
    cond_noise: float = 0.0  # std of Gaussian noise added to the low-res condition ([-1, 1] units)
    clip_x0: Optional[float] = None  # None: the stage's own
    last: tuple[int, ...] = (0, 0)  # per upsampler: the t at which the final step (x -> x0) evaluates the model
    start: tuple[int, ...] = (0, 0)  # per upsampler: > 0 starts from the condition noised to this t (SDEdit)
    extra: tuple[tuple[int, ...], ...] = ((), ())  # per upsampler: further denoising passes (x -> x0 at t)


def timesteps(v: Variant, u: int, T: int) -> list[int]:
    n = v.steps[u]
    if v.spacing == "custom":
        return list(v.custom[u])
    if v.spacing == "even":
        return D.respace(T, n)
    if v.spacing == "skip0":
        return [t for t in D.respace(T, n + 1) if t > 0]
    if v.spacing == "power":  # denser at low t for p > 1
        return D.respace(T, n, v.power[u])
    raise ValueError(v.spacing)


def upsample(pipe: UnCLIP, images: torch.Tensor, seeds: Sequence[int], v: Variant, u: int) -> torch.Tensor:
    stage = pipe.stages[upsampler_key(u)]
    size = stage.up.cfg.out_size
    low = upsample_for(images, size)
    if v.cond_noise > 0:
        g = make_generator(12345 + u)
        low = (low + v.cond_noise * torch.randn(low.shape, generator=g)).clamp(-1, 1)
    top = v.start[u] + 1 if v.start[u] else stage.cfg.num_timesteps
    pairs = sampling_pairs(timesteps(v, u, top), v.last[u]) + [(t, -1) for t in v.extra[u]]
    tracks = []
    for i, s in enumerate(seeds):
        g = make_generator(1000 + 17 * s + u)
        x = torch.randn((1, 3, size, size), generator=g)
        if v.start[u]:
            x = D.q_sample(stage.schedule, low[i:i + 1], torch.tensor([v.start[u]]), x)
        tracks.append(Track(x, list(pairs), v.sampler, v.eta, generator=g, cond={"low_res": low[i:i + 1]}))
    saved = stage.cfg
    if v.clip_x0 is not None:
        stage.cfg = replace(saved, clip_x0=v.clip_x0)
    try:
        run_to_end(stage, tracks, max_batch=8)
    finally:
        stage.cfg = saved
    return torch.cat([tr.x for tr in tracks]).clamp(-1, 1)


VARIANTS = {v.name: v for v in [
    Variant("ddpm 8,5 (default)"),
    Variant("ddpm 16,10", steps=(16, 10)),
    Variant("ddpm 32,20", steps=(32, 20)),
    Variant("ddim eta0 8,5", sampler="ddim"),
    Variant("ddim eta0 4,3", steps=(4, 3), sampler="ddim"),
    Variant("ddim eta0 6,4", steps=(6, 4), sampler="ddim"),
    Variant("ddim eta0 16,10", steps=(16, 10), sampler="ddim"),
    Variant("ddim eta0.5 8,5", sampler="ddim", eta=0.5),
    Variant("ddpm skip0 8,5", spacing="skip0"),
    Variant("ddim skip0 8,5", sampler="ddim", spacing="skip0"),
    Variant("ddpm pow2 8,5", spacing="power", power=(2, 2)),
    Variant("ddim pow2 8,5", sampler="ddim", spacing="power", power=(2, 2)),
    Variant("ddpm pow3 8,5", spacing="power", power=(3, 3)),
    Variant("ddim pow3 8,5", sampler="ddim", spacing="power", power=(3, 3)),
    Variant("ddpm even,pow2", spacing="power", power=(1, 2)),
    Variant("ddpm even,pow3", spacing="power", power=(1, 3)),
    Variant("ddim even,pow3", sampler="ddim", spacing="power", power=(1, 3)),
    Variant("ddpm pow2,pow3", spacing="power", power=(2, 3)),
    Variant("ddpm up1 999,400,100,25,5", spacing="custom",
            custom={0: D.respace(1000, 8), 1: [999, 400, 100, 25, 5]}),
    Variant("ddpm up1 999,250,60,15,4", spacing="custom",
            custom={0: D.respace(1000, 8), 1: [999, 250, 60, 15, 4]}),
    Variant("ddpm clip off", clip_x0=1e9),
    Variant("ddpm condnoise .05", cond_noise=0.05),
    Variant("A: pow2/25,pow3/25", spacing="power", power=(2, 3), last=(25, 25)),
    Variant("A4: pow2/25,pow3/25 4 steps up1", steps=(8, 4), spacing="power", power=(2, 3), last=(25, 25)),
    Variant("A +10 pass", steps=(8, 4), spacing="power", power=(2, 3), last=(25, 25), extra=((), (10,))),
    Variant("A +25 pass", steps=(8, 4), spacing="power", power=(2, 3), last=(25, 25), extra=((), (25,))),
    Variant("A up1 start 250", spacing="power", power=(2, 2), last=(25, 25), start=(0, 250)),
    Variant("A up1 start 100", spacing="power", power=(2, 1), last=(25, 25), start=(0, 100)),
    Variant("A up1 start 100 l10", spacing="power", power=(2, 1), last=(25, 10), start=(0, 100)),
    Variant("A up0 start 400 up1 pow3", spacing="power", power=(2, 3), last=(25, 25), start=(400, 0)),
    Variant("A up0 last 50", spacing="power", power=(2, 3), last=(50, 25)),
    Variant("A up0 pow3", spacing="power", power=(3, 3), last=(25, 25)),
    Variant("B up1 start 50 n3 last 25", steps=(8, 3), spacing="power", power=(2, 1),
            last=(25, 25), start=(0, 50), extra=((), ())),
    Variant("B up1 start 50 n2 last 25", steps=(8, 2), spacing="power", power=(2, 1),
            last=(25, 25), start=(0, 50), extra=((), ())),
    Variant("B up1 start 25 n2 last 0", steps=(8, 2), spacing="power", power=(2, 1),
            last=(25, 0), start=(0, 25), extra=((), ())),
    Variant("B up1 start 25 n1 last 0", steps=(8, 1), spacing="power", power=(2, 1),
            last=(25, 0), start=(0, 25), extra=((), ())),
    Variant("B up1 start 10 n1 last 0", steps=(8, 1), spacing="power", power=(2, 1),
            last=(25, 0), start=(0, 10), extra=((), ())),
    Variant("B up1 start 100 n5 last 25 +10", steps=(8, 5), spacing="power", power=(2, 1),
            last=(25, 25), start=(0, 100), extra=((), (10,))),
    Variant("B up1 start 50 n3 last 25 +10", steps=(8, 3), spacing="power", power=(2, 1),
            last=(25, 25), start=(0, 50), extra=((), (10,))),
    Variant("B up1 start 25 n1 last 0 +10", steps=(8, 1), spacing="power", power=(2, 1),
            last=(25, 0), start=(0, 25), extra=((), (10,))),
    Variant("ddpm even/0,even/10", spacing="power", power=(1, 1), last=(0, 10)),
    Variant("ddpm even/0,pow3/10", spacing="power", power=(1, 3), last=(0, 10)),
    Variant("ddpm even/0,even/25", spacing="power", power=(1, 1), last=(0, 25)),
    Variant("ddpm even/0,pow3/25", spacing="power", power=(1, 3), last=(0, 25)),
    Variant("ddpm even/0,even/50", spacing="power", power=(1, 1), last=(0, 50)),
    Variant("ddpm even/0,pow3/50", spacing="power", power=(1, 3), last=(0, 50)),
    Variant("ddpm even/0,even/100", spacing="power", power=(1, 1), last=(0, 100)),
    Variant("ddpm even/0,pow3/100", spacing="power", power=(1, 3), last=(0, 100)),
    Variant("ddpm pow2/0,even/10", spacing="power", power=(2, 1), last=(0, 10)),
    Variant("ddpm pow2/25,even/10", spacing="power", power=(2, 1), last=(25, 10)),
    Variant("ddpm pow2/0,pow3/10", spacing="power", power=(2, 3), last=(0, 10)),
    Variant("ddpm pow2/25,pow3/10", spacing="power", power=(2, 3), last=(25, 10)),
    Variant("ddpm pow2/0,even/25", spacing="power", power=(2, 1), last=(0, 25)),
    Variant("ddpm pow2/25,even/25", spacing="power", power=(2, 1), last=(25, 25)),
    Variant("ddpm pow2/0,pow3/25", spacing="power", power=(2, 3), last=(0, 25)),
    Variant("ddpm pow2/25,pow3/25", spacing="power", power=(2, 3), last=(25, 25)),
    Variant("ddpm pow2/0,even/50", spacing="power", power=(2, 1), last=(0, 50)),
    Variant("ddpm pow2/25,even/50", spacing="power", power=(2, 1), last=(25, 50)),
    Variant("ddpm pow2/0,pow3/50", spacing="power", power=(2, 3), last=(0, 50)),
    Variant("ddpm pow2/25,pow3/50", spacing="power", power=(2, 3), last=(25, 50)),
    Variant("ddpm pow2/0,even/100", spacing="power", power=(2, 1), last=(0, 100)),
    Variant("ddpm pow2/25,even/100", spacing="power", power=(2, 1), last=(25, 100)),
    Variant("ddpm pow2/0,pow3/100", spacing="power", power=(2, 3), last=(0, 100)),
    Variant("ddpm pow2/25,pow3/100", spacing="power", power=(2, 3), last=(25, 100)),
    Variant("ddim condnoise .05", sampler="ddim", cond_noise=0.05),
]}


def decoded(pipe: UnCLIP, per_prompt: int) -> tuple[torch.Tensor, list[int], list[Scene]]:
    """32 px decoder outputs of every grain prompt (defaults), their seeds, and their scenes."""
    out, seeds, scenes = [], [], []
    for i, prompt in enumerate(GRAIN_PROMPTS):
        out.append(run_direct(pipe, _decode(pipe, prompt, 10 + 100 * i, per_prompt)))
        seeds += [10 + 100 * i + k for k in range(per_prompt)]
        scenes += [Scene(*SCENES[i])] * per_prompt
    return torch.cat(out), seeds, scenes


def _decode(pipe: UnCLIP, prompt: str, seed: int, n: int) -> Operation:
    """generate() without its upsamplers."""
    opts, gens = Sampling(), [make_generator(seed + k) for k in range(n)]
    text = pipe.encode_text([prompt])
    z = yield from pipe.sample_prior(text, [seed + k for k in range(n)], gens, opts)
    return (yield from pipe.decode(z, text, gens, opts))


def seam(pipe: UnCLIP, n: int) -> dict[str, float]:
    """The inpainting seam at the final size on `tools.evaluation`'s inpainting cases: the mean
    colour step (0-255, mean abs over channels) between the 3 px bands either side of the
    box's border (outside: kept pixels, inside: generated), the same step between two
    adjacent 3 px bands both in the kept region, the rim (luminance of the 1-3 px just
    inside the box less that 5-8 px inside), and the generated background's grain inside."""
    from dataclasses import replace as dc_replace

    from pipelines import operations as O
    from tools.evaluation import INPAINT_BOX, box_mask, inpaint_bases, run_chunked
    from tools.shapes import canonical_caption

    scenes, size = inpaint_bases(n, 0), pipe.sizes[-1]
    images, keep = scene_images(scenes, size), box_mask(size)
    prompts = [canonical_caption(dc_replace(sc, shape="square", colour="green", size="large", position="center"))
               for sc in scenes]
    out = torch.cat([r.images for r in run_chunked(
        pipe, lambda i: O.inpaint(pipe, images[i:i + 1], keep, prompts[i], seed=i), n)])
    lo, hi = (int(round(f * size)) for f in INPAINT_BOX)
    x = (out.clamp(-1, 1) + 1) * 127.5
    mid = slice(lo + 8, hi - 8)  # along each edge, away from the corners

    def band(a: int, b: int) -> torch.Tensor:  # [n, 3]: mean of rows a..b-1 (top edge) over `mid` columns
        return x[..., a:b, mid].mean(dim=(2, 3))

    across = (band(lo, lo + 3) - band(lo - 3, lo)).abs().mean().item()
    kept = (band(lo - 3, lo) - band(lo - 6, lo - 3)).abs().mean().item()
    rim = (band(lo, lo + 3).mean(1) - band(lo + 5, lo + 8).mean(1)).mean().item()
    inner = x[..., lo + 3:lo + 8, mid].flatten(2).std(dim=2).median(dim=1).values.median().item()
    return {"step_across_border": across, "step_inside_kept": kept, "rim_luminance": rim, "hole_band_sigma": inner}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=Path("weights/default"))
    p.add_argument("--per-prompt", type=int, default=4)
    p.add_argument("--variants", default=None, help="names separated by ; (default: all)")
    p.add_argument("--clean", action="store_true", help="also condition on renders")
    p.add_argument("--decoder", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="decoder sampling defaults to override, e.g. last_step_t=25")
    p.add_argument("--seam", type=int, default=0, metavar="N", help="measure the inpainting seam on N cases instead")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    pipe = UnCLIP(load_model_dir(args.model_dir).use_channels_last())
    dec = pipe.stages[DECODER]
    dec.cfg = replace(dec.cfg, **{k: json.loads(v) for k, v in (item.split("=", 1) for item in args.decoder)})
    if args.seam:
        print({k: round(v, 2) for k, v in seam(pipe, args.seam).items()})
        return 0
    x32, seeds, scenes = decoded(pipe, args.per_prompt)
    print(f"N = {len(seeds)}; decoder {dec.pairs(dec.timesteps())}: 32 px output: sigma {sigma(x32):.2f}; "
          f"render 32/128/256: {sigma(scene_images(scenes, 32)):.2f} / {sigma(scene_images(scenes, 128)):.2f} / "
          f"{sigma(scene_images(scenes, 256)):.2f}; bicubic of decoder to 128/256: "
          f"{sigma(upsample_for(x32, 128)):.2f} / {sigma(upsample_for(x32, 256)):.2f}")
    names = args.variants.split(";") if args.variants else list(VARIANTS)
    print(f"{'variant':<24} {'s128':>6} {'s256':>6} {'s/img up0':>9} {'s/img up1':>9}"
          + ("  clean: s128 s256(cond render128)" if args.clean else ""))
    for name in names:
        v = VARIANTS[name]
        t0 = time.perf_counter()
        x128 = upsample(pipe, x32, seeds, v, 0)
        t1 = time.perf_counter()
        x256 = upsample(pipe, x128, seeds, v, 1)
        t2 = time.perf_counter()
        row = (f"{name:<24} {sigma(x128):6.2f} {sigma(x256):6.2f} {(t1 - t0) / len(seeds):9.3f} "
               f"{(t2 - t1) / len(seeds):9.3f}")
        if args.clean:
            c128 = upsample(pipe, scene_images(scenes, 32), seeds, v, 0)
            c256 = upsample(pipe, scene_images(scenes, 128), seeds, v, 1)
            row += f"  {sigma(c128):6.2f} {sigma(c256):6.2f}"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
