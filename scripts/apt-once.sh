# Sourced by the setup scripts that install Debian packages once per machine
# (setup-slurm.sh, setup-chromium.sh) and by .ci/run.
#
# apt_once NAME HAVE VERSION PACKAGE...: unless the command HAVE succeeds,
# takes NAME's lock (test binaries may call a setup script in parallel),
# looks again, installs the packages with apt (root, or sudo) and says so
# with what the command VERSION prints. Quiet when there is nothing to do;
# fails, saying what to install, where there is no apt-get or HAVE still
# fails after.
apt_once() {
  local name="$1" have="$2" version="$3"
  shift 3
  "$have" && return 0
  local dir="${XDG_CACHE_HOME:-$HOME/.cache}/cairn"
  mkdir -p "$dir" && exec 9>"$dir/setup-$name.lock" && flock 9 || return 1
  "$have" && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "cairn setup: $name is not installed and there is no apt-get; install $* yourself" >&2
    return 1
  fi
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "cairn setup: installing $* with apt (done once per machine)" >&2
  # Each step checked here, not by `set -e`, which a caller's `||` turns off.
  $sudo apt-get update -qq || return 1
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null || return 1
  "$have" || return 1
  echo "cairn setup: $name ready ($("$version" 2>/dev/null | head -1))" >&2
}
