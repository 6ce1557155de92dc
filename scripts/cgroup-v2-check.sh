#!/usr/bin/env bash
# What cairn says about memory under cgroup v2 (the default of current
# distributions and CI runners), checked against a real kernel where the
# host uses cgroup v1 (as a container may): boots a VM (qemu, Debian's
# kernel, virtme-ng sharing this file system) whose cgroup v2 has the
# memory controller, and there runs the release `cairn` through
#   1. a stage the OOM killer kills under a child cgroup's `memory.max`,
#      then with the limit on that cgroup's parent,
#   2. a stage killed by `kill -9` from outside (no OOM kill),
#   3. a stage that runs the whole VM out of memory (root cgroup:
#      `/proc/vmstat`'s count),
#   4. a stage throttled by `memory.high` (never killed): a log's heartbeats,
#   5. the same on a terminal (`script`'s pty): the bars,
# then the permanent test `a_stage_the_out_of_memory_killer_kills_is_named_so`.
# Needs root (apt, cgroups); installs qemu-system-x86, a kernel package and a
# venv with virtme-ng once. Without working nested KVM (a VM in a VM) qemu
# emulates the CPU: about 7 minutes. `make test` does not run this.
#   bash scripts/cgroup-v2-check.sh            (after `make build` and `make test`)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CAIRN="$ROOT/target/release/cairn"

guest() {
  # Stages fail on purpose here: report, do not stop.
  set +e +o pipefail
  echo +memory > /sys/fs/cgroup/cgroup.subtree_control
  local scratch; scratch="$(mktemp -d)"
  mount -t tmpfs -o size=1500m tmpfs "$scratch"
  proj() { local d="$scratch/$1"; mkdir -p "$d"; printf '%s\n' "$2" > "$d/pipeline.toml"; echo "$d"; }
  cg() { mkdir "/sys/fs/cgroup/$1"; [ -z "${3:-}" ] || echo "$3" > "/sys/fs/cgroup/$1/$2"; echo 0 > "/sys/fs/cgroup/$1/memory.swap.max"; }
  incg() { local g="$1"; shift; bash -c 'echo $$ > "$0"; exec "$@"' "/sys/fs/cgroup/$g/cgroup.procs" "$@"; }
  hog() { printf '[stages.hog]\nkind = "command"\ncmd = "x=$(head -c %s /dev/zero | tr \\"\\\\0\\" a); echo ${#x} > {out.o}"\noutputs = { o = "o.txt" }\n' "$1"; }
  local grow='[stages.grow]
kind = "command"
cmd = "python3 -c \"b = [bytes([1]) * (1 << 20) for _ in range(100)]; print(len(b))\" > {out.o}"
outputs = { o = "o.txt" }'

  echo "=== 1. OOM kill under memory.max = 96 MiB (a child cgroup)"
  cg oom memory.max $((96 << 20))
  (cd "$(proj oom "$(hog 400000000)")" && incg oom "$CAIRN" run 2>&1 | tail -4)
  grep -w oom_kill /sys/fs/cgroup/oom/memory.events
  echo "=== 1b. the same with the limit on the parent (a pod's limit, cairn in a container's child cgroup)"
  cg pod memory.max $((96 << 20))
  echo +memory > /sys/fs/cgroup/pod/cgroup.subtree_control
  mkdir /sys/fs/cgroup/pod/box
  (cd "$(proj pod "$(hog 400000000)")" && incg pod/box "$CAIRN" run 2>&1 | grep "help:")
  grep -w oom_kill /sys/fs/cgroup/pod/box/memory.events
  echo "=== 2. kill -9 from outside (a child cgroup)"
  cg k9 memory.max max
  (cd "$(proj k9 $'[stages.sl]\nkind = "command"\ncmd = "sleep 60; echo > {out.o}"\noutputs = { o = "o.txt" }')" && incg k9 "$CAIRN" run 2>&1 | tail -4) &
  sleep 10; pkill -9 -f "sleep 60; echo"; wait
  echo "=== 3. the whole VM out of memory (the root cgroup)"
  grep -w oom_kill /proc/vmstat
  (cd "$(proj all "$(hog 3000000000)")" && "$CAIRN" run 2>&1 | tail -4)
  grep -w oom_kill /proc/vmstat
  echo "=== 4. throttled by memory.high = 40 MiB, never killed: a log (heartbeats every 10 s, stopped after 60 s)"
  cg high memory.high $((40 << 20))
  (cd "$(proj high "$grow")" && CAIRN_HEARTBEAT=10 incg high timeout 60 "$CAIRN" run 2>&1 | grep "short of memory" | tail -3)
  grep -E "^(high|oom_kill) " /sys/fs/cgroup/high/memory.events
  echo "=== 5. the same on a terminal (script's pty; the last frames, stopped after 60 s)"
  cg tty memory.high $((40 << 20))
  (cd "$(proj tty "$grow")" && TERM=xterm incg tty script -qfc "timeout 60 $CAIRN run" "$scratch/pty.log" > /dev/null 2>&1 || true)
  sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g' "$scratch/pty.log" | tr '\r' '\n' | sed 's/ *$//' | grep "short of memory" | tail -3
  echo "=== 6. the permanent test, on a real cgroup v2"
  local test; test="$(ls -t "$ROOT"/target/release/deps/reliability-* | grep -v '\.d$' | head -1)"
  (cd "$ROOT" && TMPDIR="$scratch" "$test" --exact a_stage_the_out_of_memory_killer_kills_is_named_so 2>&1 | grep -E "^test |skip")
}

if [ "${1:-}" = "--guest" ]; then
  guest
  exit
fi

[ "$(id -u)" -eq 0 ] || { echo "cgroup-v2-check: needs root (apt and cgroups)" >&2; exit 1; }
[ -x "$CAIRN" ] || { echo "cgroup-v2-check: $CAIRN is missing; run \`make build\` first" >&2; exit 1; }
ls "$ROOT"/target/release/deps/reliability-* > /dev/null 2>&1 || { echo "cgroup-v2-check: the tests are not built; run \`make test\` first" >&2; exit 1; }
KERNEL="$(ls -t /boot/vmlinuz-* 2>/dev/null | head -1 || true)"
if ! command -v qemu-system-x86_64 > /dev/null || [ -z "$KERNEL" ]; then
  apt-get update -qq
  # Debian names its kernel package linux-image-amd64, Ubuntu linux-image-generic.
  kernel_pkg=linux-image-amd64
  apt-cache show "$kernel_pkg" > /dev/null 2>&1 || kernel_pkg=linux-image-generic
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 "$kernel_pkg" > /dev/null
  KERNEL="$(ls -t /boot/vmlinuz-* | head -1)"
fi
VNG="$HOME/.cache/cairn/virtme-ng-1.42"
if [ ! -x "$VNG/bin/vng" ]; then
  python3 -m venv "$VNG"
  "$VNG/bin/pip" install -q virtme-ng==1.42
fi
KVM="--disable-kvm"
[ "${CAIRN_VM_KVM:-0}" = 1 ] && KVM=""
PATH="$VNG/bin:$PATH" vng --run "$KERNEL" --memory 2G --cpus 2 --force-9p $KVM --rwdir /tmp \
  --exec "bash $ROOT/scripts/cgroup-v2-check.sh --guest"
