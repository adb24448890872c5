#!/usr/bin/env bash
# The project's test command (README): every Rust test (the C and C++ programs also under
# ASan/UBSan), a check that the library builds without the CLI and CUDA dependencies, the C and
# C++ programs under valgrind, install + CMake/pkg-config consumers (needs cmake, pkg-config),
# and the Python tests of training/ (pip install -r training/requirements-test.txt).
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
python3 -m pytest training/tests -q
