"""Step-level sampling: per-sample trajectories and one batched step of any stage.

A `Track` is one sample's state inside one diffusion stage (latent, the (t, t_to) pairs
still to run, sampler kind, eta, guidance, conditioning, RNG, inpainting constraint).
`Stage.step(tracks)` runs ONE batched model call for any mix of tracks of that stage,
each at its own timestep, guidance and sampler, and advances each by one step. The
engine and the direct path both drive sampling through this function only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, get_args

import torch
import torch.nn.functional as F

from . import diffusion as D
from .config import DiffusionConfig
from .sizes import Size, as_size
from .stack import UnCLIPStack
from .stage_keys import DECODER, PRIOR, upsampler_key
from .unet import inpaint_condition

Sampler = Literal["ddpm", "ddim", "invert"]
SAMPLERS: tuple[Sampler, ...] = get_args(Sampler)


@dataclass
class Known:
    """Inpainting constraint: x0 [1, C, H, W] of the image and keep [1, 1, H, W] (1 = keep).
    Operations give it at any size; each stage gets it at its own (`at`)."""

    x0: torch.Tensor
    keep: torch.Tensor
    resample: int = 1  # RePaint-style repeats of each step (1 = none)
    # Fixed noise [1, C, H, W] the known region is re-noised with at every step (diffusers'
    # Kandinsky inpainting re-noises with the initial latents); None: fresh noise each step
    noise: Optional[torch.Tensor] = None

    def at(self, size: int) -> "Known":
        """The constraint at size x size: the image resized (bicubic, antialiased), the keep
        mask area-averaged when shrinking and thresholded at 0.5 (it stays binary); fixed
        noise only survives at its own size."""
        keep = self.keep
        if keep.shape[-1] != size:
            mode = "area" if keep.shape[-1] > size else "nearest"
            keep = (F.interpolate(keep, size=(size, size), mode=mode) > 0.5).float()
        noise = self.noise if self.noise is not None and self.noise.shape[-1] == size else None
        return Known(resize(self.x0, size), keep, self.resample, noise)


@dataclass
class Track:
    """One sample in one stage. x: [1, ...]; pairs: (t, t_to) still to run, in order."""

    x: torch.Tensor
    pairs: list[tuple[int, int]]
    sampler: Sampler = "ddpm"
    eta: float = 0.0
    guidance: float = 1.0
    generator: Optional[torch.Generator] = None
    cond: dict = field(default_factory=dict)
    known: Optional[Known] = None
    refine: int = 0  # inversion: fixed-point refinements of each step (exact DDIM inverse)
    index: int = 0
    repeat: int = 0  # RePaint repeats / inversion refinements done at the current pair
    anchor: Optional[torch.Tensor] = None  # inversion: x at the start of the current pair
    x0: Optional[torch.Tensor] = None  # the last step's prediction of the clean sample (previews)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}")

    @property
    def done(self) -> bool:
        return self.index >= len(self.pairs)

    @property
    def total(self) -> int:
        return len(self.pairs)

    @property
    def t(self) -> int:
        return self.pairs[self.index][0]

    @property
    def t_to(self) -> int:
        return self.pairs[self.index][1]

    @property
    def refining(self) -> bool:
        """True while an inversion step is being refined (the model then runs at t_to)."""
        return self.sampler == "invert" and self.repeat > 0

    @property
    def model_t(self) -> int:
        """The timestep the model is evaluated at in this step."""
        return self.t_to if self.refining else self.t

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like one sample, drawn on the CPU from this track's
        generator (so results do not depend on the device or on batch neighbours)."""
        shape = (1,) + tuple(like.shape[1:])
        return torch.randn(shape, generator=self.generator, dtype=torch.float32).to(like.device, like.dtype)


def latest(tracks: list[Track]) -> torch.Tensor:
    """What the tracks hold so far [n, C, H, W], fp32 on the CPU: each finished track's
    sample, else its last prediction of the clean sample (its latent before any step)."""
    return torch.cat([(tr.x if tr.done or tr.x0 is None else tr.x0).float().cpu() for tr in tracks])


