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
# (gpu-check.sh unpacks with Python's tarfile). XZ_OPTS trades time for
# size: the default packs the binaries to ~30 MB in ~25 s on 2 cores;
# `--lzma2=preset=9,dict=256MiB` to ~25 MB in ~7 min and ~3 GB of memory.
# CIFAR names the archive (default ../shared/data/cifar10-jpg.tar.gz); the
# device cannot see ../shared. CAIRN_RELEASE_DIR: where the binaries are.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/target/device}"
BIN="${CAIRN_RELEASE_DIR:-$ROOT/target/release}"
CIFAR="${CIFAR:-$ROOT/../shared/data/cifar10-jpg.tar.gz}"
# The carry limit is 64 MiB with the checkout (a few MiB) included.
LIMIT=$((60 * 1024 * 1024))

mkdir -p "$DIR"
rm -f "$DIR"/*.xz
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
for b in cairn cairn-worker bench_train; do
  [ -x "$BIN/$b" ] || { echo "pack-device: $BIN/$b is missing; build it with \`make setup\`" >&2; exit 1; }
  # The unstripped worker is ~850 MB, nearly all debug info.
  strip -o "$STAGE/$b" "$BIN/$b"
done
# One stream with a dictionary larger than a binary: cairn-worker and
# bench_train share most of their code, so the second costs little
# (at preset 9, 25 MB for the three against 41 MB packed one by one).
# One thread: xz's threads compress separate blocks, which would not see
# each other.
tar cf - -C "$STAGE" cairn cairn-worker bench_train | xz -T1 ${XZ_OPTS:---lzma2=preset=0,dict=256MiB} -c > "$DIR/bin.tar.xz"
if [ -f "$CIFAR" ]; then
  install -m 644 "$CIFAR" "$DIR/cifar10-jpg.tar.gz"
else
  echo "pack-device: no $CIFAR; the GPU run needs it (set CIFAR=...)" >&2
fi

total=$(du -cb "$DIR"/* | tail -1 | cut -f1)
du -b "$DIR"/*
echo "pack-device: $((total / 1048576)) MiB in $DIR"
if [ "$total" -ge "$LIMIT" ]; then
  echo "pack-device: over 60 MiB, too close to the device tool's 64 MiB carry limit; pack with a larger xz dictionary (XZ_OPTS) or carry less" >&2
  exit 1
fi
