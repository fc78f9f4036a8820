"""Which weights of a Hugging Face component folder to load: the plain files or a variant.

A snapshot's component folder (unet/, text_encoder/, ...) may hold its weights plain
(`diffusion_pytorch_model.safetensors`, `model.safetensors`, sharded with an index), as a
variant (`diffusion_pytorch_model.fp16.safetensors`, `model.fp16.safetensors`, shards
`model.fp16-00001-of-00002.safetensors` with `model.safetensors.index.fp16.json`), or both:
the Hub's repos carry both, and `hf download --include "*.fp16.*"` fetches only the variant.

`variant_to_load` picks: the variant of the dtype served (fp16 for float16, bf16 for
bfloat16) where the folder has it (half the bytes to read, the same values once cast);
else the plain files; else the only variant there is (several: fp16 first, then by name).
Pure file names: nothing is read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch

from .checkpoints import MissingWeightsError

STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")  # diffusers' and transformers' names
SUFFIXES = ("safetensors", "bin")
# stem.<variant>.suffix, stem.<variant>-00001-of-00002.suffix, stem.suffix.index.<variant>.json
_VARIANT = re.compile(rf"^(?:{'|'.join(STEMS)})(?:\.(?P<a>\w+)(?:-\d+-of-\d+)?\.(?:{'|'.join(SUFFIXES)})"
                      rf"|\.(?:{'|'.join(SUFFIXES)})\.index\.(?P<b>\w+)\.json)$")
DTYPE_VARIANTS = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def variants(folder: Path) -> set[str]:
    """The weight variants the folder holds (e.g. {"fp16"}; empty for none)."""
    found = (_VARIANT.match(p.name) for p in Path(folder).iterdir() if p.is_file())
    return {m["a"] or m["b"] for m in found if m}


def has_plain_weights(folder: Path) -> bool:
    """Whether the folder holds its weights without a variant (one file or an index of shards)."""
    names = {f"{stem}.{suffix}{index}" for stem in STEMS for suffix in SUFFIXES for index in ("", ".index.json")}
    return any((Path(folder) / name).is_file() for name in names)


def variant_to_load(folder: Path, dtype: torch.dtype) -> Optional[str]:
    """The variant to load a component from (None: the plain files); see the module docstring."""
    found = variants(folder)
    if DTYPE_VARIANTS.get(dtype) in found:
        return DTYPE_VARIANTS[dtype]
    if has_plain_weights(folder) or not found:
        return None
    return min(found, key=lambda v: (v != "fp16", v))


def safetensors_file(folder: Path, stem: str, dtype: torch.dtype) -> Path:
    """The one safetensors file of `stem` to read from folder, plain or `variant_to_load`'s."""
    variant = variant_to_load(folder, dtype)
    return Path(folder) / (f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors")


def from_pretrained(cls: Any, folder: Path, dtype: torch.dtype, **kwargs: Any) -> Any:
    """`cls.from_pretrained(folder)` from local files only, with the weights `variant_to_load`
    picks; a folder without them (or a file that cannot be read) raises MissingWeightsError."""
    variant = variant_to_load(folder, dtype) if Path(folder).is_dir() else None
    try:
        return cls.from_pretrained(folder, local_files_only=True, **({"variant": variant} if variant else {}),
                                   **kwargs)
    except OSError as err:
        raise MissingWeightsError(f"cannot load {cls.__name__} from {folder}: {err}") from None
