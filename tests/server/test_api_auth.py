"""Optional bearer keys: on with UNCLIP_API_KEYS, off without (the shared server)."""

from __future__ import annotations

from typing import Callable

import httpx
import openai
import pytest

from .conftest import FAST, ServerProc


@pytest.fixture(scope="module")
def keyed(launch_server: Callable[..., ServerProc]) -> ServerProc:
    return launch_server(env={"UNCLIP_API_KEYS": "sk-first, sk-second"})


def test_valid_keys_work(keyed: ServerProc) -> None:
    for key in ("sk-first", "sk-second"):
        res = keyed.client(api_key=key).images.generate(prompt="k", size="32x32", extra_body=FAST)
        assert httpx.get(res.data[0].url).status_code == 200  # image URLs need no key


def test_wrong_key_is_401(keyed: ServerProc) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        keyed.client(api_key="sk-wrong").images.generate(prompt="k", extra_body=FAST)
    assert info.value.code == "invalid_api_key" and info.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        keyed.client(api_key="sk-wrong").models.list()


def test_missing_key_is_401(keyed: ServerProc) -> None:
    r = httpx.post(keyed.url("/v1/images/generations"), json={"prompt": "k"}, headers={"x-request-id": "r1"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["x-request-id"] == "r1"
    r = httpx.get(keyed.url("/v1/models"), headers={"Authorization": "Basic c2stZmlyc3Q="})
    assert r.status_code == 401


def test_probes_and_docs_stay_open(keyed: ServerProc) -> None:
    for path in ("/health", "/ready", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(keyed.url(path)).status_code == 200, path


def test_no_keys_configured_means_open(server: ServerProc) -> None:
    assert httpx.get(server.url("/v1/models")).status_code == 200
    assert server.client(api_key="anything").models.list().data[0].id == "tiny"
