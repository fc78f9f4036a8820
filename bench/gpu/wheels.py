"""The wheels the GPU machine lacks (it has no network), by group, and what the device tool
would carry: the working tree plus the wheels folder, within its 64 MiB."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
WHEELS = REPO / "bench" / "wheels"
TRAVEL_LIMIT_MIB = 64  # what the device tool carries: working tree + carried paths
TRAVEL_BUDGET_MIB = 60  # tree + wheels, leaving room for untracked files (tests/test_tree_size.py: tree <= 41)


@dataclass(frozen=True)
class WheelGroup:
    """Wheels installed together. `install` is named to pip; `support` is only carried, for
    dependencies the GPU image may lack or hold too old (pip takes them only if needed).
    Versions are this repository's venv's (tested together here)."""

    name: str
    install: tuple[str, ...]
    support: tuple[str, ...] = ()
    required: bool = True


# What the GPU image lacks for the server, CLIP, diffusers and xformers. The image (KINDS.md of
# the device tool: python 3.12, torch 2.11 with CUDA 13, numpy, pillow, safetensors,
# prometheus-client, transformers, timm, huggingface-hub...) has none of fastapi, starlette,
# uvicorn, pydantic (+ core, settings), python-multipart, open_clip_torch (+ ftfy), diffusers,
# redis, httpx (server/jobs/webhooks.py), python-json-logger (server/logs.py) or xformers;
# httpx, httpcore and timm are carried even where an image has them. Dependencies checked with
# the wheels' Requires-Dist, and the whole set offline on a python 3.12 by `make
# gpu-wheels-check` (bench/gpu_wheels_check.py).
# xformers 0.0.35 is a py39-none wheel of 3.1 MiB that needs torch>=2.10: it fits; whether it
# runs is measured there (keep_xformers_only_if_it_runs), else SDPA is used.
WHEEL_GROUPS: tuple[WheelGroup, ...] = (
    WheelGroup("server", ("fastapi==0.165.0", "uvicorn==0.55.0", "pydantic-settings==2.16.3",
                          "python-multipart==0.0.34", "redis==8.2.0", "httpx==0.29.0",
                          "fastapi-offline==1.7.7", "python-json-logger==4.2.0"),
               ("starlette==1.10.0", "pydantic==2.14.4", "pydantic_core==2.50.5", "python-dotenv==1.2.4",
                "annotated-types==0.8.0", "typing-inspection==0.4.5", "typing_extensions==4.16.0",
                "annotated-doc==0.0.7", "opentelemetry-api==1.45.2", "anyio==4.16.0", "h11==0.16.0",
                "click==8.5.1", "httpcore==1.0.9")),
    WheelGroup("clip", ("open_clip_torch==3.3.0",), ("ftfy==6.3.1", "wcwidth==0.9.5", "timm==1.0.31")),
    WheelGroup("diffusers", ("diffusers==0.42.1",),
               ("importlib_metadata==10.2.0", "lazy-importer==0.1.0", "zipp==4.1.2"), required=False),
    WheelGroup("xformers", ("xformers==0.0.35",), required=False),
)


# What the check (bench/gpu_wheels_check.py) installs as the GPU image's own packages, in a
# fresh python 3.12 venv, before the wheels: those of the image's list (KINDS.md) that the
# groups above need, with the versions KINDS.md's pip list gives, else unpinned (pip's
# newest for python 3.12 when the check first downloads them). torch and torchvision are not
# installed there (a multi-GB CUDA download): the check writes stand-in metadata for them,
# DEVICE_STUBS, so that pip's resolver sees the image's versions.
DEVICE_PACKAGES: tuple[str, ...] = (
    "numpy==2.5.2", "pillow", "safetensors==0.8.0", "prometheus-client", "huggingface-hub==1.33.0", "regex",
    "tqdm", "filelock", "fsspec", "packaging", "pyyaml", "requests", "certifi", "idna", "typing-extensions",
    "transformers",  # the Hugging Face snapshots' CLIP towers and tokenizers (pipelines/hf_clip.py)
)


DEVICE_STUBS: dict[str, str] = {"torch": "2.11.0", "torchvision": "0.26.0"}


def wheel_list(groups: str) -> list[str]:
    """Every pin of the named groups ("all" or comma-separated names), install and support."""
    names = {g.name for g in WHEEL_GROUPS} if groups == "all" else set(groups.split(","))
    return [pin for g in WHEEL_GROUPS if g.name in names for pin in g.install + g.support]


def mib(n: float) -> float:
    return round(n / 2**20, 2)


def travel_size(wheels: Path) -> dict[str, Any]:
    """Bytes the device tool would carry: tracked and untracked-not-ignored files, plus the
    wheels folder; the largest top-level folders of the tree."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    by_top: dict[str, int] = {}
    for name in filter(None, names):
        path = REPO / name
        if path.is_file() and not path.is_relative_to(wheels):
            top = "/".join(name.split("/")[:2]) if name.count("/") >= 2 else name.split("/")[0]
            by_top[top] = by_top.get(top, 0) + path.stat().st_size
    tree = sum(by_top.values())
    wheel_bytes = sum(p.stat().st_size for p in wheels.glob("*.whl")) if wheels.is_dir() else 0
    largest = dict(sorted(((k, mib(v)) for k, v in by_top.items()), key=lambda kv: -kv[1])[:6])
    return {"tree_mib": mib(tree), "wheels_mib": mib(wheel_bytes), "total_mib": mib(tree + wheel_bytes),
            "limit_mib": TRAVEL_LIMIT_MIB, "budget_mib": TRAVEL_BUDGET_MIB,
            "fits": tree + wheel_bytes <= TRAVEL_BUDGET_MIB * 2**20,
            "largest_mib": largest,
            "wheels": {p.name: mib(p.stat().st_size) for p in sorted(wheels.glob("*.whl"))} if wheels.is_dir() else {}}
