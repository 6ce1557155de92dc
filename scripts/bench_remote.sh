#!/usr/bin/env bash
# Remote-cache throughput on loopback: starts SeaweedFS (scripts/setup-
# seaweedfs.sh installs it), pushes a pipeline with one SIZE_MB random
# output (plus a 1 MB one) with `cairn push`, pulls it into an empty clone
# with `cairn run`, and does the same transfer with plain curl (one signed
# PUT; one GET to /dev/null, and one to a file that is then fsynced, as a
# pull must) as the server's own limit. Prints seconds, MiB/s and peak
# RSS. Usage: scripts/bench_remote.sh [SIZE_MB] (default 512).
# LATENCY_MS=T and CONN_MBPS=R put cairn and curl behind
# scripts/latency_proxy.py: T ms each way, each connection at most R MB/s
# each way (one TCP connection's window over a long round trip).
#
# scripts/bench_remote.sh --project DIR [cairn args...]: the same for a real
# cache, side by side with DVC (dvc-s3, `endpointurl` to the same server)
# and the AWS CLI (multipart, its defaults) from ~/.cache/cairn/bench-venv:
# DIR is a project whose cache holds the stages (e.g. the 224 px resize:
# `cairn run resize --profile none --set load.source=...`), the cairn args
# select them again (`--profile none --set load.source=...`). Each tool
# pushes the same files (every output of the stages cached in DIR) to a
# fresh server and pulls them into an empty clone; then the no-op pull.
# Needs about 3x the cache's size free on the disk of $TMPDIR. BASELINE=0
# skips the AWS CLI (its rows then read 0); CAIRN_ONLY=1 stops after cairn.
#
# scripts/bench_remote.sh --stages N [CAIRN_OLD]: the remote's cost per
# stage: N independent one-line stages run with `-j 1` and no remote, then
# against an empty remote (each a miss, pushed as it finishes), then in
# empty clones: `cairn run` pulling all N, `cairn status`, `cairn pull`;
# and `cairn push` of the first run's cache to an empty prefix. With CAIRN_OLD (another build's binary)
# each is timed for both builds, alternating. LATENCY_MS=T puts the server
# T ms away each way (scripts/latency_proxy.py), as a remote across a
# network is. CHAIN=1 makes the N stages one chain (each reads the one
# before) instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIZE_MB="${1:-512}"
CAIRN="${CAIRN:-$ROOT/target/release/cairn}"
WEED="$(bash "$ROOT/scripts/setup-seaweedfs.sh" --print)"
[ -x "$CAIRN" ] || { echo "build first: cargo build --release --workspace" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is needed for the baseline" >&2; exit 1; }

WORK="$(mktemp -d)"
cleanup() { [ -n "${WEED_PID:-}" ] && kill "$WEED_PID" 2>/dev/null; [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
KEY=benchkey SECRET=benchsecret-local-only
echo "{\"identities\":[{\"name\":\"bench\",\"credentials\":[{\"accessKey\":\"$KEY\",\"secretKey\":\"$SECRET\"}],\"actions\":[\"Admin\",\"Read\",\"Write\",\"List\"]}]}" > "$WORK/s3.json"
# A fresh server with an empty store in $WORK/data (a running one is stopped and its data deleted).
start_weed() {
  if [ -n "${WEED_PID:-}" ]; then kill "$WEED_PID"; wait "$WEED_PID" 2>/dev/null || true; fi
  rm -rf "$WORK/data"; mkdir -p "$WORK/data"
  S3=$(port)
  "$WEED" mini -dir="$WORK/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port="$S3" \
    -master.port="$(port)" -master.port.grpc="$(port)" -volume.port="$(port)" -volume.port.grpc="$(port)" \
    -filer.port="$(port)" -filer.port.grpc="$(port)" -s3.port.grpc="$(port)" -admin.port="$(port)" -admin.port.grpc="$(port)" \
    -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false -master.telemetry=false \
    -s3.config="$WORK/s3.json" -bucket=bench > "$WORK/weed.log" 2>&1 &
  WEED_PID=$!
  export AWS_ACCESS_KEY_ID=$KEY AWS_SECRET_ACCESS_KEY=$SECRET AWS_ENDPOINT_URL=http://127.0.0.1:$S3 AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
  for _ in $(seq 1 240); do
    # A few bytes, not none: the server's first write of data takes about
    # a second (it allocates its volumes), which the first timed command
    # would otherwise pay.
    curl -s -o /dev/null --aws-sigv4 "aws:amz:us-east-1:s3" --user "$KEY:$SECRET" -T "$WORK/s3.json" "http://127.0.0.1:$S3/bench/probe" && return 0
    sleep 0.25
  done
  echo "weed did not start: $WORK/weed.log" >&2; cat "$WORK/weed.log" >&2; exit 1
}
# With LATENCY_MS and/or CONN_MBPS, cairn and curl reach the server
# through scripts/latency_proxy.py: T ms each way, each connection capped
# at CONN_MBPS MB/s each way. EP is the address they use.
maybe_proxy() {
  EP=127.0.0.1:$S3
  [ -n "${LATENCY_MS:-}${CONN_MBPS:-}" ] || return 0
  local p; p=$(port); python3 "$ROOT/scripts/latency_proxy.py" "$p" "$S3" "${LATENCY_MS:-0}" ${CONN_MBPS:+"$CONN_MBPS"} & PROXY_PID=$!
  EP=127.0.0.1:$p; export AWS_ENDPOINT_URL=http://$EP; sleep 1
}
t() { /usr/bin/time -f "%e %M" -o "$WORK/t" "$@" > "$WORK/out" 2>&1 || { cat "$WORK/out" >&2; exit 1; }; cat "$WORK/t"; }
row() { [ "$2" = 0 ] || printf '%-44s %8s %8s %9sM\n' "$1" "$2" "$(python3 -c "print(f'{$MB/$2:.0f}')")" "$(( ${3:-0} / 1024 ))"; }

if [ "${1:-}" = --project ]; then
  SRC="$(cd "$2" && pwd)"; shift 2
  VENV="$HOME/.cache/cairn/bench-venv/bin"
  [ -x "$VENV/dvc" ] && [ -x "$VENV/aws" ] || { echo "needs dvc, dvc-s3 and awscli in $VENV (pip install dvc-s3 awscli)" >&2; exit 1; }
  # The files: every output of the stages cached in SRC (their artifacts/ links).
  FILES=$(find "$SRC/artifacts" -type f | sort)
  BYTES=$(du -cbL $FILES | tail -1 | cut -f1); MB=$((BYTES >> 20))
  start_weed
  export CAIRN_REMOTE=s3://bench/cairn
  read -r PUSH_S PUSH_KB < <(cd "$SRC" && t "$CAIRN" push "$@")
  cat "$WORK/out" >&2
  grep -q " 0 failed" "$WORK/out" || exit 1
  mkdir "$WORK/b" && cp "$SRC/pipeline.toml" "$WORK/b/"
  read -r PULL_S PULL_KB < <(cd "$WORK/b" && t "$CAIRN" pull "$@")
  cat "$WORK/out" >&2
  [ "$(du -sbL "$WORK/b/cache/objects" | cut -f1)" -ge "$BYTES" ] || { echo "the pull did not bring every byte" >&2; exit 1; }
  read -r NOOP_S NOOP_KB < <(cd "$WORK/b" && t "$CAIRN" pull "$@")
  grep -q "^0 pulled" "$WORK/out" || { cat "$WORK/out" >&2; exit 1; }
  rm -rf "$WORK/b"
  [ "${CAIRN_ONLY:-}" = 1 ] && { row "cairn push" "$PUSH_S" "$PUSH_KB"; row "cairn pull (empty clone)" "$PULL_S" "$PULL_KB"; echo "no-op pull $NOOP_S s"; exit 0; }
  if [ "${BASELINE:-1}" = 1 ]; then
  start_weed
  mkdir "$WORK/up"; for f in $FILES; do ln -s "$f" "$WORK/up/$(basename "$(dirname "$f")")-$(basename "$f")"; done
  read -r AUP_S AUP_KB < <(t "$VENV/aws" s3 cp --recursive --follow-symlinks --no-progress --endpoint-url "$AWS_ENDPOINT_URL" "$WORK/up" s3://bench/aws/)
  read -r ADOWN_S _ < <(t bash -c "'$VENV/aws' s3 cp --recursive --no-progress --endpoint-url '$AWS_ENDPOINT_URL' s3://bench/aws/ '$WORK/dl' && sync -f '$WORK/dl'")
  rm -rf "$WORK/dl"
  else AUP_S=0 ADOWN_S=0 AUP_KB=0; fi
  # DVC, on a fresh server: its cache holds hard links to the same files.
  start_weed
  mkdir "$WORK/d" && cd "$WORK/d" && git init -q && "$VENV/dvc" init -q
  "$VENV/dvc" config cache.type hardlink
  "$VENV/dvc" remote add -q -d s3 s3://bench/dvc && "$VENV/dvc" remote modify s3 endpointurl "$AWS_ENDPOINT_URL"
  mkdir data; for f in $FILES; do ln "$f" "data/$(basename "$(dirname "$f")")-$(basename "$f")"; done
  "$VENV/dvc" add -q data && git add data.dvc .gitignore .dvc/config && git -c user.name=b -c user.email=b@b commit -qm data
  read -r DPUSH_S DPUSH_KB < <(t "$VENV/dvc" push)
  git clone -q "$WORK/d" "$WORK/d2" && cd "$WORK/d2"
  read -r DPULL_S DPULL_KB < <(t "$VENV/dvc" pull)
  read -r DNOOP_S _ < <(t "$VENV/dvc" pull)
  cd "$WORK"; rm -rf "$WORK/d2" "$WORK/d"
  printf '%-44s %8s %8s %10s\n' "($MB MiB in $(echo $FILES | wc -w) files, loopback)" seconds MiB/s "peak RSS"
  row "cairn push" "$PUSH_S" "$PUSH_KB"; row "dvc push" "$DPUSH_S" "$DPUSH_KB"; row "aws s3 cp --recursive (upload, baseline)" "$AUP_S" "$AUP_KB"
  row "cairn pull (empty clone)" "$PULL_S" "$PULL_KB"; row "dvc pull (empty clone)" "$DPULL_S" "$DPULL_KB"; row "aws s3 cp --recursive (download + sync)" "$ADOWN_S"
  printf '%-44s %8s\n' "cairn pull, everything present" "$NOOP_S" "dvc pull, everything present" "$DNOOP_S"
  exit 0
fi

if [ "${1:-}" = --stages ]; then
  N="$2"; OLD="${3:-}"
  start_weed
  maybe_proxy
  timed() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }; e=$(date +%s%N); echo "$(( (e - s) / 1000000 ))"; }
  for build in "$CAIRN" ${OLD:+"$(realpath "$OLD")"}; do
    tag=$(basename "$(dirname "$build")")-$RANDOM
    for d in local a b c d; do
      mkdir -p "$WORK/$tag/$d"
      # The no-remote run's cache is pushed afterwards, to a prefix of its own.
      python3 - "$WORK/$tag/$d/pipeline.toml" "$N" "$tag" "$d" "${CHAIN:-0}" <<'PY'
import sys
path, n, tag, d, chain = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1"
spec = [f'[remote]\nurl = "s3://bench/{tag}{"-own" if d == "local" else ""}"\n']
if chain:
    spec += ['[stages.s0]\nkind = "command"\ncmd = "echo {tag} 0 > {{out.o}}"\noutputs = {{ o = "o.txt" }}\n'.format(tag=tag)]
    spec += [f'[stages.s{i}]\nkind = "command"\ncmd = "cat {{in.i}} > {{out.o}}; echo {i} >> {{out.o}}"\ninputs = {{ i = "s{i - 1}.o" }}\noutputs = {{ o = "o.txt" }}\n' for i in range(1, n)]
else:
    spec += [f'[stages.s{i}]\nkind = "command"\ncmd = "echo {tag} {i} > {{out.o}}"\noutputs = {{ o = "o.txt" }}\n' for i in range(n)]
open(path, "w").write("\n".join(spec))
PY
    done
    LOCAL=$(cd "$WORK/$tag/local" && timed "$build" run -q -j 1 --remote none)
    PUSHCMD=$(cd "$WORK/$tag/local" && timed "$build" push)
    MISS=$(cd "$WORK/$tag/a" && timed "$build" run -q -j 1 --push)
    PULL=$(cd "$WORK/$tag/b" && timed "$build" run -q -j 1)
    [ "$(ls "$WORK/$tag/b/artifacts" | wc -l)" = "$N" ] || { echo "the clone did not get every stage" >&2; exit 1; }
    STATUS=$(cd "$WORK/$tag/c" && timed "$build" status)
    PULLCMD=$(cd "$WORK/$tag/d" && timed "$build" pull)
    echo "$build: $N stages, -j 1: no remote ${LOCAL} ms, then \`cairn push\` ${PUSHCMD} ms; empty remote, pushing ${MISS} ms; in empty clones: run pulling all ${PULL} ms, status ${STATUS} ms, pull ${PULLCMD} ms"
  done
  exit 0
fi

start_weed
maybe_proxy
mkdir -p "$WORK/a" "$WORK/b"
cat > "$WORK/a/pipeline.toml" <<TOML
[remote]
url = "s3://bench/p"

[stages.gen]
kind = "command"
cmd = "head -c $((SIZE_MB << 20)) /dev/urandom > {out.big}; head -c 1000000 /dev/urandom > {out.small}"
outputs = { big = "big.bin", small = "small.bin" }
TOML
cp "$WORK/a/pipeline.toml" "$WORK/b/"
(cd "$WORK/a" && "$CAIRN" run -q)
rate() { python3 -c "print(f'{$SIZE_MB/$1:.0f}')"; }
read -r PUSH_S PUSH_KB < <(cd "$WORK/a" && t "$CAIRN" push)
read -r PULL_S PULL_KB < <(cd "$WORK/b" && t "$CAIRN" run)
cmp -s "$WORK/a/artifacts/gen/big.bin" "$WORK/b/artifacts/gen/big.bin" || { echo "pulled bytes differ" >&2; exit 1; }
read -r NOOP_S _ < <(cd "$WORK/b" && t "$CAIRN" run)
BIG="$(readlink -f "$WORK/a/artifacts/gen/big.bin")"
read -r CPUT_S _ < <(t curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$KEY:$SECRET" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -T "$BIG" "http://$EP/bench/base/big.bin")
read -r CGET_S _ < <(t curl -sf -o /dev/null --aws-sigv4 "aws:amz:us-east-1:s3" --user "$KEY:$SECRET" "http://$EP/bench/base/big.bin")
# What a pull must also do: land the bytes on disk, durably.
read -r CGETF_S _ < <(t bash -c "curl -sf -o '$WORK/dl.bin' --aws-sigv4 'aws:amz:us-east-1:s3' --user '$KEY:$SECRET' 'http://$EP/bench/base/big.bin' && python3 -c \"import os; os.fsync(os.open('$WORK/dl.bin', os.O_RDONLY))\"")
printf '%-34s %8s %8s %10s\n' "($SIZE_MB MiB + 1 MB, ${CONN_MBPS:+$CONN_MBPS MB/s a connection, }${LATENCY_MS:+$LATENCY_MS ms each way, }loopback)" seconds MiB/s "peak RSS"
printf '%-34s %8s %8s %9sM\n' "cairn push" "$PUSH_S" "$(rate "$PUSH_S")" "$((PUSH_KB / 1024))"
printf '%-34s %8s %8s\n' "curl PUT (one request, baseline)" "$CPUT_S" "$(rate "$CPUT_S")"
printf '%-34s %8s %8s %9sM\n' "cairn run, all pulled (whole run)" "$PULL_S" "$(rate "$PULL_S")" "$((PULL_KB / 1024))"
printf '%-34s %8s %8s\n' "curl GET to /dev/null (baseline)" "$CGET_S" "$(rate "$CGET_S")"
printf '%-34s %8s %8s\n' "curl GET to a file + fsync" "$CGETF_S" "$(rate "$CGETF_S")"
printf '%-34s %8s\n' "cairn run, no-op afterwards" "$NOOP_S"
