# CXL-DSM Lab — the two set-up commands are `make lab` and `make test`.
#
#   make lab     install what is missing, build, then `ansible-playbook site.yml`
#   make test    install what is missing, build, then every test (pytest, the driver
#                against Redis 8 and Valkey too, Molecule)
#   make bench   the benchmarks (ring vs TCP, same machine, same run)
#   make test-servers  tests/ring against Redis 8.0 and Valkey 8 too (docs/servers.md)
#
# Every target installs its own dependencies idempotently: Debian/Ubuntu packages
# from requirements/apt-*.txt (sudo when not root) and a virtualenv in .venv from
# pyproject.toml and requirements/*.txt.

SHELL       := /bin/bash
PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
BUILD       := build
APT_LISTS   := $(wildcard requirements/apt-*.txt)
PY_REQS     := $(wildcard requirements/*.in.txt requirements/*.txt)
CI_TIMEOUT  ?= 1500

.PHONY: all deps system-deps venv build native fuzz ring-check lab test test-unit test-lab test-servers bench bench-lab lint teardown clean

all: build

$(shell mkdir -p $(BUILD))

## ---- dependencies --------------------------------------------------------
system-deps:
	@scripts/install-system-deps.sh $(APT_LISTS)

$(VENV)/.installed: pyproject.toml $(filter-out requirements/apt-%,$(wildcard requirements/*.txt))
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e . $(addprefix -r ,$(filter-out requirements/apt-%,$(wildcard requirements/*.txt)))
	@touch $@

# The client's optional C core, rebuilt in place whenever its source changes (pip's editable
# install builds it only once); channel.py refuses a core whose CORE_VERSION is stale.
SPEEDUPS    := client/cxl_ring/.speedups-built
$(SPEEDUPS): client/cxl_ring/_speedups.c setup.py $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace
	@touch $@

venv: system-deps $(VENV)/.installed $(SPEEDUPS)

deps: system-deps venv

## ---- build: the ring protocol library, the driver, the bench client --------
CC          ?= cc
CFLAGS_COMMON := -std=gnu11 -Wall -Wextra -Werror -Iring/include -I$(BUILD)/redis-src
CFLAGS_OPT  := -O2 -g $(CFLAGS_COMMON)
CFLAGS_SAN  := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
               -fno-sanitize-recover=undefined $(CFLAGS_COMMON)
RING_SRC    := $(wildcard ring/src/*.c)
RING_HDR    := $(wildcard ring/include/cxl_ring/*.h)
DRIVER_SRC  := $(wildcard driver/*.c)
DRIVER_HDR  := $(wildcard driver/*.h)
BENCH_SRC   := $(wildcard bench/c/*.c)
NULL_SRC    := $(wildcard bench/c/null/*.c)
# The driver's ring code that the null server runs unchanged (bench/c/null/null_server.c).
NULL_DRIVER := driver/channel.c driver/region.c driver/compat_v2.c
FUZZ_SRC    := $(wildcard ring/fuzz/*.c)
GATEWAY_SRC := $(wildcard gateway/*.c)
GATEWAY_HDR := $(wildcard gateway/*.h)
NATIVE      := $(BUILD)/cxl_ring.so $(BUILD)/cxl_ring_asan.so
NATIVE      += $(if $(BENCH_SRC),$(BUILD)/cxl-ring-bench)
NATIVE      += $(if $(FUZZ_SRC),$(BUILD)/fuzz-decoder)
NATIVE      += $(BUILD)/notify-stress $(BUILD)/cxl-wake-latency $(BUILD)/cxl-chase $(BUILD)/cxl-ycsb
NATIVE      += $(if $(NULL_SRC),$(BUILD)/cxl-null-server $(BUILD)/cxl-null-server-asan)
NATIVE      += $(if $(GATEWAY_SRC),$(BUILD)/cxl-gateway $(BUILD)/cxl-gateway-asan)

build: deps native

native: $(NATIVE)

$(BUILD)/redis-src/redismodule.h:
	scripts/fetch-redis-source.sh $(BUILD)/redis-src

$(BUILD)/cxl_ring.so: $(DRIVER_SRC) $(DRIVER_HDR) $(RING_SRC) $(RING_HDR) $(BUILD)/redis-src/redismodule.h
	$(CC) $(CFLAGS_OPT) -fPIC -shared -pthread -o $@ $(DRIVER_SRC) $(RING_SRC)

# ASan+UBSan build for the hostile-input tests; load it into redis-server with
# LD_PRELOAD=$$(cc -print-file-name=libasan.so) (tests/ring does this).
$(BUILD)/cxl_ring_asan.so: $(DRIVER_SRC) $(DRIVER_HDR) $(RING_SRC) $(RING_HDR) $(BUILD)/redis-src/redismodule.h
	$(CC) $(CFLAGS_SAN) -fPIC -shared -pthread -o $@ $(DRIVER_SRC) $(RING_SRC)

$(BUILD)/cxl-ring-bench: $(BENCH_SRC) $(RING_SRC) $(RING_HDR)
	$(CC) $(CFLAGS_OPT) -pthread -o $@ $(BENCH_SRC) $(RING_SRC) -lm

# No wake-up lost (docs/ring-protocol.md section 8): the library's N2 against the driver's N1,
# two processes; tests/ring/test_notify.py runs it.
$(BUILD)/notify-stress: ring/tests/notify_stress.c $(RING_SRC) $(RING_HDR)
	$(CC) $(CFLAGS_OPT) -o $@ ring/tests/notify_stress.c $(RING_SRC)

# The first request after an idle gap (make bench: notify futex against polling).
$(BUILD)/cxl-wake-latency: bench/c/wake/wake_latency.c $(RING_SRC) $(RING_HDR)
	$(CC) $(CFLAGS_OPT) -pthread -o $@ bench/c/wake/wake_latency.c $(RING_SRC)

# Idle load-to-use latency by pointer chasing: anonymous memory against a mapped region
# (docs/benchmarks.md, "Pointer chase (far-memory latency)"); no ring code.
$(BUILD)/cxl-chase: bench/c/chase/chase.c
	$(CC) $(CFLAGS_OPT) -o $@ bench/c/chase/chase.c -lm

# A YCSB-like application workload over RESP (docs/benchmarks.md, "An application's
# workload"): the same load through the gateway and over TCP; no ring code.
$(BUILD)/cxl-ycsb: bench/c/ycsb/ycsb.c
	$(CC) $(CFLAGS_OPT) -o $@ bench/c/ycsb/ycsb.c -lm

# The null server: the driver's region and channel code with no Redis behind it (GET answers
# a fixed value, SET OK), for the transport's own limit in `make bench` (docs/benchmarks.md).
# The ASan+UBSan build is the one tests/bench feeds hostile input. REDISMODULE_API=extern: the
# module API pointers are declared, not defined, so that a driver file calling one the null
# server does not provide fails to link instead of calling NULL.
NULL_CFLAGS := -Idriver -DREDISMODULE_API=extern -DREDISMODULE_ATTR= -pthread
$(BUILD)/cxl-null-server: $(NULL_SRC) $(NULL_DRIVER) $(DRIVER_HDR) $(RING_SRC) $(RING_HDR) $(BUILD)/redis-src/redismodule.h
	$(CC) $(CFLAGS_OPT) $(NULL_CFLAGS) -o $@ $(NULL_SRC) $(NULL_DRIVER) $(RING_SRC)

$(BUILD)/cxl-null-server-asan: $(NULL_SRC) $(NULL_DRIVER) $(DRIVER_HDR) $(RING_SRC) $(RING_HDR) $(BUILD)/redis-src/redismodule.h
	$(CC) $(CFLAGS_SAN) $(NULL_CFLAGS) -o $@ $(NULL_SRC) $(NULL_DRIVER) $(RING_SRC)

# The native RESP gateway (gateway/README.md): Redis clients over TCP, their commands over
# the ring. The ASan+UBSan build is the one tests/gateway feeds hostile input.
$(BUILD)/cxl-gateway: $(GATEWAY_SRC) $(GATEWAY_HDR) $(RING_SRC) $(RING_HDR)
	$(CC) $(CFLAGS_OPT) -pthread -o $@ $(GATEWAY_SRC) $(RING_SRC)

$(BUILD)/cxl-gateway-asan: $(GATEWAY_SRC) $(GATEWAY_HDR) $(RING_SRC) $(RING_HDR)
	$(CC) $(CFLAGS_SAN) -pthread -o $@ $(GATEWAY_SRC) $(RING_SRC)

# libFuzzer harness for the request decoder; `make fuzz FUZZ_SECONDS=600` runs it longer.
$(BUILD)/fuzz-decoder: $(FUZZ_SRC) $(RING_SRC) $(RING_HDR)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -Iring/include -o $@ $(FUZZ_SRC) $(RING_SRC)

FUZZ_SECONDS ?= 60
fuzz: $(BUILD)/fuzz-decoder
	mkdir -p $(BUILD)/fuzz-corpus && $(BUILD)/fuzz-decoder -max_total_time=$(FUZZ_SECONDS) $(BUILD)/fuzz-corpus

# The shared layout 5 vectors through the C library (ASan+UBSan): cxl_layout_plan(), the
# channel addressing, the header the library formats and cxl_header_read()'s checks. The
# message vectors go through the same program from tests/ring/test_ring_vectors.py.
$(BUILD)/vector-check: ring/tests/vector_check.c $(RING_SRC) $(RING_HDR)
	$(CC) $(CFLAGS_SAN) -o $@ ring/tests/vector_check.c $(RING_SRC)

ring-check: $(BUILD)/vector-check tests/vectors/layout5.json
	$(BUILD)/vector-check --layout tests/vectors/layout5.json

## ---- the module for other servers: Redis 8.0, Valkey 8 (docs/servers.md) ---
# scripts/prepare-server.sh NAME build/NAME gets the server (Redis 8 built once into
# /var/cache/cxl-dsm-lab/servers, valkey-server from bookworm-backports) and writes its own
# module header into build/NAME/include and build/NAME/server.env; these rules build the
# module against that header: build/NAME/cxl_ring.so and build/NAME/cxl_ring_asan.so.
SERVERS     ?= redis8 valkey
server_cflags = $(subst -I$(BUILD)/redis-src,-I$(BUILD)/$*/include,$(1))

