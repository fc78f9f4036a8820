"""Today's OpenAI Images fields through the official client against the real server:
output formats and compression, GIF frames, background, quality presets, partial images
in streams, usage, the truncation notice, and the defaults per model name."""

from __future__ import annotations

import base64
import io
import json
import statistics
import time

import httpx
import openai
import pytest
from PIL import Image

from .conftest import FAST, FAST_DECODER, ServerProc, png

MAGIC = {"png": b"\x89PNG", "jpeg": b"\xff\xd8\xff", "gif": b"GIF8"}


def decoded(b64: str) -> bytes:
    return base64.b64decode(b64)


def generate_bytes(client: openai.OpenAI, **kw) -> bytes:
    res = client.images.generate(prompt="a red circle", size="32x32", extra_body={**FAST, "seed": 3}, **kw)
    return decoded(res.data[0].b64_json)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_lossy_formats_honour_compression_and_carry_the_parameters(client: openai.OpenAI, fmt: str) -> None:
    res = client.images.generate(prompt="a red circle", size="64x64", output_format=fmt, model="gpt-image-2",
                                 extra_body={**FAST, "seed": 3})
    assert res.output_format == fmt and res.data[0].b64_json  # gpt-image-* answers in base64
    sizes = {q: len(generate_bytes(client, output_format=fmt, output_compression=q, response_format="b64_json"))
             for q in (100, 30)}
    assert sizes[30] < sizes[100], sizes
    img = Image.open(io.BytesIO(decoded(res.data[0].b64_json)))
    assert img.format == fmt.upper()
    comment = img.getexif().get_ifd(0x8769)[0x9286]
    assert comment.startswith(b"UNICODE\0") and comment[8:].decode("utf-16-be").startswith("a red circle\nSteps: 2")
    xmp = img.info.get("xmp")
    xmp = xmp.decode() if isinstance(xmp, bytes) else xmp
    assert '"seed": 3' in xmp and '"operation": "generation"' in xmp


def test_png_carries_a1111_parameters(client: openai.OpenAI) -> None:
    img = Image.open(io.BytesIO(generate_bytes(client, response_format="b64_json")))
    text = img.text["parameters"].split("\n")
    assert text[0] == "a red circle"
    fields = dict(part.split(": ", 1) for part in text[1].split(", ") if ": " in part)
    assert fields["Steps"] == "2" and fields["Seed"] == "3" and fields["Size"] == "32x32" and fields["Model"] == "tiny"
    assert json.loads(img.text["unclip"])["decoder_steps"] == 2


def test_url_images_keep_their_format(client: openai.OpenAI, server: ServerProc) -> None:
    res = client.images.generate(prompt="a red circle", size="32x32", output_format="jpeg", extra_body=FAST)
    url = res.data[0].url
    assert url.endswith(".jpeg")
    r = httpx.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content.startswith(MAGIC["jpeg"])
    assert httpx.get(url[: -len(".jpeg")] + ".png").status_code == 404


