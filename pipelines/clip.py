"""The frozen CLIP, through open_clip: text -> (pooled z_t, token states, mask); image -> z_i."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ClipConfig

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# A CLIP state dict may store its token embedding pruned: only the rows of the token ids a
# model ever saw, instead of `token_embedding.weight` [vocab_size, width]. Loading rebuilds
# the full matrix with every dropped row set to one fallback row, the mean of the dropped
# rows, so a token the model never learned maps to an average untrained embedding.
TOKEN_EMBEDDING = "token_embedding.weight"
KEPT_TOKEN_IDS = "token_embedding.kept_ids"  # int64 [K], ascending: the token ids kept
KEPT_TOKEN_ROWS = "token_embedding.kept_rows"  # [K, width]: their rows, in that order
FALLBACK_TOKEN_ROW = "token_embedding.fallback_row"  # [width]: every other token's row


@dataclass
class TextEncoding:
    """pooled: [B, D] (projected EOT state); states: [B, T, W] (ln_final output);
    mask: [B, T] bool, True up to and including EOT."""

    pooled: torch.Tensor
    states: torch.Tensor
    mask: torch.Tensor

    def __getitem__(self, idx: slice | int | torch.Tensor) -> "TextEncoding":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return TextEncoding(self.pooled[idx], self.states[idx], self.mask[idx])

    @staticmethod
    def cat(items: list["TextEncoding"]) -> "TextEncoding":
        return TextEncoding(
            torch.cat([i.pooled for i in items]), torch.cat([i.states for i in items]),
            torch.cat([i.mask for i in items]),
        )


def prune_token_embedding(sd: Mapping[str, torch.Tensor], keep: Iterable[int]) -> dict[str, torch.Tensor]:
    """The state dict with its token embedding stored pruned: the rows of the token ids
    `keep` (KEPT_TOKEN_IDS, KEPT_TOKEN_ROWS) and the mean of all other rows, computed in
    fp64 and stored in the embedding's dtype (FALLBACK_TOKEN_ROW). Other entries unchanged.
    Pruning an expanded state again gives the same tensors: the mean of equal rows is exact
    in fp64 (fewer than 2^29 rows of a 24-bit mantissa sum without rounding)."""
    weight = sd[TOKEN_EMBEDDING]
    ids = torch.tensor(sorted(set(int(i) for i in keep)), dtype=torch.int64)
    if len(ids) == 0 or ids[0] < 0 or ids[-1] >= weight.shape[0]:
        raise ValueError(f"token ids to keep must lie in [0, {weight.shape[0]})")
    dropped = torch.ones(weight.shape[0], dtype=torch.bool)
    dropped[ids] = False
    if not dropped.any():
        raise ValueError("every token is kept: nothing to prune")
    out = {k: v for k, v in sd.items() if k != TOKEN_EMBEDDING}
    out[KEPT_TOKEN_IDS] = ids
    out[KEPT_TOKEN_ROWS] = weight[ids].contiguous()
    out[FALLBACK_TOKEN_ROW] = weight[dropped].double().mean(0).to(weight.dtype).contiguous()
    return out


def expand_token_embedding(sd: Mapping[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """The state dict with a pruned token embedding (see `prune_token_embedding`) rebuilt as
    `token_embedding.weight` [vocab_size, width]: kept rows in place, FALLBACK_TOKEN_ROW
    everywhere else. A state dict with the full matrix is returned unchanged."""
    if KEPT_TOKEN_IDS not in sd:
        return dict(sd)
    if TOKEN_EMBEDDING in sd:
        raise ValueError(f"a state dict holds both {TOKEN_EMBEDDING} and a pruned token embedding")
    ids, rows, fallback = sd[KEPT_TOKEN_IDS].long(), sd[KEPT_TOKEN_ROWS], sd[FALLBACK_TOKEN_ROW]
    if ids.ndim != 1 or rows.shape != (len(ids), fallback.shape[-1]) or fallback.ndim != 1:
        raise ValueError(f"pruned token embedding: ids {tuple(ids.shape)}, rows {tuple(rows.shape)}, "
                         f"fallback {tuple(fallback.shape)} do not fit together")
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size or len(ids.unique()) != len(ids)):
        raise ValueError(f"pruned token embedding: kept ids must be distinct and in [0, {vocab_size})")
    weight = fallback.expand(vocab_size, -1).clone()
    weight[ids] = rows
    out = {k: v for k, v in sd.items() if k not in (KEPT_TOKEN_IDS, KEPT_TOKEN_ROWS, FALLBACK_TOKEN_ROW)}
    out[TOKEN_EMBEDDING] = weight
    return out


def build_open_clip(cfg: ClipConfig) -> nn.Module:
    """Instantiate the open_clip model (random weights) from a built-in name or a custom config."""
    import open_clip

    model_cfg = dict(cfg.model_cfg) if cfg.model_cfg else open_clip.get_model_config(cfg.arch)
    if model_cfg is None:
        raise ValueError(f"open_clip has no architecture {cfg.arch!r} and no custom model_cfg was given")
    model_cfg = dict(model_cfg)
    if cfg.quick_gelu:
        model_cfg["quick_gelu"] = True
    model_cfg.pop("custom_text", None)
    return open_clip.CLIP(**model_cfg)


class ClipEncoder(nn.Module):
    """Adapter over an open_clip CLIP model with the encodings unCLIP needs."""

    def __init__(self, cfg: ClipConfig, model: nn.Module | None = None):
        super().__init__()
        import open_clip

        self.cfg = cfg
        self.model = model if model is not None else build_open_clip(cfg)
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg.context_length)
        self.register_buffer("pixel_mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    @property
    def context_length(self) -> int:
        return self.cfg.context_length

    def count_tokens(self, text: str) -> int:
        """The text's BPE tokens plus start and end: more than `context_length` means the
        encoder sees it truncated."""
        return len(self.tokenizer.encode(text)) + 2

    @property
    def image_tokens(self) -> int:
        """Tokens of one input image: the vision tower's patches plus its class token."""
        grid = getattr(self.model.visual, "grid_size", None)
        return int(grid[0] * grid[1] + 1) if grid else 0

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """texts -> token ids [B, T] (0-padded, EOT kept when truncated)."""
        return self.tokenizer(texts).to(self.device)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> TextEncoding:
        """Pooled embedding, ln_final token states and mask for each text."""
        tokens = self.tokenize(texts)
        m = self.model
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding.to(cast)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))
        eot = tokens.argmax(dim=-1)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = m.text_projection
        pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None] <= eot[:, None]
        return TextEncoding(pooled.float(), x.float(), mask)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """images in [-1, 1], [B, 3, H, W] -> CLIP input [B, 3, S, S] (centre crop, bicubic)."""
        h, w = images.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = images[..., top:top + side, left:left + side]
        size = self.cfg.image_size
        if side != size:
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        x = (x.clamp(-1, 1) + 1) / 2
        return (x - self.pixel_mean) / self.pixel_std

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images in [-1, 1], [B, 3, H, W] -> image embeddings z_i [B, D] (not normalized)."""
        x = self.preprocess(images.to(self.device, torch.float32))
        dtype = next(self.model.visual.parameters()).dtype
        return self.model.encode_image(x.to(dtype)).float()
