"""POST /v1/images/generations through the official openai client and plain HTTP."""

from __future__ import annotations

import base64
import json

import httpx
import openai
import pytest

from .conftest import FAST, ServerProc, open_png


def test_generate_url_fetches_png_with_parameters(client: openai.OpenAI, server: ServerProc) -> None:
    res = client.images.generate(prompt="a red circle", n=2, extra_body={**FAST, "seed": 7})
    assert isinstance(res.created, int) and len(res.data) == 2
    urls = [d.url for d in res.data]
    assert all(u.startswith(server.url("/v1/files/images/")) and u.endswith(".png") for u in urls)
    assert len(set(urls)) == 2 and all(d.b64_json is None for d in res.data)
    img = open_png(httpx.get(urls[1]).content)
    assert img.size == (64, 64)  # the largest size by default
    assert img.text["prompt"] == "a red circle"
    assert img.text["seed"] == "8"  # image i uses seed + i
    assert img.text["model"] == "tiny" and img.text["operation"] == "generation"
    params = json.loads(img.text["unclip"])
    assert params["decoder_steps"] == 2 and params["size"] == "64x64"


def test_generate_b64_json_small_size(client: openai.OpenAI) -> None:
    res = client.images.generate(prompt="a blue square", size="32x32", response_format="b64_json",
                                 model="dall-e-2", extra_body=FAST)
    assert len(res.data) == 1 and res.data[0].url is None
    img = open_png(base64.b64decode(res.data[0].b64_json))
    assert img.size == (32, 32) and img.mode == "RGB"


def test_same_seed_same_image(client: openai.OpenAI) -> None:
    def once() -> str:
        res = client.images.generate(prompt="seeded", size="32x32", response_format="b64_json",
                                     extra_body={**FAST, "seed": 123})
        return res.data[0].b64_json

    assert once() == once()


@pytest.mark.parametrize("kwargs, param, code", [
    ({"n": 11}, "n", "invalid_value"),
    ({"n": 0}, "n", "invalid_value"),
    ({"size": "48x48"}, "size", "invalid_value"),
    ({"size": "1024x1792"}, "size", "invalid_value"),
    ({"prompt": "x" * 1001}, "prompt", "invalid_value"),
    ({"prompt": ""}, "prompt", "invalid_value"),
    ({"response_format": "jpeg"}, "response_format", "invalid_value"),
    ({"style": "vivid"}, "style", "unsupported_parameter"),
    ({"background": "transparent"}, "background", "unsupported_value"),
    ({"quality": "xhigh"}, "quality", "invalid_value"),
    ({"quality": "max"}, "quality", "invalid_value"),
    ({"output_format": "svg"}, "output_format", "invalid_value"),
    ({"output_format": "bmp"}, "output_format", "invalid_value"),
    ({"output_format": "jpeg", "output_compression": 101}, "output_compression", "invalid_value"),
    ({"output_format": "png", "output_compression": 50}, "output_compression", "unsupported_value"),
    ({"output_format": "gif", "frame_count": 1}, "frame_count", "invalid_value"),
    ({"output_format": "gif", "frame_count": 17}, "frame_count", "invalid_value"),
    ({"output_format": "gif", "n": 2}, "n", "unsupported_value"),
    ({"frame_count": 4}, "frame_count", "unsupported_value"),
    ({"partial_images": 4}, "partial_images", "invalid_value"),
    ({"model": "no-such-model"}, "model", "model_not_found"),
])
def test_generate_invalid_parameters(client: openai.OpenAI, kwargs: dict, param: str, code: str) -> None:
    args = {"prompt": "ok", **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(**args, extra_body=FAST)
    assert info.value.param == param and info.value.code == code
    assert info.value.type == "invalid_request_error"
    assert info.value.request_id  # x-request-id on errors too


@pytest.mark.parametrize("extra, param, code", [
    ({"prior_steps": 0}, "prior_steps", "invalid_value"),
    ({"decoder_guidance": -1}, "decoder_guidance", "invalid_value"),
    ({"best_of": "many"}, "best_of", "invalid_value"),
    ({"seed": -1}, "seed", "invalid_value"),
    ({"eta": 0.5}, "eta", "unknown_parameter"),
    ({"frobnicate": 1}, "frobnicate", "unknown_parameter"),
])
def test_generate_invalid_extensions(client: openai.OpenAI, extra: dict, param: str, code: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="ok", extra_body={**FAST, **extra})
    assert (info.value.param, info.value.code) == (param, code)


def test_missing_prompt_and_bad_json(http: httpx.Client) -> None:
    r = http.post("/v1/images/generations", json={"n": 1})
    assert r.status_code == 400
    assert r.json()["error"] == {"message": "Missing required parameter: 'prompt'.", "type": "invalid_request_error",
                                 "param": "prompt", "code": "missing_required_parameter"}
    r = http.post("/v1/images/generations", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = http.post("/v1/images/generations", json=["a list"])
    assert r.status_code == 400


def test_quality_standard_and_size_auto_accepted(client: openai.OpenAI) -> None:
    res = client.images.generate(prompt="ok", quality="standard", size="auto", response_format="b64_json",
                                 extra_body=FAST)
    assert open_png(base64.b64decode(res.data[0].b64_json)).size == (64, 64)


def test_request_id_echoed_or_created(http: httpx.Client) -> None:
    r = http.get("/v1/models", headers={"x-request-id": "my-trace-42"})
    assert r.headers["x-request-id"] == "my-trace-42"
    r = http.get("/v1/models")
    assert r.headers["x-request-id"].startswith("req_")
    r = http.get("/nope", headers={"x-request-id": "abc"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "abc"
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_stream_events(client: openai.OpenAI) -> None:
    stream = client.images.generate(prompt="streamed", n=2, size="64x64", stream=True, extra_body={**FAST, "seed": 1})
    events = [e.model_dump() for e in stream]
    progress = [e for e in events if e["type"] == "image_generation.progress"]
    completed = [e for e in events if e["type"] == "image_generation.completed"]
    assert {p["stage"] for p in progress} >= {"prior", "decoder", "upsampler.0"}
    assert all(1 <= p["step"] <= p["total"] for p in progress)
    assert [c["index"] for c in completed] == [0, 1]
    for c in completed:
        assert c["size"] == "64x64" and c["output_format"] == "png"
        assert open_png(base64.b64decode(c["b64_json"])).text["prompt"] == "streamed"
    assert events.index(completed[0]) > events.index(progress[-1])


def test_stream_raw_sse(http: httpx.Client) -> None:
    body = {"prompt": "raw", "size": "32x32", "stream": True, **FAST}
    with http.stream("POST", "/v1/images/generations", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    blocks = [b for b in text.split("\n\n") if b.strip()]
    kinds = [b.splitlines()[0].removeprefix("event: ") for b in blocks]
    assert kinds[-1] == "image_generation.completed"
    assert set(kinds) == {"image_generation.progress", "image_generation.completed"}
    data = json.loads(blocks[0].splitlines()[1].removeprefix("data: "))
    assert data["type"] == kinds[0] and {"stage", "step", "total"} <= set(data)
