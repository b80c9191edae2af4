# ScanFort: the two quick-start targets create or reuse .venv in the repo root.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBS := orthanc orthanc-dicomweb dcmtk dicom3tools age postgresql chromium systemd dpkg-dev qemu-user gcc-aarch64-linux-gnu valgrind

.PHONY: demo test lint setup sysdeps bench

# setup.py builds the C extension cipher._native in place: a changed C file reinstalls.
$(STAMP): pyproject.toml setup.py $(wildcard cipher/csrc/*.c cipher/csrc/*.h)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

# Debian packages the peer tests need (qemu-user and the aarch64 cross compiler: the
# NEON kernel's vector check; valgrind: the constant-time check); installed only when
# missing.
sysdeps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
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

test: sysdeps $(STAMP) lint
	CI=$${CI:-} $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/scanfort bench
