"""Shared fixtures: a tiny random-weight stack of the real architecture, as a model
directory on disk (also one that says it draws the shapes world) and as a loaded pipeline."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

from pipelines.checkpoints import load_model_dir, random_stack, save_model_dir
from pipelines.config import StackConfig
from pipelines.unclip import UnCLIP

torch.set_num_threads(2)


def pytest_configure(config: pytest.Config) -> None:
    """Servers started in tests cache measured batch profiles in the test's own folder,
    not in the user's ~/.cache."""
    os.environ.setdefault("UNCLIP_BATCH_PROFILE_DIR", tempfile.mkdtemp(prefix="unclip-batch-profiles-"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory (stack.json + safetensors) with seeded random weights."""
    path = tmp_path_factory.mktemp("models") / "tiny"
    save_model_dir(random_stack(StackConfig.tiny(), seed=0), path)
    return path


@pytest.fixture(scope="session")
def world_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's files with a world.json (server/world.py): the shapes world, 32 px
    suggested (its sizes are 32 and 64)."""
    path = tmp_path_factory.mktemp("models") / "tiny-shapes"
    path.mkdir()
    for file in tiny_model_dir.iterdir():
        (path / file.name).symlink_to(file)
    (path / "world.json").write_text(json.dumps({"world": "shapes", "suggested_size": 32}))
    return path


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir: Path) -> UnCLIP:
    """The tiny model loaded through the real loader, in fp32 whatever `default_dtype`
    picks on this CPU (tests compare it with fp32 references)."""
    return UnCLIP(load_model_dir(tiny_model_dir, dtype=torch.float32))


@pytest.fixture(scope="session")
def kandinsky_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Kandinsky 2.2 folder (prior/, decoder/, decoder-inpaint/ snapshots as
    diffusers' save_pretrained writes them: tests/pipelines/_kandinsky_tiny.py)."""
    from tests.pipelines._kandinsky_tiny import write_model_dir

    return write_model_dir(tmp_path_factory.mktemp("models") / "kandinsky", inpaint=True)


@pytest.fixture(scope="session")
def karlo_snapshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Karlo snapshot with image_encoder/ (tests/pipelines/_karlo_tiny.py)."""
    from tests.pipelines._karlo_tiny import write_karlo_snapshot

    return write_karlo_snapshot(tmp_path_factory.mktemp("models") / "karlo")
