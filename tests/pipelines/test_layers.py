"""The fp32 norms: in bf16 on the CPU they run natively (no casts) and give the values of
normalizing in fp32 and rounding once, to within one bf16 rounding step."""

from __future__ import annotations

import pytest
import torch

from pipelines.layers import GroupNorm32, LayerNorm32


def _bf16_params(norm: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(norm.weight.shape, generator=g))
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=g))
    return norm.to(torch.bfloat16)


def _within_one_rounding(got: torch.Tensor, ref32: torch.Tensor) -> None:
    """got (bf16) against the fp32 result: at most one bf16 step (2^-7 relative) apart, and
    equal to its bf16 rounding almost everywhere."""
    assert got.dtype == torch.bfloat16
    err = (got.float() - ref32).abs()
    assert bool((err <= ref32.abs() * 2 ** -7 + 1e-6).all()), err.max()
    assert (got != ref32.to(torch.bfloat16)).float().mean() < 0.01


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape,groups", [((2, 64, 32, 32), 8), ((3, 96, 8, 8), 32)])
def test_group_norm_bf16_on_cpu_is_fp32_rounded_once(shape, groups, channels_last: bool) -> None:
    norm = _bf16_params(GroupNorm32(groups, shape[1]), seed=1)
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 4 + 3).to(torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref32 = torch.nn.functional.group_norm(x.float(), groups, norm.weight.float(), norm.bias.float(), norm.eps)
    _within_one_rounding(norm(x), ref32)


def test_layer_norm_bf16_on_cpu_is_fp32_rounded_once() -> None:
    norm = _bf16_params(LayerNorm32(256), seed=3)
    x = (torch.randn(4, 81, 256, generator=torch.Generator().manual_seed(4)) * 4 + 3).to(torch.bfloat16)
    ref32 = torch.nn.functional.layer_norm(x.float(), (256,), norm.weight.float(), norm.bias.float(), norm.eps)
    _within_one_rounding(norm(x), ref32)


def test_norms_cast_inputs_unlike_their_parameters() -> None:
    """fp32 parameters with bf16 activations (a mixed module) still normalize in fp32 and
    return the activations' dtype."""
    norm = GroupNorm32(4, 16)
    x = torch.randn(2, 16, 4, 4).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    ref = torch.nn.functional.group_norm(x.float(), 4, norm.weight, norm.bias, norm.eps)
    assert torch.equal(out, ref.to(torch.bfloat16))
