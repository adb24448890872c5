#!/usr/bin/env bash
# The project's test command (README): every Rust test, the C ABI test under valgrind,
# and a check that the library builds without the CLI-only dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked
cargo check --locked --lib --no-default-features
tests/c/run_valgrind.sh
