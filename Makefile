# ScanFort: the two quick-start targets create or reuse .venv in the repo root.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBS := orthanc orthanc-dicomweb dcmtk dicom3tools age postgresql chromium systemd dpkg-dev qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross valgrind
# The OHIF viewer the gateway serves (npm package @ohif/app, its built dist/), never committed.
OHIF_VERSION := 3.13.2
VIEWER_DIR := .viewer

.PHONY: demo test lint setup sysdeps bench viewer

# setup.py builds the C extension cipher._native in place: a changed C file reinstalls.
$(STAMP): pyproject.toml setup.py $(wildcard cipher/csrc/*.c cipher/csrc/*.h)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

# Debian packages the peer tests need (qemu-user and the aarch64 cross compiler: the
# NEON kernel's vector check; valgrind: the constant-time check); installed only when
# missing. npm (for the OHIF viewer) only when no npm is on the PATH: a Node.js from
# elsewhere (its own npm inside) must not be replaced by Debian's.
sysdeps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

demo: $(STAMP)
	$(BIN)/scanfort demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: sysdeps $(STAMP) lint viewer
	CI=$${CI:-} $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/scanfort bench

# `scanfort gateway run --viewer .viewer` serves it; tests find it here (or $SCANFORT_OHIF_DIR).
viewer: $(VIEWER_DIR)/index.html

$(VIEWER_DIR)/index.html:
	rm -rf $(VIEWER_DIR).tmp && mkdir -p $(VIEWER_DIR).tmp
	cd $(VIEWER_DIR).tmp && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null \
	  && tar xzf ohif-app-$(OHIF_VERSION).tgz package/dist
	rm -rf $(VIEWER_DIR) && mv $(VIEWER_DIR).tmp/package/dist $(VIEWER_DIR) && rm -rf $(VIEWER_DIR).tmp
