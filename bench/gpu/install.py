"""The install part: the wheels (bench/wheels/, `make gpu-wheels`) into a venv over the
machine's python, then this command again inside that venv."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .runner import Bench
from .wheels import REPO, WHEEL_GROUPS, mib

VENV = Path(tempfile.gettempdir()) / "unclip-gpu-bench-venv"
CHILD_ENV = "UNCLIP_GPU_BENCH_CHILD"  # set for the run inside the venv: start time and install result


def site_dirs() -> list[str]:
    """This interpreter's site directories (its venv's and the system's)."""
    return [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]


def make_venv(venv: Path) -> Path:
    """A venv over this interpreter: --system-site-packages, and a .pth that adds this
    interpreter's own site directories (a venv made from inside a venv would otherwise see
    only the base python's). Returns its python."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                       check=True, capture_output=True, text=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    lines = "; ".join(f"site.addsitedir({d!r})" for d in site_dirs())
    Path(site, "_unclip_parent_site.pth").write_text(f"import site; {lines}\n")
    return python


def pip_install(python: Path, wheels: Path, pins: tuple[str, ...],
                no_deps: bool = False) -> subprocess.CompletedProcess[str]:
    """pip install the pins from the wheels folder alone, into the python's environment."""
    cmd = [str(python), "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--no-cache-dir",
           "--disable-pip-version-check", "--no-compile", "-q", *(["--no-deps"] if no_deps else []), *pins]
    return subprocess.run(cmd, capture_output=True, text=True)


def install(wheels: Path, venv: Path) -> dict[str, Any]:
    """Each wheel group into the venv, resolving dependencies against what the machine has;
    a group whose resolution fails is retried with --no-deps (install and support pins)."""
    if not any(wheels.glob("*.whl")):
        raise FileNotFoundError(f"no wheels in {wheels}: run `make gpu-wheels` before the run")
    t0 = time.monotonic()
    python = make_venv(venv)
    groups: dict[str, Any] = {}
    for g in WHEEL_GROUPS:
        done = pip_install(python, wheels, g.install)
        entry: dict[str, Any] = {"ok": done.returncode == 0}
        if done.returncode:
            entry["error"] = done.stderr.strip()[-1500:]
            retry = pip_install(python, wheels, g.install + g.support, no_deps=True)
            entry.update(no_deps_retry_ok=retry.returncode == 0, no_deps_error=retry.stderr.strip()[-500:] or None)
        groups[g.name] = entry
    return {"python": str(python), "wheels_mib": mib(sum(p.stat().st_size for p in wheels.glob("*.whl"))),
            "groups": groups, "install_s": round(time.monotonic() - t0, 1)}


def reexec_in(python: Path, bench: Bench, argv: list[str]) -> None:
    """Run this command again under the venv's python (never returns)."""
    env = dict(os.environ, **{CHILD_ENV: json.dumps({"started": bench.started, "results": bench.results})})
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.chdir(REPO)
    os.execve(str(python), [str(python), "-m", "bench.gpu", *argv], env)
