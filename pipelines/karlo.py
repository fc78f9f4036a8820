"""Import Karlo v1 alpha's original files (kakaobrain) into our stack.

Karlo ships PyTorch Lightning checkpoints and a stats file:

    prior-ckpt-step=01000000-of-01000000.ckpt   ['state_dict'], keys "model.*"
    decoder-ckpt-step=01000000-of-01000000.ckpt ['state_dict'], keys "model.*"
    improved-sr-ckpt-step=1.2M.ckpt             ['state_dict'], keys "model_first_steps.*"
                                                 (our upsampler "model.*") and
                                                 "model_last_step.*" ("last_step_model.*")
    ViT-L-14_stats.th                           (clip_mean [768], clip_std [768])

plus the CLIP ViT-L/14 weights as an open_clip state dict (`.bin`, `.pt` or `.safetensors`).
Our module trees use Karlo's parameter names, so importing is a prefix rename. Every file is
read safely (`weights_only=True`, memory-mapped); the stack is built on the meta device and
the mmap'd tensors are assigned, so no second copy of the weights is made in host memory.
`import_karlo` + `save_model_dir` make the converter (`python -m tools.convert karlo`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn
from safetensors.torch import load_file

from .checkpoints import (
    MissingWeightsError,
    assign_state,
    build_on_meta,
    materialize_buffers,
    require_file,
    torch_load_state_dict,
)
from .config import StackConfig
from .stack import UnCLIPStack

log = logging.getLogger(__name__)

# Karlo key prefix -> our key prefix, per checkpoint.
PRIOR_PREFIXES = {"model.": ""}
DECODER_PREFIXES = {"model.": ""}
SR_PREFIXES = {"model_first_steps.": "model.", "model_last_step.": "last_step_model."}
# Entries of OpenAI's original CLIP state dicts that are not tensors of the model.
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the module it is loaded into."""


@dataclass(frozen=True)
class KarloFiles:
    """The five files of a Karlo import."""

    prior: Path
    decoder: Path
    sr: Path
    clip: Path
    stats: Path

    def check(self) -> None:
        """Raise MissingWeightsError naming every file that does not exist."""
        missing = [f"{f.name} {getattr(self, f.name)}" for f in fields(self)
                   if not Path(getattr(self, f.name)).is_file()]
        if missing:
            raise MissingWeightsError(f"missing Karlo files: {', '.join(missing)} (weights are never downloaded)")


