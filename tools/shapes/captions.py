"""Captions of shapes-world scenes: canonical, partial, and parsing back.

Canonical: `a {size} {colour} {shape} {position phrase} on a {background} background`,
with `an` before a word starting with a vowel (only `orange` in this vocabulary).
A partial caption names any subset of the five attributes in the same order; an omitted
shape becomes the noun `shape` (`a large shape at the top`, or just `a shape`).
"""

from __future__ import annotations

import itertools
import re
from typing import Collection, Optional

import numpy as np

from .world import ATTRIBUTES, COLOURS, POSITION_PHRASES, SHAPES, SIZES, Scene, all_scenes

# Position phrases longest first, so that "at the top left" wins over "at the top".
_PHRASE_TO_POSITION: dict[str, str] = dict(
    sorted(((p, name) for name, p in POSITION_PHRASES.items()), key=lambda kv: -len(kv[0]))
)
_BACKGROUND_RE = re.compile(r"\bon an? (\w+) background\b")


def article(word: str) -> str:
    """`an` before a vowel-initial word, else `a`."""
    return "an" if word[:1] in "aeiou" else "a"


def caption_for(scene: Scene, attributes: Collection[str]) -> str:
    """The caption of `scene` naming exactly `attributes` (a subset of ATTRIBUTES)."""
    unknown = set(attributes) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes: {sorted(unknown)}")
    words = [getattr(scene, a) for a in ("size", "colour") if a in attributes]
    words.append(scene.shape if "shape" in attributes else "shape")
    text = f"{article(words[0])} {' '.join(words)}"
    if "position" in attributes:
        text += f" {POSITION_PHRASES[scene.position]}"
    if "background" in attributes:
        text += f" on {article(scene.background)} {scene.background} background"
    return text


def canonical_caption(scene: Scene) -> str:
    """The canonical caption naming all five attributes."""
    return caption_for(scene, ATTRIBUTES)


def partial_caption(
    scene: Scene, rng: np.random.Generator, attributes: Optional[Collection[str]] = None
) -> str:
    """A caption naming a random subset of the attributes (each kept with probability 1/2,
    so every subset of the 32, the empty one and the full one included, is equally likely),
    or exactly `attributes` when given."""
    if attributes is None:
        keep = rng.random(len(ATTRIBUTES)) < 0.5
        attributes = [a for a, k in zip(ATTRIBUTES, keep) if k]
    return caption_for(scene, attributes)


def all_captions() -> list[str]:
    """Every caption `caption_for` can write (every scene with every subset of the
    attributes: 8,760 distinct texts), sorted; the training's null caption "" is not one."""
    subsets = [s for r in range(len(ATTRIBUTES) + 1) for s in itertools.combinations(ATTRIBUTES, r)]
    return sorted({caption_for(scene, subset) for scene in all_scenes() for subset in subsets})


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption names, e.g. `an orange circle` -> {colour: orange, shape: circle}.

    Lenient: lower-cases, ignores words it does not know, and takes the first value found for
    each attribute. The background is the colour in `on a(n) X background`; the shape colour is
    any other colour word.
    """
    text = " ".join(text.lower().replace(",", " ").replace(".", " ").split())
    found: dict[str, str] = {}
    match = _BACKGROUND_RE.search(text)
    if match and match.group(1) in COLOURS:
        found["background"] = match.group(1)
        text = text[: match.start()] + text[match.end():]
    for phrase, name in _PHRASE_TO_POSITION.items():
        hit = re.search(rf"\b{phrase}\b", text)
        if hit:
            found["position"] = name
            text = text[: hit.start()] + text[hit.end():]
            break
    for word in text.split():
        for attribute, vocab in (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES)):
            if word in vocab:
                found.setdefault(attribute, word)
    return {a: found[a] for a in ATTRIBUTES if a in found}