def test_gif_walk_interpolation_and_text_diff(client: openai.OpenAI, http: httpx.Client) -> None:
    res = client.images.generate(prompt="a red circle", size="32x32", output_format="gif", response_format="b64_json",
                                 extra_body={**FAST, "frame_count": 4, "frame_duration_ms": 120})
    assert len(res.data) == 1 and res.output_format == "gif"
    gif = Image.open(io.BytesIO(decoded(res.data[0].b64_json)))
    assert gif.format == "GIF" and gif.n_frames == 4 and gif.info["duration"] == 120
    frames = []
    for i in range(4):
        gif.seek(i)
        frames.append(gif.convert("RGB").tobytes())
    assert len(set(frames)) > 1, "a walk moves"
    r = http.post("/v1/images/interpolations", data={"prompt[]": ["a red circle", "a blue square"], "frames": "3",
                                                     "output_format": "gif", "response_format": "b64_json",
                                                     **FAST})
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(decoded(r.json()["data"][0]["b64_json"]))).n_frames == 3
    r = http.post("/v1/images/text-diffs", files={"image": ("a.png", png(32), "image/png")},
                  data={"prompt": "a blue circle", "frames": "2", "output_format": "gif", "response_format": "b64_json",
                        **FAST_DECODER})
    assert r.status_code == 200 and Image.open(io.BytesIO(decoded(r.json()["data"][0]["b64_json"]))).n_frames == 2
    r = http.post("/v1/images/variations", files={"image": ("a.png", png(32), "image/png")},
                  data={"output_format": "gif"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "output_format"


def test_background_and_response_fields(client: openai.OpenAI) -> None:
    for background in ("opaque", "auto"):
        res = client.images.generate(prompt="a red circle", size="32x32", background=background, moderation="low",
                                     response_format="b64_json", extra_body=FAST)
        assert res.background == "opaque" and res.size == "32x32" and res.quality == "medium"
        assert res.output_format == "png"
    assert res.usage.input_tokens_details.text_tokens == 5  # "a red circle": 3 BPE tokens + start + end
    assert res.usage.input_tokens == 5 and res.usage.output_tokens == 0 and res.usage.total_tokens == 5


@pytest.mark.parametrize("field, value", [("input_fidelity", "high"), ("style", "vivid"), ("complexity", "low")])
def test_fields_this_model_cannot_honour_say_what_to_do(client: openai.OpenAI, field: str, value: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="x", extra_body={**FAST, field: value})
    assert info.value.param == field and info.value.code == "unsupported_parameter"
    assert ":" in info.value.message  # the reason and what to do instead


def test_quality_presets_scale_the_steps(client: openai.OpenAI) -> None:
    """No step fields: low halves the prior's default steps, high doubles the prior's and
    the upsamplers', the decoder keeps its own; the response echoes the preset; low is
    measurably faster than high."""
    seconds, steps = {}, {}
    for quality in ("low", "high", "low", "high", "low", "high"):
        started = time.perf_counter()
        res = client.images.generate(prompt="a red circle", size="64x64", quality=quality, response_format="b64_json",
                                     extra_body={"best_of": 1})
        seconds.setdefault(quality, []).append(time.perf_counter() - started)
        assert res.quality == quality
        steps[quality] = json.loads(Image.open(io.BytesIO(decoded(res.data[0].b64_json))).text["unclip"])
    assert (steps["low"]["prior_steps"], steps["high"]["prior_steps"]) == (12, 50)  # tiny model: 25 by default
    assert (steps["low"]["upsampler_steps"], steps["high"]["upsampler_steps"]) == ([4], [8])  # 4 by default
    assert steps["low"]["decoder_steps"] == steps["high"]["decoder_steps"] == 8
    assert statistics.median(seconds["low"]) < statistics.median(seconds["high"]), seconds
    explicit = client.images.generate(prompt="x", size="32x32", quality="high", response_format="b64_json",
                                      extra_body={**FAST})
    assert json.loads(Image.open(io.BytesIO(decoded(explicit.data[0].b64_json))).text["unclip"])["decoder_steps"] == 2


@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/images/edits"])
def test_partial_images_in_streams(client: openai.OpenAI, path: str) -> None:
    """partial_images=2 at 64 px: exactly two partial events (the decoder's estimate half
    way, its output), each a decodable image of the asked size, then the completed one."""
    if path.endswith("generations"):
        stream = client.images.generate(prompt="a red circle", size="64x64", stream=True, partial_images=2,
                                        output_format="webp", extra_body={**FAST, "decoder_steps": 4})
        prefix = "image_generation"
    else:
        alpha = Image.new("L", (64, 64), 255)
        alpha.paste(0, (16, 16, 48, 48))
        img = Image.new("RGBA", (64, 64), (0, 0, 255, 255))
        img.putalpha(alpha)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        stream = client.images.edit(image=("a.png", buf.getvalue(), "image/png"), prompt="a green square", size="64x64",
                                    stream=True, partial_images=2, output_format="webp",
                                    extra_body={**FAST, "decoder_steps": 4})
        prefix = "image_edit"
    events = list(stream)
    kinds = [e.type for e in events]
    partial = [e for e in events if e.type == f"{prefix}.partial_image"]
    assert len(partial) == 2 and kinds[-1] == f"{prefix}.completed", kinds
    assert [e.partial_image_index for e in partial] == [0, 1]
    for e in partial:
        im = Image.open(io.BytesIO(decoded(e.b64_json)))
        assert im.format == "WEBP" and im.size == (64, 64) and e.output_format == "webp" and e.size == "64x64"
    assert kinds.index(f"{prefix}.partial_image") < kinds.index(f"{prefix}.completed")
    assert events[-1].usage.input_tokens_details.text_tokens > 2


def test_truncated_prompt_is_said(server: ServerProc) -> None:
    """The tiny model's text encoder reads 16 tokens: a longer prompt is cut, and said so."""
    prompt = " ".join(["red"] * 30)
    r = httpx.post(server.url("/v1/images/generations"), timeout=60,
                   json={"prompt": prompt, "size": "32x32", "response_format": "b64_json", **FAST})
    assert r.status_code == 200 and r.headers["x-prompt-truncated"] == "kept 16 of 32 tokens"
    img = Image.open(io.BytesIO(decoded(r.json()["data"][0]["b64_json"])))
    assert img.text["prompt_truncated"] == "kept 16 of 32 tokens"
    assert r.json()["usage"]["input_tokens_details"]["text_tokens"] == 16
    short = httpx.post(server.url("/v1/images/generations"), json={"prompt": "red", "size": "32x32", **FAST})
    assert "x-prompt-truncated" not in short.headers
