#!/usr/bin/env bash
# Makes sure Debian's Slurm (slurmctld, slurmd, the client tools) and munge
# are installed, so the Slurm tests can start a private single-node cluster
# on 127.0.0.1 (tests/support/slurm.rs; nothing here configures or starts
# a daemon). Installed once per machine with apt; idempotent and quiet when
# done. Needs root or sudo for the install.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/apt-once.sh"

have_slurm() {
  command -v sbatch >/dev/null 2>&1 && command -v squeue >/dev/null 2>&1 && command -v scancel >/dev/null 2>&1 &&
    command -v sinfo >/dev/null 2>&1 && [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ]
}
slurm_version() { /usr/sbin/slurmctld -V; }

apt_once Slurm have_slurm slurm_version slurmctld slurmd slurm-client munge
