"""The API's parts without a server: URL store, key checks, settings, PNG metadata."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from pipelines.operations import OpResult
from server.api.auth import bearer_token, key_matches, needs_key
from server.requests.images import ImageMeta, encode, image_items, thetas_of
from server.settings import Settings
from server.state.url_store import StoreTooSmall, UrlStore

from .conftest import run


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_url_store_expiry_and_ids() -> None:
    clock = Clock()
    store = UrlStore(ttl_s=10, max_bytes=1000, clock=clock)
    a, b = run(store.put(b"a" * 10)), run(store.put(b"b" * 10))
    assert a != b and len(a) >= 32  # 192-bit random ids
    assert run(store.get(a)) == b"a" * 10 and run(store.expires_in(a)) == 10
    clock.t = 10.5
    assert run(store.get(a)) is None and run(store.get("guess")) is None
    run(store.put(b"c"))
    assert len(store) == 1 and store.size_bytes == 1  # expired entries purged on put


def test_url_store_bounded_in_bytes() -> None:
    store = UrlStore(ttl_s=100, max_bytes=25)
    keys = [run(store.put(bytes([i]) * 10)) for i in range(3)]
    assert run(store.get(keys[0])) is None and run(store.get(keys[2])) is not None  # oldest evicted
    assert store.size_bytes <= 25
    with pytest.raises(StoreTooSmall):
        run(store.put(b"x" * 26))


def test_keys() -> None:
    assert key_matches("sk-b", ("sk-a", "sk-b")) and not key_matches("sk-c", ("sk-a", "sk-b"))
    assert not key_matches("", ())
    assert bearer_token("Bearer  sk-a ") == "sk-a" and bearer_token("bearer x") == "x"
    assert bearer_token("Basic abc") is None and bearer_token(None) is None and bearer_token("Bearer ") is None
    assert needs_key("/v1/images/generations") and needs_key("/v1/models")
    assert not needs_key("/v1/files/images/abc.png") and not needs_key("/health") and not needs_key("/docs")


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNCLIP_API_KEYS", " sk-1, ,sk-2 ")
    monkeypatch.setenv("UNCLIP_PORT", "9001")
    monkeypatch.setenv("UNCLIP_DEVICE", "cpu")
    s = Settings()
    assert s.keys == ("sk-1", "sk-2") and s.port == 9001 and s.torch_device() == "cpu"
    assert s.url_ttl_s == 3600 and s.max_upload_bytes == 4 * 2**20 and str(s.model_dir) == "weights/default"
    assert Settings(api_keys="").keys == () and Settings(dtype="float16").torch_dtype() == torch.float16


def test_pngs_carry_parameters_and_thetas() -> None:
    result = OpResult(torch.zeros(2, 3, 8, 8), thetas=[0.0, 0.5])
    meta = ImageMeta("tiny", "interpolation", 40, {"prompt": "p", "decoder_steps": 3, "eta": None})
    pngs = encode(result, meta)
    img = Image.open(io.BytesIO(pngs[1]))
    assert img.text["seed"] == "41" and img.text["theta"] == "0.5" and img.text["prompt"] == "p"
    assert "eta" not in img.text and json.loads(img.text["unclip"])["decoder_steps"] == 3
    assert img.text["parameters"].startswith("p\nSteps: 3, Seed: 41, Model: tiny")
    items = run(image_items(pngs, thetas_of(result), "url", UrlStore(60, 10**6), "http://h:1/"))
    assert items[0].url.startswith("http://h:1/v1/files/images/") and items[1].theta == 0.5