def rename(sd: Mapping[str, torch.Tensor], prefixes: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Karlo keys -> ours by prefix; keys under none of the prefixes are dropped (logged)."""
    out, dropped = {}, []
    for key, value in sd.items():
        src = next((p for p in prefixes if key.startswith(p)), None)
        if src is None:
            dropped.append(key)
            continue
        out[prefixes[src] + key[len(src):]] = value
    if dropped:
        log.warning("ignored %d keys outside %s, e.g. %s", len(dropped), list(prefixes), dropped[:3])
    return out


def to_karlo(sd: Mapping[str, torch.Tensor], prefixes: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Our keys -> Karlo's (the inverse of `rename`); the longest matching prefix wins."""
    inverse = sorted(((ours, theirs) for theirs, ours in prefixes.items()), key=lambda p: -len(p[0]))
    out = {}
    for key, value in sd.items():
        ours, theirs = next((o, t) for o, t in inverse if key.startswith(o))
        out[theirs + key[len(ours):]] = value
    return out


def read_karlo_ckpt(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A Karlo Lightning checkpoint -> its (mmap'd) `state_dict`."""
    obj = torch_load_state_dict(path, allow_pickle=allow_pickle)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    return _tensor_dict(obj, path)


def read_clip_weights(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """An open_clip CLIP state dict from `.safetensors`, or from a torch file (`.bin`/`.pt`,
    possibly wrapped in {'state_dict': ...}, "module."-prefixed, or OpenAI's TorchScript
    archive when allow_pickle is set)."""
    path = require_file(Path(path), "CLIP weights")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    obj = torch_load_state_dict(path, allow_pickle=allow_pickle)
    if isinstance(obj, nn.Module):  # TorchScript archive (only with allow_pickle)
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    sd = _tensor_dict(obj, path, skip=OPENAI_META_KEYS)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def read_stats(path: Path, dim: int, allow_pickle: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`ViT-L-14_stats.th`: (clip_mean, clip_std) -> two fp32 tensors [dim]."""
    obj = torch_load_state_dict(path, allow_pickle=allow_pickle)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2 or not all(isinstance(t, torch.Tensor) for t in obj):
        raise CheckpointMismatchError(f"{path}: expected a (clip_mean, clip_std) pair of tensors, "
                                      f"got {type(obj).__name__}")
    mean, std = (t.detach().float().reshape(-1).clone() for t in obj)
    if mean.numel() != dim or std.numel() != dim:
        raise CheckpointMismatchError(f"{path}: stats have {mean.numel()} and {std.numel()} values, expected {dim}")
    if not bool((std > 0).all()):
        raise CheckpointMismatchError(f"{path}: clip_std has non-positive entries")
    return mean, std


def _tensor_dict(obj: Any, path: Path, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Check that obj is a mapping of name -> tensor (keys in `skip` are dropped)."""
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(f"{path}: expected a state dict, got {type(obj).__name__}")
    sd = {k: v for k, v in obj.items() if k not in skip}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointMismatchError(f"{path}: non-tensor entries in the state dict, e.g. {bad[:3]}")
    return sd


def check_state_dict(module: nn.Module, sd: Mapping[str, torch.Tensor], path: Path) -> None:
    """Raise CheckpointMismatchError naming the file and the first differing keys/shapes."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(want) - set(sd))
    extra = sorted(set(sd) - set(want))
    shapes = [f"{k}: {tuple(sd[k].shape)} != {want[k]}" for k in want if k in sd and tuple(sd[k].shape) != want[k]]
    if missing or extra or shapes:
        raise CheckpointMismatchError(
            f"{path} does not match {type(module).__name__}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(extra)} unexpected (e.g. {extra[:3]}), {len(shapes)} shape mismatches (e.g. {shapes[:3]})"
        )


def load_into(module: nn.Module, sd: Mapping[str, torch.Tensor], path: Path) -> None:
    """Check, then assign sd (fp32, CPU) to a meta-device module without copying fp32 tensors."""
    check_state_dict(module, sd, path)
    assign_state(module, sd, torch.float32, torch.device("cpu"))


def import_karlo(
    prior_ckpt: Path, decoder_ckpt: Path, sr_ckpt: Path, clip_weights: Path, stats: Path,
    allow_pickle: bool = False, cfg: Optional[StackConfig] = None,
) -> UnCLIPStack:
    """Build our stack (fp32, CPU) from Karlo's files. `cfg` defaults to `StackConfig.karlo()`
    (smaller configs of the same architecture work, e.g. in tests); it must have one upsampler
    with a last-step network. All files are checked to exist before any is read."""
    cfg = cfg or StackConfig.karlo()
    if len(cfg.upsamplers) != 1 or not cfg.upsamplers[0].has_last_step_model:
        raise ValueError("a Karlo import needs exactly one upsampler with a last-step model")
    files = KarloFiles(*(Path(p) for p in (prior_ckpt, decoder_ckpt, sr_ckpt, clip_weights, stats)))
    files.check()
    stack = build_on_meta(cfg)
    for name, path, prefixes in (
        ("prior", files.prior, PRIOR_PREFIXES), ("decoder", files.decoder, DECODER_PREFIXES),
        ("upsamplers.0", files.sr, SR_PREFIXES),
    ):
        load_into(stack.get_submodule(name), rename(read_karlo_ckpt(path, allow_pickle), prefixes), path)
        log.info("imported %s from %s", name, path)
    load_into(stack.clip.model, read_clip_weights(files.clip, allow_pickle), files.clip)
    mean, std = read_stats(files.stats, cfg.prior.model.clip_dim, allow_pickle)
    stack.register_buffer("clip_mean", mean)
    stack.register_buffer("clip_std", std)
    materialize_buffers(stack, torch.device("cpu"))
    return stack.eval().requires_grad_(False)
