"""Proves here, offline, that the wheels of `make gpu-wheels` (bench/wheels) install on the GPU
machine's python and give the server everything it needs. Run as `make gpu-wheels-check`.

    .venv/bin/python -m bench.gpu_wheels_check [--wheels bench/wheels] [--python PY3.12] [--out F]

On a fresh venv of a local python 3.12 (the GPU machine's is 3.12.3; pyenv's is found under
~/.pyenv/versions/3.12*, or give --python), as bench/gpu/install.py does there:

  1. the GPU image's own packages that the wheels need (bench/gpu/wheels.py DEVICE_PACKAGES),
     from a cache of their python 3.12 wheels (bench/wheels-device, git-ignored; downloaded
     once, the only step that needs an index). torch and torchvision are not installed
     (a multi-GB CUDA download): stand-in metadata, `torch-2.11.0.dist-info` and
     `torchvision-0.26.0.dist-info` (DEVICE_STUBS; INSTALLER says `stand-in`, no code), tells
     pip's resolver that the image's versions are there. Whatever of these the wheels also
     carry (httpx, anyio, h11, click: huggingface-hub's dependencies) is uninstalled again,
     so that the wheels alone must provide every package they carry;
  2. each of WHEEL_GROUPS with `pip install --no-index --find-links bench/wheels`, resolving
     against what is installed (bench.gpu.install.pip_install, the very command used there): a group
     that needs more than the wheelhouse holds fails here;
  3. `pip check`, and `pip install --no-index --dry-run` of the project's runtime
     requirements (pyproject.toml, its gpu extra, httpx): it must have nothing to install;
  4. every module of the server package is imported with this checkout on sys.path, and
     every third-party package that server/ and pipelines/ import (found in their source):
     each must import, or fail only for lack of torch (most of the server imports pipelines,
     hence torch: those are listed); MUST_IMPORT must import.

pip runs with no configuration file and no PIP_* variables, so nothing outside the two
folders can be reached. Prints a JSON summary (sizes, seconds of each step) and exits 1 on
any failure. It takes about a minute on the 2-core development machine, so it is a command
and not part of `make test` (which also never downloads the wheels).
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any, Optional

from bench.gpu.install import pip_install
from bench.gpu.wheels import DEVICE_PACKAGES, DEVICE_STUBS, REPO, WHEEL_GROUPS, WHEELS, mib

DEVICE_WHEELS = REPO / "bench" / "wheels-device"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
CARRIED_MODULES = ("fastapi", "starlette", "uvicorn", "pydantic", "pydantic_settings", "python_multipart", "redis",
                   "httpx", "ftfy", "open_clip", "diffusers", "xformers")
# Must import without torch: the carried packages that need none, and server modules that
# stand on them alone (prometheus-client, python-multipart). The rest of the server imports
# pipelines, hence torch.
MUST_IMPORT = ("fastapi", "starlette", "uvicorn", "pydantic", "pydantic_settings", "python_multipart", "redis", "httpx",
               "ftfy", "diffusers", "server.metrics", "server.api.multipart")
NEEDS_TORCH = ("torch", "torchvision")

IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
sys.path.insert(0, sys.argv[1])
needs = tuple(sys.argv[2].split(","))
names = ["server"] + [m.name for m in pkgutil.walk_packages([sys.argv[1] + "/server"], "server.")]
out = {}
for name in names + sys.argv[3].split(",") + sys.argv[4].split(","):
    try:
        importlib.import_module(name)
        out[name] = "ok"
    except ModuleNotFoundError as err:
        root = (err.name or "").split(".")[0]
        out[name] = f"needs {root}" if root in needs else f"error: {err!r}"
    except Exception as err:
        out[name] = f"error: {err!r}"
print(json.dumps(out))
"""


