"""What the served model draws, when its directory says so in `world.json` (extension):

    {"world": "shapes", "suggested_size": 256}

- `world`: the name of the world its training data came from; the only one known is
  `shapes` (docs/shapes-world.md: one flat shape on a flat background), whose captions come
  from `tools.shapes`. The model card (`GET /v1/models`) then describes it with example
  prompts, and `GET /v1/models/{id}/random-caption` draws a caption of it. Prompts outside
  it stay allowed: the model just draws what it knows.
- `suggested_size`: the smallest size with the model's full detail (larger ones are that
  image refined, slower and no more detailed); clients such as the playground start there.

Both are optional, as is the file: a model without it is described by its sizes alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from pipelines.sizes import SizeRule
from tools.shapes import ATTRIBUTES, COLOURS, POSITIONS, SHAPES, SIZES, caption_for, random_scene

WORLD_FILE = "world.json"
# The attributes each example prompt names: everything, then shorter prompts the model also knows.
EXAMPLE_ATTRIBUTES = (ATTRIBUTES, ("colour", "shape"), ("size", "colour", "shape", "position"),
                      ("colour", "shape", "background"))
EXAMPLES_SEED = 3


@dataclass(frozen=True)
class World:
    """A world the model was trained on: its name, a sentence for people, example prompts,
    and how to draw a random caption of it."""

    name: str
    description: str
    examples: tuple[str, ...]
    caption: Callable[[np.random.Generator], str]


def either(words: tuple[str, ...]) -> str:
    """("a", "b", "c") -> "a, b or c"."""
    return f"{', '.join(words[:-1])} or {words[-1]}"


def shapes_world() -> World:
    """docs/shapes-world.md, described from `tools.shapes`' own vocabulary."""
    description = (f"This model draws one flat shape ({either(SHAPES)}), {either(SIZES)}, in one of "
                   f"{len(COLOURS)} colours ({', '.join(COLOURS)}), at one of {len(POSITIONS)} positions "
                   f"({POSITIONS[0]} to {POSITIONS[-1]}), on a flat background of another colour. "
                   "Other prompts are allowed, but still give one such shape.")
    rng = np.random.default_rng(EXAMPLES_SEED)
    examples = tuple(caption_for(random_scene(rng), attributes) for attributes in EXAMPLE_ATTRIBUTES)
    return World("shapes", description, examples, lambda gen: caption_for(random_scene(gen), ATTRIBUTES))


WORLDS: dict[str, Callable[[], World]] = {"shapes": shapes_world}


class BadWorld(ValueError):
    """`world.json` names a world this server does not know, or a size the model lacks."""


@dataclass(frozen=True)
class ModelAbout:
    """What `world.json` says: the world (None: not known) and the suggested size (None: not given)."""

    world: Optional[World] = None
    suggested_size: Optional[int] = None


def load_about(model_dir: Path, sizes: SizeRule) -> ModelAbout:
    """The model directory's `world.json` (none: nothing known); BadWorld for a world this
    server does not know or a size the model does not produce."""
    path = Path(model_dir) / WORLD_FILE
    if not path.is_file():
        return ModelAbout()
    data = json.loads(path.read_text())
    name, size = data.get("world"), data.get("suggested_size")
    if name is not None and name not in WORLDS:
        raise BadWorld(f"{path}: unknown world {name!r}; known: {sorted(WORLDS)}")
    if size is not None and not sizes.allows((size, size)):
        raise BadWorld(f"{path}: suggested_size {size} is not a size the model makes. {sizes.describe()}")
    return ModelAbout(WORLDS[name]() if name is not None else None, size)
