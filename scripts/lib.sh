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

# need_tools TOOL...: the commands the scripts rely on beyond bash and
# coreutils. Missing ones are installed with apt-get when running as root on
# Debian/Ubuntu; otherwise the script stops naming the exact packages.
# TOOL is a command name; "venv" means python3's venv module.
fg_tool_package() {
  case "$1" in
  cc | gcc | make) echo build-essential ;;
  curl) echo curl ;;
  python3) echo python3 ;;
  venv) echo python3-venv ;;
  wrk) echo wrk ;;
  redis-cli) echo redis-tools ;;
  mariadb) echo mariadb-client ;;
  setsid) echo util-linux ;;
  *) echo "$1" ;;
  esac
}
fg_tool_present() {
  if [[ "$1" == venv ]]; then
    have python3 && python3 -c 'import ensurepip, venv' >/dev/null 2>&1
  else
    have "$1"
  fi
}
need_tools() {
  local t missing=() pkgs=()
  for t in "$@"; do
    fg_tool_present "$t" && continue
    missing+=("$t")
    pkgs+=("$(fg_tool_package "$t")")
  done
  ((${#missing[@]})) || return 0
  if [[ "$(id -u)" == 0 ]] && have apt-get; then
    log "installing ${pkgs[*]} (missing: ${missing[*]})"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null; } ||
      die "apt-get install ${pkgs[*]} failed (see above)"
    for t in "${missing[@]}"; do fg_tool_present "$t" || die "$t is still missing after apt-get install ${pkgs[*]}"; done
    return 0
  fi
  die "missing: ${missing[*]}. Install them (as root) with:
    apt-get install -y ${pkgs[*]}"
}

# The oldest Rust that builds the workspace (rust-version in Cargo.toml:
# sqlx 0.9 needs 1.94).
FG_RUST_MIN="1.94"

# Make cargo usable: rustup installs into ~/.cargo/bin, which a plain
# non-login shell (CI, sudo, cron) often lacks on PATH. Also a C compiler
# (cargo links with cc, mimalloc is C) and curl (readiness checks).
ensure_cargo() {
  if ! have cargo && [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
  fi
  local rustup_hint="curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile default
    . \"\$HOME/.cargo/env\""
  need_tools cc curl
  if ! have cargo; then
    die "cargo not found on PATH. Install Rust with rustup (the project needs Rust >= $FG_RUST_MIN, edition 2024; Debian's apt 'cargo' is too old):
    $rustup_hint"
  fi
  local v
  v="$(rustc --version 2>/dev/null | awk '{print $2}')"
  if [[ -n "$v" && "$(printf '%s\n%s\n' "$FG_RUST_MIN" "${v%%-*}" | sort -V | head -n 1)" != "$FG_RUST_MIN" ]]; then
    die "Rust $v is too old: the project needs >= $FG_RUST_MIN (rust-version in Cargo.toml). Update with: rustup update stable"
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
