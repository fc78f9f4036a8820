"""The five operations of the paper, as generators over stage requests (see unclip.py).

Every operation returns an `OpResult`; image i of a request with seed s uses seed s + i.
Manipulations work on the bipartite latent (z_i, x_T): z_i from CLIP, x_T from DDIM
inversion of the decoder, decoded deterministically (DDIM) unless eta > 0.

Each operation's own settings default to `DEFAULTS`, their one home: callers (the API
included) pass None for "the default", and the result's `settings` records the values used.

The operations run on any `StagedPipeline` (unCLIP, Kandinsky 2.2) through its generic
methods: encode_text / encode_image, sample_prior, invert_image, noise_shape and render
(whose x_t starts the decoder from inverted latents and whose known constrains inpainting).
An operation that takes a prompt also takes a negative prompt: its encoding replaces the
empty caption's in the prior's unconditional rows (and in the decoder's, where the decoder
sees text); None or "" change nothing. An image given of another aspect than the output
is centre-cropped to the output's aspect (`check_image`), never stretched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Optional, Sequence, get_args

import torch

from .errors import InvalidInput
from .imageio import as_float
from .sampling import Known, resize
from .sizes import Output, SizeLike, aspect_box
from .stage_keys import DECODER, PRIOR
from .unclip import Operation, Sampling, StagedPipeline, make_generator
from .vectors import normalize, slerp

Mode = Literal["slerp", "fixed"]
MODES: tuple[Mode, ...] = get_args(Mode)


@dataclass(frozen=True)
class Defaults:
    """The operations' own settings when a request leaves them out."""

    eta: float = 0.8  # variations: DDIM eta (0 reconstructs the image)
    frames: int = 5  # interpolations (theta 0 .. 1) and text diffs (theta 0 .. max_theta)
    max_theta: float = 0.5  # text diffs: the last frame's theta
    mode: Mode = "slerp"  # interpolations: x_T slerped between the inputs, or one fixed noise
    resample: int = 1  # inpainting: RePaint-style repeats of every step (1: none)
    walk_frames: int = 9  # walks: frames (OpenAI's GIF default)


DEFAULTS = Defaults()


@dataclass
class OpResult:
    """images: [n, 3, H, W] in [-1, 1]; embeddings: the z_i each image was decoded from
    [n, D]; thetas: each frame's theta (interpolations, text diffs); direction: the text
    diff's z_d [1, D]; settings: the operation's own settings as used (defaults resolved)."""

    images: torch.Tensor
    embeddings: Optional[torch.Tensor] = None
    thetas: Optional[list[float]] = None
    direction: Optional[torch.Tensor] = None
    settings: dict[str, Any] = field(default_factory=dict)


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def spaced(frames: int, top: float) -> list[float]:
    """`frames` thetas evenly spaced from 0 to top ([0.0] for one frame)."""
    return [top * k / max(frames - 1, 1) for k in range(frames)]


def work(
    pipe: StagedPipeline, size: SizeLike, opts: Optional[Sampling], images: int, prior_samples: int = 0,
    inversions: int = 0, resample: int = 1,
) -> dict[str, int]:
    """Track-steps per stage of an operation (what it will cost, before it runs): `images`
    images at `size`, `prior_samples` embeddings drawn by the prior (each best of N), and
    `inversions` images DDIM-inverted; `resample` repeats every step (inpainting)."""
    opts = opts or Sampling()
    best_of = opts.best_of or pipe.default_best_of
    sampled = len(pipe.timesteps(DECODER, opts, invertible=inversions > 0))
    inverted = len(pipe.timesteps(DECODER, opts, invertible=True)) - 1
    out = {PRIOR: prior_samples * best_of * len(pipe.timesteps(PRIOR, opts)),
           DECODER: images * sampled * resample + inversions * inverted * (1 + opts.inversion_refine)}
    for key, steps in pipe.render_work(pipe.output(size), opts, resample).items():
        out[key] = images * steps
    return out


def _gens(seed: int, n: int) -> tuple[list[int], list[torch.Generator]]:
    seeds = [int(seed) + i for i in range(n)]
    return seeds, [make_generator(s) for s in seeds]


def _ddim(opts: Optional[Sampling], eta: float = 0.0) -> Sampling:
    """Deterministic decoding settings (DDIM) for manipulations, keeping the request's steps."""
    return replace(opts or Sampling(), decoder_sampler="ddim", eta=float(eta))


