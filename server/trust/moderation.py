"""The server's moderation (UNCLIP_MODERATION_CONCEPTS): the concepts are read when the
runtime is built (a bad file stops the server with exit code 2), encoded with the served
model's CLIP on the engine thread once it is loaded, and each request gets a `Screen` of
them (pipelines/moderation.py), its thresholds raised by `LOW_MARGIN` for
`moderation=low`. A refusal is a 400 `moderation_blocked`, counted by stage in /metrics;
the prompt is never logged."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from pydantic import BaseModel

from pipelines.moderation import LOW_MARGIN, EncodedConcepts, Screen, encode_concepts, read_concepts
from pipelines.unclip import Operation, StagedPipeline


class Moderation:
    """Moderation from a file of concepts (None: off); `on_refuse(stage)` counts refusals."""

    def __init__(self, path: Optional[Path], on_refuse: Callable[[str], None] = lambda stage: None):
        self.concepts = read_concepts(path) if path is not None else []
        self.on_refuse = on_refuse
        self.encoded: Optional[EncodedConcepts] = None

    @property
    def enabled(self) -> bool:
        return bool(self.concepts)

    def encoding(self, pipe: StagedPipeline) -> Operation:
        """An engine operation (no stage requests) that encodes the concepts with `pipe`'s CLIP."""
        self.encoded = encode_concepts(pipe, self.concepts)
        return None
        yield  # a generator: the engine runs it on its thread

    def screen(self, params: BaseModel) -> Optional[Screen]:
        """The request's screen (None when moderation is off or not yet encoded)."""
        if self.encoded is None:
            return None
        margin = LOW_MARGIN if getattr(params, "moderation", None) == "low" else 0.0
        return Screen(self.encoded, margin, self.on_refuse)
