"""Snapshot folders as the Hugging Face Hub leaves them, made from a folder written by
save_pretrained: weights as a variant only (`hf download --include "*.fp16.*"`), and the
Hub cache's layout (blobs named by hash, snapshots/<revision>/ of relative links), for
tests/pipelines/test_hub_variants.py and tests/server/test_model_families.py."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from pipelines.hub_variants import STEMS


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


def as_hub_cache(snapshot: Path, cache: Path, repo: str) -> Path:
    """The snapshot folder as `hf download` without --local-dir leaves it in the Hugging Face
    cache: files in blobs/ named by their hash, and snapshots/<revision>/ of relative
    symlinks to them. Returns the snapshot's path there."""
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


def linked_from_cache(model_dir: Path, root: Path, snapshots: tuple[str, ...] = ("prior", "decoder")) -> Path:
    """A Kandinsky model folder as the docs make one from the Hub cache: each snapshot of
    model_dir rewritten with fp16 files only, put in a cache under root, and linked in."""
    fp16 = with_variant(model_dir, root / "fp16")
    folder = root / "kandinsky-2.2"
    folder.mkdir()
    for name in snapshots:
        (folder / name).symlink_to(as_hub_cache(fp16 / name, root / "hub", f"kandinsky-community/kandinsky-2-2-{name}"))
    return folder