def check_thetas(thetas: Sequence[float], param: str = "thetas") -> list[float]:
    """Validate interpolation weights: a non-empty list in [0, 1]."""
    if not thetas:
        raise InvalidInput(param, f"'{param}' must list at least one value")
    for th in thetas:
        if not 0.0 <= float(th) <= 1.0:
            raise InvalidInput(param, f"'{param}' values must lie in [0, 1], got {th}")
    return [float(th) for th in thetas]


def check_image(image: torch.Tensor, out: Output, param: str = "image") -> torch.Tensor:
    """image [1, 3, H, W], float in [-1, 1] or uint8: must be one RGB image. Returns it as
    float in [-1, 1] (inputs wait in the queue as uint8), centre-cropped to the aspect of
    the output (`fit`), so that no stage stretches it."""
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise InvalidInput(param, f"'{param}' must be one RGB image")
    return as_float(fit(image, out))


def fit(x: torch.Tensor, out: Output) -> torch.Tensor:
    """x [n, C, H, W] (an image or a mask) -> its largest centred crop with out's aspect."""
    left, top, width, height = aspect_box((x.shape[-1], x.shape[-2]), out.size)
    return x[..., top:top + height, left:left + width]


def generate(
    pipe: StagedPipeline, prompt: str, n: int = 1, seed: int = 0, size: SizeLike = None,
    opts: Optional[Sampling] = None, negative_prompt: Optional[str] = None,
) -> Operation:
    """Text -> CLIP -> prior (best-of-N) -> `render`: decoder (guided) -> upsamplers (Kandinsky:
    latent decoder -> MoVQ)."""
    opts = opts or Sampling()
    out = pipe.output(size)
    seeds, gens = _gens(seed, n)
    text, negative = pipe.encode_text([prompt]), pipe.negative_encoding(negative_prompt)
    z = yield from pipe.sample_prior(text, seeds, gens, opts, negative)
    images = yield from pipe.render(z, text, gens, opts, out, negative=negative)
    return OpResult(images, z, settings={"n": n})


def walk_keys(frames: int) -> int:
    """Prior samples of a walk of `frames` frames: one per four frames, at least two."""
    return max(2, min(frames, 1 + math.ceil((frames - 1) / 4)))


def walk(
    pipe: StagedPipeline, prompt: str, frames: Optional[int] = None, seed: int = 0, size: SizeLike = None,
    opts: Optional[Sampling] = None, negative_prompt: Optional[str] = None,
) -> Operation:
    """Frames of one prompt (an animated GIF): `walk_keys` embeddings from the prior, and
    the frames evenly along the slerps between successive ones (§3.2's interpolation,
    through one prompt's image embeddings), all decoded deterministically from one noise."""
    frames = _or(frames, DEFAULTS.walk_frames)
    if frames < 2:
        raise InvalidInput("frame_count", "'frame_count' must be at least 2")
    opts, out, keys = _ddim(opts), pipe.output(size), walk_keys(frames)
    text, negative = pipe.encode_text([prompt]), pipe.negative_encoding(negative_prompt)
    seeds, gens = _gens(seed, keys)
    z = yield from pipe.sample_prior(text, seeds, gens, opts, negative)
    zs = torch.cat([_on_path(z, u) for u in spaced(frames, keys - 1.0)])
    x_t = torch.randn(pipe.noise_shape(out), generator=make_generator(seed)).expand(frames, *[-1] * 3)
    frame_gens = [make_generator(seed) for _ in range(frames)]  # the same noise in every frame
    images = yield from pipe.render(zs, text, frame_gens, opts, out, x_t=x_t, negative=negative)
    return OpResult(images, zs, settings={"frame_count": frames, "walk_keys": keys, "decoder_sampler": "ddim"})


def _on_path(z: torch.Tensor, u: float) -> torch.Tensor:
    """z [K, D]: the point at u in [0, K - 1] along the slerps between successive rows [1, D]."""
    k = min(int(u), z.shape[0] - 2)
    return slerp(z[k:k + 1], z[k + 1:k + 2], u - k)


def _encode_and_invert(pipe: StagedPipeline, image: torch.Tensor, opts: Sampling, out: Output) -> Operation:
    """image [1, 3, H, W] -> (z_i [1, D], x_T [1, ...] for a render ending at `out`, null text)."""
    z = pipe.encode_image(image)
    x_t = yield from pipe.invert_image(image, z, opts, out)
    return z, x_t, pipe.null_encoding()


