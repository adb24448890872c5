#!/usr/bin/env bash
# The project's test command (README): every Rust test (the C and C++ programs also under
# ASan/UBSan), a check that the library builds without the CLI and CUDA dependencies, the C and
# C++ programs under valgrind, install + CMake/pkg-config consumers (needs cmake, pkg-config),
# and the Python tests of training/ (pip install -r training/requirements-test.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked
cargo check --locked --lib --no-default-features
tests/c/run_valgrind.sh
tests/packaging/run.sh
python3 -m pytest training/tests -q
