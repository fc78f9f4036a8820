"""The Hugging Face snapshots served as downloaded (`UNCLIP_MODEL_DIR` and nothing else): a
tiny random Kandinsky 2.2 folder (prior/, decoder/, decoder-inpaint/) and a tiny Karlo
snapshot, each written by diffusers' save_pretrained, behind a real server, through the
official openai client: all five operations, WxH sizes, negative prompts, same seed -> same
image alone or batched; fp16 snapshots linked from the Hub cache; a folder of no model exits
2 saying what was expected."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from openai.types import ImagesResponse
from PIL import Image

from tests.pipelines._hub_layouts import linked_from_cache

from .conftest import REPO, ServerProc, half_transparent, launch, open_png, png
from .test_cli import clean_env

pytest.importorskip("diffusers")

FAST = {"prior_steps": 2, "decoder_steps": 3, "best_of": 1}
DECODER = {"decoder_steps": 3}


@pytest.fixture(scope="module")
def client(kandinsky_server: ServerProc) -> openai.OpenAI:
    return kandinsky_server.client()


def pixels(res: ImagesResponse) -> list[np.ndarray]:
    return [np.asarray(open_png(base64.b64decode(d.b64_json)).convert("RGB")) for d in res.data]


def multipart(client: openai.OpenAI, path: str, body: dict[str, Any], files: list) -> ImagesResponse:
    """An extension endpoint through the client's own request machinery (multipart)."""
    return client.post(path, cast_to=ImagesResponse, body=body, files=files,
                       options={"headers": {"Content-Type": "multipart/form-data"}})


def test_models_lists_native_sizes_first(client: openai.OpenAI) -> None:
    card = client.models.list().data[0]
    assert card.id == "kandinsky-2.2"
    assert card.sizes[:3] == ["32x32", "48x48", "64x64"] and "96x64" in card.sizes and "64x96" in card.sizes


def test_generation_any_grid_size_with_negative_prompt(client: openai.OpenAI) -> None:
    res = client.images.generate(prompt="a red cat", size="48x32", n=2, response_format="b64_json",
                                 extra_body={**FAST, "seed": 4, "negative_prompt": "blurry"})
    images = [open_png(base64.b64decode(d.b64_json)) for d in res.data]
    assert [i.size for i in images] == [(48, 32)] * 2 and res.size == "48x32"
    assert images[0].text["negative_prompt"] == "blurry" and images[0].text["seed"] == "4"
    plain = client.images.generate(prompt="a red cat", size="48x32", response_format="b64_json",
                                   extra_body={**FAST, "seed": 4})
    assert not np.array_equal(pixels(plain)[0], pixels(res)[0])  # the negative prompt reached the prior


@pytest.mark.parametrize("size", ["50x32", "16x64", "128x128", "32x33"])
def test_sizes_off_the_rule_are_refused(client: openai.OpenAI, size: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(prompt="x", size=size, extra_body=FAST)
    assert err.value.param == "size" and "multiples of 4 from 16 to 96" in err.value.message


def test_edit_keeps_unmasked_pixels(client: openai.OpenAI) -> None:
    image = png(32, seed=1)
    res = client.images.edit(image=("in.png", image, "image/png"), prompt="a green field", size="32x32",
                             mask=("mask.png", png(32, half_transparent(32)), "image/png"),
                             response_format="b64_json", extra_body={**FAST, "seed": 3})
    kept = np.asarray(open_png(image).convert("RGB"))[:, 16:]
    assert np.array_equal(pixels(res)[0][:, 16:], kept)


def test_an_upload_s_aspect_sets_the_output_size(client: openai.OpenAI) -> None:
    """No size: a 64x32 edit comes back at the grid size nearest 2:1 at about the default
    32x32's area (48x24), the opaque colour kept (resized, not stretched off its aspect)."""
    alpha = np.full((32, 64), 255, np.uint8)
    alpha[:, 32:] = 0
    flat = np.dstack([np.full((32, 64, 3), (200, 30, 30), np.uint8), alpha])
    buf = io.BytesIO()
    Image.fromarray(flat, "RGBA").save(buf, format="PNG")
    res = client.images.edit(image=("wide.png", buf.getvalue(), "image/png"), prompt="a green field",
                             response_format="b64_json", extra_body={**FAST, "seed": 3})
    out = pixels(res)[0]
    assert res.size == "48x24" and out.shape == (24, 48, 3)
    assert np.abs(out[:, :20].astype(int) - (200, 30, 30)).max() <= 1


def test_variation_interpolation_and_text_diff(client: openai.OpenAI) -> None:
    with warnings.catch_warnings():  # the client marks variations deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        var = client.images.create_variation(image=("in.png", png(32, seed=2), "image/png"), n=2, size="32x32",
                                             response_format="b64_json", extra_body={**DECODER, "eta": 0.5})
    assert [p.shape for p in pixels(var)] == [(32, 32, 3)] * 2
    two = [("image[]", (f"{i}.png", png(32, seed=i), "image/png")) for i in (5, 6)]
    inter = multipart(client, "/images/interpolations", {"frames": 3, "size": "48x48",
                                                         "response_format": "b64_json", **DECODER}, two)
    assert [d.model_extra["theta"] for d in inter.data] == [0.0, 0.5, 1.0]
    assert pixels(inter)[0].shape == (48, 48, 3)
    diff = multipart(client, "/images/text-diffs", {"prompt": "a dog", "source_prompt": "a cat", "frames": 2,
                                                    "size": "32x32", "response_format": "b64_json", **DECODER},
                     [("image", ("a.png", png(32, seed=7), "image/png"))])
    assert len(diff.data) == 2 and open_png(base64.b64decode(diff.data[1].b64_json)).text["operation"] == "text_diff"


