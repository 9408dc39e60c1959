#!/usr/bin/env bash
# Shared helpers for scripts/stack, scripts/run and scripts/test.
# Sourced, never run. The caller sets FG_LOG_PREFIX (e.g. "stack") first.

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  echo "usage: scripts/lib.sh is sourced by scripts/stack, scripts/run and scripts/test; run one of those (each has --help)" >&2
  exit 2
fi

# Repository root, from this file's own location (works from any cwd and
# through symlinks).
FG_ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd -P)"
export FG_ROOT

FG_LOG_PREFIX="${FG_LOG_PREFIX:-flashgrab}"

# Progress goes to stdout, problems to stderr.
log() { printf '[%s] %s\n' "$FG_LOG_PREFIX" "$*"; }
warn() { printf '[%s] warning: %s\n' "$FG_LOG_PREFIX" "$*" >&2; }
die() {
  printf '[%s] error: %s\n' "$FG_LOG_PREFIX" "$*" >&2
  exit 1
}

# Seconds since the epoch with milliseconds, for step timings.
now_s() { date +%s.%N; }
# elapsed START -> "12.3"
elapsed_since() { awk -v s="$1" -v e="$(now_s)" 'BEGIN { printf "%.1f", e - s }'; }

have() { command -v "$1" >/dev/null 2>&1; }

# Make cargo usable: rustup installs into ~/.cargo/bin, which a plain
# non-login shell (CI, sudo, cron) often lacks on PATH.
ensure_cargo() {
  if ! have cargo && [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
  fi
  if ! have cargo; then
    die "cargo not found on PATH. Install Rust with rustup (the project needs Rust >= 1.85, edition 2024; Debian's apt 'cargo' is too old):
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile default
    . \"\$HOME/.cargo/env\""
  fi
}

# Absolute cargo target directory: CARGO_TARGET_DIR (relative to the
# caller's cwd, as cargo itself would read it) or <repo>/target.
cargo_target_dir() {
  if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
    realpath -m -- "$CARGO_TARGET_DIR"
  else
    printf '%s\n' "$FG_ROOT/target"
  fi
}
