"""Each kind of request's plan: its operation and what is known of it before it runs (the
work per stage, the prompts and images CLIP encodes). `PLANS` maps a spec's kind to the
function that builds its plan; the routes (server/api/) and the global queue's worker
(server/claimer.py) both look it up here, so that the replica that runs a stored spec
builds the plan that the accepting one admitted."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

import torch

from pipelines.moderation import screened
from pipelines.operations import (
    DEFAULTS,
    generate,
    inpaint,
    interpolate,
    interpolation_thetas,
    text_diff,
    variations,
    walk,
    walk_keys,
    work,
)
from pipelines.unclip import Operation, Sampling

from ..runtime import Runtime
from .schemas import EditRequest, GenerationRequest, InterpolationRequest, TextDiffRequest, VariationRequest
from .spec import Spec, Target, sampling


@dataclass
class Plan:
    """A spec's operation and what is known of it before it runs."""

    op: Operation
    kind: str
    opts: Sampling  # what the operation samples with (recorded in the images)
    work: dict[str, int]  # track-steps per stage (pipelines.operations.work)
    texts: Sequence[str] = ()  # the prompts (moderation; with the negative one: usage, truncation notice)
    input_images: int = 0  # the images CLIP encodes (usage)
    inputs: tuple[torch.Tensor, ...] = ()  # the uploaded images [1, 3, H, W] uint8 it is made from
    ingredients: tuple[bytes, ...] = ()  # their C2PA ingredient archives, when the server signs
    negative_prompt: Optional[str] = None  # encoded too, but what is not to be drawn: never screened
    keep: Optional[torch.Tensor] = None  # edits: [1, 1, H, W], 1 where the upload's pixels stay as they are

    @property
    def encoded(self) -> list[str]:
        """Every text CLIP encodes: the prompts, then the negative prompt ("" is not encoded)."""
        return [*self.texts, *([self.negative_prompt] if self.negative_prompt else [])]


UPLOADS = ("image", "image0", "image1")  # a spec's tensors that are uploaded images (not masks)


def sampling_for(rt: Runtime, params: Any) -> Sampling:
    """The request's sampling settings, with the moderation screen of the prior's embeddings."""
    screen = rt.moderation.screen(params)
    return replace(sampling(params), screen=screen.prior if screen is not None else None)


def generation_plan(rt: Runtime, params: GenerationRequest, out: Target, tensors: dict[str, torch.Tensor]) -> Plan:
    opts = sampling_for(rt, params)
    if out.fmt.format == "gif":  # the frames of a walk through the prompt's image embeddings
        frames = params.frame_count or DEFAULTS.walk_frames
        op = walk(rt.pipe, params.prompt, frames=frames, seed=out.seed, size=out.size, opts=opts,
                  negative_prompt=params.negative_prompt)
        cost = work(rt.pipe, out.size, opts, images=frames, prior_samples=walk_keys(frames))
    else:
        op = generate(rt.pipe, params.prompt, n=params.n, seed=out.seed, size=out.size, opts=opts,
                      negative_prompt=params.negative_prompt)
        cost = work(rt.pipe, out.size, opts, images=params.n, prior_samples=params.n)
    return Plan(op, "generation", opts, cost, [params.prompt], negative_prompt=params.negative_prompt)


def edit_plan(rt: Runtime, params: EditRequest, out: Target, tensors: dict[str, torch.Tensor]) -> Plan:
    opts, resample = sampling_for(rt, params), params.resample or DEFAULTS.resample
    op = inpaint(rt.pipe, tensors["image"], tensors["keep"], params.prompt, n=params.n,
                 seed=out.seed, size=out.size, resample=resample, opts=opts, negative_prompt=params.negative_prompt)
    cost = work(rt.pipe, out.size, opts, images=params.n, prior_samples=params.n, resample=resample)
    return Plan(op, "edit", opts, cost, [params.prompt], negative_prompt=params.negative_prompt,
                keep=tensors["keep"])


def variation_plan(rt: Runtime, params: VariationRequest, out: Target, tensors: dict[str, torch.Tensor]) -> Plan:
    opts = sampling_for(rt, params)
    op = variations(rt.pipe, tensors["image"], n=params.n, seed=out.seed, size=out.size, eta=params.eta, opts=opts)
    cost = work(rt.pipe, out.size, opts, images=params.n, inversions=1)
    return Plan(op, "variation", opts, cost, input_images=1)


def interpolation_plan(rt: Runtime, params: InterpolationRequest, out: Target,
                       tensors: dict[str, torch.Tensor]) -> Plan:
    thetas = interpolation_thetas(params.thetas, params.frames)
    images = [tensors["image0"], tensors["image1"]] if tensors else None
    prompts = None if images else params.prompt
    opts = sampling_for(rt, params)
    op = interpolate(rt.pipe, images=images, prompts=prompts, thetas=thetas, mode=params.mode, seed=out.seed,
                     size=out.size, opts=opts, negative_prompt=params.negative_prompt)
    cost = work(rt.pipe, out.size, opts, images=len(thetas), prior_samples=0 if images else 2,
                inversions=2 if images else 0)
    return Plan(op, "interpolation", opts, cost, prompts or [], input_images=len(images or []),
                negative_prompt=params.negative_prompt if prompts else None)


def text_diff_plan(rt: Runtime, params: TextDiffRequest, out: Target, tensors: dict[str, torch.Tensor]) -> Plan:
    opts, frames = sampling_for(rt, params), params.frames or DEFAULTS.frames
    op = text_diff(rt.pipe, tensors["image"], params.prompt, params.source_prompt, frames=frames,
                   max_theta=params.max_theta, seed=out.seed, size=out.size, opts=opts,
                   negative_prompt=params.negative_prompt)
    cost = work(rt.pipe, out.size, opts, images=frames, inversions=1)
    texts = [params.prompt, params.source_prompt]
    return Plan(op, "text_diff", opts, cost, texts, input_images=1, negative_prompt=params.negative_prompt)


Builder = Callable[[Runtime, Any, Target, dict[str, torch.Tensor]], Plan]
PLANS: dict[str, Builder] = {"generation": generation_plan, "edit": edit_plan, "variation": variation_plan,
                             "interpolation": interpolation_plan, "text_diff": text_diff_plan}


def plan_of(rt: Runtime, spec: Spec) -> Plan:
    """The spec's plan (operation, work, texts, uploads and their C2PA ingredients), by its
    kind's builder in `PLANS`; with moderation on, its operation screens its prompts and
    uploads first."""
    plan = PLANS[spec.kind](rt, spec.params, spec.out, spec.tensors)
    plan.inputs = tuple(spec.tensors[name] for name in UPLOADS if name in spec.tensors)
    plan.ingredients = spec.ingredients
    plan.op = screened(plan.op, rt.pipe, rt.moderation.screen(spec.params), plan.texts, plan.inputs)
    return plan
