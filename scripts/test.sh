#!/usr/bin/env bash
# The project's test command (README): every Rust test, the C ABI test under valgrind,
# a check that the library builds without the CLI-only dependencies, and the Python tests of
# training/ (numpy, scipy, nibabel, pytest: pip install -r training/requirements-test.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked
cargo check --locked --lib --no-default-features
tests/c/run_valgrind.sh
python3 -m pytest training/tests -q
