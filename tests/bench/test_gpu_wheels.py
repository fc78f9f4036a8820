"""The GPU machine's wheel list (bench/gpu/wheels.py WHEEL_GROUPS) covers the server: every runtime
requirement and every third-party import of server/ and pipelines/ is carried as a wheel or
is one of the GPU image's own packages, at a version the requirement accepts. No network:
installing the wheels offline on a python 3.12 is `make gpu-wheels-check`
(bench/gpu_wheels_check.py), which needs the downloaded wheels."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bench.gpu.wheels import DEVICE_PACKAGES, DEVICE_STUBS, WHEEL_GROUPS, WHEELS
from bench.gpu_wheels_check import MUST_IMPORT, runtime_requirements, third_party_imports

REPO = Path(__file__).resolve().parents[2]
DISTRIBUTION_OF = {"PIL": "pillow", "open_clip": "open-clip-torch", "prometheus_client": "prometheus-client",
                   "pydantic_settings": "pydantic-settings", "python_multipart": "python-multipart",
                   "pythonjsonlogger": "python-json-logger"}


def carried() -> dict[str, str]:
    pins = [pin for g in WHEEL_GROUPS for pin in g.install + g.support]
    names = [canonicalize_name(p.split("==")[0]) for p in pins]
    assert len(names) == len(set(names)), "one version of each wheel: two stop the install"
    return {canonicalize_name(p.split("==")[0]): p.split("==")[1] for p in pins}


def on_device() -> dict[str, str | None]:
    own = {canonicalize_name(Requirement(p).name): (p.split("==")[1] if "==" in p else None) for p in DEVICE_PACKAGES}
    return {**own, **{canonicalize_name(k): v for k, v in DEVICE_STUBS.items()}}


def test_every_runtime_requirement_is_carried_or_on_the_gpu_image() -> None:
    wheels, device = carried(), on_device()
    reqs = [Requirement(r) for r in runtime_requirements()]
    assert "httpx" in {r.name for r in reqs}
    for req in reqs:
        name = canonicalize_name(req.name)
        version = wheels.get(name) or device.get(name)
        assert name in wheels or name in device, f"{req} is neither carried nor on the GPU image"
        if version is not None:
            assert req.specifier.contains(version, prereleases=True), f"{req} refuses {name} {version}"


def test_every_third_party_import_is_carried_or_on_the_gpu_image() -> None:
    known = set(carried()) | set(on_device())
    for module in third_party_imports():
        assert canonicalize_name(DISTRIBUTION_OF.get(module, module)) in known, module


def test_wheels_script_and_benchmark_use_one_folder() -> None:
    script = (REPO / "bench" / "gpu_wheels.sh").read_text()
    assert re.search(r"DEST=\$\{GPU_WHEELS:-bench/wheels\}", script)
    assert WHEELS == REPO / "bench" / "wheels"
    assert "/bench/wheels/" in (REPO / ".gitignore").read_text().split()


def test_the_server_modules_the_offline_check_imports_need_no_torch() -> None:
    """bench/gpu_wheels_check.py imports MUST_IMPORT in a venv whose torch is metadata only:
    the server's modules among them must not pull torch in (server.metrics once did, through
    pipelines.moderation, and `make gpu-wheels-check` failed)."""
    ours = [m for m in MUST_IMPORT if m.split(".")[0] in ("server", "pipelines")]
    probe = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe, *ours], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ours and done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
