# The two commands a newcomer needs: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch and torchvision are pinned together: these builds pair with each other.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# Where torch comes from. Empty: the package index pip is set up with (PyPI's build, with
# CUDA: 6.2 GB of venv, 4.1 GB of it NVIDIA libraries and triton). On a CPU-only machine
# that reaches it, PyTorch's CPU wheel index (the Dockerfile's TORCH_INDEX_URL) gives the
# CPU build: make serve TORCH_INDEX_URL=<that index>.
TORCH_INDEX_URL ?=
# Optional extras to add to the venv, e.g. EXTRAS=hf to serve Hugging Face snapshots
# (Kandinsky 2.2, Karlo): make serve EXTRAS=hf UNCLIP_MODEL_DIR=...
EXTRAS ?=

.PHONY: setup setup-dev serve first-image lint docs browser redis test gpu-wheels gpu-wheels-check

$(VENV)/.setup-done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) $(TORCH_PINS)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.extras-%: $(VENV)/.setup-done
	$(PIP) install -q -e '.[$*]'
	touch $@

$(VENV)/.dev-done: $(VENV)/.setup-done
	$(PIP) install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.setup-done $(if $(EXTRAS),$(VENV)/.extras-$(EXTRAS))

setup-dev: $(VENV)/.dev-done

serve: setup
	$(PY) -m server

# The README's first minutes, as a newcomer lives them: `make serve` (runtime dependencies
# only), /ready, the README's first curl, a real PNG. CI runs it before `make test` adds
# the dev extra to the same venv.
first-image:
	bash .ci/first_image.sh

lint: setup-dev
	$(PY) -m ruff check .

# The docs site (mkdocs.yml, pages in docs/) into site/ (ignored); --strict: a broken link
# between pages, a broken anchor or a page missing from the nav fails the build.
docs: setup-dev
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# Debian's Chromium for tests/browser (Playwright cannot download a browser here).
browser:
	@[ -x /usr/bin/chromium ] || { SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# Debian's Redis for tests/server/test_redis_shared.py (each run starts its own redis-server
# on a free port; nothing is kept).
redis:
	@command -v redis-server >/dev/null || { SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server; }

# The suite on PYTEST_WORKERS processes (pytest-xdist), a test file per worker at a time:
# most tests wait on a server subprocess, so two workers keep both cores of a 2-core
# machine busy (docs/development.md#tests). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
test: lint docs browser redis
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Wheels that bench/gpu/ installs on the GPU machine (no network there), for its python.
GPU_PYTHON_VERSION ?= 3.12
gpu-wheels: setup
	GPU_PYTHON_VERSION=$(GPU_PYTHON_VERSION) PY=$(PY) bash bench/gpu_wheels.sh

# Proves offline that those wheels install on a fresh python $(GPU_PYTHON_VERSION) venv holding the GPU
# image's own packages (torch and torchvision as stand-in metadata) and that the server's
# modules import: bench/gpu_wheels_check.py. Not part of `make test`: it needs a local python
# $(GPU_PYTHON_VERSION) and, once, an index for the image's packages (cached in bench/wheels-device).
gpu-wheels-check: setup
	GPU_PYTHON_VERSION=$(GPU_PYTHON_VERSION) $(PY) -m bench.gpu_wheels_check
