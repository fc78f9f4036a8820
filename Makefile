# The two commands a newcomer needs: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch and torchvision are pinned together: these builds pair with each other.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup setup-dev serve lint browser test

$(VENV)/.setup-done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev-done: $(VENV)/.setup-done
	$(PIP) install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.setup-done

setup-dev: $(VENV)/.dev-done

serve: setup
	$(PY) -m server

lint: setup-dev
	$(PY) -m ruff check .

# Debian's Chromium for tests/browser (Playwright cannot download a browser here).
browser:
	@[ -x /usr/bin/chromium ] || { SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

test: lint browser
	$(PY) -m pytest -q $(PYTEST_ARGS)
