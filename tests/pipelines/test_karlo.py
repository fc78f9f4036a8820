"""Karlo compatibility: Karlo-sized modules vs the checkpoint manifests, the import of
Karlo-format files (on small configs), and the converter CLI end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from pipelines.checkpoints import MissingWeightsError, UnsafeCheckpointError, build_on_meta, load_model_dir
from pipelines.config import StackConfig
from pipelines.karlo import (
    DECODER_PREFIXES,
    PRIOR_PREFIXES,
    SR_PREFIXES,
    CheckpointMismatchError,
    import_karlo,
    read_clip_weights,
    to_karlo,
)
from pipelines.operations import generate
from pipelines.stack import UnCLIPStack
from pipelines.unclip import Sampling, UnCLIP, run_direct
from tests.pipelines.test_checkpoints import assert_same_outputs, tiny_with_stats
from tools.convert import main as convert_main

REPO = Path(__file__).parents[2]
KARLO_DIR = REPO / "tests" / "data" / "karlo"
# manifest name -> (file, our submodule of UnCLIPStack, Karlo prefixes)
MANIFESTS = {
    "prior": ("prior.tsv", "prior", PRIOR_PREFIXES),
    "decoder": ("decoder.tsv", "decoder", DECODER_PREFIXES),
    "sr_64_256": ("sr_64_256.tsv", "upsamplers.0", SR_PREFIXES),
}


# ---- (a) Karlo-sized modules vs the manifests -----------------------------------------------


def read_manifest(fname: str) -> dict[str, tuple[int, ...]]:
    """`key  shape  dtype` rows (shape `AxBxC`) -> {key: shape}."""
    rows = (KARLO_DIR / fname).read_text().splitlines()[1:]
    cells = (r.split("\t") for r in rows if r.strip())
    return {c[0]: tuple(int(x) for x in c[1].split("x") if x) for c in cells}


@pytest.fixture(scope="module")
def karlo_meta() -> UnCLIPStack:
    """The full Karlo-sized stack (CLIP ViT-L/14 included) on the meta device: no memory."""
    return build_on_meta(StackConfig.karlo())


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_karlo_sized_module_matches_manifest(karlo_meta: UnCLIPStack, name: str) -> None:
    fname, sub, prefixes = MANIFESTS[name]
    manifest = read_manifest(fname)
    module = karlo_meta.get_submodule(sub)
    ours = {k: tuple(v.shape) for k, v in to_karlo(module.state_dict(), prefixes).items()}
    assert sorted(set(manifest) - set(ours)) == [], "missing keys"
    assert sorted(set(ours) - set(manifest)) == [], "extra keys"
    assert {k: (ours[k], s) for k, s in manifest.items() if ours[k] != s} == {}, "shape mismatches"
    summary = json.loads((KARLO_DIR / "summary.json").read_text())[name]
    assert len(ours) == summary["n_keys"]
    assert sum(p.numel() for p in module.parameters()) == summary["n_parameters"]


def test_karlo_clip_is_openai_vit_l14(karlo_meta: UnCLIPStack) -> None:
    """OpenAI's ViT-L/14 has 427,616,513 parameters and was trained with QuickGELU."""
    model = karlo_meta.clip.model
    assert sum(p.numel() for p in model.parameters()) == 427_616_513
    assert type(model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


def test_non_persistent_buffers_stay_out_of_state_dicts(karlo_meta: UnCLIPStack) -> None:
    prior = karlo_meta.prior
    assert "causal_mask" in dict(prior.named_buffers())
    assert "causal_mask" not in prior.state_dict()
    assert prior.causal_mask.shape == (81, 81)
    for _, sub, _ in MANIFESTS.values():
        module = karlo_meta.get_submodule(sub)
        buffers = {n for n, _ in module.named_buffers()}
        assert not buffers & set(module.state_dict()), f"{sub} stores buffers"


# ---- (b) import round trip on a small config -------------------------------------------------


class Opaque:
    """A custom class: pickling it makes a checkpoint that weights_only loading refuses."""

    def __init__(self) -> None:
        self.note = "not a tensor"


def write_karlo_files(src: UnCLIPStack, folder: Path, extra: dict | None = None) -> dict[str, Path]:
    """Write src in Karlo's file formats (Lightning-style ckpts, stats tuple, open_clip
    state dict); `extra` entries are added to the prior checkpoint's top level."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {k: folder / f for k, f in (("prior", "prior.ckpt"), ("decoder", "decoder.ckpt"), ("sr", "sr.ckpt"),
                                        ("clip", "clip.bin"), ("stats", "stats.th"))}
    for name, (_, sub, prefixes) in zip(("prior", "decoder", "sr"), MANIFESTS.values()):
        ckpt = {"state_dict": to_karlo(src.get_submodule(sub).state_dict(), prefixes), "global_step": 7}
        torch.save(dict(ckpt, **(extra or {})) if name == "prior" else ckpt, paths[name])
    torch.save(src.clip.model.state_dict(), paths["clip"])
    torch.save((src.clip_mean.clone(), src.clip_std.clone()), paths["stats"])
    return paths


def import_files(paths: dict[str, Path], **kw) -> UnCLIPStack:
    return import_karlo(paths["prior"], paths["decoder"], paths["sr"], paths["clip"], paths["stats"],
                        cfg=StackConfig.tiny(), **kw)


@pytest.fixture(scope="module")
def source() -> UnCLIPStack:
    return tiny_with_stats(seed=3)


@pytest.fixture(scope="module")
def karlo_files(source: UnCLIPStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_karlo_files(source, tmp_path_factory.mktemp("karlo"))


def assert_same_tensors(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []


def test_import_round_trip(source: UnCLIPStack, karlo_files: dict[str, Path]) -> None:
    imported = import_files(karlo_files)
    assert_same_tensors(source, imported)
    assert {p.dtype for p in imported.parameters()} == {torch.float32}
    assert not any(p.is_meta for p in imported.parameters()) and not any(b.is_meta for b in imported.buffers())
    assert_same_outputs(source, imported)


def mapped_file(ptr: int) -> str:
    """The path of the file mapped at address ptr in this process ("" if anonymous memory)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= ptr < hi:
            return parts[5].strip() if len(parts) == 6 else ""
    return ""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc/self/maps")
def test_imported_weights_are_memory_mapped(karlo_files: dict[str, Path]) -> None:
    """fp32 tensors are assigned straight from the mmap'd checkpoints: no second copy."""
    imported = import_files(karlo_files)
    for name, (_, sub, _) in zip(("prior", "decoder", "sr"), MANIFESTS.values()):
        where = {mapped_file(p.data_ptr()) for p in imported.get_submodule(sub).parameters()}
        assert where == {str(karlo_files[name].resolve())}, sub


@pytest.mark.parametrize("variant", ["safetensors", "wrapped"])
def test_clip_weight_formats(source: UnCLIPStack, tmp_path: Path, variant: str) -> None:
    sd = source.clip.model.state_dict()
    if variant == "safetensors":
        path = tmp_path / "clip.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:  # {'state_dict': {'module.' + key}} as DDP training scripts write it
        path = tmp_path / "clip.pt"
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 32}, path)
    read = read_clip_weights(path)
    assert read.keys() == sd.keys() and all(torch.equal(read[k], sd[k]) for k in sd)


