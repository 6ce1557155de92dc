#!/usr/bin/env bash
# Makes sure Debian's Slurm (slurmctld, slurmd, the client tools) and munge
# are installed, so the Slurm tests can start a private single-node cluster
# on 127.0.0.1 (tests/support/slurm.rs; nothing here configures or starts
# a daemon). Installed once per machine with apt; idempotent and quiet when
# done. Needs root or sudo for the install.
set -euo pipefail

have_slurm() {
  command -v sbatch >/dev/null 2>&1 && command -v squeue >/dev/null 2>&1 && command -v scancel >/dev/null 2>&1 &&
    command -v sinfo >/dev/null 2>&1 && [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ]
}

if ! have_slurm; then
  # One installer at a time (tests may call this in parallel).
  mkdir -p "${XDG_CACHE_HOME:-$HOME/.cache}/cairn"
  exec 9>"${XDG_CACHE_HOME:-$HOME/.cache}/cairn/setup-slurm.lock"
  flock 9
fi
if ! have_slurm; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "cairn setup: Slurm is not installed and there is no apt-get; install slurmctld, slurmd, the Slurm client and munge" >&2
    exit 1
  fi
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "cairn setup: installing slurmctld slurmd slurm-client munge with apt (done once per machine)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
  have_slurm
  echo "cairn setup: Slurm ready ($(/usr/sbin/slurmctld -V))" >&2
fi