def preview(tracks: list[Track]) -> torch.Tensor:
    """The images pixel-space tracks hold so far [n, 3, H, W] in [-1, 1] (`latest`)."""
    return latest(tracks).clamp(-1, 1)


def sampling_pairs(timesteps: list[int], last_t: int = 0) -> list[tuple[int, int]]:
    """Descending timesteps -> (t, t_prev) pairs ending at -1 (the clean sample). last_t > 0
    evaluates the final step's network at last_t instead of at the last timestep (see
    `DiffusionConfig.last_step_t`): its input, all but clean, is taken as x_{last_t}."""
    pairs = list(zip(timesteps, timesteps[1:] + [-1]))
    if last_t > pairs[-1][0]:
        pairs[-1] = (last_t, -1)
    return pairs


def inversion_pairs(timesteps: list[int]) -> list[tuple[int, int]]:
    """Descending sampling timesteps -> ascending (t, t_next) inversion pairs."""
    up = timesteps[::-1]
    return list(zip(up[:-1], up[1:]))


class Stage:
    """A diffusion stage: its schedule, its settings, and how to evaluate its network.
    `stack` holds the networks (an UnCLIPStack, or Kandinsky's `KandinskyNets`); `step`
    needs only its `device`, the subclasses' `predict` the networks themselves."""

    key = "stage"

    def __init__(self, stack: UnCLIPStack, cfg: DiffusionConfig, schedule: D.Schedule):
        self.stack, self.cfg, self.schedule = stack, cfg, schedule

    def timesteps(self, steps: Optional[int] = None, invertible: bool = False, scale: float = 1.0) -> list[int]:
        """Respaced timesteps, descending: `steps` of them, or the stage's default times
        `scale` (at least 1). invertible=True stops at `inversion_top`, where x_t still
        holds enough of x0 for DDIM inversion to be well conditioned."""
        top = self.inversion_top() if invertible else (self.cfg.start_t or self.cfg.num_timesteps - 1)
        cfg = self.cfg
        return D.spaced(cfg.spacing, top + 1, steps or max(1, round(cfg.steps * scale)), cfg.spacing_power,
                        cfg.steps_offset)

    def pairs(self, timesteps: list[int]) -> list[tuple[int, int]]:
        """Sampling pairs of descending timesteps, with the stage's `last_step_t`."""
        return sampling_pairs(timesteps, self.cfg.last_step_t)

    def inversion_top(self, min_abar: float = 1e-3) -> int:
        """The largest t with alpha_bar(t) >= min_abar (cosine schedule: t = 978, where
        sqrt(alpha_bar) = 0.03: x_T is 97% noise but eps errors are amplified 30x, not 20,000x)."""
        ok = (self.schedule.alphas_cumprod >= min_abar).nonzero()
        return int(ok.max()) if len(ok) else self.cfg.num_timesteps - 1

    def predict(self, x: torch.Tensor, t: torch.Tensor,
                tracks: list[Track]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Batched, guided model prediction [B, C, ...] and variance values (or None)."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, tracks: list[Track]) -> None:
        """Advance every track by one step with one batched model call."""
        dev = self.stack.device
        x = torch.cat([tr.x for tr in tracks]).to(dev)
        t_model = torch.tensor([tr.model_t for tr in tracks], device=dev)
        pred, var = self.predict(x, t_model, tracks)
        x0, eps = D.to_x0_eps(self.schedule, x, t_model, pred, self.cfg.prediction, self.cfg.clip_x0)
        t = torch.tensor([tr.t for tr in tracks], device=dev)
        t_to = torch.tensor([tr.t_to for tr in tracks], device=dev)
        new = self._update(x, x0, eps, t, t_to, var, tracks)
        for i, tr in enumerate(tracks):
            if tr.sampler == "invert" and not tr.refining:
                tr.anchor = tr.x
            tr.x, tr.x0 = self._constrain(tr, new[i:i + 1]), x0[i:i + 1]
            self._advance(tr)

    def _update(self, x, x0, eps, t, t_to, var, tracks: list[Track]) -> torch.Tensor:
        """Per-sample sampler update, each track with its own kind, eta and noise; rows are
        gathered per kind only when the batch mixes kinds."""
        kinds = [tr.sampler for tr in tracks]
        if len(set(kinds)) == 1:
            return self._update_kind(kinds[0], tracks, x, x0, eps, t, t_to, var)
        out = torch.empty_like(x)
        for kind in SAMPLERS:
            idx = [i for i, k in enumerate(kinds) if k == kind]
            if idx:
                ix = torch.tensor(idx, device=x.device)
                out[ix] = self._update_kind(kind, [tracks[i] for i in idx], x[ix], x0[ix], eps[ix], t[ix],
                                            t_to[ix], None if var is None else var[ix])
        return out

    def _update_kind(self, kind: Sampler, tracks: list[Track], x, x0, eps, t, t_to, var) -> torch.Tensor:
        """The update of rows that share one sampler kind (tensors [len(tracks), ...])."""
        if kind == "invert":
            return self._invert(tracks, x0, eps, t, t_to)
        noise = self._noise(tracks, x)
        if kind == "ddpm":
            return D.ddpm_step(self.schedule, x, x0, t, t_to, noise, self.cfg.variance, var)
        eta = torch.tensor([tr.eta for tr in tracks], dtype=torch.float64)
        return D.ddim_step(self.schedule, x0, eps, t, t_to, eta, noise)

    def _invert(self, tracks: list[Track], x0, eps, t, t_to) -> torch.Tensor:
        """Inversion rows: a first DDIM inversion step, or a refinement of it."""
        out = D.ddim_invert_step(self.schedule, x0, eps, t_to)
        ref = [i for i, tr in enumerate(tracks) if tr.refining]
        if ref:
            ix = torch.tensor(ref, device=x0.device)
            anchor = torch.cat([tracks[i].anchor for i in ref]).to(x0.device, x0.dtype)
            out[ix] = D.ddim_invert_refine(self.schedule, anchor, eps[ix], t[ix], t_to[ix])
        return out

    @staticmethod
    def _noise(tracks: list[Track], like: torch.Tensor) -> torch.Tensor:
        """Noise for the tracks that will add some (not at their last step), zeros otherwise."""
        rows = []
        for tr in tracks:
            adds = tr.t_to >= 0 and (tr.sampler == "ddpm" or tr.eta > 0)
            rows.append(tr.noise(like) if adds
                        else torch.zeros((1,) + tuple(like.shape[1:]), device=like.device, dtype=like.dtype))
        return torch.cat(rows)

    def _constrain(self, tr: Track, x: torch.Tensor) -> torch.Tensor:
        """Inpainting: replace the known region by the original noised to t_to."""
        if tr.known is None:
            return x
        k = tr.known
        t_to = torch.tensor([tr.t_to], device=x.device)
        if tr.t_to < 0:
            known = k.x0.to(x)
        else:
            noise = tr.noise(x) if k.noise is None else k.noise.to(x)
            known = D.q_sample(self.schedule, k.x0.to(x), t_to, noise)
        keep = k.keep.to(x)
        return keep * known + (1 - keep) * x

    def _advance(self, tr: Track) -> None:
        """Move to the next pair, refine this inversion step again, or (RePaint) re-noise
        back to t and repeat this pair."""
        if tr.sampler == "invert" and tr.repeat < tr.refine:
            tr.repeat += 1
            return
        k = tr.known
        if k is not None and k.resample > 1 and tr.repeat + 1 < k.resample and tr.t_to >= 0:
            tr.repeat += 1
            a_t = self.schedule.abar(torch.tensor([tr.t]))
            a_to = self.schedule.abar(torch.tensor([tr.t_to]))
            ratio = (a_t / a_to).item()
            tr.x = (ratio ** 0.5) * tr.x + ((1 - ratio) ** 0.5) * tr.noise(tr.x)
            return
        tr.repeat, tr.anchor = 0, None
        tr.index += 1


NEGATIVE = "negative:"  # cond key prefix: a track's own unconditional row (a negative prompt)


def negative_cond(cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """cond (e.g. a negative prompt's text_emb, text_enc, mask) as the overrides of a track's
    unconditional row: keys prefixed with NEGATIVE. Tracks carrying them batch only with
    tracks carrying the same keys (`group_key`)."""
    return {NEGATIVE + k: v for k, v in cond.items()}


def _cat(tracks: list[Track], key: str, device: torch.device) -> torch.Tensor:
    return torch.cat([tr.cond[key] for tr in tracks]).to(device)


def _guided_rows(tracks: list[Track]) -> list[int]:
    return [i for i, tr in enumerate(tracks) if tr.guidance != 1.0]


def guided_batch(
    x: torch.Tensor, t: torch.Tensor, tracks: list[Track], null: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], list[int]]:
    """The batch of one guided model call: every track's conditional row, then an
    unconditional row (conditioning from `null`, each [1, ...], or the track's own
    `NEGATIVE`-prefixed keys where it has them) for each guided track.
    Returns x [B + G, ...], t [B + G], cond {key: [B + G, ...]} and the guided rows."""
    dev = x.device
    cond = {k: _cat(tracks, k, dev) for k in null}
    g = _guided_rows(tracks)
    if g:
        x, t = torch.cat([x, x[g]]), torch.cat([t, t[g]])
        for k, v in null.items():
            own = [tracks[i].cond.get(NEGATIVE + k) for i in g]
            if all(o is None for o in own):
                uncond = v.to(dev).expand(len(g), *v.shape[1:])
            else:
                uncond = torch.cat([(v if o is None else o).to(dev, v.dtype) for o in own])
            cond[k] = torch.cat([cond[k], uncond])
    return x, t, cond, g


class PriorStage(Stage):
    """Prior: tracks hold normalized image embeddings [1, D]; cond: text_emb [1, D],
    text_enc [1, T, W], mask [1, T]; the stage's `null` holds the same for ""."""

    key = PRIOR

    def __init__(self, stack: UnCLIPStack, null_text: dict):
        super().__init__(stack, stack.cfg.prior.diffusion, stack.prior_schedule)
        self.null = null_text

    def predict(self, x, t, tracks):
        x, t, cond, g = guided_batch(x, t, tracks, self.null)
        return _apply_guidance(self.network(x, t, cond), tracks, g), None

    def network(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """The prior's prediction [B, D] for x [B, D] at t [B] under cond (rows as `guided_batch`'s)."""
        return self.stack.prior(x, t, cond["text_emb"], cond["text_enc"], cond["mask"])


class DecoderStage(Stage):
    """Decoder: tracks hold images [1, 3, S, S]; cond: image_emb [1, D] (raw CLIP space),
    text_emb, text_enc, mask. Unconditional rows use `cf_param` and the encoding of ""."""

    key = DECODER

    def __init__(self, stack: UnCLIPStack, null_text: dict):
        super().__init__(stack, stack.cfg.decoder.diffusion, stack.decoder_schedule)
        self.null = null_text

    def predict(self, x, t, tracks):
        xb, t, cond, g = guided_batch(x, t, tracks, self.null_cond())
        inpaint = self._inpaint(x, tracks)
        if inpaint is not None:
            inpaint = torch.cat([inpaint, inpaint[g]])  # unconditional rows see the same pixels
        pred, var = D.split_output(self.network(xb, t, cond, inpaint), x.shape[1])
        n = len(tracks)
        return _apply_guidance(pred, tracks, g), (None if var is None else var[:n])

    def null_cond(self) -> dict[str, torch.Tensor]:
        """The unconditional rows' conditioning, each [1, ...]."""
        return dict(self.null, image_emb=self.stack.decoder.cf_param[None].float())

    def network(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor],
                inpaint: Optional[torch.Tensor]) -> torch.Tensor:
        """The decoder's output [B, C or 2C, S, S] for x [B, C, S, S] at t [B] under cond."""
        return self.stack.decoder(x, t, cond["image_emb"], cond["text_emb"], cond["text_enc"], cond["mask"],
                                  inpaint=inpaint)

    def _inpaint(self, x: torch.Tensor, tracks: list[Track]) -> Optional[torch.Tensor]:
        """An inpainting decoder's extra input [B, 4, S, S] from each track's constraint
        (zeros for tracks without one); None for a plain decoder or when no track has one."""
        channels = self.stack.cfg.decoder.model.inpaint_channels
        if not channels or all(tr.known is None for tr in tracks):
            return None
        none = x.new_zeros((1, channels) + tuple(x.shape[2:]))
        return torch.cat([none if tr.known is None else inpaint_condition(tr.known.x0.to(x), tr.known.keep.to(x))
                          for tr in tracks])


class UpsamplerStage(Stage):
    """Upsampler i: tracks hold images [1, 3, S, S]; cond: low_res [1, 3, S, S] (the
    previous stage's output resized to S). The t = 0 step may use a separate network."""

    def __init__(self, stack: UnCLIPStack, index: int):
        up = stack.upsamplers[index]
        super().__init__(stack, up.cfg.diffusion, stack.upsampler_schedules[index])
        self.index, self.up = index, up
        self.key = upsampler_key(index)

    def predict(self, x, t, tracks):
        low = _cat(tracks, "low_res", x.device)
        nets = [self.up.unet_for(tr.model_t) for tr in tracks]
        if all(net is nets[0] for net in nets):  # one network for the whole batch: no gather, no scatter
            return D.split_output(nets[0](x, t, low_res=low), x.shape[1])
        out = torch.empty((x.shape[0], self.up.cfg.model.out_channels) + tuple(x.shape[2:]), device=x.device)
        for net in dict.fromkeys(nets):
            ix = torch.tensor([i for i, n in enumerate(nets) if n is net], device=x.device)
            out[ix] = net(x[ix], t[ix], low_res=low[ix])
        return D.split_output(out, x.shape[1])


def _apply_guidance(out: torch.Tensor, tracks: list[Track], guided: list[int]) -> torch.Tensor:
    """out: [B + len(guided), ...] (conditional rows, then unconditional rows of the guided
    tracks) -> guided predictions [B, ...]."""
    n = len(tracks)
    if not guided:
        return out[:n]
    scale = torch.tensor([tracks[i].guidance for i in guided], dtype=torch.float64)
    if len(guided) == n:  # every track guided (the usual batch): no gather, no scatter
        return D.guide(out[:n], out[n:], scale)
    pred = out[:n].clone()
    ix = torch.tensor(guided, device=out.device)
    pred[ix] = D.guide(out[ix], out[n:], scale)
    return pred


def upsample_for(image: torch.Tensor, size: int | Size) -> torch.Tensor:
    """Low-resolution image [B, 3, h, w] in [-1, 1] -> [B, 3, H, W] for size (W, H) or the
    square side, bicubic, antialiased."""
    width, height = as_size(size)
    return F.interpolate(image.clamp(-1, 1), size=(height, width), mode="bicubic", align_corners=False,
                         antialias=True)


def resize(images: torch.Tensor, size: int | Size) -> torch.Tensor:
    """Images [n, 3, h, w] in [-1, 1] -> [n, 3, H, W] for size (W, H) or the square side
    (bicubic, antialiased; no-op at that size)."""
    width, height = as_size(size)
    return images if images.shape[-2:] == (height, width) else upsample_for(images, size)


def group_key(stage: str, track: Track) -> tuple:
    """Tracks batch together only with equal keys: stage, latent shape, conditioning shapes
    (the stage handles each row's sampler, timestep, guidance and eta)."""
    cond = tuple(sorted((k, tuple(v.shape[1:])) for k, v in track.cond.items()))
    return stage, tuple(track.x.shape[1:]), track.x.dtype, cond


def run_to_end(stage: Stage, tracks: list[Track], max_batch: int = 64) -> list[Track]:
    """The direct path: step all tracks together until each is done."""
    while True:
        live = [tr for tr in tracks if not tr.done]
        if not live:
            return tracks
        for i in range(0, len(live), max_batch):
            stage.step(live[i:i + max_batch])