def test_pickled_object_refused_unless_allowed(source: UnCLIPStack, tmp_path: Path) -> None:
    paths = write_karlo_files(source, tmp_path, extra={"hyper_parameters": Opaque()})
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle"):
        import_files(paths)
    assert_same_tensors(source, import_files(paths, allow_pickle=True))


@pytest.mark.parametrize("missing", ["prior", "decoder", "sr", "clip", "stats"])
def test_missing_file_is_named(karlo_files: dict[str, Path], tmp_path: Path, missing: str) -> None:
    paths = dict(karlo_files, **{missing: tmp_path / f"absent-{missing}.ckpt"})
    with pytest.raises(MissingWeightsError, match=f"absent-{missing}"):
        import_files(paths)


def test_mismatched_checkpoint_names_file_and_key(source: UnCLIPStack, tmp_path: Path) -> None:
    paths = write_karlo_files(source, tmp_path)
    ckpt = torch.load(paths["decoder"], weights_only=True)
    del ckpt["state_dict"]["model.cf_param"]
    torch.save(ckpt, paths["decoder"])
    with pytest.raises(CheckpointMismatchError, match=r"decoder\.ckpt.*cf_param"):
        import_files(paths)


def test_bad_stats_refused(source: UnCLIPStack, tmp_path: Path) -> None:
    paths = write_karlo_files(source, tmp_path)
    torch.save((source.clip_mean, source.clip_std[:-1]), paths["stats"])
    with pytest.raises(CheckpointMismatchError, match="stats"):
        import_files(paths)


# ---- (c) the converter CLI -------------------------------------------------------------------


def convert_args(paths: dict[str, Path], out: Path, config: Path) -> list[str]:
    flags = [f"--{k}={v}" for k, v in paths.items()]
    return ["karlo", *flags, f"--config={config}", f"--out={out}", "--dtype=fp16"]


def test_convert_cli_end_to_end(source: UnCLIPStack, karlo_files: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "tiny.json"
    StackConfig.tiny().save(config)
    out = tmp_path / "model"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "tools.convert", *convert_args(karlo_files, out, config)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stack = load_model_dir(out, dtype=torch.float32)
    want = source.state_dict()
    got = stack.state_dict()
    stats = ("clip_mean", "clip_std")  # stored in fp32 whatever --dtype says
    assert [k for k in want if not torch.equal(got[k], want[k] if k in stats else want[k].half().float())] == []
    pipe = UnCLIP(stack)
    opts = Sampling(prior_steps=2, decoder_steps=2, upsampler_steps=2, best_of=1)
    images = run_direct(pipe, generate(pipe, "a red circle", n=1, seed=5, opts=opts)).images
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()
    assert images.min() >= -1 and images.max() <= 1


def test_convert_cli_missing_file(karlo_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = dict(karlo_files, sr=tmp_path / "no-such-sr.ckpt")
    StackConfig.tiny().save(tmp_path / "tiny.json")
    assert convert_main(convert_args(paths, tmp_path / "model", tmp_path / "tiny.json")) == 2
    assert "no-such-sr.ckpt" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()
