#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time each (libFuzzer + AddressSanitizer):
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]     # default 60 s, all targets
#
# Needs a nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz`). Seed corpora come from the committed fixtures (NIfTI files, ONNX
# models) and fuzz/seeds/; what libFuzzer adds stays in fuzz/corpus/ (ignored by git). A crash
# leaves its input in fuzz/artifacts/<target>/ and fails the script: turn it into a regression
# test, fix it, rerun. The summary prints executions per target.
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}; shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(nifti_read onnx_load metadata capi_segment dicom_series)
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo install cargo-fuzz" >&2; exit 2; }

seed() { # target, files...
  local dir=fuzz/corpus/$1; shift
  mkdir -p "$dir"
  for f in "$@"; do [[ -f $f ]] && cp -n "$f" "$dir/$(basename "$f")"; done
}
seed nifti_read tests/fixtures/nifti/good/* tests/fixtures/nifti/bad/* tests/fixtures/unet/ct_small.nii.gz
seed onnx_load tests/fixtures/unet/*.onnx tests/fixtures/classifier/*.onnx tests/fixtures/grad/*.onnx
seed metadata fuzz/seeds/metadata/*
seed capi_segment fuzz/seeds/capi_segment/*
# One slice of each transfer syntax and each refusal, as single-file inputs.
seed dicom_series $(for d in tests/fixtures/dicom/series/* tests/fixtures/dicom/bad/*; do ls "$d"/*.dcm 2>/dev/null | head -1; done)

status=0
summary=()
for t in "${targets[@]}"; do
  log=$(mktemp)
  cargo +nightly fuzz run -O "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=4096 \
    -max_len=$((4 << 20)) 2>&1 | tee "$log" | grep -E "^#[0-9]+ +(DONE|pulse)|ERROR|panicked" | tail -3
  rc=${PIPESTATUS[0]}
  execs=$(grep -oE "^#[0-9]+" "$log" | tail -1 | tr -d '#')
  summary+=("$t: ${execs:-0} executions in ${secs}s, exit $rc")
  [[ $rc -eq 0 ]] || status=1
  rm -f "$log"
done
printf '%s\n' "${summary[@]}"
exit $status
