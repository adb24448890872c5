#!/usr/bin/env bash
# The project's test command (README): every Rust test (the C and C++ programs also under
# ASan/UBSan), a check that the library builds without the CLI and CUDA dependencies, the C and
# C++ programs under valgrind, install + CMake/pkg-config consumers (needs cmake, pkg-config),
# the dry run of scripts/gpu-check.sh's PyTorch-free parts, and the Python tests of training/
# (pip install -r training/requirements-test.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked
# Our CUDA kernels compile with NVRTC (no GPU needed) where its pip wheel is installed
# (.ci/run installs it; the tests above skip the compile when NVRTC cannot be loaded).
nvrtc_lib=$(python3 -c 'import glob, sysconfig; print(next(iter(glob.glob(sysconfig.get_paths()["purelib"] + "/nvidia/cu13/lib")), ""))' 2>/dev/null || true)
if [ -n "$nvrtc_lib" ]; then
  LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ICHSEG_REQUIRE_NVRTC=1 \
    cargo test --locked --lib kernels_compile_with_nvrtc
fi
cargo check --locked --lib --no-default-features
tests/c/run_valgrind.sh
tests/packaging/run.sh
# The GPU proof's commands stay in step with the CLI: its parts that need no PyTorch, dry (on
# whatever device is here), with the debug binary the tests built.
gpu_check_out=$(mktemp -d)
if ! ICHSEG_BIN=target/debug/ichseg GPU_CHECK_PARTS="crf oom" scripts/gpu-check.sh --dry-run "$gpu_check_out" \
    >"$gpu_check_out/log" 2>&1; then
  cat "$gpu_check_out/log"; echo "scripts/gpu-check.sh --dry-run failed" >&2; exit 1
fi
rm -rf "$gpu_check_out"
python3 -m pytest training/tests -q
