"""The shipped model (weights/default) served at dall-e-2's sizes, through the official client:
what an app asking for 512x512 or 1024x1024 (the API's default) gets from a real server."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import openai
import pytest
import torch

from pipelines.imageio import to_tensor
from tests.server.conftest import REPO, ServerProc, launch, open_png
from tools.evaluation import background_noise, judged
from tools.shapes import Scene, canonical_caption, random_scenes

MODEL = REPO / "weights" / "default"
RED_CIRCLE = Scene("circle", "red", "blue", "large", "center")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    server = launch(MODEL, Path(tmp_path_factory.mktemp("shipped-server")), {"OMP_NUM_THREADS": "2"})
    yield server
    server.stop()


def tensor(png: bytes, size: int) -> torch.Tensor:
    """A PNG of size x size -> [1, 3, size, size] in [-1, 1]."""
    img = open_png(png)
    assert img.size == (size, size)
    return to_tensor(img)


def test_models_lists_dalle_2_sizes(shipped: ServerProc) -> None:
    card = httpx.get(shipped.url("/v1/models"), timeout=30).json()["data"][0]
    assert {"256x256", "512x512", "1024x1024"} <= set(card["sizes"]), card


def test_four_concurrent_1024_generations_draw_their_captions_cleanly(shipped: ServerProc) -> None:
    """Four apps at once asking for the API's default size (no size given), each with a
    random canonical caption: each gets a 1024 px PNG with every attribute of its caption
    (shape, colour, background, size, position) and a flat background (noise sigma < 3 on
    0-255 with the invisible watermark's 2 levels; a render's is 0), batched by the engine."""
    client = shipped.client()
    scenes = random_scenes(4, np.random.default_rng(3))

    def ask(i: int) -> bytes:
        res = client.images.generate(prompt=canonical_caption(scenes[i]), response_format="b64_json",
                                     extra_body={"seed": 3 + i})
        return base64.b64decode(res.data[0].b64_json)

    with ThreadPoolExecutor(len(scenes)) as pool:
        images = torch.cat([tensor(png, 1024) for png in pool.map(ask, range(len(scenes)))])
    judgements, noise = judged(images), background_noise(images)
    assert [j.attributes() for j in judgements] == [s.attributes() for s in scenes], judgements
    assert max(noise) < 3.0, noise


def test_512_stream_sends_a_partial_image_then_the_final_one(shipped: ServerProc) -> None:
    stream = shipped.client().images.generate(prompt=canonical_caption(RED_CIRCLE), size="512x512",
                                                         stream=True, partial_images=1, extra_body={"seed": 2})
    events = [e for e in stream if e.type != "image_generation.progress"]
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
    for e in events:
        tensor(base64.b64decode(e.b64_json), 512)
    assert judged(tensor(base64.b64decode(events[-1].b64_json), 512))[0].colour == "red"


def test_unknown_size_names_the_sizes(shipped: ServerProc) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        shipped.client().images.generate(prompt="a red circle", size="768x768")
    assert info.value.param == "size" and "1024" in str(info.value)
