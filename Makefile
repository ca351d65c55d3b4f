# hftgate -- the README's commands. `make run` and `make test` are the contract:
# both start with `make setup`, which is idempotent and quick when nothing changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

NATIVE_SRC   := $(wildcard native/src/*.c)
NATIVE_HDR   := $(wildcard native/include/*.h)
NATIVE_TESTS := $(wildcard native/tests/test_*.c)
CFLAGS_TEST  := -std=gnu11 -g -Wall -Wextra -Werror -Inative/include -pthread -D_GNU_SOURCE
BUILD        := build/native

.PHONY: native-inplace protos setup run test test-python test-native native-test-binaries lint format bench clean help

help:
	@echo "make run    set up and start the suite on its embedded defaults"
	@echo "make test   set up and run every test (C tests plain, ASan+UBSan, TSan; then pytest)"
	@echo "make lint   ruff (lint + format check) and mypy"
	@echo "make bench  run every benchmark (hftgate bench all)"

$(STAMP): pyproject.toml setup.py $(NATIVE_SRC) $(NATIVE_HDR) $(wildcard native/cdef/*) native/ffi_build.py $(wildcard protos/hftgate/v1/*.proto)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "hftgate needs Python 3.11+"'
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

setup: $(STAMP)

run: setup
	$(VENV)/bin/hftgate up

# --- tests -------------------------------------------------------------------
test: setup test-native test-python

# Two workers (pytest-xdist): the suite waits on process start-ups and I/O for much of its time, so
# on 2 CPUs two workers take ~6 min where one takes ~10.5 (measured on the 2-vCPU VM, echo 0.8-0.9 ms).
test-python: setup
	$(PY) -m pytest -q -n 2

# Each C test is built three times: plain, with AddressSanitizer + UBSan, and with
# ThreadSanitizer, and each build must pass. The library's sources are compiled once per build
# into objects that every test of that build links (not once per test: a third of the time).
CFLAGS_plain := -O2
CFLAGS_asan  := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
CFLAGS_tsan  := -O1 -fsanitize=thread
NATIVE_NAMES := $(notdir $(basename $(NATIVE_SRC)))

define native_build
$(BUILD)/$(1)/obj/%.o: native/src/%.c $(NATIVE_HDR)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CFLAGS_TEST) $$(CFLAGS_$(1)) -c -o $$@ $$<

$(BUILD)/$(1)/%: native/tests/%.c native/tests/check.h $(addprefix $(BUILD)/$(1)/obj/,$(addsuffix .o,$(NATIVE_NAMES)))
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CFLAGS_TEST) $$(CFLAGS_$(1)) -o $$@ $$< $(addprefix $(BUILD)/$(1)/obj/,$(addsuffix .o,$(NATIVE_NAMES))) -lm
endef
$(foreach v,plain asan tsan,$(eval $(call native_build,$(v))))

TEST_NAMES := $(notdir $(basename $(NATIVE_TESTS)))
TEST_BINARIES := $(foreach v,plain asan tsan,$(addprefix $(BUILD)/$(v)/,$(TEST_NAMES)))
# The builds (most of the time) on every CPU; the runs one at a time, so TSan and the timing
# assertions of the concurrent tests get the machine to themselves.
NPROC := $(shell nproc 2>/dev/null || echo 2)
native-test-binaries: $(TEST_BINARIES)

test-native:
	@$(MAKE) --no-print-directory -j$(NPROC) native-test-binaries
	@set -e; for v in plain asan tsan; do for t in $(TEST_NAMES); do \
	  echo "== native $$v $$t"; \
	  if [ $$v = tsan ]; then setarch "$$(uname -m)" -R $(BUILD)/$$v/$$t; else $(BUILD)/$$v/$$t; fi; \
	done; done

# --- habits --------------------------------------------------------------------
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy hftgate services loadtest

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(VENV)/bin/hftgate bench all

clean:
	rm -rf build $(VENV) hftgate/v1/*_pb2*.py hftgate/native/_native*.so *.egg-info

# Fast rebuilds while developing (make setup does both on a fresh clone).
native-inplace: setup
	$(PY) setup.py -q build_ext --inplace

protos: setup
	$(PY) setup.py -q build_protos
