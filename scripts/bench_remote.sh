#!/usr/bin/env bash
# Remote-cache throughput on loopback: starts SeaweedFS (scripts/setup-
# seaweedfs.sh installs it), pushes a pipeline with one SIZE_MB random
# output (plus a 1 MB one) with `cairn push`, pulls it into an empty clone
# with `cairn run`, and does the same transfer with plain curl (one signed
# PUT; one GET to /dev/null, and one to a file that is then fsynced, as a
# pull must) as the server's own limit. Prints seconds, MiB/s and peak
# RSS. Usage: scripts/bench_remote.sh [SIZE_MB] (default 512).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIZE_MB="${1:-512}"
CAIRN="$ROOT/target/release/cairn"
WEED="$(bash "$ROOT/scripts/setup-seaweedfs.sh" --print)"
[ -x "$CAIRN" ] || { echo "build first: cargo build --release --workspace" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is needed for the baseline" >&2; exit 1; }

WORK="$(mktemp -d)"
cleanup() { [ -n "${WEED_PID:-}" ] && kill "$WEED_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
KEY=benchkey SECRET=benchsecret-local-only S3=$(port)
echo "{\"identities\":[{\"name\":\"bench\",\"credentials\":[{\"accessKey\":\"$KEY\",\"secretKey\":\"$SECRET\"}],\"actions\":[\"Admin\",\"Read\",\"Write\",\"List\"]}]}" > "$WORK/s3.json"
mkdir -p "$WORK/data"
"$WEED" mini -dir="$WORK/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port="$S3" \
  -master.port="$(port)" -master.port.grpc="$(port)" -volume.port="$(port)" -volume.port.grpc="$(port)" \
  -filer.port="$(port)" -filer.port.grpc="$(port)" -s3.port.grpc="$(port)" -admin.port="$(port)" -admin.port.grpc="$(port)" \
  -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false -master.telemetry=false \
  -s3.config="$WORK/s3.json" -bucket=bench > "$WORK/weed.log" 2>&1 &
WEED_PID=$!
export AWS_ACCESS_KEY_ID=$KEY AWS_SECRET_ACCESS_KEY=$SECRET AWS_ENDPOINT_URL=http://127.0.0.1:$S3 AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
for _ in $(seq 1 80); do
  curl -s -o /dev/null --aws-sigv4 "aws:amz:us-east-1:s3" --user "$KEY:$SECRET" -T /dev/null "http://127.0.0.1:$S3/bench/probe" && break
  sleep 0.25
done

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
t() { /usr/bin/time -f "%e %M" -o "$WORK/t" "$@" > /dev/null 2>&1; cat "$WORK/t"; }
read -r PUSH_S PUSH_KB < <(cd "$WORK/a" && t "$CAIRN" push)
read -r PULL_S PULL_KB < <(cd "$WORK/b" && t "$CAIRN" run)
cmp -s "$WORK/a/artifacts/gen/big.bin" "$WORK/b/artifacts/gen/big.bin" || { echo "pulled bytes differ" >&2; exit 1; }
read -r NOOP_S _ < <(cd "$WORK/b" && t "$CAIRN" run)
BIG="$(readlink -f "$WORK/a/artifacts/gen/big.bin")"
read -r CPUT_S _ < <(t curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$KEY:$SECRET" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -T "$BIG" "http://127.0.0.1:$S3/bench/base/big.bin")
read -r CGET_S _ < <(t curl -sf -o /dev/null --aws-sigv4 "aws:amz:us-east-1:s3" --user "$KEY:$SECRET" "http://127.0.0.1:$S3/bench/base/big.bin")
# What a pull must also do: land the bytes on disk, durably.
read -r CGETF_S _ < <(t bash -c "curl -sf -o '$WORK/dl.bin' --aws-sigv4 'aws:amz:us-east-1:s3' --user '$KEY:$SECRET' 'http://127.0.0.1:$S3/bench/base/big.bin' && python3 -c \"import os; os.fsync(os.open('$WORK/dl.bin', os.O_RDONLY))\"")
printf '%-34s %8s %8s %10s\n' "($SIZE_MB MiB + 1 MB, loopback)" seconds MiB/s "peak RSS"
printf '%-34s %8s %8s %9sM\n' "cairn push" "$PUSH_S" "$(rate "$PUSH_S")" "$((PUSH_KB / 1024))"
printf '%-34s %8s %8s\n' "curl PUT (one request, baseline)" "$CPUT_S" "$(rate "$CPUT_S")"
printf '%-34s %8s %8s %9sM\n' "cairn run, all pulled (whole run)" "$PULL_S" "$(rate "$PULL_S")" "$((PULL_KB / 1024))"
printf '%-34s %8s %8s\n' "curl GET to /dev/null (baseline)" "$CGET_S" "$(rate "$CGET_S")"
printf '%-34s %8s %8s\n' "curl GET to a file + fsync" "$CGETF_S" "$(rate "$CGETF_S")"
printf '%-34s %8s\n' "cairn run, no-op afterwards" "$NOOP_S"
