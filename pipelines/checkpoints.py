"""Model directories in our layout (JSON config + safetensors) and imports of Karlo's files.

Layout of a model directory:

    stack.json                 StackConfig
    clip.safetensors           open_clip state dict (name set by ClipConfig.weights); its
                               token embedding full or pruned (pipelines.clip: the rows of
                               the tokens the model knows, one fallback row for the rest)
    clip_stats.safetensors     {"mean": [D], "std": [D]}
    prior.safetensors          PriorTransformer
    decoder.safetensors        decoder UNet
    upsampler_{i}.safetensors  upsampler i ("model.*" and, if any, "last_step_model.*")

Loading builds every module on the `meta` device and assigns the tensors read from disk,
so a multi-billion-parameter stack is never held twice in host memory.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .clip import KEPT_TOKEN_IDS, TOKEN_EMBEDDING, expand_token_embedding, prune_token_embedding
from .config import StackConfig
from .stack import UnCLIPStack
from .stage_keys import file_name, upsampler_key

log = logging.getLogger(__name__)

CONFIG_FILE = "stack.json"


class MissingWeightsError(FileNotFoundError):
    """A weights file a model directory needs is not on disk (nothing is ever downloaded)."""


class UnsafeCheckpointError(RuntimeError):
    """A pickle checkpoint that `torch.load(weights_only=True)` refuses."""


def module_files(cfg: StackConfig) -> dict[str, str]:
    """Submodule name of UnCLIPStack -> file name in the model directory."""
    files = {"clip.model": cfg.clip.weights, "prior": "prior.safetensors", "decoder": "decoder.safetensors"}
    for i in range(len(cfg.upsamplers)):
        files[f"upsamplers.{i}"] = f"{file_name(upsampler_key(i))}.safetensors"
    return files


def require_file(path: Path, what: str) -> Path:
    """Return path, or raise MissingWeightsError naming it."""
    if not Path(path).is_file():
        raise MissingWeightsError(f"missing {what}: {path} does not exist (weights are never downloaded at run time)")
    return Path(path)


def save_model_dir(stack: UnCLIPStack, path: Path, dtype: Optional[torch.dtype] = None,
                   keep_token_ids: Optional[Iterable[int]] = None) -> None:
    """Write stack.json and one safetensors file per module (optionally cast, e.g. fp16).
    With keep_token_ids, CLIP's token embedding is stored pruned to those tokens' rows
    (`pipelines.clip.prune_token_embedding`); else in full."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    stack.cfg.save(path / CONFIG_FILE)
    for name, fname in module_files(stack.cfg).items():
        sd = _cast(stack.get_submodule(name).state_dict(), dtype)
        if name == "clip.model" and keep_token_ids is not None:
            sd = prune_token_embedding(sd, keep_token_ids)
        _save(sd, path / fname)
    if stack.cfg.clip.stats:
        stats = {"mean": stack.clip_mean, "std": stack.clip_std}
        _save(_cast(stats, torch.float32), path / stack.cfg.clip.stats)


def _save(tensors: dict[str, torch.Tensor], file: Path) -> None:
    """save_file, then world-readable (0644): safetensors writes 0600, which a server
    running as another user (a container's non-root user) could not read."""
    save_file(tensors, str(file))
    os.chmod(file, 0o644)


