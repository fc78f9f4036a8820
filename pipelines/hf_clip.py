"""CLIP from a Hugging Face snapshot (transformers' CLIPTextModelWithProjection, its
tokenizer and, optionally, CLIPVisionModelWithProjection with its CLIPImageProcessor config),
with the encodings unCLIP needs: the same methods as `clip.ClipEncoder` (open_clip), so a
stack or a Kandinsky pipeline uses either.

Text: padded to the tokenizer's model_max_length and truncated, as diffusers' UnCLIPPipeline
and KandinskyV22PriorPipeline encode prompts: pooled = text_embeds (projected),
states = last_hidden_state (after the final layer norm), mask = the attention mask.

The tokenizer is called under a lock: a tokenizers-backed tokenizer sets its padding and
truncation on the shared backend for each call, so the server's token counts (event loop)
and the engine's encodings (engine thread) at once could unpad an encoding.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn

from .clip import TextEncoding
from .errors import InvalidInput, MissingExtra
from .hub_variants import from_pretrained
from .imageprep import ImagePrep


class HFClip(nn.Module):
    """text_encoder, tokenizer; image_encoder (None: a model without image operations) and
    its processor config (preprocessor_config.json as a dict; {}: CLIPImageProcessor's defaults)."""

    def __init__(self, text_encoder: nn.Module, tokenizer: Any, image_encoder: Optional[nn.Module] = None,
                 processor: Optional[Mapping[str, Any]] = None):
        super().__init__()
        self.text_encoder, self.tokenizer, self.image_encoder = text_encoder, tokenizer, image_encoder
        self._tokenizing = threading.Lock()
        self.image_prep = None if image_encoder is None else \
            ImagePrep.from_config(processor or {}, image_encoder.config.image_size)

    @property
    def device(self) -> torch.device:
        return self.text_encoder.device

    @property
    def context_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    def count_tokens(self, text: str) -> int:
        """The text's token ids, start and end included, untruncated."""
        with self._tokenizing:
            return len(self.tokenizer(text, truncation=False).input_ids)

    @property
    def image_tokens(self) -> int:
        """The vision tower's patches plus its class token (0 without one)."""
        if self.image_encoder is None:
            return 0
        cfg = self.image_encoder.config
        return (cfg.image_size // cfg.patch_size) ** 2 + 1

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> TextEncoding:
        """texts -> pooled [B, D], states [B, T, W], mask [B, T] (T = model_max_length), fp32."""
        tok = self.tokenizer
        with self._tokenizing:
            ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt")
        out = self.text_encoder(ids.input_ids.to(self.device))
        return TextEncoding(out.text_embeds.float(), out.last_hidden_state.float(),
                            ids.attention_mask.bool().to(self.device))

    def zero_image(self) -> torch.Tensor:
        """The all-zero vision input [1, 3, R, R] (already normalized: Kandinsky's empty image)."""
        side = self.vision.config.image_size
        return torch.zeros(1, 3, side, side)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> image embeddings [B, D] fp32, preprocessed as the
        snapshot's CLIPImageProcessor would (`ImagePrep`)."""
        if self.image_prep is None:
            raise no_image_encoder()
        return self.encode_normalized(self.image_prep(images.to(self.device)))

    @torch.no_grad()
    def encode_normalized(self, pixels: torch.Tensor) -> torch.Tensor:
        """Vision inputs [B, 3, R, R] (resized and normalized) -> image embeddings [B, D] fp32."""
        enc = self.vision
        return enc(pixels.to(self.device, enc.dtype)).image_embeds.float()

    @property
    def vision(self) -> nn.Module:
        """The image encoder; InvalidInput on "image" for a model without one."""
        if self.image_encoder is None:
            raise no_image_encoder()
        return self.image_encoder


def no_image_encoder() -> InvalidInput:
    return InvalidInput("image", "this model has no CLIP image encoder, so it takes no input images "
                                 "(its folder needs image_encoder/ and feature_extractor/)")


def load_hf_clip(folder: Path, dtype: torch.dtype = torch.float32, vision: str = "image_encoder",
                 processor: str = "feature_extractor") -> HFClip:
    """The CLIP towers of a snapshot folder (text_encoder/, tokenizer/; vision/ and
    processor/preprocessor_config.json where present), on CPU in dtype, local files only."""
    try:
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection
    except ImportError as err:
        raise MissingExtra("a Hugging Face snapshot", "hf", err) from err

    def tower(cls: Any, name: str) -> nn.Module:
        return from_pretrained(cls, folder / name, dtype).to(dtype=dtype).eval().requires_grad_(False)

    image_encoder = tower(CLIPVisionModelWithProjection, vision) if (folder / vision).is_dir() else None
    config = folder / processor / "preprocessor_config.json"
    return HFClip(tower(CLIPTextModelWithProjection, "text_encoder"),
                  from_pretrained(CLIPTokenizer, folder / "tokenizer", dtype), image_encoder,
                  json.loads(config.read_text()) if config.is_file() else {})
