"""Which diffusers snapshots a Kandinsky 2.2 model folder holds, read from their model_index.json.

    <model>/prior/            kandinsky-community/kandinsky-2-2-prior (KandinskyV22PriorPipeline)
    <model>/decoder/          kandinsky-community/kandinsky-2-2-decoder (KandinskyV22Pipeline)
    <model>/decoder-inpaint/  optional: kandinsky-2-2-decoder-inpaint (KandinskyV22InpaintPipeline)

Pure JSON: nothing here imports diffusers or transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

INDEX = "model_index.json"


@dataclass(frozen=True)
class Snapshot:
    """One expected snapshot: its pipeline class and, per component folder, the classes
    model_index.json may name for it (library, class)."""

    pipeline: str
    components: dict[str, tuple[tuple[str, str], ...]]


_UNET = (("diffusers", "UNet2DConditionModel"),)
_MOVQ = (("diffusers", "VQModel"),)
_DECODER_SCHEDULER = (("diffusers", "DDPMScheduler"),)

SNAPSHOTS: dict[str, Snapshot] = {
    "prior": Snapshot("KandinskyV22PriorPipeline", {
        "prior": (("diffusers", "PriorTransformer"),),
        "text_encoder": (("transformers", "CLIPTextModelWithProjection"),),
        "tokenizer": (("transformers", "CLIPTokenizer"), ("transformers", "CLIPTokenizerFast")),
        "image_encoder": (("transformers", "CLIPVisionModelWithProjection"),),
        "scheduler": (("diffusers", "UnCLIPScheduler"),),
    }),
    "decoder": Snapshot("KandinskyV22Pipeline", {"unet": _UNET, "scheduler": _DECODER_SCHEDULER, "movq": _MOVQ}),
    "decoder-inpaint": Snapshot("KandinskyV22InpaintPipeline",
                                {"unet": _UNET, "scheduler": _DECODER_SCHEDULER, "movq": _MOVQ}),
}
REQUIRED = ("prior", "decoder")


class LayoutError(ValueError):
    """A folder that is not a Kandinsky 2.2 model folder; the message says what was expected."""


@dataclass(frozen=True)
class KandinskyLayout:
    """The snapshots of a model folder: component name -> (library, class) for each."""

    root: Path
    classes: dict[str, dict[str, tuple[str, str]]]

    def folder(self, snapshot: str) -> Path:
        return self.root / snapshot

    @property
    def has_inpaint(self) -> bool:
        return "decoder-inpaint" in self.classes


def expected() -> str:
    """The layout, in words, for error messages."""
    parts = [f"{name}/ ({SNAPSHOTS[name].pipeline}: {', '.join(SNAPSHOTS[name].components)})" for name in SNAPSHOTS]
    return ("a Kandinsky 2.2 model folder with subfolders " + "; ".join(parts)
            + ", each with its model_index.json (decoder-inpaint/ optional)")


def is_kandinsky_dir(path: Path) -> bool:
    """Whether path looks like a Kandinsky model folder (its prior/ has a model_index.json)."""
    return (Path(path) / "prior" / INDEX).is_file()


def find_layout(path: Path) -> KandinskyLayout:
    """Read and check every snapshot's model_index.json; raise LayoutError naming what
    was expected and what was found instead."""
    root = Path(path)
    return KandinskyLayout(root, {name: found for name in SNAPSHOTS if (found := _read(root, name)) is not None})


def _read(root: Path, name: str) -> Optional[dict[str, tuple[str, str]]]:
    """Component classes of snapshot `name`, None for a missing optional one."""
    index = root / name / INDEX
    if not index.is_file():
        if name in REQUIRED:
            raise LayoutError(f"{root} is not {expected()}: {index} does not exist")
        return None
    data = json.loads(index.read_text())
    want = SNAPSHOTS[name]
    if data.get("_class_name") != want.pipeline:
        raise LayoutError(f"{index} names pipeline {data.get('_class_name')!r}, expected {want.pipeline!r} "
                          f"({expected()})")
    out = {}
    for component, allowed in want.components.items():
        entry = tuple(data.get(component) or ())
        if entry not in allowed:
            raise LayoutError(f"{index}: component {component!r} is {list(entry) or 'missing'}, expected one of "
                              f"{[list(a) for a in allowed]}")
        out[component] = entry
    return out
