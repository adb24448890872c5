#!/usr/bin/env bash
# Prints the size of the shared library as a vendor ships it: the release libichseg.so, stripped,
# CPU-only with DICOM (--no-default-features --features dicom: what an embedded build ships) and
# with CUDA support (default features), so that a size regression shows (docs/BENCHMARKS.md).
# Builds what is missing (a release build takes several minutes on 2 cores).
#
#   scripts/lib_size.sh [cpu|cuda|both]   (default both)
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-both}
target=${CARGO_TARGET_DIR:-target}
measure() { # label, cargo feature flags...
  local label=$1 dir=$target/size-$1
  shift
  CARGO_TARGET_DIR=$dir cargo build --locked --release -p ichseg --lib "$@" -q
  local so=$dir/release/libichseg.so stripped
  stripped=$(mktemp)
  strip --strip-all -o "$stripped" "$so"
  awk -v l="$label" -v s="$(stat -c %s "$stripped")" -v b="$(stat -c %s "$so")" \
    -v n="$(objdump -p "$so" | awk '$1 == "SONAME" {print $2}')" \
    'BEGIN { printf "%-5s libichseg.so %6.1f MB stripped (%6.1f MB as built), SONAME %s\n", l, s / 1e6, b / 1e6, n }'
  rm -f "$stripped"
}
[[ $which == cpu || $which == both ]] && measure cpu --no-default-features --features dicom
[[ $which == cuda || $which == both ]] && measure cuda
exit 0
