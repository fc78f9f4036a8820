"""The tracked tree stays small: the GPU device tool copies the working tree, plus the
wheels of `make gpu-wheels` (bench/wheels, git-ignored), under a 64 MiB limit, so the tree
must leave room for them. Training checkpoints stay out of git (weights/training/**/checkpoint.pt
is ignored; tools/train/snapshot.py restores finished stages from weights/default).

The limit: weights/default alone is 26.8 MiB (its fp16 networks, CLIP's token embedding
stored as the shapes world's 29 rows: `python -m tools.convert prune-tokens`; 38.8 MiB
before); everything else about 2.1 MiB. 40 MiB leaves the wheels 20 MiB of a 60 MiB budget
(bench/gpu_wheels.sh checks the sum against the device's 64 MiB)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TREE_LIMIT_MIB = 40.0


def tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    return [REPO / name for name in out.decode().split("\0") if name]


def test_tracked_tree_fits_the_device_tool_with_room_for_the_wheels() -> None:
    sizes = {p: p.stat().st_size for p in tracked_files() if p.is_file()}
    total = sum(sizes.values())
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
    assert total <= TREE_LIMIT_MIB * 2**20, (
        f"tracked tree {total / 2**20:.2f} MiB > {TREE_LIMIT_MIB} MiB; largest: "
        + ", ".join(f"{p.relative_to(REPO)} {n / 2**20:.2f} MiB" for p, n in largest))


def test_no_training_checkpoint_is_tracked() -> None:
    assert not [p for p in tracked_files() if p.name.endswith(".pt") and "weights" in p.parts]
