# cairn's entry points. A newcomer needs two: `make run` (run the pipeline
# in ./pipeline.toml) and `make test`. Everything builds with the release
# profile into one shared target dir, so `run`, `test` and `bench` reuse
# each other's artifacts.

CARGO ?= cargo
CARGO_FLAGS ?= --release

.PHONY: setup build run test bench fmt clippy

# Installs libtorch once per machine (quiet when done) and builds everything.
setup:
	@bash scripts/setup-torch.sh
	$(CARGO) build $(CARGO_FLAGS) --workspace

build: setup

# Offline dev and CI machines carry CIFAR-10 as an image-folder archive
# beside the checkout; use it when present, else the official download.
SHARED_CIFAR := $(wildcard ../shared/data/cifar10-jpg.tar.gz)
RUN_FLAGS ?= $(if $(SHARED_CIFAR),--set load.source=$(SHARED_CIFAR))

run: setup
	./target/release/cairn run $(RUN_FLAGS)

test: setup
	$(CARGO) test $(CARGO_FLAGS) --workspace

bench: setup
	bash scripts/bench.sh

fmt:
	$(CARGO) fmt --all

clippy: setup
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings
