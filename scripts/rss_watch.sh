#!/usr/bin/env bash
# Where a stage's memory goes: runs a command (e.g. `cairn run pretrain
# --force pretrain ...`) and samples the resident memory of every
# `cairn-worker` it starts, twice a second, with the number of log lines
# written by then, so a jump in memory can be matched to what the log says.
#
#   bash scripts/rss_watch.sh OUT cmd [args...]
#
# Writes the command's output to OUT.log and the samples to OUT.rss
# (seconds since start, worker pid, then in kB VmRSS and its two parts,
# RssAnon (heap) and RssFile (mapped file pages, which the kernel may
# drop), then log lines), and prints the command's exit status and the
# largest sample. `cairn runs` records
# each stage's peak (`peak_rss_mb`); this shows when it was reached.
set -uo pipefail
out="${1:?usage: rss_watch.sh OUT cmd [args...]}"; shift
"$@" > "$out.log" 2>&1 &
pid=$!
t0=$(date +%s.%N)
: > "$out.rss"
while kill -0 "$pid" 2>/dev/null; do
  for w in $(pgrep -x cairn-worker); do
    kb=$(awk '/^(VmRSS|RssAnon|RssFile)/ { printf "%s ", $2 }' "/proc/$w/status" 2>/dev/null)
    [ -n "$kb" ] && echo "$(awk -v t="$(date +%s.%N)" -v t0="$t0" 'BEGIN { printf "%.1f", t - t0 }') $w $kb$(wc -l < "$out.log")" >> "$out.rss"
  done
  sleep 0.5
done
wait "$pid"; rc=$?
echo "exit status $rc; largest sample (s pid VmRSS RssAnon RssFile lines): $(sort -k3 -n "$out.rss" | tail -1)"
exit $rc
