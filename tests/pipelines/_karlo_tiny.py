"""A tiny random-weight Karlo snapshot, laid out as kakaobrain/karlo-v1-alpha is on the Hub:
diffusers' UnCLIPPipeline.save_pretrained (prior/, text_encoder/, tokenizer/, text_proj/,
decoder/, super_res_first/, super_res_last/, schedulers, model_index.json) with transformers'
CLIP towers, and optionally image_encoder/ + feature_extractor/ as karlo-v1-alpha-image-variations
adds them. Needs diffusers and transformers; no downloads."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.pipelines._diffusers_ref import build_models, build_schedulers, parity_config, random_parity_stack
from tests.pipelines._kandinsky_tiny import CONTEXT, write_tokenizer


def clip_towers(embed: int, width: int, seed: int) -> tuple:
    """Tiny CLIPTextModelWithProjection (hidden `width`, projection `embed`) and
    CLIPVisionModelWithProjection (32 px, patch 8), seeded."""
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(seed)
    text = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=54, hidden_size=width, projection_dim=embed, intermediate_size=37, num_attention_heads=2,
        num_hidden_layers=2, max_position_embeddings=CONTEXT, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=width, image_size=32, patch_size=8, projection_dim=embed, intermediate_size=37,
        num_attention_heads=2, num_hidden_layers=2))
    return text.eval(), vision.eval()


def write_karlo_snapshot(root: Path, seed: int = 0, image_encoder: bool = True) -> Path:
    """root as a Karlo snapshot of our tiny parity stack's weights (see _diffusers_ref)."""
    from diffusers import UnCLIPPipeline
    from transformers import CLIPImageProcessor

    stack = random_parity_stack(parity_config(), seed)
    cfg = stack.cfg
    text, vision = clip_towers(cfg.prior.model.clip_dim, cfg.clip.text_width, seed)
    tokenizer = write_tokenizer(root.parent / f"{root.name}-vocab")
    UnCLIPPipeline(tokenizer=tokenizer, text_encoder=text, **build_models(stack),
                   **build_schedulers(cfg)).save_pretrained(root)
    if image_encoder:
        vision.save_pretrained(root / "image_encoder")
        CLIPImageProcessor(crop_size=32, size=32).save_pretrained(root / "feature_extractor")
    return root