def variations(
    pipe: StagedPipeline, image: torch.Tensor, n: int = 1, seed: int = 0, size: SizeLike = None,
    eta: Optional[float] = None, opts: Optional[Sampling] = None,
) -> Operation:
    """Paper §3.1: invert the image under its own z_i, decode with DDIM at eta
    (0 reconstructs the input, larger varies more), then upsample."""
    eta = float(_or(eta, DEFAULTS.eta))
    if not 0.0 <= eta <= 1.0:
        raise InvalidInput("eta", f"'eta' must lie in [0, 1], got {eta}")
    opts, out = _ddim(opts, eta), pipe.output(size)
    image = check_image(image, out)
    z, x_t, null = yield from _encode_and_invert(pipe, image, opts, out)
    _, gens = _gens(seed, n)
    zs, xs = z.expand(n, -1), x_t.expand(n, -1, -1, -1)
    images = yield from pipe.render(zs, null, gens, opts, out, x_t=xs)
    return OpResult(images, zs, settings={"n": n, "eta": eta, "decoder_sampler": "ddim"})


def interpolation_thetas(thetas: Optional[Sequence[float]], frames: Optional[int]) -> list[float]:
    """The explicit thetas, or `frames` (default DEFAULTS.frames) evenly spaced in [0, 1]."""
    if thetas is not None and frames is not None:
        raise InvalidInput("thetas", "Give either 'frames' or 'thetas', not both.")
    return check_thetas(thetas) if thetas is not None else spaced(_or(frames, DEFAULTS.frames), 1.0)


def interpolate(
    pipe: StagedPipeline, images: Optional[Sequence[torch.Tensor]] = None, prompts: Optional[Sequence[str]] = None,
    thetas: Optional[Sequence[float]] = None, mode: Optional[Mode] = None, seed: int = 0,
    size: SizeLike = None, opts: Optional[Sampling] = None, frames: Optional[int] = None,
    negative_prompt: Optional[str] = None,
) -> Operation:
    """Paper §3.2: z_theta = slerp(z_1, z_2, theta) for the given thetas (or `frames` evenly
    spaced); x_T slerped between the two inverted latents ("slerp": the endpoints
    reconstruct the inputs) or one fixed noise ("fixed"). negative_prompt: for the prior
    (two prompts)."""
    thetas, mode = interpolation_thetas(thetas, frames), _or(mode, DEFAULTS.mode)
    if mode not in MODES:
        raise InvalidInput("mode", f"'mode' must be one of {list(MODES)}, got {mode!r}")
    opts, out = _ddim(opts), pipe.output(size)
    negative = pipe.negative_encoding(negative_prompt)
    z, starts = yield from _endpoints(pipe, images, prompts, seed, opts, out, negative)
    zs = torch.cat([slerp(z[0:1], z[1:2], th) for th in thetas])
    _screen(opts, zs)  # before the images' inversions: a refusal spends no decoder step
    x_t = yield from starts
    if mode == "fixed":
        x_t = x_t[:1].expand(2, *[-1] * (x_t.dim() - 1))
    xs = torch.cat([slerp(x_t[0:1], x_t[1:2], th) for th in thetas])
    _, gens = _gens(seed, len(thetas))
    frames = yield from pipe.render(zs, pipe.null_encoding(), gens, opts, out, x_t=xs)
    settings = {"mode": mode, "frames": len(thetas), "decoder_sampler": "ddim"}
    return OpResult(frames, zs, thetas=thetas, settings=settings)


def _screen(opts: Sampling, zs: torch.Tensor) -> None:
    """Frames' image embeddings zs [n, D] made here, not by the prior (a slerp towards a
    text direction or between two images), past the request's moderation before any
    decoder step, as the prior's are (`Sampling.screen`)."""
    if opts.screen is not None:
        opts.screen(zs)


def _endpoints(pipe: StagedPipeline, images, prompts, seed: int, opts: Sampling, out: Output,
               negative=None) -> Operation:
    """The two ends of an interpolation: z [2, D], and the operation that gives their x_T
    [2, ...] (the images' inversions, run once the frames passed moderation; or noise)."""
    if images is not None and len(images) == 2 and not prompts:
        images = [check_image(img, out) for img in images]
        z = torch.cat([pipe.encode_image(img) for img in images])
        return z, _inversions(pipe, images, z, opts, out)
    if prompts is not None and len(prompts) == 2 and not images:
        seeds, gens = _gens(seed, 2)
        zs = []
        for p, s, g in zip(prompts, seeds, gens):
            zs.append((yield from pipe.sample_prior(pipe.encode_text([p]), [s], [g], opts, negative)))
        return torch.cat(zs), _given(torch.cat([torch.randn(pipe.noise_shape(out), generator=g) for g in gens]))
    param = "image" if images is not None else "prompt"
    raise InvalidInput(param, "an interpolation needs exactly two images or exactly two prompts")


