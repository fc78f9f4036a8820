"""POST /v1/images/edits (inpainting) through the official openai client."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import openai
import pytest

from .conftest import FAST, ServerProc, half_transparent, open_png, png


def decoded(res) -> list:
    return [open_png(base64.b64decode(d.b64_json)) for d in res.data]


def test_edit_with_mask_keeps_opaque_area(client: openai.OpenAI) -> None:
    image = png(64, seed=1)
    res = client.images.edit(image=("in.png", image, "image/png"),
                             mask=("mask.png", png(64, half_transparent(64)), "image/png"),
                             prompt="a green field", n=2, size="64x64", response_format="b64_json",
                             extra_body={**FAST, "seed": 3})
    outs = decoded(res)
    assert len(outs) == 2
    original = np.asarray(open_png(image).convert("RGB"))
    for out in outs:
        px = np.asarray(out.convert("RGB"))
        assert np.array_equal(px[:, 32:], original[:, 32:])  # alpha 255: kept exactly
        assert out.text["operation"] == "edit" and out.text["prompt"] == "a green field"


def test_edit_alpha_only_image(client: openai.OpenAI) -> None:
    res = client.images.edit(image=("rgba.png", png(32, half_transparent(32)), "image/png"), prompt="fill it",
                             size="32x32", response_format="b64_json", extra_body=FAST)
    assert decoded(res)[0].size == (32, 32)


def test_edit_with_list_of_one_image_and_url(client: openai.OpenAI) -> None:
    res = client.images.edit(image=[("a.png", png(32, half_transparent(32)), "image/png")], prompt="listed",
                             size="32x32", extra_body=FAST)
    assert httpx.get(res.data[0].url).status_code == 200


def test_edit_stream(client: openai.OpenAI) -> None:
    stream = client.images.edit(image=("a.png", png(32, half_transparent(32)), "image/png"), prompt="s",
                                size="32x32", stream=True, extra_body=FAST)
    kinds = [e.type for e in stream]
    assert "image_edit.progress" in kinds and kinds[-1] == "image_edit.completed"


def test_an_image_of_another_aspect_is_centre_cropped(client: openai.OpenAI) -> None:
    """A 48x32 upload to the square model: the 32x32 output keeps the upload's centre 32x32
    where it is opaque, pixel for pixel (cropped, not stretched)."""
    alpha = np.full((32, 48), 255, np.uint8)
    alpha[:, 8:24] = 0  # the left half of the centre is edited
    image = png(48, alpha, seed=4, height=32)
    res = client.images.edit(image=("wide.png", image, "image/png"), prompt="a green field", size="32x32",
                             response_format="b64_json", extra_body={**FAST, "seed": 3})
    out, centre = np.asarray(decoded(res)[0].convert("RGB")), np.asarray(open_png(image).convert("RGB"))[:, 8:40]
    assert out.shape == (32, 32, 3) and np.array_equal(out[:, 16:], centre[:, 16:])
    assert not np.array_equal(out[:, :16], centre[:, :16])


@pytest.mark.parametrize("case, param, code", [
    ("two_images", "image", "invalid_value"),
    ("mask_size", "mask", "invalid_value"),
    ("no_alpha", "image", "invalid_value"),
    ("not_an_image", "image", "invalid_image"),
    ("gif", "image", "invalid_image_format"),
    ("bad_n", "n", "invalid_value"),
    ("bad_resample", "resample", "invalid_value"),
    ("input_fidelity", "input_fidelity", "unsupported_parameter"),
])
def test_edit_invalid(client: openai.OpenAI, case: str, param: str, code: str) -> None:
    rgba = ("a.png", png(32, half_transparent(32)), "image/png")
    args: dict = {"image": rgba, "prompt": "x", "extra_body": dict(FAST)}
    if case == "two_images":
        args["image"] = [rgba, rgba]
    elif case == "mask_size":
        args["mask"] = ("m.png", png(16, half_transparent(16)), "image/png")
    elif case == "no_alpha":
        args["image"] = ("rgb.png", png(32), "image/png")
    elif case == "not_an_image":
        args["image"] = ("x.png", b"definitely not a png", "image/png")
    elif case == "gif":
        args["image"] = ("x.gif", _gif(), "image/gif")
    elif case == "bad_n":
        args["n"] = 0
    elif case == "bad_resample":
        args["extra_body"]["resample"] = "often"
    elif case == "input_fidelity":
        args["input_fidelity"] = "high"
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(**args)
    assert (info.value.param, info.value.code) == (param, code)


def test_edit_missing_image_and_wrong_content_type(server: ServerProc, http: httpx.Client) -> None:
    r = http.post("/v1/images/edits", data={"prompt": "x"}, files={"mask": ("m.png", png(32), "image/png")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "image"
    r = http.post("/v1/images/edits", json={"prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_content_type"
    r = http.post("/v1/images/edits", data={"prompt": "x", "n": "two"},
                  files={"image": ("a.png", png(32), "image/png")})
    body = r.json()["error"]
    assert r.status_code == 400 and body["param"] == "n" and "n" in body["message"], json.dumps(body)


def _gif() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="GIF")
    return buf.getvalue()