def test_same_seed_same_image_alone_or_batched(client: openai.OpenAI) -> None:
    """Eight requests at once share the engine's batches; each equals its run alone (<= 1/255)."""
    def one(seed: int) -> np.ndarray:
        res = client.images.generate(prompt=f"a cat number {seed % 3}", size="32x32", response_format="b64_json",
                                     extra_body={**FAST, "seed": seed})
        return pixels(res)[0].astype(int)

    alone = one(11)
    with ThreadPoolExecutor(8) as pool:
        batched = list(pool.map(one, [11] + list(range(20, 27))))
    assert np.abs(batched[0] - alone).max() <= 1


def test_fp16_snapshots_linked_from_the_hub_cache_are_served(kandinsky_model_dir: Path,
                                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    """The folder as the models page makes it from `hf download` without --local-dir, fp16
    files only (tests/pipelines/_hub_layouts.py), served with nothing but --model-dir."""
    folder = linked_from_cache(kandinsky_model_dir, tmp_path_factory.mktemp("hub"))
    server = launch(folder, tmp_path_factory.mktemp("logs"), {"UNCLIP_DTYPE": "float32"})
    try:
        client = server.client()
        assert client.models.list().data[0].id == "kandinsky-2.2"
        res = client.images.edit(image=("in.png", png(32, seed=1), "image/png"), prompt="a green field",
                                 size="32x32", mask=("mask.png", png(32, half_transparent(32)), "image/png"),
                                 response_format="b64_json", extra_body={**FAST, "seed": 3})
        assert pixels(res)[0].shape == (32, 32, 3)
    finally:
        server.stop()


def test_karlo_snapshot_serves_generations_and_variations(karlo_snapshot_dir: Path,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    server = launch(karlo_snapshot_dir, tmp_path_factory.mktemp("logs"), {"UNCLIP_DTYPE": "float32"})
    try:
        client = server.client()
        assert client.models.list().data[0].sizes == ["32x32", "64x64"]
        gen = client.images.generate(prompt="a red cat", size="64x64", response_format="b64_json",
                                     extra_body={"prior_steps": 2, "decoder_steps": 2, "upsampler_steps": 2,
                                                 "best_of": 1, "negative_prompt": "a dog"})
        assert pixels(gen)[0].shape == (64, 64, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            var = client.images.create_variation(image=("in.png", png(32), "image/png"), size="32x32",
                                                 response_format="b64_json", extra_body={"decoder_steps": 2})
        assert pixels(var)[0].shape == (32, 32, 3)
    finally:
        server.stop()


def test_a_folder_of_no_model_exits_2(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "server", "--model-dir", str(tmp_path)], cwd=REPO,
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "holds no model" in done.stderr and "Kandinsky 2.2" in done.stderr
