#!/usr/bin/env bash
# Prints the size of the shared library as a vendor ships it: libichseg.so, stripped, CPU-only
# with DICOM (--no-default-features --features dicom: what an embedded build ships) and with CUDA
# support (default features), so that a size regression shows (docs/BENCHMARKS.md). PROFILE is
# release or dist (Cargo.toml: what scripts/install.sh --profile dist ships). Builds what is
# missing (a release build takes several minutes on 2 cores, a dist build longer).
#
#   scripts/lib_size.sh [cpu|cuda|both] [PROFILE]   (default both release)
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-both} profile=${2:-release}
case $profile in release | dist) ;; *) echo "lib_size.sh: PROFILE must be release or dist" >&2; exit 2 ;; esac
target=${CARGO_TARGET_DIR:-target}
measure() { # label, cargo feature flags...
  local label=$1 dir=$target/size-$1
  shift
  CARGO_TARGET_DIR=$dir cargo build --locked --profile "$profile" -p ichseg --lib "$@" -q
  local so=$dir/$profile/libichseg.so stripped
  stripped=$(mktemp)
  strip --strip-all -o "$stripped" "$so"
  awk -v l="$label" -v s="$(stat -c %s "$stripped")" -v b="$(stat -c %s "$so")" \
    -v n="$(objdump -p "$so" | awk '$1 == "SONAME" {print $2}')" \
    -v p="$profile" \
    'BEGIN { printf "%-5s %-7s libichseg.so %6.1f MB stripped (%6.1f MB as built), SONAME %s\n", l, p, s / 1e6, b / 1e6, n }'
  rm -f "$stripped"
}
[[ $which == cpu || $which == both ]] && measure cpu --no-default-features --features dicom
[[ $which == cuda || $which == both ]] && measure cuda
exit 0
