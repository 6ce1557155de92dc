#!/usr/bin/env bash
# Packs what `make gpu-check` needs on a GPU machine that has no Rust
# toolchain and no network: the release binaries (cairn, cairn-worker,
# bench_train), stripped and xz-compressed, and the CIFAR-10 image-folder
# archive, into one git-ignored folder that travels with the device tool's
# `carry` (64 MiB in all, the checkout included).
#
#   scripts/pack-device.sh [DIR]     (default target/device; `make pack-device`)
#
# xz because a bare Linux box decompresses it even without xz-utils
# (gpu-check.sh falls back to Python's lzma). XZ_LEVEL (default 9) trades
# time for size; the test packs with 0. CIFAR names the archive (default
# ../shared/data/cifar10-jpg.tar.gz); the device cannot see ../shared.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/target/device}"
BIN="${CAIRN_RELEASE_DIR:-$ROOT/target/release}"
CIFAR="${CIFAR:-$ROOT/../shared/data/cifar10-jpg.tar.gz}"
LIMIT=$((64 * 1024 * 1024))

mkdir -p "$DIR"
for b in cairn cairn-worker bench_train; do
  [ -x "$BIN/$b" ] || { echo "pack-device: $BIN/$b is missing; build it with \`make setup\`" >&2; exit 1; }
  # Strip to a temp file first: the unstripped worker is ~850 MB of debug info.
  strip -o "$DIR/$b.tmp" "$BIN/$b"
  xz -T0 "-${XZ_LEVEL:-9}" -c "$DIR/$b.tmp" > "$DIR/$b.xz"
  rm "$DIR/$b.tmp"
done
if [ -f "$CIFAR" ]; then
  cp "$CIFAR" "$DIR/cifar10-jpg.tar.gz"
else
  echo "pack-device: no $CIFAR; the GPU run needs it (set CIFAR=...)" >&2
fi

total=$(du -cb "$DIR"/* | tail -1 | cut -f1)
du -b "$DIR"/*
echo "pack-device: $((total / 1048576)) MiB in $DIR"
if [ "$total" -ge "$LIMIT" ]; then
  echo "pack-device: over the device tool's 64 MiB carry limit; raise XZ_LEVEL or carry less" >&2
  exit 1
fi
