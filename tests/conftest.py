"""Shared fixtures: a tiny random-weight stack of the real architecture, as a model
directory on disk (also one that says it draws the shapes world) and as a loaded pipeline;
the servers more than one folder of tests talks to (tests/server/conftest.py runs them)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest
import torch

from pipelines.checkpoints import load_model_dir, random_stack, save_model_dir
from pipelines.config import StackConfig
from pipelines.unclip import UnCLIP
from tests.server.conftest import ServerProc, launch

# Two threads in one process; one per worker when pytest-xdist runs two (make test), so that
# the workers do not fight over a 2-core machine's cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


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


@pytest.fixture(scope="session")
def launch_server(tiny_model_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProc]]:
    """A factory of servers of the tiny model (keyword: env, wait); every one is stopped at
    the end."""
    started: list[ServerProc] = []
    log_dir = tmp_path_factory.mktemp("server-logs")

    def start(env: Optional[dict[str, str]] = None, wait: bool = True) -> ServerProc:
        server = launch(tiny_model_dir, log_dir, env, wait)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def world_server(launch_server: Callable[..., ServerProc], world_model_dir: Path) -> ServerProc:
    """The tiny model (32 and 64 px) that says it draws the shapes world (32 px suggested),
    no API keys: the playground's pages and the world's model card talk to it."""
    return launch_server(env={"UNCLIP_MODEL_DIR": str(world_model_dir)})


@pytest.fixture(scope="session")
def kandinsky_server(launch_server: Callable[..., ServerProc], kandinsky_model_dir: Path) -> ServerProc:
    """The tiny Kandinsky 2.2 folder served as downloaded (sizes on its latent grid), fp32."""
    return launch_server(env={"UNCLIP_MODEL_DIR": str(kandinsky_model_dir), "UNCLIP_DTYPE": "float32"})
