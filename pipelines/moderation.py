"""Moderation in CLIP space: a request is refused when an embedding of it lies closer to a
blocked concept than that concept's threshold (cosine similarity).

Concepts are texts, encoded once with the served model's own CLIP text encoder. Three
embeddings of a request are compared with them, at three stages:

- "prompt": the prompt's text embedding (text against text), before anything runs;
- "prior": the prior's chosen image embeddings z_i, and the frames' of an interpolation or
  a text diff (image against text), before any decoder step (through `Sampling.screen`);
- "upload": an uploaded image's CLIP embedding (image against text), before anything runs.

Text against text and image against text cosines live on different scales (CLIP puts a
caption nearer to other captions than to any image), so each concept has two thresholds:
`threshold` for image embeddings and `prompt_threshold` for prompts. A margin (the
request's `moderation=low`) raises both.

The file of concepts holds one per line: `text`, optionally a tab and its threshold, and
optionally another tab and its prompt threshold; blank lines and lines starting with `#`
are skipped. Defaults were calibrated on the shipped shapes model by bench/moderation.py
(docs/trust.md); another model needs its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator, Optional, Sequence

import torch

from .errors import ContentRefused
from .imageio import as_float
from .unclip import StagedPipeline, StageRequest
from .vectors import normalize

DEFAULT_THRESHOLD = 0.40  # image embedding vs concept text (prior, uploads)
DEFAULT_PROMPT_THRESHOLD = 0.80  # prompt text vs concept text
LOW_MARGIN = 0.05  # moderation=low: every threshold raised by this much
STAGES = ("prompt", "prior", "upload")
MESSAGES = {
    "prompt": "Your request was refused by this server's moderation: the prompt is too close to a blocked concept.",
    "prior": "Your request was refused by this server's moderation: the image it describes is too close to a "
             "blocked concept.",
    "upload": "Your request was refused by this server's moderation: an uploaded image is too close to a blocked "
              "concept.",
}
PARAMS = {"prompt": "prompt", "prior": "prompt", "upload": "image"}


class BadConcepts(ValueError):
    """The file of concepts cannot be read or has a malformed line."""


@dataclass(frozen=True)
class Concept:
    """One blocked concept: its text and its two cosine thresholds."""

    text: str
    threshold: float = DEFAULT_THRESHOLD
    prompt_threshold: float = DEFAULT_PROMPT_THRESHOLD


def parse_concepts(text: str, where: str = "concepts") -> list[Concept]:
    """The concepts of a file's text (see the module docstring); BadConcepts names the line."""
    concepts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) > 3 or not fields[0].strip():
            raise BadConcepts(f"{where}:{number}: expected 'text[<TAB>threshold[<TAB>prompt threshold]]'")
        try:
            numbers = [float(f) for f in fields[1:]]
        except ValueError:
            raise BadConcepts(f"{where}:{number}: a threshold is a number (cosine similarity)") from None
        if any(not -1.0 <= x <= 1.0 for x in numbers):
            raise BadConcepts(f"{where}:{number}: a threshold lies in [-1, 1]")
        concepts.append(Concept(fields[0].strip(), *numbers))
    return concepts


def read_concepts(path: Path) -> list[Concept]:
    """The concepts of a file (BadConcepts if unreadable, malformed or empty)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BadConcepts(f"cannot read the moderation concepts {path}: {err}") from None
    concepts = parse_concepts(text, str(path))
    if not concepts:
        raise BadConcepts(f"{path}: no concepts (one text per line)")
    return concepts


@dataclass(frozen=True)
class EncodedConcepts:
    """K concepts encoded: unit text embeddings [K, D], image thresholds [K] and prompt
    thresholds [K] (float32, on the CPU)."""

    embeddings: torch.Tensor
    thresholds: torch.Tensor
    prompt_thresholds: torch.Tensor


def encode_concepts(pipe: StagedPipeline, concepts: Sequence[Concept]) -> EncodedConcepts:
    """The concepts' texts through the pipeline's CLIP text encoder -> EncodedConcepts."""
    pooled = pipe.encode_text([c.text for c in concepts]).pooled.float().cpu()
    return EncodedConcepts(normalize(pooled), torch.tensor([c.threshold for c in concepts]),
                           torch.tensor([c.prompt_threshold for c in concepts]))


def similarities(z: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    """Cosine similarities: z [B, D] (any norm) against unit concepts [K, D] -> [B, K]."""
    return normalize(z.float().cpu()) @ concepts.T


def blocked(z: torch.Tensor, concepts: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Which rows of z [B, D] lie closer to some concept [K, D] than its threshold [K]:
    bool [B]."""
    return (similarities(z, concepts) > thresholds).any(dim=1)


@dataclass(frozen=True)
class Screen:
    """One request's moderation: the encoded concepts, the margin its `moderation` field
    adds to every threshold, and `on_refuse(stage)`, told of each refusal (metrics)."""

    concepts: EncodedConcepts
    margin: float = 0.0
    on_refuse: Callable[[str], None] = lambda stage: None

    def check(self, stage: str, z: torch.Tensor) -> None:
        """Raise ContentRefused if any row of z [B, D] is too close to a concept: text
        embeddings at stage "prompt", image embeddings at "prior" and "upload"."""
        c = self.concepts
        limits = (c.prompt_thresholds if stage == "prompt" else c.thresholds) + self.margin
        if bool(blocked(z, c.embeddings, limits).any()):
            self.on_refuse(stage)
            raise ContentRefused(stage, PARAMS[stage], MESSAGES[stage])

    def prior(self, z: torch.Tensor) -> None:
        """`Sampling.screen`: the image embeddings z [n, D] about to be decoded (the prior's,
        an interpolation's or a text diff's frames)."""
        self.check("prior", z)


def screened(op: Generator[StageRequest, None, object], pipe: StagedPipeline, screen: Optional[Screen],
             prompts: Sequence[str] = (), images: Sequence[torch.Tensor] = ()) -> Generator[StageRequest, None, object]:
    """The operation `op`, after its prompts and uploaded images [1, 3, H, W] (uint8, or
    float in [-1, 1]) passed `screen` (on the engine's thread: CLIP runs there). The prior's
    embeddings are screened by `Sampling.screen` inside the operation. Without a screen,
    `op` itself."""
    if screen is None:
        return (yield from op)
    texts = [p for p in prompts if p]
    if texts:
        screen.check("prompt", pipe.encode_text(texts).pooled)
    if images:
        screen.check("upload", pipe.encode_image(torch.cat([as_float(i) for i in images])))
    return (yield from op)