def _inversions(pipe: StagedPipeline, images: list[torch.Tensor], z: torch.Tensor, opts: Sampling,
                out: Output) -> Operation:
    """x_T [n, ...] of images [1, 3, H, W] under their embeddings z [n, D], one after another."""
    x_t = []
    for k, img in enumerate(images):
        x_t.append((yield from pipe.invert_image(img, z[k:k + 1], opts, out)))
    return torch.cat(x_t)


def _given(value: torch.Tensor) -> Operation:
    """An operation that asks for nothing and returns `value`."""
    return value
    yield


def text_diff(
    pipe: StagedPipeline, image: torch.Tensor, prompt: str, source_prompt: str = "", frames: Optional[int] = None,
    max_theta: Optional[float] = None, seed: int = 0, size: SizeLike = None, opts: Optional[Sampling] = None,
    negative_prompt: Optional[str] = None,
) -> Operation:
    """Paper §3.3: z_d = normalize(z_t - z_t0); frames decode slerp(z_i, z_d, theta) for
    theta from 0 to max_theta with x_T from inverting the image, fixed across frames.
    negative_prompt: for the decoder's unconditional rows (unCLIP; Kandinsky's decoder sees
    no text, so there it changes nothing)."""
    frames, max_theta = _or(frames, DEFAULTS.frames), _or(max_theta, DEFAULTS.max_theta)
    max_theta = check_thetas([max_theta], "max_theta")[0]
    if frames < 1:
        raise InvalidInput("frames", "'frames' must be at least 1")
    opts, out = _ddim(opts), pipe.output(size)
    image = check_image(image, out)
    z = pipe.encode_image(image)
    texts = pipe.encode_text([prompt, source_prompt])
    z_d = normalize(texts.pooled[0:1] - texts.pooled[1:2]).to(z.device)
    thetas = spaced(frames, max_theta)
    target = z_d * z.norm(dim=-1, keepdim=True)  # same norm as z_i: only the direction moves
    zs = torch.cat([slerp(z, target, th) for th in thetas])
    _screen(opts, zs)  # before the inversion: a refused text diff spends no decoder step
    x_t, null = (yield from pipe.invert_image(image, z, opts, out)), pipe.null_encoding()
    _, gens = _gens(seed, frames)
    xs = x_t.expand(frames, *[-1] * (x_t.dim() - 1))
    images = yield from pipe.render(zs, null, gens, opts, out, x_t=xs,
                                    negative=pipe.negative_encoding(negative_prompt))
    settings = {"frames": frames, "max_theta": max_theta, "decoder_sampler": "ddim"}
    return OpResult(images, zs, thetas=thetas, direction=z_d, settings=settings)


def inpaint(
    pipe: StagedPipeline, image: torch.Tensor, keep: torch.Tensor, prompt: str, n: int = 1, seed: int = 0,
    size: SizeLike = None, resample: Optional[int] = None, opts: Optional[Sampling] = None,
    negative_prompt: Optional[str] = None,
) -> Operation:
    """Text-guided inpainting: keep [1, 1, H, W] is 1 where the original stays. At every
    step of every stage the kept region is replaced by the forward-noised original (and an
    inpainting decoder is also given the kept pixels and the mask as input; Kandinsky: in
    latent space, see `Kandinsky.render`); the final image keeps the original's pixels
    (cropped to the output's aspect and resized to its size) exactly."""
    if keep.shape[-2:] != image.shape[-2:]:
        raise InvalidInput("mask", "the mask must have the image's size")
    opts, out, resample = opts or Sampling(), pipe.output(size), _or(resample, DEFAULTS.resample)
    image, keep = check_image(image, out), fit(keep.float(), out)
    original = resize(image, out.size)
    keep_out = torch.nn.functional.interpolate(keep, size=(out.height, out.width), mode="nearest")
    seeds, gens = _gens(seed, n)
    known = None if keep_out.sum() == 0 else [Known(original, keep_out, resample)] * n
    text, negative = pipe.encode_text([prompt]), pipe.negative_encoding(negative_prompt)
    z = yield from pipe.sample_prior(text, seeds, gens, opts, negative)
    images = yield from pipe.render(z, text, gens, opts, out, known=known, negative=negative)
    images = keep_out * original + (1 - keep_out) * images
    return OpResult(images, z, settings={"n": n, "resample": resample})