def clean_env() -> dict[str, str]:
    """This environment without pip's settings: no config file, no PIP_* (find-links,
    indexes, constraints), so --no-index sees the given folders alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def find_python(version: str, given: Optional[str]) -> Path:
    """A python of the GPU machine's minor version: --python, else pyenv's, else on PATH."""
    if given:
        return Path(given)
    found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}*/bin/python{version}")))
    path = found[-1] if found else shutil.which(f"python{version}")
    if not path:
        raise SystemExit(f"no python {version} here (pyenv install {version}, or --python)")
    return Path(path)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), **kw)


def ensure_device_wheels(folder: Path, version: str) -> dict[str, Any]:
    """The DEVICE_PACKAGES wheels for python `version` (with their dependencies), downloaded
    once with this interpreter's pip (its usual index) into `folder`."""
    want = "\n".join(DEVICE_PACKAGES) + "\n"
    stamp = folder / "requirements.txt"
    if stamp.is_file() and stamp.read_text() == want:
        return {"downloaded": False}
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
           "--python-version", version, "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)],
           "-d", str(folder), *DEVICE_PACKAGES]
    done = subprocess.run(cmd, capture_output=True, text=True)  # the user's pip settings: it needs an index
    if done.returncode:
        raise SystemExit(f"downloading the device's packages failed:\n{done.stderr[-3000:]}")
    stamp.write_text(want)
    return {"downloaded": True}


def write_stub(site: Path, name: str, version: str) -> None:
    """Metadata of an installed distribution with no code: what pip's resolver and `pip
    check` see of the GPU image's torch / torchvision."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   "Summary: stand-in for the GPU image's own build (bench/gpu_wheels_check.py)\n")
    (info / "INSTALLER").write_text("stand-in\n")
    (info / "RECORD").write_text("".join(f"{info.name}/{f},,\n" for f in ("METADATA", "INSTALLER", "RECORD")))


def runtime_requirements() -> list[str]:
    """pyproject.toml's dependencies, its gpu extra, and httpx (server/jobs/webhooks.py)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("gpu", []))
    if not any(r.split(">")[0].split("=")[0].split("<")[0].strip() == "httpx" for r in reqs):
        reqs.append("httpx")
    return reqs


# Optional imports of the server that the GPU machine does without (guarded where imported).
NOT_CARRIED = {"c2pa": "the c2pa extra: C2PA signing (server/trust/credentials.py), not benchmarked there"}


def third_party_imports(packages: tuple[str, ...] = ("server", "pipelines")) -> list[str]:
    """Top-level names of the modules that the packages' source imports, less the standard
    library, this repository's own packages and `NOT_CARRIED`."""
    names: set[str] = set()
    for pkg in packages:
        for path in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names.add(node.module.split(".")[0])
    own = {"server", "pipelines", "tools", "bench", "tests", "__future__"} | set(NOT_CARRIED)
    return sorted(n for n in names - own if n not in sys.stdlib_module_names)


