"""The shipped default model (weights/default) on a small version of the evaluation.

Through the real pipeline at the model's default sampling settings and its final size:
N = 16 random canonical captions, 8 cases each of variations, text diffs and inpainting,
and 16 seeds of `a red circle`, judged by the model-free judge. The thresholds sit below
what the shipped weights measure at N = 200 (`python -m bench.eval_shapes`, model card),
with margin for the noise of a small N, so a model that regresses falls under them. They
are not the issue's targets (`tools.evaluation.THRESHOLDS`, all met at N = 200), which at
N = 16 would fail on one unlucky image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines import operations as O
from pipelines.checkpoints import load_model_dir
from pipelines.unclip import Sampling, UnCLIP, run_direct
from tools import evaluation as E

MODEL = Path(__file__).resolve().parents[2] / "weights" / "default"
SMALL = {  # path -> minimum at this N; N = 200 figures in the comments
    "captions.accuracy.colour": 0.90, "captions.accuracy.background": 0.90,  # 1.00, 1.00
    "captions.accuracy.position": 0.85, "captions.accuracy.size": 0.85,  # 1.00, 1.00
    "captions.accuracy.shape": 0.6, "captions.accuracy.all": 0.6,  # 0.90, 0.90
    "variety.match": 0.75, "variety.positions": 4, "variety.sizes": 2,  # 1.00, 8, 2
    "variations.all": 0.6, "text_diff.rate": 0.6,  # 0.925, 0.90
    "inpaint.rate": 0.6, "inpaint.green": 0.75, "inpaint.center": 0.75,  # 0.975, 1.00, 1.00
}


@pytest.fixture(scope="module")
def pipe() -> UnCLIP:
    """The shipped model as the server runs it (channels-last UNets), loaded once for every
    test here."""
    return UnCLIP(load_model_dir(MODEL, "cpu").use_channels_last())


@pytest.fixture(scope="module")
def caps(pipe: UnCLIP) -> dict[str, int]:
    """One track per upsampler call: on a 2-core CPU the 128 px and larger upsamplers are
    slower per image in bigger batches (server/engine/batch_caps.py). Batching changes no result."""
    return {key: 1 for key in pipe.stages if key.startswith("upsampler.")}


@pytest.fixture(scope="module")
def results(pipe: UnCLIP, caps: dict[str, int]) -> dict[str, Any]:
    assert {256, 512, 1024} <= set(pipe.sizes), pipe.sizes
    return E.evaluate(pipe, n=16, seed=1, cases=8, seeds=16, size=256, caps=caps)


@pytest.mark.parametrize("path", sorted(SMALL))
def test_default_model_meets_its_target(results: dict[str, Any], path: str) -> None:
    value, minimum, met = E.verdicts(results, {path: SMALL[path]})[path]
    assert met, f"{path}: {value:.3f} < {minimum}"


def test_inpainting_keeps_the_rest_exactly(results: dict[str, Any]) -> None:
    assert results["inpaint"]["kept_max_abs_diff"] == 0.0


def test_generation_is_the_asked_size(results: dict[str, Any]) -> None:
    assert results["size"] == 256 and results["generation_s"] > 0


def test_512_px_draws_the_captions_with_flat_backgrounds(pipe: UnCLIP, caps: dict[str, int]) -> None:
    """8 canonical captions at 512 px: every attribute judged right in most, and flat
    backgrounds (median noise sigma under 2.5 on 0-255; the issue's target is 2.0 at N = 100,
    met by the model card's figures). 1024 px, the API's default size, is judged through
    the server (tests/server/test_default_model_sizes.py)."""
    res = E.captions(pipe, 8, seed=3, size=512, caps=caps)
    assert res["accuracy"]["colour"] >= 0.85 and res["accuracy"]["background"] >= 0.85, res["accuracy"]
    assert res["accuracy"]["all"] >= 0.6, res["accuracy"]
    assert res["background_noise"] < 2.5, res["samples"]


@pytest.mark.parametrize(("steps", "min_db"), [(None, 24.0), (16, 38.0)])
def test_eta0_variation_reconstructs_rendered_scenes(pipe: UnCLIP, steps: int | None, min_db: float) -> None:
    """DDIM inversion under the image's own z_i, then decoding at eta = 0, gives the scene
    back at the decoder's size: measured 25-27 dB PSNR at the default 4 decoder steps, 41-42
    dB at 16 (the more steps, the finer the inversion), on scenes of the world."""
    size = pipe.sizes[0]
    scenes = E.random_scenes(4, np.random.default_rng(5))
    images = E.scene_images(scenes, size)
    for i in range(len(scenes)):
        opts = Sampling(decoder_steps=steps)
        out = run_direct(pipe, O.variations(pipe, images[i:i + 1], eta=0.0, size=size, seed=i, opts=opts))
        mse = float(((out.images - images[i:i + 1]) ** 2).mean())
        assert 10 * np.log10(4.0 / max(mse, 1e-12)) >= min_db, scenes[i]
