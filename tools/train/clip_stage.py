"""Stage 1: contrastive training of the custom open_clip model on rendered scenes.

Captions are canonical or partial. A partial caption ("a red circle") describes several
images of a batch, so the loss is contrastive with several positives: caption i's target
is spread uniformly over every image it describes (and image j's over every caption that
describes it), instead of penalising true matches as negatives.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.clip import ClipEncoder
from tools.shapes import ATTRIBUTES, COLOURS, POSITIONS, SHAPES, SIZES, Scene, canonical_caption, random_scenes, render

from .data import compatibility, images_to_tensor, sample_batch
from .loop import Task, seed_modules
from .run import Run

VOCABS = {"shape": SHAPES, "colour": COLOURS, "background": COLOURS, "size": SIZES, "position": POSITIONS}


def multi_positive_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss. logits: [B texts, B images]; positives: [B, B] bool
    (caption i describes image j), True on the diagonal."""
    pos = positives.to(logits.dtype)
    text_side = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    image_side = -(pos.T / pos.T.sum(1, keepdim=True) * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (text_side + image_side)


def alternatives(scene: Scene, attribute: str) -> list[Scene]:
    """The scene with `attribute` set to each valid value (the scene itself included)."""
    out = []
    for value in VOCABS[attribute]:
        try:
            out.append(dataclasses.replace(scene, **{attribute: value}))
        except ValueError:  # shape colour equal to the background
            continue
    return out


@torch.no_grad()
def text_embeddings(encoder: ClipEncoder, texts: list[str], chunk: int = 1024) -> dict[str, torch.Tensor]:
    """Normalized pooled embeddings of distinct texts: {text: [D]}."""
    unique = sorted(set(texts))
    z = torch.cat([encoder.encode_text(unique[i:i + chunk]).pooled for i in range(0, len(unique), chunk)])
    return dict(zip(unique, F.normalize(z, dim=-1)))


@torch.no_grad()
def zero_shot(encoder: ClipEncoder, n: int, seed: int) -> dict[str, float]:
    """Zero-shot attribute accuracy on n jittered scenes: for each attribute, is the scene's
    canonical caption closer to its image than the captions with that attribute changed?
    Returns {"zs_<attribute>": accuracy, "zs_all": all five right}."""
    rng = np.random.default_rng([seed, zlib.crc32(b"clip_probe")])
    scenes = random_scenes(n, rng)
    images = images_to_tensor(render(scenes, encoder.cfg.image_size, rng=rng, jitter=True))
    z_img = F.normalize(encoder.encode_image(images.to(encoder.device)), dim=-1)
    options = {(i, a): alternatives(s, a) for i, s in enumerate(scenes) for a in ATTRIBUTES}
    z_txt = text_embeddings(encoder, [canonical_caption(s) for opts in options.values() for s in opts])
    right = np.ones((n, len(ATTRIBUTES)), dtype=bool)
    for (i, a), opts in options.items():
        z = torch.stack([z_txt[canonical_caption(s)] for s in opts])
        right[i, ATTRIBUTES.index(a)] = opts[int((z @ z_img[i]).argmax())] == scenes[i]
    acc = {f"zs_{a}": float(right[:, k].mean()) for k, a in enumerate(ATTRIBUTES)}
    acc["zs_all"] = float(right.all(1).mean())
    return acc


class ClipTask(Task):
    """The open_clip model of the stack's ClipConfig, trained from scratch."""

    def __init__(self, run: Run, device: torch.device):
        self.name, self.hp, self.seed, self.device = "clip", run.config.clip, run.config.seed, device
        seed_modules(self.seed, self.name)
        self.encoder = ClipEncoder(run.config.stack.clip).to(device)
        self.module = self.encoder.model

    def loss(self, rng: np.random.Generator, gen: torch.Generator, batch: int) -> torch.Tensor:
        b = sample_batch(rng, batch, self.hp.p_canonical)
        images = self.encoder.preprocess(b.images(self.encoder.cfg.image_size).to(self.device))
        m = self.module
        z_img = F.normalize(m.encode_image(images), dim=-1)
        z_txt = F.normalize(m.encode_text(self.encoder.tokenize(b.captions)), dim=-1)
        logits = m.logit_scale.exp().clamp(max=100.0) * z_txt @ z_img.T
        return multi_positive_loss(logits.float(), compatibility(b).to(self.device))

    def probe(self, step: int) -> dict[str, float]:
        every, n = self.hp.probe_every, self.hp.probe_images
        if n <= 0 or not ((every and step % every == 0) or step == self.hp.steps):
            return {}
        self.module.eval()
        try:
            return zero_shot(self.encoder, n, self.seed)
        finally:
            self.module.train()


def build(run: Run, device: torch.device, force: bool = False) -> ClipTask:
    """The CLIP stage (it depends on no other stage; `force` is accepted for symmetry)."""
    return ClipTask(run, device)
