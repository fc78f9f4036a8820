"""Snapshots downloaded with only a weight variant (`hf download --include "*.fp16.*"`)
load as they are, and a folder with both loads the variant of the dtype served
(pipelines/hub_variants.py): tiny random Kandinsky 2.2 and Karlo snapshots, rewritten as
the Hub lays out variants."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from pipelines.checkpoints import MissingWeightsError  # noqa: E402
from pipelines.diffusers_layout import load_karlo_snapshot  # noqa: E402
from pipelines.hub_variants import has_plain_weights, variant_to_load, variants  # noqa: E402
from pipelines.kandinsky.networks import KandinskyNets, load_kandinsky  # noqa: E402
from pipelines.model_dir import describe  # noqa: E402
from tests.pipelines._hub_layouts import linked_from_cache, with_variant  # noqa: E402

NETS = ("prior", "text_encoder", "image_encoder", "unet", "movq", "inpaint_unet")


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


def test_snapshots_in_the_hub_cache_load_through_links(kandinsky_model_dir: Path, tmp_path: Path) -> None:
    """A model folder whose prior/ and decoder/ link to snapshots in the Hub's cache (the
    docs' way for downloads without --local-dir), their fp16 files only: it loads the same."""
    folder = linked_from_cache(kandinsky_model_dir, tmp_path)
    assert (folder / "prior" / "model_index.json").is_symlink() and describe(folder).family == "kandinsky-2.2"
    want = states(load_kandinsky(tmp_path / "fp16", "cpu", torch.float32))
    got = states(load_kandinsky(folder, "cpu", torch.float32))
    assert_same(got, {k: v for k, v in want.items() if not k.startswith("inpaint_unet")})
