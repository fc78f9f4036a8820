"""Model directories: save/load round trip, fp16 storage, pruned token embeddings, missing
files, config JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipelines.checkpoints import (
    CONFIG_FILE,
    MissingWeightsError,
    default_dtype,
    load_model_dir,
    module_files,
    random_stack,
    read_weights,
    save_model_dir,
)
from pipelines.clip import (
    FALLBACK_TOKEN_ROW,
    KEPT_TOKEN_IDS,
    KEPT_TOKEN_ROWS,
    TOKEN_EMBEDDING,
    expand_token_embedding,
    prune_token_embedding,
)
from pipelines.config import StackConfig
from pipelines.operations import generate
from pipelines.stack import UnCLIPStack
from pipelines.unclip import Sampling, UnCLIP, run_direct


def stack_outputs(stack: UnCLIPStack, seed: int = 0) -> dict[str, torch.Tensor]:
    """Outputs of every network of a (tiny-sized) stack on fixed random inputs, batch 2 at
    timesteps (10, 500): CLIP text/image encodings, prior, decoder, upsampler networks."""
    g = torch.Generator().manual_seed(seed)
    cfg = stack.cfg
    dim, size = cfg.prior.model.clip_dim, cfg.decoder.model.image_size
    t = torch.tensor([10, 500])
    text = stack.clip.encode_text(["a red square", ""])
    out = {"pooled": text.pooled, "states": text.states, "clip_mean": stack.clip_mean, "clip_std": stack.clip_std}
    out["image_emb"] = stack.clip.encode_image(torch.rand(2, 3, 40, 48, generator=g) * 2 - 1)
    out["prior"] = stack.prior(torch.randn(2, dim, generator=g), t, text.pooled, text.states, text.mask)
    x = torch.randn(2, 3, size, size, generator=g)
    out["decoder"] = stack.decoder(x, t, torch.randn(2, dim, generator=g), text.pooled, text.states, text.mask)
    for i, up in enumerate(stack.upsamplers):
        s = up.cfg.out_size
        x, low = torch.randn(2, 3, s, s, generator=g), torch.randn(2, 3, s, s, generator=g)
        out[f"up{i}"] = up.model(x, t, low_res=low)
        if up.last_step_model is not None:
            out[f"up{i}_last"] = up.last_step_model(x, torch.zeros_like(t), low_res=low)
    return out


def assert_same_outputs(a: UnCLIPStack, b: UnCLIPStack) -> None:
    """Every output of stack_outputs is bitwise identical."""
    oa, ob = stack_outputs(a), stack_outputs(b)
    for key in oa:
        assert torch.equal(oa[key], ob[key]), key


def tiny_with_stats(seed: int) -> UnCLIPStack:
    """A tiny random stack whose CLIP embedding statistics are random too (not 0 and 1)."""
    stack = random_stack(StackConfig.tiny(), seed=seed)
    stack.clip_mean.normal_()
    stack.clip_std.uniform_(0.5, 1.5)
    return stack


@pytest.fixture(scope="module")
def tiny() -> UnCLIPStack:
    return tiny_with_stats(seed=1)


def test_round_trip_identical(tiny: UnCLIPStack, tmp_path: Path) -> None:
    save_model_dir(tiny, tmp_path)
    loaded = load_model_dir(tmp_path, dtype=torch.float32)
    sa, sb = tiny.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert_same_outputs(tiny, loaded)


def test_weight_files_are_world_readable(tiny: UnCLIPStack, tmp_path: Path) -> None:
    """A container's non-root server must be able to read a directory that root wrote."""
    save_model_dir(tiny, tmp_path)
    files = sorted(tmp_path.glob("*.safetensors"))
    assert files
    assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: 0o644 for f in files}


def test_fp16_storage_loads_in_the_dtype_asked(tiny: UnCLIPStack, tmp_path: Path) -> None:
    save_model_dir(tiny, tmp_path, dtype=torch.float16)
    with safe_open(str(tmp_path / "decoder.safetensors"), "pt") as f:
        assert f.get_tensor("out.2.weight").dtype == torch.float16
    loaded = load_model_dir(tmp_path, dtype=torch.float32)
    sa, sb = tiny.state_dict(), loaded.state_dict()
    for key in sa:
        assert sb[key].dtype == torch.float32, key
        # stats are stored in fp32 whatever the weights' dtype
        want = sa[key] if key.startswith("clip_") else sa[key].half().float()
        assert torch.equal(sb[key], want), key


@pytest.mark.parametrize("avx512_bf16,amx,want", [(False, False, torch.float32), (True, False, torch.bfloat16),
                                                   (False, True, torch.bfloat16)])
