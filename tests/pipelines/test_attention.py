"""The one attention function: equals a plain softmax reference; SDPA on CPU; logged once."""

from __future__ import annotations

import logging
import math
from typing import Optional

import pytest
import torch

from pipelines import attention as A


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) + bias) V, in fp64. q: [B, H, Lq, D]; k, v: [B, H, Lk, D]."""
    scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias.double()
    return (scores.softmax(dim=-1) @ v.double()).to(q.dtype)


def qkv(b: int = 2, h: int = 3, lq: int = 5, lk: int = 7, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g) for n in (lq, lk, lk))


def padding_bias(b: int, lk: int, keep: list[int]) -> torch.Tensor:
    """[B, 1, 1, Lk] additive key-padding bias: row i keeps its first keep[i] keys."""
    mask = torch.arange(lk)[None] < torch.tensor(keep)[:, None]
    return torch.zeros(b, lk).masked_fill(~mask, float("-inf"))[:, None, None, :]


def test_without_bias_matches_reference() -> None:
    q, k, v = qkv()
    assert torch.allclose(A.attention(q, k, v), reference(q, k, v, None), atol=1e-6)


def test_key_padding_bias_matches_reference() -> None:
    q, k, v = qkv()
    bias = padding_bias(2, 7, [3, 7])
    out = A.attention(q, k, v, bias)
    assert torch.allclose(out, reference(q, k, v, bias), atol=1e-6)
    # masked keys have no influence at all
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 3:], v2[0, :, 3:] = 1e3, -1e3
    assert torch.allclose(A.attention(q, k2, v2, bias)[0], out[0], atol=1e-6)


def test_full_causal_and_real_valued_bias_matches_reference() -> None:
    """A [B, 1, L, L] bias as the prior builds it: causal -inf plus finite values."""
    q, k, v = qkv(lq=6, lk=6)
    causal = torch.full((6, 6), float("-inf")).triu_(1)
    bias = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(1)) + causal
    assert torch.allclose(A.attention(q, k, v, bias), reference(q, k, v, bias), atol=1e-6)


def test_backend_is_sdpa_on_cpu() -> None:
    assert A.backend_for(torch.device("cpu")) == "sdpa"
    A.set_backend("xformers")  # forcing xformers never applies off CUDA
    try:
        assert A.backend_for(torch.device("cpu")) == "sdpa"
    finally:
        A.set_backend(None)
    with pytest.raises(ValueError):
        A.set_backend("flash")


def test_backend_choice_logged_once(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(A, "_logged", set())
    caplog.set_level(logging.INFO, logger=A.log.name)
    q, k, v = qkv()
    for _ in range(3):
        A.attention(q, k, v)
    records = [r for r in caplog.records if "attention backend" in r.getMessage()]
    assert [r.getMessage() for r in records] == ["attention backend: sdpa"]


def test_xformers_that_imports_but_cannot_run_falls_back_to_sdpa(monkeypatch, caplog) -> None:
    """A wheel built for another torch imports and then fails at its first call: probed once
    per device and dtype, it leaves attention on SDPA instead of failing every request."""
    calls = []

    class Broken:
        def memory_efficient_attention(self, *args, **kw):
            calls.append(1)
            raise NotImplementedError("no operator found for memory_efficient_attention_forward")

    monkeypatch.setattr(A, "_xops", Broken())
    monkeypatch.setattr(A, "_probed", {})
    cuda = torch.device("cuda")
    with caplog.at_level("WARNING", logger=A.__name__):
        assert A.backend_for(cuda, torch.float16) == "sdpa"
        assert A.backend_for(cuda, torch.float16) == "sdpa"
    assert list(A._probed.values()) == [False] and len(calls) <= 1
    assert sum("attention uses SDPA" in r.getMessage() for r in caplog.records) == 1
