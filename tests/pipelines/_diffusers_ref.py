"""diffusers' UnCLIPPipeline as the reference implementation, built from OUR stack's weights
(through `pipelines.diffusers_layout`), with our CLIP text encodings on both sides.

Used by tests/pipelines/test_diffusers_parity.py and bench/pipeline.py (test-only: nothing
in pipelines/ imports diffusers).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any, Optional

import torch
import torch.nn as nn

from pipelines.checkpoints import random_stack
from pipelines.clip import ClipEncoder, TextEncoding
from pipelines.config import StackConfig
from pipelines.diffusers_layout import diffusers_model_configs, ours_to_diffusers, stack_state_dicts
from pipelines.stack import UnCLIPStack

SCHEDULERS = ("prior_scheduler", "decoder_scheduler", "super_res_scheduler")


def parity_config(prior_clip: float = 10.0) -> StackConfig:
    """StackConfig.tiny() (head dim 16, 8 norm groups) with the prior's x0 clamp set
    explicitly (Karlo: 10; diffusers' Karlo scheduler config: 5) — both sides get this one."""
    cfg = StackConfig.tiny()
    prior = replace(cfg.prior, diffusion=replace(cfg.prior.diffusion, clip_x0=prior_clip))
    return replace(cfg, prior=prior)


def random_parity_stack(cfg: StackConfig, seed: int = 0) -> UnCLIPStack:
    """Seeded random weights plus non-trivial CLIP statistics (mean [D], std [D])."""
    stack = random_stack(cfg, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    dim = cfg.prior.model.clip_dim
    stack.clip_mean = 0.1 * torch.randn(dim, generator=gen)
    stack.clip_std = 0.5 + torch.rand(dim, generator=gen)
    return stack


class OpenClipTextStub:
    """Stands in for diffusers' CLIPTokenizer and CLIPTextModelWithProjection with OUR CLIP
    adapter, so the pipeline's own encoding of "" (guidance) equals ours.

    The tokenizer call records our encoding of each text under its token ids; the text
    encoder call returns the recorded encodings for the ids it is given."""

    def __init__(self, clip: ClipEncoder):
        self.clip = clip
        self.model_max_length = clip.cfg.context_length
        self._cache: dict[tuple[int, ...], TextEncoding] = {}

    def tokenize(self, texts: Any, **_: Any) -> SimpleNamespace:
        """texts -> input_ids [B, T], attention_mask [B, T] (True up to and including EOT)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = self.clip.encode_text(texts)
        ids = self.clip.tokenize(texts).cpu()
        for row, text_ids in enumerate(ids):
            self._cache[tuple(text_ids.tolist())] = enc[row]
        return SimpleNamespace(input_ids=ids, attention_mask=enc.mask.long().cpu())

    def encode(self, input_ids: torch.Tensor) -> SimpleNamespace:
        """input_ids [B, T] -> text_embeds [B, D] (pooled), last_hidden_state [B, T, W]."""
        enc = TextEncoding.cat([self._cache[tuple(r.tolist())] for r in input_ids.cpu()])
        return SimpleNamespace(text_embeds=enc.pooled, last_hidden_state=enc.states)


class _Tokenizer:
    def __init__(self, stub: OpenClipTextStub):
        self.stub, self.model_max_length = stub, stub.model_max_length

    def __call__(self, texts: Any, **kw: Any) -> SimpleNamespace:
        return self.stub.tokenize(texts, **kw)


class _TextEncoder(nn.Module):
    """An nn.Module without parameters (the pipeline asks its components for device/dtype)."""

    def __init__(self, stub: OpenClipTextStub):
        super().__init__()
        self.stub = stub

    @property
    def device(self) -> torch.device:
        return self.stub.clip.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return self.stub.encode(input_ids)


class RecordingScheduler:
    """Wraps an UnCLIPScheduler, keeping the sample after each `step` (samples[-1] is the
    stage's final output)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.samples: list[torch.Tensor] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def step(self, *args: Any, **kw: Any) -> Any:
        out = self.inner.step(*args, **kw)
        self.samples.append(out.prev_sample.clone())
        return out


def build_models(stack: UnCLIPStack) -> dict[str, nn.Module]:
    """The five diffusers models with our stack's weights (strict loads), fp32, eval."""
    from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    classes = {"prior": PriorTransformer, "decoder": UNet2DConditionModel, "text_proj": UnCLIPTextProjModel,
               "super_res_first": UNet2DModel, "super_res_last": UNet2DModel}
    configs = diffusers_model_configs(stack.cfg)
    sds = ours_to_diffusers(stack_state_dicts(stack), stack.cfg)
    models = {}
    for name, cls in classes.items():
        model = cls(**configs[name])
        model.load_state_dict({k: v.float() for k, v in sds[name].items()}, strict=True)
        models[name] = model.eval().requires_grad_(False)
    return models


def build_schedulers(cfg: StackConfig) -> dict[str, Any]:
    from diffusers import UnCLIPScheduler

    configs = diffusers_model_configs(cfg)
    return {name: UnCLIPScheduler(**configs[name]) for name in SCHEDULERS}


def use_float64_tables(scheduler: Any, alphas_cumprod: torch.Tensor) -> None:
    """Give an UnCLIPScheduler float64 noise tables (alphas_cumprod [T] fp64), as Karlo's
    (numpy float64) and ours are. Its stock tables are float32, and `step` then computes
    1 - alphas_cumprod[0] by cancellation (relative error ~1e-3 at t = 0) and the t = 999
    coefficients with ~1e-4 error: a discrepancy of diffusers, not of the models."""
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    scheduler.alphas_cumprod = alphas_cumprod.clone()
    scheduler.alphas = alphas_cumprod / prev
    scheduler.betas = 1 - scheduler.alphas
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)


def build_pipeline(stack: UnCLIPStack, record: bool = False, float64_tables: bool = False) -> Any:
    """diffusers' UnCLIPPipeline over our stack's weights and our CLIP text encoder.
    float64_tables: see `use_float64_tables` (tables from our schedules, which the tests
    check against diffusers' own). record=True wraps the schedulers in RecordingScheduler
    (after construction, so the pipeline's registry keeps the real scheduler classes)."""
    from diffusers import UnCLIPPipeline

    stub = OpenClipTextStub(stack.clip)
    pipe = UnCLIPPipeline(tokenizer=_Tokenizer(stub), text_encoder=_TextEncoder(stub),
                          **build_models(stack), **build_schedulers(stack.cfg))
    pipe.set_progress_bar_config(disable=True)
    schedules = (stack.prior_schedule, stack.decoder_schedule, stack.upsampler_schedules[0])
    for name, schedule in zip(SCHEDULERS, schedules):
        if float64_tables:
            use_float64_tables(getattr(pipe, name), schedule.alphas_cumprod)
        if record:
            object.__setattr__(pipe, name, RecordingScheduler(getattr(pipe, name)))
    return pipe


@dataclass
class Latents:
    """Initial noise of each stage for n images: prior [n, D], decoder [n, 3, S, S],
    super-res [n, 3, S', S']."""

    prior: torch.Tensor
    decoder: torch.Tensor
    super_res: torch.Tensor

    @classmethod
    def draw(cls, cfg: StackConfig, n: int, seed: int) -> "Latents":
        gen = torch.Generator().manual_seed(seed)
        d, s = cfg.decoder.model.image_size, cfg.upsamplers[0].out_size
        return cls(torch.randn(n, cfg.prior.model.clip_dim, generator=gen),
                   torch.randn(n, 3, d, d, generator=gen), torch.randn(n, 3, s, s, generator=gen))

    def ours(self) -> dict[str, torch.Tensor]:
        """As `Sampling.latents` (best_of=1)."""
        return {"prior": self.prior, "decoder": self.decoder, "upsampler.0": self.super_res}

    def theirs(self) -> dict[str, torch.Tensor]:
        """As UnCLIPPipeline keyword arguments."""
        return {"prior_latents": self.prior, "decoder_latents": self.decoder, "super_res_latents": self.super_res}


def run_reference(
    pipe: Any, text: TextEncoding, latents: Optional[Latents], seed: int, steps: tuple[int, int, int],
    guidance: tuple[float, float],
) -> dict[str, torch.Tensor]:
    """One diffusers generation of text [n rows] -> images [n, 3, S', S'] in [-1, 1]; when
    the schedulers record, also the prior's image embeddings [n, D] and the decoder's
    images [n, 3, S, S] in [-1, 1]."""
    out = pipe(
        text_model_output=(text.pooled, text.states), text_attention_mask=text.mask,
        prior_num_inference_steps=steps[0], decoder_num_inference_steps=steps[1],
        super_res_num_inference_steps=steps[2], prior_guidance_scale=guidance[0],
        decoder_guidance_scale=guidance[1], generator=torch.Generator().manual_seed(seed),
        output_type="pt", **(latents.theirs() if latents is not None else {}),
    )
    images = out.images if isinstance(out.images, torch.Tensor) else torch.as_tensor(out.images)
    images = images.permute(0, 3, 1, 2) if images.shape[-1] == 3 else images
    result = {"images": images * 2 - 1}
    if isinstance(pipe.prior_scheduler, RecordingScheduler):
        result["image_emb"] = pipe.prior.post_process_latents(pipe.prior_scheduler.samples[-1])
        result["decoder"] = pipe.decoder_scheduler.samples[-1].clamp(-1, 1)
    return result
