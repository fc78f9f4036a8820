"""The unCLIP pipeline over step-level stages.

Operations are written as generators: they `yield` a `StageRequest` (tracks to run to
completion in one stage) and are resumed when every track is done. `run_direct` drives
one operation alone; the server's engine drives many at once, batching their steps.
The building blocks here (prior sampling with best-of-N, decoding, upsampling, DDIM
inversion) are shared by all operations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterable, Mapping, Optional, Sequence

import torch

from .clip import ClipEncoder, TextEncoding
from .diffusion import q_sample
from .hf_clip import HFClip
from .sampling import (
    DecoderStage,
    Known,
    PriorStage,
    Sampler,
    Stage,
    Track,
    UpsamplerStage,
    group_key,
    inversion_pairs,
    negative_cond,
    preview,
    resize,
    run_to_end,
    upsample_for,
)
from .sizes import Output, SizeLike, SizeRule
from .stack import UnCLIPStack
from .stage_keys import DECODER, PRIOR, upsampler_index, upsampler_key


@dataclass
class StageRequest:
    """Tracks to be run to completion in the stage named `stage`."""

    stage: str
    tracks: list[Track]


Operation = Generator[StageRequest, None, Any]


@dataclass
class Sampling:
    """Per-request sampling settings; None means the stage's configured default."""

    prior_steps: Optional[int] = None
    prior_guidance: Optional[float] = None
    decoder_steps: Optional[int] = None
    decoder_guidance: Optional[float] = None
    upsampler_steps: Optional[int] = None
    best_of: Optional[int] = None
    # Default steps times this, per stage group ("prior", "decoder", "upsampler"; missing: 1),
    # e.g. a quality preset; steps given above win.
    step_scale: dict[str, float] = field(default_factory=dict)
    decoder_sampler: Optional[Sampler] = None  # "ddpm" or "ddim"
    eta: float = 0.0  # DDIM eta when the decoder samples with DDIM
    inversion_refine: int = 2  # fixed-point refinements per DDIM inversion step (0 = plain)
    latents: dict[str, torch.Tensor] = field(default_factory=dict)  # fixed initial noise per stage
    # Called with the image embeddings z [n, D] about to be decoded that the request did not
    # upload (the prior's chosen ones; an interpolation's or a text diff's frames) before any
    # later stage runs; it raises (e.g. pipelines.errors.ContentRefused) to stop the operation.
    screen: Optional[Callable[[torch.Tensor], None]] = None

    def scale(self, stage: str) -> float:
        """The step scale of a stage ("upsampler.1" takes the "upsampler" group's)."""
        return self.step_scale.get(stage.partition(".")[0], 1.0)


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator: noise is drawn on the CPU so results do not depend on the device."""
    return torch.Generator().manual_seed(int(seed) % (2**63))


def child_generator(seed: int, index: int) -> torch.Generator:
    """An independent generator derived from (seed, index), e.g. for best-of candidates."""
    return make_generator((int(seed) * 1_000_003 + 7919 * (index + 1)) % (2**63))


class StagedPipeline:
    """What every model's pipeline shares: its stages by key, the output sizes, per-request
    timesteps and settings, initial noise, and prior sampling with best-of-N. Subclasses
    give the networks (`stages`, `clip`, `invert_image`, `render`, the prior's space)."""

    stages: dict[str, Stage]
    clip: ClipEncoder | HFClip  # the frozen CLIP (open_clip or transformers' towers)
    null_text: dict[str, torch.Tensor]  # the encoding of "" (text_emb, text_enc, mask)

    @property
    def device(self) -> torch.device:
        """Where the networks run."""
        raise NotImplementedError

    # ---- CLIP (usage, truncation notices, encodings) ---------------------------------------

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Each text's tokens as the text encoder counts them (start and end included, before
        truncation: more than `context_length` means the encoder sees it truncated)."""
        return [self.clip.count_tokens(t) for t in texts]

    @property
    def context_length(self) -> int:
        """The text encoder's context: the most tokens of a prompt it sees."""
        return self.clip.context_length

    @property
    def image_tokens(self) -> int:
        """Tokens of one input image: the vision tower's patches plus its class token."""
        return self.clip.image_tokens

    def encode_text(self, texts: list[str]) -> TextEncoding:
        """texts -> pooled [B, D], states [B, T, W], mask [B, T] (fp32)."""
        return self.clip.encode_text(texts)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> CLIP image embeddings [B, D] (the decoder's space)."""
        return self.clip.encode_image(images)

    @property
    def size_rule(self) -> SizeRule:
        """The output sizes the model makes (pipelines/sizes.py)."""
        raise NotImplementedError

    @property
    def prior_dim(self) -> int:
        """Width D of the prior's image embeddings."""
        raise NotImplementedError

    @property
    def default_best_of(self) -> int:
        return 1

    def null_encoding(self) -> TextEncoding:
        """The encoding of the empty caption [1, ...]."""
        n = self.null_text
        return TextEncoding(n["text_emb"], n["text_enc"], n["mask"])

    def negative_encoding(self, prompt: Optional[str]) -> Optional[TextEncoding]:
        """A negative prompt's encoding [1, ...]; None for None or "" (the unconditional
        branch then uses the encoding of "", as without one)."""
        return self.encode_text([prompt]) if prompt else None

    def noise_shape(self, out: Output) -> tuple[int, ...]:
        """The shape [1, ...] of one image's decoder noise x_T for a render ending at `out`."""
        raise NotImplementedError

    def invert_image(
        self, image: torch.Tensor, z: torch.Tensor, opts: Sampling, out: Output
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """DDIM-invert images [n, 3, H, W] in [-1, 1] through the decoder conditioned on their
        own embeddings z [n, D] (and the empty caption): x_T [n, ...] that `render` with
        x_t decodes back to them (a render ending at `out`)."""
        raise NotImplementedError

    def denormalize_image_emb(self, z: torch.Tensor) -> torch.Tensor:
        """The prior's samples [B, D] -> image embeddings [B, D] (the decoder's space)."""
        raise NotImplementedError

    def render_work(self, out: Output, opts: Sampling, resample: int = 1) -> dict[str, int]:
        """Track-steps per image of the stages `render` runs after the decoder, for a render
        ending at `out` (resample: inpainting's repeats of every step)."""
        raise NotImplementedError

    def render(
        self, z: torch.Tensor, text: TextEncoding, gens: list[torch.Generator], opts: Sampling, out: Output,
        x_t: Optional[torch.Tensor] = None, known: Optional[Sequence[Known]] = None,
        negative: Optional[TextEncoding] = None,
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """Image embeddings z [n, D] -> images [n, 3, out.height, out.width] in [-1, 1]. x_t
        [n, ...] (from `invert_image`, or `noise_shape` noise): the decoder starts there and
        runs the invertible timesteps; known[i] (pixels, any size): inpainting constraint of
        image i; negative: a negative prompt for the decoder's unconditional rows, where the
        decoder sees text."""
        raise NotImplementedError

    def output(self, size: SizeLike = None) -> Output:
        """Where a render of `size` ends (None: the model's default); InvalidInput on "size"
        for a size the model does not make."""
        width, height = self.size_rule.check(size)
        return Output(width, height)

    def calibration_output(self, stages: Iterable[str]) -> Output:
        """The cheapest render that runs every stage in `stages` at its serving cost, for
        timing batch sizes (server/engine/batch_caps.py): the default size."""
        return self.output()

    def fingerprint(self) -> dict[str, Any]:
        """What a stage's step time depends on besides the batch (configs, device, dtype),
        not the weights' values: the batch profile cache's key."""
        raise NotImplementedError

    def preview(self, stage: str, tracks: list[Track]) -> torch.Tensor:
        """The images a stage's tracks hold so far [n, 3, H, W] in [-1, 1] (partial images)."""
        return preview(tracks)

    def timesteps(self, key: str, opts: Sampling, invertible: bool = False, steps: Optional[int] = None) -> list[int]:
        """Stage `key`'s respaced timesteps under opts: `steps`, else the steps opts ask of
        that stage, else its default times opts' scale for it (see `Stage.timesteps`)."""
        asked = {PRIOR: opts.prior_steps, DECODER: opts.decoder_steps}.get(key, opts.upsampler_steps)
        return self.stages[key].timesteps(steps or asked, invertible, opts.scale(key))

    def settings_of(self, opts: Sampling) -> dict[str, Any]:
        """The sampling settings `opts` amount to (the stages' defaults, scaled, for what
        opts leave open): steps as respaced, guidance, sampler, best_of."""
        stages = self.stages
        ups = [len(self.timesteps(key, opts)) for key in stages if upsampler_index(key) is not None]
        return {"prior_steps": len(self.timesteps(PRIOR, opts)),
                "prior_guidance": _default(opts.prior_guidance, stages[PRIOR].cfg.guidance),
                "best_of": opts.best_of or self.default_best_of,
                "decoder_steps": len(self.timesteps(DECODER, opts)),
                "decoder_guidance": _default(opts.decoder_guidance, stages[DECODER].cfg.guidance),
                "decoder_sampler": opts.decoder_sampler or stages[DECODER].cfg.sampler,
                "upsampler_steps": ups}

    def sample_prior(
        self, text: TextEncoding, seeds: list[int], gens: list[torch.Generator], opts: Sampling,
        negative: Optional[TextEncoding] = None,
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """One image embedding per generator, each the best of N prior samples by z_i . z_t.

        text: encoding of ONE prompt; negative: a negative prompt's, for the guidance's
        unconditional rows instead of the encoding of "". Returns z_i [n, D] in the decoder's
        (raw CLIP) space, after `opts.screen` (if any) has seen it."""
        stage = self.stages[PRIOR]
        best_of = opts.best_of or self.default_best_of
        pairs = stage.pairs(self.timesteps(PRIOR, opts))
        guidance = _default(opts.prior_guidance, stage.cfg.guidance)
        cond = _text_cond(text) | negative_cond(_text_cond(negative or self.null_encoding()))
        tracks = []
        for i, (seed, gen) in enumerate(zip(seeds, gens)):
            for j in range(best_of):
                g = gen if j == 0 else child_generator(seed, j)
                x = self._init(opts, PRIOR, i * best_of + j, (1, self.prior_dim), g)
                tracks.append(Track(x, list(pairs), "ddpm", guidance=guidance, generator=g, cond=cond))
        yield StageRequest(PRIOR, tracks)
        z = self.denormalize_image_emb(torch.cat([tr.x for tr in tracks]))
        chosen = _best_of(z.view(len(gens), best_of, -1), text.pooled[:1].to(z.device))
        if opts.screen is not None:
            opts.screen(chosen)
        return chosen

    def _init(self, opts: Sampling, stage: str, index: int, shape: tuple, gen: torch.Generator) -> torch.Tensor:
        """Initial noise for one track: fixed by opts.latents, else drawn from gen."""
        fixed = opts.latents.get(stage)
        if fixed is not None:
            return fixed[index:index + 1].float()
        return torch.randn(shape, generator=gen)


class UnCLIP(StagedPipeline):
    """A loaded stack plus its stages and the building blocks of every operation."""

    def __init__(self, stack: UnCLIPStack):
        self.stack = stack
        self.cfg = stack.cfg
        self.clip = stack.clip
        null = self.clip.encode_text([""])
        self.null_text = {"text_emb": null.pooled, "text_enc": null.states, "mask": null.mask}
        stages = [PriorStage(stack, self.null_text), DecoderStage(stack, self.null_text)]
        stages += [UpsamplerStage(stack, i) for i in range(len(stack.upsamplers))]
        self.stages: dict[str, Stage] = {stage.key: stage for stage in stages}

    @property
    def sizes(self) -> tuple[int, ...]:
        """The square sides made: the decoder's, then each upsampler's."""
        return self.cfg.sizes

    @property
    def size_rule(self) -> SizeRule:
        return SizeRule.squares(self.sizes)

    def output(self, size: SizeLike = None) -> Output:
        """A listed square, and the upsamplers that reach it."""
        width, height = self.size_rule.check(size)
        return Output(width, height, self.sizes.index(width))

    def calibration_output(self, stages: Iterable[str]) -> Output:
        """The smallest size whose render runs every stage in `stages` (an upsampler's cost
        does not depend on where the render ends)."""
        last = max((i for i in range(len(self.cfg.upsamplers)) if upsampler_key(i) in stages), default=-1)
        return self.output(self.sizes[last + 1])

    def fingerprint(self) -> dict[str, Any]:
        stack = self.stack
        return {"config": stack.cfg.to_json(), "device": str(stack.device), "dtype": str(stack.dtype),
                "channels_last": stack.channels_last}

    @property
    def prior_dim(self) -> int:
        return self.cfg.prior.model.clip_dim

    @property
    def default_best_of(self) -> int:
        return self.cfg.prior.best_of

    @property
    def device(self) -> torch.device:
        return self.stack.device

    def render_work(self, out: Output, opts: Sampling, resample: int = 1) -> dict[str, int]:
        keys = [upsampler_key(u) for u in range(out.upsamplers)]
        return {key: len(self.timesteps(key, opts)) * resample for key in keys}

    def noise_shape(self, out: Output) -> tuple[int, ...]:
        size = self.cfg.decoder.model.image_size
        return (1, 3, size, size)

    def invert_image(
        self, image: torch.Tensor, z: torch.Tensor, opts: Sampling, out: Output
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """The images at decoder resolution, inverted under their z and the empty caption."""
        return (yield from self.invert(self.to_decoder_size(image), z, self.null_encoding(), opts))

    def denormalize_image_emb(self, z: torch.Tensor) -> torch.Tensor:
        return self.stack.denormalize_image_emb(z.to(self.stack.device))

    def render(
        self, z: torch.Tensor, text: TextEncoding, gens: list[torch.Generator], opts: Sampling, out: Output,
        x_t: Optional[torch.Tensor] = None, known: Optional[Sequence[Known]] = None,
        negative: Optional[TextEncoding] = None,
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """Decode z [n, D], then run the upsamplers that reach `out` (see `decode`, `upsample`)."""
        images = yield from self.decode(z, text, gens, opts, x_t, known, negative)
        return (yield from self.upsample(images, gens, opts, out.upsamplers, known))

    # ---- decoder -------------------------------------------------------------------------

    def decoder_tracks(
        self, z: torch.Tensor, text: TextEncoding, gens: list[torch.Generator], opts: Sampling,
        x_t: Optional[torch.Tensor] = None, known: Optional[Sequence[Known]] = None,
        negative: Optional[TextEncoding] = None,
    ) -> list[Track]:
        """Decoder tracks for image embeddings z [n, D] (text: one row, or n rows).
        x_t [n, 3, S, S] starts them from given latents (inversion) instead of noise;
        known[i] (inpainting, any size) constrains track i; negative (one row): the text of
        the unconditional rows instead of the empty caption's."""
        stage = self.stages[DECODER]
        sampler = opts.decoder_sampler or stage.cfg.sampler
        pairs = stage.pairs(self.timesteps(DECODER, opts, invertible=x_t is not None))
        guidance = _default(opts.decoder_guidance, stage.cfg.guidance)
        size = self.cfg.decoder.model.image_size
        tracks = []
        for i, g in enumerate(gens):
            r = i if text.pooled.shape[0] > 1 else 0
            cond = {"image_emb": z[i:i + 1]} | _text_cond(text[r])
            if negative is not None:
                cond |= negative_cond(_text_cond(negative))
            x = x_t[i:i + 1] if x_t is not None else self._init(opts, DECODER, i, (1, 3, size, size), g)
            k = known[i].at(size) if known else None
            tracks.append(Track(x, list(pairs), sampler, opts.eta, guidance, g, cond, k))
        return tracks

    def decode(
        self, z: torch.Tensor, text: TextEncoding, gens: list[torch.Generator], opts: Sampling,
        x_t: Optional[torch.Tensor] = None, known: Optional[Sequence[Known]] = None,
        negative: Optional[TextEncoding] = None,
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """Decode image embeddings z [n, D] to images [n, 3, S, S] in [-1, 1] (see
        `decoder_tracks` for text, x_t, known and negative)."""
        tracks = self.decoder_tracks(z, text, gens, opts, x_t, known, negative)
        yield StageRequest(DECODER, tracks)
        return torch.cat([tr.x for tr in tracks]).clamp(-1, 1)

    # ---- upsamplers ----------------------------------------------------------------------

    def upsample(
        self, images: torch.Tensor, gens: list[torch.Generator], opts: Sampling, count: int,
        known: Optional[Sequence[Known]] = None,
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """Run the first `count` upsamplers on images [n, 3, s, s]; known[i] (inpainting, any
        size) constrains image i at every stage."""
        for u in range(count):
            stage = self.stages[upsampler_key(u)]
            size = stage.up.cfg.out_size
            low = upsample_for(images, size)
            pairs = stage.pairs(self.timesteps(stage.key, opts))
            tracks = []
            for i, g in enumerate(gens):
                x = self._init(opts, stage.key, i, (1, 3, size, size), g)
                if stage.cfg.start_t:  # SDEdit: the condition noised to the first timestep
                    x = q_sample(stage.schedule, low[i:i + 1], torch.tensor([pairs[0][0]]), x)
                k = known[i].at(size) if known else None
                tracks.append(Track(x, list(pairs), stage.cfg.sampler, generator=g, cond={"low_res": low[i:i + 1]},
                                    known=k))
            yield StageRequest(stage.key, tracks)
            images = torch.cat([tr.x for tr in tracks]).clamp(-1, 1)
        return images

    # ---- inversion -----------------------------------------------------------------------

    def invert(
        self, images: torch.Tensor, z: torch.Tensor, text: TextEncoding, opts: Sampling,
        steps: Optional[int] = None,
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """DDIM-invert decoder-resolution images [n, 3, S, S] conditioned on their own z_i
        [n, D] (and text, one row or n). Returns x_T [n, 3, S, S]."""
        stage = self.stages[DECODER]
        pairs = inversion_pairs(self.timesteps(DECODER, opts, invertible=True, steps=steps))
        guidance = _default(opts.decoder_guidance, stage.cfg.guidance)
        tracks = []
        for i in range(images.shape[0]):
            r = i if text.pooled.shape[0] > 1 else 0
            cond = {"image_emb": z[i:i + 1], "text_emb": text.pooled[r:r + 1], "text_enc": text.states[r:r + 1],
                    "mask": text.mask[r:r + 1]}
            tracks.append(Track(images[i:i + 1].float(), list(pairs), "invert", guidance=guidance, cond=cond,
                                refine=opts.inversion_refine))
        yield StageRequest(DECODER, tracks)
        return torch.cat([tr.x for tr in tracks])

    def to_decoder_size(self, images: torch.Tensor) -> torch.Tensor:
        """Any-size images [n, 3, H, W] in [-1, 1] -> decoder resolution."""
        return resize(images, self.cfg.decoder.model.image_size)


def _text_cond(text: TextEncoding) -> dict[str, torch.Tensor]:
    """The first row of a text encoding as stage conditioning (text_emb, text_enc, mask)."""
    return {"text_emb": text.pooled[:1], "text_enc": text.states[:1], "mask": text.mask[:1]}


def _default(value: Optional[float], default: float) -> float:
    return default if value is None else float(value)


def _best_of(z: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """z: [n, N, D] candidates, z_t: [1, D] -> [n, D] the candidate with the largest z . z_t."""
    scores = (z * z_t[:, None]).sum(-1)
    pick = scores.argmax(dim=1)
    return z[torch.arange(z.shape[0]), pick]


def run_direct(pipe: StagedPipeline, op: Operation, max_batch: int = 64,
               caps: Optional[Mapping[str, int]] = None) -> Any:
    """Drive one operation to its result, running each stage request to completion."""
    return run_many(pipe, [op], max_batch, caps)[0]


def _advance(op: Operation, first: bool) -> tuple[Optional[StageRequest], Any]:
    """(next stage request, None) or (None, the operation's result)."""
    try:
        return (next(op) if first else op.send(None)), None
    except StopIteration as stop:
        return None, stop.value


def run_many(pipe: StagedPipeline, ops: Sequence[Operation], max_batch: int = 64,
             caps: Optional[Mapping[str, int]] = None) -> list[Any]:
    """Drive several operations together (offline evaluation, no server): each round, the
    pending requests' tracks run to completion grouped by `group_key`, so tracks of
    different operations share batches, at most caps[stage] (default max_batch) a call.
    Results in the order of `ops`."""
    caps = caps or {}
    results: list[Any] = [None] * len(ops)
    pending: dict[int, StageRequest] = {}
    for i, op in enumerate(ops):
        request, results[i] = _advance(op, first=True)
        if request is not None:
            pending[i] = request
    while pending:
        groups: dict[tuple, list[Track]] = {}
        for request in pending.values():
            for track in request.tracks:
                groups.setdefault(group_key(request.stage, track), []).append(track)
        for key, tracks in groups.items():
            run_to_end(pipe.stages[key[0]], tracks, caps.get(key[0], max_batch))
        for i in list(pending):
            request, results[i] = _advance(ops[i], first=False)
            if request is None:
                del pending[i]
            else:
                pending[i] = request
    return results
