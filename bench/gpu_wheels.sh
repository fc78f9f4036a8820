#!/usr/bin/env bash
# Downloads, here, the wheels that bench/gpu/ installs on the GPU machine (which has no
# network): the pins of bench/gpu/wheels.py's WHEEL_GROUPS (what that machine's image lacks), each
# without its dependencies (the groups name those too), for that machine's python. Then
# prints what the device tool would carry (tree + wheels) against a 60 MiB budget of its
# 64 MiB, and fails when it is over (measured: 18.5 MiB of wheels, xformers 3.1 of them, 59.5
# MiB with the tree). Run as `make gpu-wheels`; carry the folder: run(carry=["bench/wheels"]).
# `make gpu-wheels-check` then proves the set installs offline on a python 3.12.
#
#   GPU_PYTHON_VERSION  the GPU machine's python (default 3.12: KINDS.md saw 3.12.3)
#   GPU_PLATFORMS       manylinux tags to accept (pip matches each exactly)
#   GPU_WHEEL_GROUPS    all, or some of server,clip,diffusers,xformers
#   GPU_WHEELS          the folder (default bench/wheels, ignored by git)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=${GPU_WHEELS:-bench/wheels}
PYVER=${GPU_PYTHON_VERSION:-3.12}
PLATFORMS=${GPU_PLATFORMS:-manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64}
WHEEL_GROUPS=${GPU_WHEEL_GROUPS:-all}

platform_args=()
for p in $PLATFORMS; do platform_args+=(--platform "$p"); done
mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: two would stop the install there
"$PY" -m bench.gpu --list-wheels "$WHEEL_GROUPS" > "$DEST/requirements.txt"
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PYVER" --implementation cp "${platform_args[@]}" -d "$DEST" -r "$DEST/requirements.txt"
"$PY" -m bench.gpu --check-size --wheels "$DEST"
