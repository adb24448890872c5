#!/usr/bin/env bash
# The project's test command (README). Sets itself up first (scripts/test-deps.sh: Debian
# packages with apt-get when root, Python packages into the project-local .venv-test/), then
# runs the parts below and prints a summary: each part, its time, passed, failed or skipped and
# why.
#
#   scripts/test.sh           everything (about 42 minutes on 2 cores from a fresh clone)
#   scripts/test.sh --quick   the Rust unit, integration and doc tests only (`cargo test`)
#
# Parts of the full run: every Rust test (the C and C++ programs also under ASan/UBSan, and a
# volume too big for memory under `ulimit -v`); our CUDA kernels compiled with NVRTC (no GPU
# needed); the library without the CLI and CUDA dependencies; the C and C++ programs under
# valgrind; install + CMake/pkg-config/ITK consumers; the dry run of scripts/gpu-check.sh's
# PyTorch-free parts; the Python tests of training/; the Python package ichseg built and tested
# against the CLI (bindings/python), with ichseg.distributed on a real two-node Ray cluster; its
# wheel built (the dev profile: from the package's build, no second build of tract), installed in
# a fresh environment and checked; the DICOM-SEG validator's tests (tests/dicom); the Orthanc
# plugin in real Orthanc servers (tests/orthanc), when Orthanc is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
case "${1:-}" in
  --quick) quick=1 ;;
  "") ;;
  *) echo "usage: scripts/test.sh [--quick]" >&2; exit 2 ;;
esac

summary=()
started=$SECONDS
print_summary() {
  echo
  echo "== test summary ($((SECONDS - started)) s)"
  printf '  %s\n' "${summary[@]}"
}
# part NAME COMMAND...: runs one part, records its time and outcome; a failure ends the run.
part() {
  local name=$1 t0=$SECONDS
  shift
  echo "== $name"
  if "$@"; then
    summary+=("$(printf '%-28s %5d s  passed' "$name" $((SECONDS - t0)))")
  else
    summary+=("$(printf '%-28s %5d s  FAILED' "$name" $((SECONDS - t0)))")
    print_summary
    exit 1
  fi
}
skip() { # NAME, why
  summary+=("$(printf '%-28s %5s    skipped: %s' "$1" - "$2")")
  echo "== $1: skipped ($2)"
}

if [[ $quick == 1 ]]; then
  part "set-up (quick)" scripts/test-deps.sh --quick
  part "rust tests" cargo test --locked
  skip "the rest" "--quick runs the Rust tests only"
  print_summary
  exit 0
fi

part "set-up" scripts/test-deps.sh
export PATH="$PWD/.venv-test/bin:$PATH"
# test-deps.sh installed ITK: the packaging part must build the ITK example, not skip it.
export ICHSEG_REQUIRE_ITK=1

part "rust tests" cargo test --locked
# Our CUDA kernels compile with NVRTC (no GPU needed) from the wheel test-deps.sh installed.
nvrtc_lib=$(python3 -c 'import glob, sysconfig; print(next(iter(glob.glob(sysconfig.get_paths()["purelib"] + "/nvidia/cu13/lib")), ""))' 2>/dev/null || true)
if [[ -n $nvrtc_lib ]]; then
  part "cuda kernels (nvrtc)" env LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    ICHSEG_REQUIRE_NVRTC=1 cargo test --locked -p ichseg --lib kernels_compile_with_nvrtc
else
  skip "cuda kernels (nvrtc)" "the NVRTC wheel is not in .venv-test"
fi
part "library alone" cargo check --locked -p ichseg --lib --no-default-features
part "valgrind" tests/c/run_valgrind.sh
part "packaging" tests/packaging/run.sh
# The GPU proof's commands stay in step with the CLI: its parts that need no PyTorch, dry (on
# whatever device is here), with the debug binary the tests built.
gpu_check_dry() {
  local out
  out=$(mktemp -d)
  if ! ICHSEG_BIN=target/debug/ichseg GPU_CHECK_PARTS="crf oom" scripts/gpu-check.sh --dry-run "$out" \
      >"$out/log" 2>&1; then
    cat "$out/log"; rm -rf "$out"; return 1
  fi
  rm -rf "$out"
}
part "gpu-check dry run" gpu_check_dry
part "python tests" python3 -m pytest training/tests -q
# The Python package (bindings/python): a debug build into .venv-test, its results against the CLI's.
part "python package" bindings/python/run_tests.sh
# The wheel (target/wheels/), installed into a fresh environment and checked: built with the dev
# profile from what the part above compiled (a release build is a second build of tract, about
# ten minutes here; the packaging is the same).
part "python wheel" env ICHSEG_WHEEL_PROFILE=dev bindings/python/build_wheel.sh
# test-deps.sh installed dciodvfy and dcmqi: the validator's tests must run, not skip.
part "dicom seg validator" env ICHSEG_REQUIRE_DICOM_TOOLS=1 python3 -m pytest tests/dicom -q
# Skipped without Orthanc (test-deps.sh installs it only as root), unless ICHSEG_REQUIRE_ORTHANC=1.
if command -v Orthanc >/dev/null || [[ ${ICHSEG_REQUIRE_ORTHANC:-0} == 1 ]]; then
  part "orthanc plugin" tests/orthanc/run.sh
else
  skip "orthanc plugin" "Orthanc not installed (apt-get install orthanc orthanc-dev libjsoncpp-dev, or run scripts/test-deps.sh as root)"
fi
print_summary
