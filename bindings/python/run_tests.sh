#!/usr/bin/env bash
# Builds the Python package ichseg (a debug build, `maturin develop`) into the test environment
# and runs its pytest suite, which compares results with the debug `ichseg` CLI.
#
#   bindings/python/run_tests.sh [pytest args...]
#
# Needs .venv-test from scripts/test-deps.sh (numpy, nibabel, pytest, pydicom, maturin).
# CARGO_TARGET_DIR is honoured (default: the repository's target/), so the CLI and the
# extension reuse what `cargo test` compiled there.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
venv=$root/.venv-test
if [[ ! -x $venv/bin/maturin ]]; then
  echo "run_tests.sh: $venv/bin/maturin missing; run scripts/test-deps.sh first" >&2
  exit 1
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
t0=$SECONDS
# The CLI the tests compare against: the binary `cargo test` builds (scripts/test.sh's part
# "rust tests" already did, so this is a no-op there). Not `cargo build -p ichseg-cli`: its
# feature resolution differs from the test build's and would recompile the dependencies.
# ICHSEG_BIN names another binary to compare with instead.
if [[ -z ${ICHSEG_BIN:-} ]]; then
  cargo test --locked --no-run -q
  export ICHSEG_BIN=$CARGO_TARGET_DIR/debug/ichseg
fi
t1=$SECONDS
VIRTUAL_ENV=$venv "$venv/bin/maturin" develop --locked -q -m bindings/python/Cargo.toml
t2=$SECONDS
echo "run_tests.sh: CLI build $((t1 - t0)) s, package build $((t2 - t1)) s; comparing with $ICHSEG_BIN"
"$venv/bin/python" -m pytest bindings/python/tests -q "$@"
