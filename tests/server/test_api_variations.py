"""POST /v1/images/variations through the official openai client."""

from __future__ import annotations

import base64
import warnings

import openai
import pytest

from .conftest import FAST, FAST_DECODER, open_png, png


def variation(client: openai.OpenAI, **kw):
    with warnings.catch_warnings():  # the client marks the endpoint deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return client.images.create_variation(**kw)


def test_variation_b64(client: openai.OpenAI) -> None:
    res = variation(client, image=("in.png", png(32, seed=4), "image/png"), n=2, size="64x64",
                    response_format="b64_json", extra_body={**FAST_DECODER, "seed": 5, "eta": 0.5})
    imgs = [open_png(base64.b64decode(d.b64_json)) for d in res.data]
    assert [i.size for i in imgs] == [(64, 64)] * 2
    assert imgs[0].text["operation"] == "variation" and imgs[0].text["eta"] == "0.5"
    assert [i.text["seed"] for i in imgs] == ["5", "6"]


def test_variation_jpeg_default_url(client: openai.OpenAI) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(png(48))).save(buf, format="JPEG")
    res = variation(client, image=("in.jpg", buf.getvalue(), "image/jpeg"), size="32x32", extra_body=FAST_DECODER)
    assert res.data[0].url.endswith(".png")


def test_variation_of_an_image_of_another_aspect(client: openai.OpenAI) -> None:
    """A 32x20 upload is centre-cropped to the square model's output, not refused."""
    res = variation(client, image=("r.png", png(32, height=20), "image/png"), size="32x32", extra_body=FAST_DECODER)
    assert res.data[0].url.endswith(".png") and res.size == "32x32"


@pytest.mark.parametrize("kw, param, code", [
    ({"extra_body": {**FAST_DECODER, "eta": 1.5}}, "eta", "invalid_value"),
    ({"extra_body": FAST}, "prior_steps", "unknown_parameter"),  # no prior in a variation
    ({"size": "512x512"}, "size", "invalid_value"),
])
def test_variation_invalid(client: openai.OpenAI, kw: dict, param: str, code: str) -> None:
    args = {"image": ("in.png", png(32), "image/png"), "extra_body": FAST_DECODER, **kw}
    with pytest.raises(openai.BadRequestError) as info:
        variation(client, **args)
    assert (info.value.param, info.value.code) == (param, code)
