"""Snapshots downloaded with only a weight variant (`hf download --include "*.fp16.*"`)
load as they are, and a folder with both loads the variant of the dtype served
(pipelines/hub_variants.py): tiny random Kandinsky 2.2 and Karlo snapshots, rewritten as
the Hub lays out variants."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from pipelines.checkpoints import MissingWeightsError  # noqa: E402
from pipelines.diffusers_layout import load_karlo_snapshot  # noqa: E402
from pipelines.hub_variants import STEMS, has_plain_weights, variant_to_load, variants  # noqa: E402
from pipelines.kandinsky.networks import KandinskyNets, load_kandinsky  # noqa: E402
from pipelines.model_dir import describe  # noqa: E402

NETS = ("prior", "text_encoder", "image_encoder", "unet", "movq", "inpaint_unet")


def with_variant(src: Path, dst: Path, variant: str = "fp16", keep_plain: bool = False,
                 change: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> Path:
    """A copy of the snapshot folder src whose every `<stem>.safetensors` is also (keep_plain)
    or only written as `<stem>.<variant>.safetensors`: its tensors through `change`, in fp16."""
    shutil.copytree(src, dst)
    for file in [p for stem in STEMS for p in dst.rglob(f"{stem}.safetensors")]:
        tensors = {k: change(t).half() if t.is_floating_point() else t for k, t in load_file(str(file)).items()}
        save_file(tensors, str(file.with_name(f"{file.stem}.{variant}.safetensors")), metadata={"format": "pt"})
        if not keep_plain:
            file.unlink()
    return dst


def states(nets: KandinskyNets) -> dict[str, torch.Tensor]:
    """Every weight of the loaded networks, by network and name (inpaint_unet: if loaded)."""
    loaded = [net for net in NETS if getattr(nets, net) is not None]
    return {f"{net}.{k}": v for net in loaded for k, v in getattr(nets, net).state_dict().items()}


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_file_names_tell_plain_weights_and_variants(tmp_path: Path) -> None:
    names = {"plain": ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"],
             "fp16-only": ["model.fp16.safetensors", "config.json"],
             "sharded": ["model.safetensors.index.fp16.json", "model.fp16-00001-of-00002.safetensors",
                         "model.fp16-00002-of-00002.safetensors", "model.safetensors.index.bf16.json",
                         "model.bf16-00001-of-00002.safetensors"],
             "sharded-plain": ["model.safetensors.index.json", "model-00001-of-00002.safetensors"],
             "none": ["vocab.json", "merges.txt", "special_tokens_map.json"]}
    for folder, files in names.items():
        (tmp_path / folder).mkdir()
        for name in files:
            (tmp_path / folder / name).touch()
    assert [variants(tmp_path / f) for f in names] == [{"fp16"}, {"fp16"}, {"fp16", "bf16"}, set(), set()]
    assert [has_plain_weights(tmp_path / f) for f in names] == [True, False, False, True, False]
    assert [variant_to_load(tmp_path / f, torch.float32) for f in names] == [None, "fp16", "fp16", None, None]
    assert [variant_to_load(tmp_path / f, torch.float16) for f in names] == ["fp16", "fp16", "fp16", None, None]
    assert variant_to_load(tmp_path / "sharded", torch.bfloat16) == "bf16"
    assert variant_to_load(tmp_path / "plain", torch.bfloat16) is None


def test_kandinsky_folder_of_fp16_files_only_loads_them(kandinsky_model_dir: Path, tmp_path: Path) -> None:
    fp16_only = with_variant(kandinsky_model_dir, tmp_path / "kandinsky-fp16")
    assert not list(fp16_only.rglob("*model.safetensors"))
    plain = states(load_kandinsky(kandinsky_model_dir, "cpu", torch.float32))
    assert_same(states(load_kandinsky(fp16_only, "cpu", torch.float32)),
                {k: v.half().float() if v.is_floating_point() else v for k, v in plain.items()})


def test_the_variant_of_the_dtype_served_is_read_first(kandinsky_model_dir: Path, tmp_path: Path) -> None:
    both = with_variant(kandinsky_model_dir, tmp_path / "kandinsky-both", keep_plain=True, change=lambda t: -t)
    plain = states(load_kandinsky(kandinsky_model_dir, "cpu", torch.float16))
    assert_same(states(load_kandinsky(both, "cpu", torch.float32)),
                states(load_kandinsky(kandinsky_model_dir, "cpu", torch.float32)))
    # fp16 served: the variant's values (negated here), not the plain ones cast
    negated = states(load_kandinsky(both, "cpu", torch.float16))
    moved = [k for k, v in plain.items() if v.is_floating_point() and v.abs().sum() > 0]
    assert moved and all(torch.equal(negated[k], -plain[k]) for k in moved)


def test_karlo_snapshot_of_fp16_files_only_loads_them(karlo_snapshot_dir: Path, tmp_path: Path) -> None:
    fp16_only = with_variant(karlo_snapshot_dir, tmp_path / "karlo-fp16")
    assert {p.name for p in (fp16_only / "decoder").iterdir()} == {"config.json",
                                                                    "diffusion_pytorch_model.fp16.safetensors"}
    plain = load_karlo_snapshot(karlo_snapshot_dir, "cpu", torch.float32).state_dict()
    assert_same(load_karlo_snapshot(fp16_only, "cpu", torch.float32).state_dict(),
                {k: v.half().float() if v.is_floating_point() else v for k, v in plain.items()})


def test_missing_weights_name_their_folder(kandinsky_model_dir: Path, karlo_snapshot_dir: Path,
                                           tmp_path: Path) -> None:
    kandinsky = with_variant(kandinsky_model_dir, tmp_path / "kandinsky")
    for file in (kandinsky / "decoder" / "unet").glob("*.safetensors"):
        file.unlink()
    with pytest.raises(MissingWeightsError, match=r"UNet2DConditionModel from \S*decoder/unet"):
        load_kandinsky(kandinsky, "cpu", torch.float32)
    karlo = with_variant(karlo_snapshot_dir, tmp_path / "karlo")
    for file in (karlo / "text_encoder").glob("*.safetensors"):
        file.unlink()
    with pytest.raises(MissingWeightsError, match=r"CLIPTextModelWithProjection from \S*karlo/text_encoder"):
        load_karlo_snapshot(karlo, "cpu", torch.float32)


def as_hub_cache(snapshot: Path, cache: Path, repo: str) -> Path:
    """The snapshot folder as `hf download` without --local-dir leaves it in the Hugging Face
    cache: files in blobs/ named by their hash, and snapshots/<revision>/ of relative
    symlinks to them. Returns the snapshot's path there."""
    import hashlib

    root = cache / f"models--{repo.replace('/', '--')}"
    revision = root / "snapshots" / ("0" * 40)
    for file in (p for p in snapshot.rglob("*") if p.is_file()):
        blob = root / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, blob)
        link = revision / file.relative_to(snapshot)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(link.relative_to(root).parts) - 1)) / blob.relative_to(root))
    return revision


def test_snapshots_in_the_hub_cache_load_through_links(kandinsky_model_dir: Path, tmp_path: Path) -> None:
    """A model folder whose prior/ and decoder/ link to snapshots in the Hub's cache (the
    docs' way for downloads without --local-dir), their fp16 files only: it loads the same."""
    fp16 = with_variant(kandinsky_model_dir, tmp_path / "fp16")
    folder = tmp_path / "kandinsky-2.2"
    folder.mkdir()
    for name in ("prior", "decoder"):
        snapshot = as_hub_cache(fp16 / name, tmp_path / "hub", f"kandinsky-community/kandinsky-2-2-{name}")
        assert (snapshot / "model_index.json").is_symlink()
        (folder / name).symlink_to(snapshot)
    assert describe(folder).family == "kandinsky-2.2"
    want = states(load_kandinsky(fp16, "cpu", torch.float32))
    got = states(load_kandinsky(folder, "cpu", torch.float32))
    assert_same(got, {k: v for k, v in want.items() if not k.startswith("inpaint_unet")})