def check(wheels: Path, python: Path, venv: Path) -> dict[str, Any]:
    """Steps 1-4 of the module's notes; {"ok": bool, ...} with each step's result and time."""
    res: dict[str, Any] = {"python": str(python), "wheels": str(wheels),
                           "wheels_mib": mib(sum(p.stat().st_size for p in wheels.glob("*.whl")))}
    times: dict[str, float] = {}
    t = time.monotonic()
    venv_made = run([str(python), "-m", "venv", str(venv)])
    if venv_made.returncode:
        raise SystemExit(f"venv failed: {venv_made.stderr}")
    py = venv / "bin" / "python"
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    for name, version in DEVICE_STUBS.items():
        write_stub(site, name, version)
    res["version"] = run([str(py), "-c", "import platform; print(platform.python_version())"]).stdout.strip()
    times["venv_s"] = time.monotonic() - t

    t = time.monotonic()
    device = run([str(py), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(DEVICE_WHEELS),
                  "--no-compile", *DEVICE_PACKAGES])
    carried = [pin.split("==")[0] for g in WHEEL_GROUPS for pin in g.install + g.support]
    present = run([str(py), "-m", "pip", "list", "--format=json"])
    shadowed = sorted({d["name"].lower().replace("_", "-") for d in json.loads(present.stdout or "[]")}
                      & {c.lower().replace("_", "-") for c in carried})
    if shadowed:  # the image has them (huggingface-hub needs httpx): the wheels must bring them
        run([str(py), "-m", "pip", "uninstall", "-y", "-q", *shadowed])
    res["device_packages"] = {"ok": device.returncode == 0, "error": device.stderr[-2000:] or None,
                              "removed_as_carried": shadowed}
    times["device_packages_s"] = time.monotonic() - t

    t = time.monotonic()
    os.environ.clear()
    os.environ.update(clean_env())  # pip_install (bench.gpu.install) inherits this process's environment
    groups = {}
    for g in WHEEL_GROUPS:
        done = pip_install(py, wheels, g.install)
        groups[g.name] = {"ok": done.returncode == 0, "error": done.stderr.strip()[-2000:] or None}
    res["groups"] = groups
    times["groups_s"] = time.monotonic() - t

    t = time.monotonic()
    pip_check = run([str(py), "-m", "pip", "check"])
    res["pip_check"] = {"ok": pip_check.returncode == 0, "output": pip_check.stdout.strip()[-2000:]}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(runtime_requirements()) + "\n")
    report = Path(f.name + ".json")
    dry = run([str(py), "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--dry-run",
               "--quiet", "--report", str(report), "-r", f.name])
    would = [i["metadata"]["name"] + "==" + i["metadata"]["version"]
             for i in json.loads(report.read_text())["install"]] if report.is_file() else None
    res["requirements"] = {"requirements": runtime_requirements(), "ok": dry.returncode == 0 and would == [],
                           "would_install": would, "error": dry.stderr[-2000:] or None}
    os.unlink(f.name)
    report.unlink(missing_ok=True)
    times["resolution_s"] = time.monotonic() - t

    t = time.monotonic()
    imported = run([str(py), "-c", IMPORT_ALL, str(REPO), ",".join(NEEDS_TORCH), ",".join(CARRIED_MODULES),
                    ",".join(third_party_imports())],
                   cwd=tempfile.gettempdir())
    modules = json.loads(imported.stdout) if imported.returncode == 0 else {}
    errors = {k: v for k, v in modules.items() if v.startswith("error")}
    missing = [m for m in MUST_IMPORT if modules.get(m) != "ok"]
    res["imports"] = {"ok": bool(modules) and not errors and not missing, "errors": errors,
                      "must_import_failed": missing, "stderr": imported.stderr[-2000:] or None,
                      "ok_count": sum(v == "ok" for v in modules.values()),
                      "imported": sorted(k for k, v in modules.items() if v == "ok"),
                      "need_torch": sorted(k for k, v in modules.items() if v.startswith("needs"))}
    times["imports_s"] = time.monotonic() - t

    res["seconds"] = {k: round(v, 1) for k, v in times.items()}
    res["ok"] = (res["device_packages"]["ok"] and all(g["ok"] for g in groups.values()) and res["pip_check"]["ok"]
                 and res["requirements"]["ok"] and res["imports"]["ok"])
    return res


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wheels", type=Path, default=WHEELS, help="the wheelhouse (default bench/wheels)")
    p.add_argument("--python", default=None, help="a python of --python-version (default: pyenv's)")
    p.add_argument("--python-version", default=os.environ.get("GPU_PYTHON_VERSION", "3.12"))
    p.add_argument("--out", type=Path, default=None, help="also write the JSON summary here")
    args = p.parse_args(argv)
    if not any(args.wheels.glob("*.whl")):
        raise SystemExit(f"no wheels in {args.wheels}: run `make gpu-wheels` first")
    t0 = time.monotonic()
    python = find_python(args.python_version, args.python)
    fetched = ensure_device_wheels(DEVICE_WHEELS, args.python_version)
    with tempfile.TemporaryDirectory(prefix="unclip-gpu-wheels-check-") as tmp:
        res = check(args.wheels.resolve(), python, Path(tmp) / "venv")
    res["device_wheels"] = {"folder": str(DEVICE_WHEELS), **fetched,
                            "mib": mib(sum(p.stat().st_size for p in DEVICE_WHEELS.glob("*.whl")))}
    res["seconds"]["total_s"] = round(time.monotonic() - t0, 1)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
