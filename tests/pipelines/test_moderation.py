"""pipelines/moderation.py: the file of concepts, the cosine thresholds and their margin,
and the screen of an operation's prompts and uploads (run on the tiny model)."""

from __future__ import annotations

import pytest
import torch

from pipelines import operations as O
from pipelines.errors import ContentRefused
from pipelines.moderation import (
    DEFAULT_PROMPT_THRESHOLD,
    DEFAULT_THRESHOLD,
    LOW_MARGIN,
    BadConcepts,
    Concept,
    EncodedConcepts,
    Screen,
    encode_concepts,
    parse_concepts,
    screened,
)
from pipelines.unclip import Sampling, UnCLIP, run_direct


def test_concept_lines_take_optional_thresholds() -> None:
    text = "# comment\n\na red circle\na cat\t0.3\na dog\t0.25\t0.9\n"
    assert parse_concepts(text) == [Concept("a red circle", DEFAULT_THRESHOLD, DEFAULT_PROMPT_THRESHOLD),
                                    Concept("a cat", 0.3), Concept("a dog", 0.25, 0.9)]


@pytest.mark.parametrize("line", ["a cat\tmuch", "a cat\t2", "\t0.3", "a\t0.1\t0.2\t0.3"])
def test_a_bad_line_is_named(line: str) -> None:
    with pytest.raises(BadConcepts, match="f:2"):
        parse_concepts(f"ok\n{line}\n", "f")


def screen_of(margin: float = 0.0) -> tuple[Screen, list[str]]:
    """One concept along x (image threshold 0.4, prompt threshold 0.8) and the refusals seen."""
    seen: list[str] = []
    concepts = EncodedConcepts(torch.tensor([[1.0, 0.0]]), torch.tensor([0.4]), torch.tensor([0.8]))
    return Screen(concepts, margin, seen.append), seen


def test_each_stage_has_its_threshold_and_low_raises_both() -> None:
    z = torch.tensor([[0.42, (1 - 0.42**2) ** 0.5]]) * 3.0  # cosine 0.42 with the concept, any norm
    strict, seen = screen_of()
    with pytest.raises(ContentRefused) as refused:
        strict.check("prior", z)
    assert (refused.value.code, refused.value.param, refused.value.stage) == ("moderation_blocked", "prompt", "prior")
    strict.check("prompt", z)  # 0.42 is far for text against text
    low, low_seen = screen_of(LOW_MARGIN)
    low.check("prior", z)
    low.check("upload", z)
    assert seen == ["prior"] and low_seen == []


def test_screened_refuses_before_the_operation_runs(tiny_pipe: UnCLIP) -> None:
    concepts = encode_concepts(tiny_pipe, [Concept("a red circle", 0.99, 0.99)])
    started = []

    def op():
        started.append(True)
        return "result"
        yield

    screen = Screen(concepts)
    assert run_direct(tiny_pipe, screened(op(), tiny_pipe, screen, ["something else entirely, at length"])) == "result"
    with pytest.raises(ContentRefused):
        run_direct(tiny_pipe, screened(op(), tiny_pipe, screen, ["a red circle"]))
    with pytest.raises(ContentRefused):
        run_direct(tiny_pipe, screened(op(), tiny_pipe, Screen(concepts, -2.0),
                                       images=[torch.zeros(1, 3, 32, 32, dtype=torch.uint8)]))
    assert started == [True]


def tapped(op, seen: list[str]):
    """`op`, noting the stage of every request it makes."""
    try:
        request = next(op)
        while True:
            seen.append(request.stage)
            request = op.send((yield request))
    except StopIteration as stop:
        return stop.value


@pytest.mark.parametrize("kind", ["text_diff", "interpolation"])
def test_frames_made_from_embeddings_are_screened_before_the_decoder(tiny_pipe: UnCLIP, kind: str) -> None:
    """A text diff's and an interpolation's frames are image embeddings no prior made and no
    upload gave: the screen sees them all, and a refusal comes before any decoder step
    (the images' inversions included)."""
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    screened_z: list[torch.Tensor] = []

    def refuse(z: torch.Tensor) -> None:
        screened_z.append(z)
        raise ContentRefused("prior", "prompt", "refused")

    opts = Sampling(prior_steps=2, decoder_steps=2, upsampler_steps=2, best_of=1, screen=refuse)
    if kind == "text_diff":
        op = O.text_diff(tiny_pipe, image, "a red circle", frames=3, opts=opts)
    else:
        op = O.interpolate(tiny_pipe, images=[image, image.flip(-1)], frames=3, opts=opts)
    stages: list[str] = []
    with pytest.raises(ContentRefused):
        run_direct(tiny_pipe, tapped(op, stages))
    assert [z.shape[0] for z in screened_z] == [3]  # every frame, once
    assert stages == []  # refused before the images' inversions
