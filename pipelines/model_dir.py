"""Which model a folder holds, what it makes, and loading it: the three layouts served as
they are, told apart by their files.

    ours            config.json (StackConfig) + one safetensors file per module (checkpoints.py)
    Karlo snapshot  model_index.json of UnCLIPPipeline (kakaobrain/karlo-v1-alpha): prior/,
                    text_encoder/, tokenizer/, text_proj/, decoder/, super_res_first/,
                    super_res_last/; optionally image_encoder/ and feature_extractor/ (from
                    kakaobrain/karlo-v1-alpha-image-variations) for the image operations
    Kandinsky 2.2   prior/, decoder/ and optionally decoder-inpaint/ snapshots
                    (kandinsky/layout.py)

`describe` reads JSON only (the server knows the model's name, sizes and stages before it
loads a weight); `ModelDir.load` builds the pipeline. The snapshot layouts need diffusers and
transformers (the `hf` extra), imported only when one is loaded.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from .checkpoints import CONFIG_FILE, MissingWeightsError, default_dtype
from .config import StackConfig
from .errors import MissingExtra
from .kandinsky.layout import LayoutError, find_layout, is_kandinsky_dir
from .kandinsky.pipeline import kandinsky_sizes
from .sizes import Size, SizeRule
from .stage_keys import DECODER, MOVQ, PRIOR, upsampler_key
from .unclip import StagedPipeline

Family = Literal["unclip", "karlo-snapshot", "kandinsky-2.2"]
INDEX = "model_index.json"
KARLO_PIPELINE = "UnCLIPPipeline"


class ModelDirError(ValueError):
    """A folder that holds none of the layouts; the message says what was expected."""


@dataclass(frozen=True)
class ModelDir:
    """A model folder as read from its JSON: family, name (the API's model id), the sizes it
    makes, its stage keys, and input_side: the largest side any stage reads an upload at."""

    path: Path
    family: Family
    name: str
    size_rule: SizeRule
    stages: tuple[str, ...]
    input_side: int

    def stages_at(self, size: Size) -> tuple[str, ...]:
        """The stages a generation of `size` runs, in order (unCLIP: the upsamplers up to the
        listed square; a latent model: all of them at every size)."""
        if self.family == "kandinsky-2.2":
            return self.stages
        return self.stages[:2 + self.size_rule.listed.index(size)]

    def load(self, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None,
             channels_last: bool = False) -> StagedPipeline:
        """The pipeline, networks on device in dtype (None: `default_dtype`; channels_last:
        unCLIP's UNets)."""
        from .unclip import UnCLIP

        dtype = dtype or default_dtype(device)
        if self.family == "kandinsky-2.2":
            from .kandinsky.pipeline import Kandinsky

            return Kandinsky.load(self.path, device, dtype).use_channels_last(channels_last).use_attention_backend()
        if self.family == "karlo-snapshot":
            from .diffusers_layout import load_karlo_snapshot

            stack = load_karlo_snapshot(self.path, device, dtype)
        else:
            from .checkpoints import load_model_dir

            stack = load_model_dir(self.path, device, dtype)
        return UnCLIP(stack.use_channels_last(channels_last))


def expected(path: Path) -> str:
    return (f"{path} holds no model: expected our layout ({CONFIG_FILE} and safetensors files), a Karlo "
            f"snapshot ({INDEX} naming {KARLO_PIPELINE}), or a Kandinsky 2.2 folder (prior/ and decoder/ "
            "snapshots, each with its model_index.json); see docs/models.md")


def describe(path: Path) -> ModelDir:
    """The folder's layout, read from its JSON files; ModelDirError if it is none of them."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f"{path} is not a folder: " + expected(path))
    if (path / CONFIG_FILE).is_file():
        return _ours(path)
    if is_kandinsky_dir(path):
        return _needs_hf(_kandinsky(path))
    if (path / INDEX).is_file():
        return _needs_hf(_karlo(path))
    raise ModelDirError(expected(path))


def _needs_hf(model: ModelDir) -> ModelDir:
    """The model, if diffusers and transformers (the `hf` extra) are installed; else MissingExtra."""
    for name in ("diffusers", "transformers"):
        if importlib.util.find_spec(name) is None:
            raise MissingExtra(f"{model.path} ({model.family})", "hf", ModuleNotFoundError(name=name))
    return model


def _ours(path: Path) -> ModelDir:
    cfg = StackConfig.load(path / CONFIG_FILE)
    stages = (PRIOR, DECODER) + tuple(upsampler_key(i) for i in range(len(cfg.upsamplers)))
    return ModelDir(path, "unclip", cfg.name, SizeRule.squares(cfg.sizes), stages,
                    max(max(cfg.sizes), cfg.clip.image_size))


def _kandinsky(path: Path) -> ModelDir:
    try:
        find_layout(path)
    except LayoutError as err:
        raise ModelDirError(str(err)) from err
    unet, movq = _json(path / "decoder/unet/config.json"), _json(path / "decoder/movq/config.json")
    scale = 2 ** (len(movq["block_out_channels"]) - 1)
    rule = kandinsky_sizes((unet.get("sample_size") or 64) * scale, scale)
    vision = _json(path / "prior/image_encoder/config.json")
    return ModelDir(path, "kandinsky-2.2", "kandinsky-2.2", rule, (PRIOR, DECODER, MOVQ),
                    max(rule.max_side, int(vision.get("image_size", 224))))


def _karlo(path: Path) -> ModelDir:
    index = _json(path / INDEX)
    if index.get("_class_name") != KARLO_PIPELINE:
        raise ModelDirError(f"{path / INDEX} names pipeline {index.get('_class_name')!r}: " + expected(path))
    decoder, sr = _json(path / "decoder/config.json"), _json(path / "super_res_first/config.json")
    sizes = (int(decoder["sample_size"]), int(sr["sample_size"]))
    vision = path / "image_encoder/config.json"
    clip_side = int(_json(vision).get("image_size", 224)) if vision.is_file() else 0
    return ModelDir(path, "karlo-snapshot", "karlo-v1-alpha", SizeRule.squares(sizes),
                    (PRIOR, DECODER, upsampler_key(0)), max(max(sizes), clip_side))


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingWeightsError(f"missing {path.name}: {path} does not exist")
    return json.loads(path.read_text())