$(BUILD)/%/cxl_ring.so: $(DRIVER_SRC) $(DRIVER_HDR) $(RING_SRC) $(RING_HDR) $(BUILD)/%/include/redismodule.h
	$(CC) $(call server_cflags,$(CFLAGS_OPT)) -fPIC -shared -pthread -o $@ $(DRIVER_SRC) $(RING_SRC)

$(BUILD)/%/cxl_ring_asan.so: $(DRIVER_SRC) $(DRIVER_HDR) $(RING_SRC) $(RING_HDR) $(BUILD)/%/include/redismodule.h
	$(CC) $(call server_cflags,$(CFLAGS_SAN)) -fPIC -shared -pthread -o $@ $(DRIVER_SRC) $(RING_SRC)

## ---- the lab -------------------------------------------------------------
lab: build
	$(VENV)/bin/ansible-playbook site.yml

teardown: venv
	$(VENV)/bin/ansible-playbook playbooks/teardown.yml

## ---- tests ---------------------------------------------------------------
test: lint test-unit test-servers test-lab

test-unit: build ring-check
	$(PY) -m pytest -q --durations=15 tests

# tests/ring against each of $(SERVERS) with the module built against its header. Not
# again here: the fuzz harness and the decoder vectors (no server in them). A server this
# system cannot have (prepare-server.sh exit 3: not Debian 12) is skipped, and said so.
SERVER_TESTS ?= tests/ring --ignore=tests/ring/test_ring_fuzz.py --ignore=tests/ring/test_ring_vectors.py
test-servers: build
	@failed=""; for s in $(SERVERS); do \
	    rc=0; scripts/prepare-server.sh $$s $(BUILD)/$$s || rc=$$?; \
	    if [ $$rc -eq 3 ]; then echo "test-servers: $$s skipped"; continue; fi; \
	    [ $$rc -eq 0 ] || { failed="$$failed $$s"; continue; }; \
	    $(MAKE) --no-print-directory $(BUILD)/$$s/cxl_ring.so $(BUILD)/$$s/cxl_ring_asan.so \
	        || { failed="$$failed $$s"; continue; }; \
	    ( set -a && . ./$(BUILD)/$$s/server.env && CXL_TEST_MODULE=$(BUILD)/$$s/cxl_ring.so && \
	      echo "test-servers: $$s $$CXL_TEST_SERVER_VERSION ($$CXL_TEST_SERVER)" && \
	      $(PY) -m pytest -q -p no:cacheprovider $(SERVER_TESTS) ) || failed="$$failed $$s"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-servers: failed:$$failed"; exit 1; fi

# Molecule runs ansible-playbook and ansible-config from PATH: the venv's. A failed
# step stops Molecule's sequence before its destroy, so destroy explicitly then.
MOLECULE := PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/molecule
test-lab: build
	$(MOLECULE) test -s lab || { $(MOLECULE) destroy -s lab; exit 1; }

lint: venv
	$(VENV)/bin/ruff check client tests bench library module_utils molecule attack roles
	@if [ -d roles ]; then $(VENV)/bin/ansible-lint; fi

## ---- benchmarks ----------------------------------------------------------
bench: build
	$(PY) bench/run.py --out bench/results

clean:
	rm -rf $(BUILD)

# The benchmark inside the lab (ring vs TCP between the VMs); reports under bench/lab/.
bench-lab: venv
	$(VENV)/bin/ansible-playbook playbooks/bench.yml