def _cast(sd: Mapping[str, torch.Tensor], dtype: Optional[torch.dtype]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    return out


def read_weights(file: Path, module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of `module` (it may be on the meta device) stored in a safetensors
    file: a CLIP token embedding stored pruned comes back as the full matrix the module
    has, every dropped row the stored fallback row (`pipelines.clip.expand_token_embedding`)."""
    sd = load_file(str(file))
    if KEPT_TOKEN_IDS in sd:
        weight = dict(module.named_parameters()).get(TOKEN_EMBEDDING)
        if weight is None:
            raise ValueError(f"{file} holds a pruned token embedding, but its module has no {TOKEN_EMBEDDING}")
        sd = expand_token_embedding(sd, weight.shape[0])
    return sd


def build_on_meta(cfg: StackConfig) -> UnCLIPStack:
    """The stack with parameters on the meta device (no memory)."""
    with torch.device("meta"):
        return UnCLIPStack(cfg)


def assign_state(module: nn.Module, sd: Mapping[str, torch.Tensor], dtype: torch.dtype, device: torch.device) -> None:
    """load_state_dict(strict=True, assign=True) after moving floating tensors to dtype/device."""
    moved = {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)) for k, v in sd.items()}
    module.load_state_dict(moved, strict=True, assign=True)


def materialize_buffers(stack: UnCLIPStack, device: torch.device) -> None:
    """Rebuild the non-persistent buffers that meta-device construction left empty."""
    for module in stack.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                module.register_buffer(name, _rebuild_buffer(module, name, buf, device), persistent=False)


def _rebuild_buffer(module: nn.Module, name: str, buf: torch.Tensor, device: torch.device) -> torch.Tensor:
    from .clip import OPENAI_MEAN, OPENAI_STD

    if name == "causal_mask":
        n = buf.shape[0]
        return torch.full((n, n), float("-inf"), device=device).triu_(1)
    if name in ("pixel_mean", "pixel_std"):
        vals = OPENAI_MEAN if name == "pixel_mean" else OPENAI_STD
        return torch.tensor(vals, device=device).view(1, 3, 1, 1)
    if name == "attn_mask":  # open_clip's causal text mask
        n = buf.shape[0]
        return torch.full((n, n), float("-inf"), device=device).triu_(1)
    raise RuntimeError(f"cannot rebuild buffer {name!r} of {type(module).__name__}")


def dtype_named(name: str) -> Optional[torch.dtype]:
    """A dtype by its name in DTYPE_NAMES (pipelines/dtypes.py); "auto" gives None, which lets `load_model_dir`
    pick `default_dtype`."""
    return None if name == "auto" else getattr(torch, name)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 dot products natively (AVX512-BF16 or AMX tiles)."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                       "_is_amx_tile_supported"))


def default_dtype(device: str | torch.device) -> torch.dtype:
    """The networks' dtype when none is asked for: fp16 on CUDA; on a CPU, bf16 where it
    has native bf16 dot products (oneDNN then runs the convolutions and matmuls in bf16 with
    fp32 accumulation: 1.2-1.5x a generation of the shipped model on an AVX512-BF16 CPU, at
    equal attribute accuracy; see docs/benchmarks.md, "Precision"), else fp32. Sampler state stays fp32 either way:
    the networks cast their inputs and return fp32."""
    if torch.device(device).type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def load_model_dir(path: Path, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None) -> UnCLIPStack:
    """Build the stack of a model directory, its networks in dtype (default `default_dtype`)."""
    path, device = Path(path), torch.device(device)
    dtype = dtype or default_dtype(device)
    cfg = StackConfig.load(require_file(path / CONFIG_FILE, "model config"))
    stack = build_on_meta(cfg)
    for name, fname in module_files(cfg).items():
        module = stack.get_submodule(name)
        assign_state(module, read_weights(require_file(path / fname, f"weights of {name}"), module), dtype, device)
    _load_stats(stack, path, device)
    materialize_buffers(stack, device)
    log.info("loaded model %s from %s (%s, %s)", cfg.name, path, device, dtype)
    return stack.eval().requires_grad_(False)


def _load_stats(stack: UnCLIPStack, path: Path, device: torch.device) -> None:
    dim = stack.cfg.prior.model.clip_dim
    stats = {"mean": torch.zeros(dim), "std": torch.ones(dim)}
    if stack.cfg.clip.stats:
        stats = load_file(str(require_file(path / stack.cfg.clip.stats, "CLIP embedding statistics")))
    stack.register_buffer("clip_mean", stats["mean"].float().to(device))
    stack.register_buffer("clip_std", stats["std"].float().to(device))


def random_stack(cfg: StackConfig, seed: int = 0) -> UnCLIPStack:
    """A stack with seeded random weights (tests, benchmarks)."""
    torch.manual_seed(seed)
    return UnCLIPStack(cfg).eval().requires_grad_(False)


def torch_load_state_dict(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a `.ckpt`/`.pt`/`.th` file safely (weights_only, mmap); unsafe unpickling only
    with allow_pickle=True."""
    path = require_file(Path(path), "checkpoint")
    mmap = zipfile.is_zipfile(path)  # files in torch's pre-1.6 format cannot be memory-mapped
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError or RuntimeError
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"{path} cannot be read with weights_only=True ({err}). If you trust this file, "
                "opt in with allow_pickle=True (converter flag --allow-pickle)."
            ) from err
        obj = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    return obj

