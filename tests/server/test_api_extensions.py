"""Extension endpoints (interpolations, text diffs) and the service endpoints, over plain HTTP."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest

from .conftest import FAST, FAST_DECODER, ServerProc, open_png, png


def b64_images(r: httpx.Response) -> list:
    assert r.status_code == 200, r.text
    return [open_png(base64.b64decode(d["b64_json"])) for d in r.json()["data"]]


def test_interpolate_two_images(http: httpx.Client) -> None:
    files = [("image[]", ("a.png", png(32, seed=1), "image/png")), ("image[]", ("b.png", png(32, seed=2), "image/png"))]
    r = http.post("/v1/images/interpolations", files=files,
                  data={"frames": "3", "size": "32x32", "response_format": "b64_json", **_text(FAST_DECODER)})
    imgs = b64_images(r)
    assert [d["theta"] for d in r.json()["data"]] == [0.0, 0.5, 1.0]
    assert len(imgs) == 3 and imgs[1].text["theta"] == "0.5" and imgs[0].text["operation"] == "interpolation"


def test_interpolate_two_prompts_with_thetas(http: httpx.Client) -> None:
    data = {"prompt[]": ["a cat", "a dog"], "thetas": "0, 0.3", "mode": "fixed", "response_format": "b64_json",
            "size": "64x64", **_text(FAST)}
    r = http.post("/v1/images/interpolations", data=data)  # no files: url-encoded form
    imgs = b64_images(r)
    assert [d["theta"] for d in r.json()["data"]] == [0.0, 0.3]
    assert imgs[0].size == (64, 64)


def test_interpolate_url_by_repeated_image_field(http: httpx.Client) -> None:
    files = [("image", ("a.png", png(32, seed=1), "image/png")), ("image", ("b.png", png(32, seed=2), "image/png"))]
    r = http.post("/v1/images/interpolations", files=files,
                  data={"frames": "2", "size": "32x32", **_text(FAST_DECODER)})
    assert r.status_code == 200 and all(httpx.get(d["url"]).status_code == 200 for d in r.json()["data"])


@pytest.mark.parametrize("data, nfiles, param", [
    ({"frames": "3"}, 1, "image"),
    ({"frames": "3"}, 3, "image"),
    ({"frames": "1"}, 2, "frames"),
    ({"frames": "3", "thetas": "0,1"}, 2, "thetas"),
    ({"thetas": "0,1.5"}, 2, "thetas"),
    ({"thetas": "0,x"}, 2, "thetas"),
    ({"mode": "linear"}, 2, "mode"),
    ({"prompt": "only one"}, 0, "prompt"),
])
def test_interpolate_invalid(http: httpx.Client, data: dict, nfiles: int, param: str) -> None:
    files = [("image[]", (f"{i}.png", png(32, seed=i), "image/png")) for i in range(nfiles)] or None
    r = http.post("/v1/images/interpolations", files=files, data={**data, **_text(FAST_DECODER)})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_text_diff(http: httpx.Client) -> None:
    r = http.post("/v1/images/text-diffs", files={"image": ("a.png", png(32), "image/png")},
                  data={"prompt": "a photo of a dog", "source_prompt": "a photo of a cat", "frames": "3",
                        "max_theta": "0.4", "size": "32x32", "response_format": "b64_json", **_text(FAST_DECODER)})
    imgs = b64_images(r)
    assert [round(d["theta"], 6) for d in r.json()["data"]] == [0.0, 0.2, 0.4]
    assert imgs[2].text["operation"] == "text_diff" and imgs[2].text["source_prompt"] == "a photo of a cat"


@pytest.mark.parametrize("data, param", [
    ({"prompt": "x", "max_theta": "2"}, "max_theta"),
    ({"prompt": "x", "frames": "0"}, "frames"),
    ({"frames": "2"}, "prompt"),
])
def test_text_diff_invalid(http: httpx.Client, data: dict, param: str) -> None:
    r = http.post("/v1/images/text-diffs", files={"image": ("a.png", png(32), "image/png")}, data=data)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-9")


def test_health_ready_metrics_docs(http: httpx.Client) -> None:
    assert http.get("/health").json()["status"] == "ready"
    assert http.get("/ready").status_code == 200
    metrics = http.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert http.get("/docs").status_code == 200
    spec = http.get("/openapi.json").json()
    paths = spec["paths"]
    for p in ("/v1/images/generations", "/v1/images/edits", "/v1/images/variations", "/v1/images/interpolations",
              "/v1/images/text-diffs", "/v1/models"):
        assert p in paths
    assert "multipart/form-data" in paths["/v1/images/edits"]["post"]["requestBody"]["content"]


def test_unknown_image_url_is_404(http: httpx.Client) -> None:
    r = http.get("/v1/files/images/doesnotexist.png")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_method_not_allowed(http: httpx.Client) -> None:
    r = http.get("/v1/images/generations")
    assert r.status_code == 405 and "error" in r.json()


def _text(d: dict) -> dict[str, str]:
    return {k: str(v) for k, v in d.items()}


def test_openai_error_class_for_unsupported_size(server: ServerProc) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        server.client().images.generate(prompt="x", size="256x256", extra_body=FAST)
    assert "32x32" in info.value.message and "64x64" in info.value.message
