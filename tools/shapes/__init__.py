"""The procedurally drawn shapes world specified in docs/shapes-world.md.

`world` (vocabularies, palette, `Scene`, sampling), `render` (vectorised anti-aliased
renderer), `captions` (canonical / partial captions and parsing), `judge` (model-free judge
and scoring).
"""

from .captions import all_captions, canonical_caption, caption_for, parse_caption, partial_caption
from .judge import Judgement, check_caption, judge, judge_batch, judge_many, score, score_captions
from .render import render
from .world import (
    ATTRIBUTES,
    COLOURS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    all_scenes,
    random_scene,
    random_scenes,
)

__all__ = [
    "ATTRIBUTES", "COLOURS", "PALETTE", "POSITIONS", "SHAPES", "SIZES", "Judgement", "Scene",
    "all_captions", "all_scenes", "canonical_caption", "caption_for", "check_caption", "judge", "judge_batch",
    "judge_many", "parse_caption", "partial_caption", "random_scene", "random_scenes", "render",
    "score", "score_captions",
]