def test_default_dtype_follows_native_bf16(monkeypatch: pytest.MonkeyPatch, tiny: UnCLIPStack, tmp_path: Path,
                                           avx512_bf16: bool, amx: bool, want: torch.dtype) -> None:
    """CPU: bf16 only where the CPU has bf16 dot products; CUDA: fp16; the loader follows."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert default_dtype("cpu") == want and default_dtype("cuda") == torch.float16
    save_model_dir(tiny, tmp_path)
    assert load_model_dir(tmp_path).dtype == want


def test_bf16_is_batch_invariant_and_near_fp32(tiny: UnCLIPStack, tmp_path: Path) -> None:
    """The bf16 networks (sampler state in fp32) give each image the same pixels alone or
    batched (mean |diff| <= 1/255) and stay near fp32 (measured 0.25/255 and 1.7/255)."""
    save_model_dir(tiny, tmp_path)
    fast = Sampling(prior_steps=4, decoder_steps=4, upsampler_steps=2)
    images = {}
    for dtype in (torch.float32, torch.bfloat16):
        pipe = UnCLIP(load_model_dir(tmp_path, dtype=dtype).use_channels_last())
        images[dtype] = [run_direct(pipe, generate(pipe, "a red circle", n=3, seed=4, opts=fast), max_batch=m).images
                         for m in (3, 1)]
    unit = 2 / 255  # images in [-1, 1]
    batched, alone = images[torch.bfloat16]
    assert (batched - alone).abs().mean() <= unit
    assert (images[torch.float32][0] - batched).abs().mean() <= 4 * unit
    assert batched.dtype == torch.float32


def test_pruned_token_embedding_round_trips(tiny: UnCLIPStack, tmp_path: Path) -> None:
    """keep_token_ids stores the kept rows, their ids and the mean of the other rows; the
    loader rebuilds the full matrix from them (fallback row everywhere else), so texts made
    of kept tokens encode exactly as with the full matrix. Every other tensor is unchanged."""
    tokens = tiny.clip.tokenize(["a red square", "a blue circle on the left", ""])
    keep = sorted(set(tokens.flatten().tolist()))  # padding 0, start and end of text included
    save_model_dir(tiny, tmp_path, keep_token_ids=keep)
    with safe_open(str(tmp_path / "clip.safetensors"), "pt") as f:
        assert TOKEN_EMBEDDING not in f.keys()
        assert f.get_tensor(KEPT_TOKEN_IDS).tolist() == keep
    full = tiny.clip.model.token_embedding.weight
    dropped = torch.ones(len(full), dtype=torch.bool)
    dropped[keep] = False
    loaded = load_model_dir(tmp_path, dtype=torch.float32)
    weight = loaded.clip.model.token_embedding.weight
    assert weight.shape == full.shape
    assert torch.equal(weight[keep], full[keep])
    fallback = full[dropped].double().mean(0).float()
    assert torch.equal(weight[dropped], fallback.expand(int(dropped.sum()), -1))
    sa, sb = tiny.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if not k.endswith(TOKEN_EMBEDDING))
    assert_same_outputs(tiny, loaded)  # stack_outputs encodes "a red square" and ""
    a, b = (s.clip.encode_text(["a blue circle on the left"]) for s in (tiny, loaded))
    assert torch.equal(a.pooled, b.pooled) and torch.equal(a.states, b.states)


def test_full_and_pruned_files_read_back(tiny: UnCLIPStack, tmp_path: Path) -> None:
    """read_weights returns a full-matrix file as stored and a pruned one expanded to the
    module's vocabulary; pruning the expanded state again gives the same tensors."""
    module = tiny.clip.model
    sd = {k: v.half() for k, v in module.state_dict().items()}
    pruned = prune_token_embedding(sd, [0, 320, 49406, 49407])
    assert pruned[KEPT_TOKEN_ROWS].shape == (4, sd[TOKEN_EMBEDDING].shape[1])
    assert pruned[FALLBACK_TOKEN_ROW].dtype == torch.float16
    for name, tensors in (("full", sd), ("pruned", pruned)):
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
    full = read_weights(tmp_path / "full.safetensors", module)
    assert full.keys() == sd.keys() and all(torch.equal(full[k], sd[k]) for k in sd)
    expanded = read_weights(tmp_path / "pruned.safetensors", module)
    assert expanded.keys() == sd.keys()
    again = prune_token_embedding(expanded, [0, 320, 49406, 49407])
    assert all(torch.equal(again[k], pruned[k]) for k in pruned)


def test_malformed_pruned_token_embedding_is_refused(tiny: UnCLIPStack) -> None:
    pruned = prune_token_embedding(tiny.clip.model.state_dict(), [0, 5, 49407])
    with pytest.raises(ValueError, match="in \\[0, 100\\)"):
        expand_token_embedding(pruned, 100)
    with pytest.raises(ValueError, match="distinct"):
        expand_token_embedding({**pruned, KEPT_TOKEN_IDS: torch.tensor([0, 5, 5])}, 49408)
    with pytest.raises(ValueError, match="both"):
        expand_token_embedding({**pruned, TOKEN_EMBEDDING: tiny.clip.model.token_embedding.weight}, 49408)
    with pytest.raises(ValueError, match="fit together"):
        expand_token_embedding({**pruned, KEPT_TOKEN_ROWS: pruned[KEPT_TOKEN_ROWS][:2]}, 49408)


@pytest.mark.parametrize("fname", [CONFIG_FILE, "decoder.safetensors", "upsampler_0.safetensors",
                                   "clip_stats.safetensors"])
def test_missing_file_is_named(tiny: UnCLIPStack, tmp_path: Path, fname: str) -> None:
    save_model_dir(tiny, tmp_path)
    (tmp_path / fname).unlink()
    with pytest.raises(MissingWeightsError, match=fname):
        load_model_dir(tmp_path)


def test_module_files_cover_every_tensor() -> None:
    cfg = StackConfig.tiny()
    stack = random_stack(cfg)
    covered = {f"{name}.{k}" for name in module_files(cfg) for k in stack.get_submodule(name).state_dict()}
    assert covered | {"clip_mean", "clip_std"} == set(stack.state_dict())


@pytest.mark.parametrize("make", [StackConfig.karlo, StackConfig.tiny, StackConfig])
def test_stack_config_json_round_trip(make, tmp_path: Path) -> None:
    cfg = make()
    assert StackConfig.from_dict(json.loads(cfg.to_json())) == cfg
    cfg.save(tmp_path / CONFIG_FILE)
    loaded = StackConfig.load(tmp_path / CONFIG_FILE)
    assert loaded == cfg
    assert isinstance(loaded.upsamplers, tuple) and isinstance(loaded.decoder.model.channel_mult, tuple)
