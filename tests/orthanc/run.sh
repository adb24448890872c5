#!/usr/bin/env bash
# Runs tests/orthanc against real Orthanc servers (docs/ORTHANC.md):
#
#   tests/orthanc/run.sh [PYTEST ARGS...]
#
# libichseg is installed with scripts/install.sh (ICHSEG_PROFILE, default debug) into
# $CARGO_TARGET_DIR/orthanc/prefix, unless ICHSEG_PREFIX names an existing install; the `ichseg`
# CLI of the same profile (the reference the plugin's SEG must equal) is built with cargo unless
# ICHSEG_BIN names one. The test's session fixture then builds the plugin with CMake against that
# prefix. Needs Orthanc and its SDK header (Debian: orthanc orthanc-dev), JsonCpp
# (libjsoncpp-dev), cmake, pkg-config, and Python with pytest, numpy and pydicom
# (scripts/test-deps.sh installs all of them). Here the tests must run: a missing piece fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in cmake pkg-config c++ nm ldd Orthanc; do
  command -v $tool >/dev/null || { echo "orthanc: $tool missing (scripts/test-deps.sh installs it)" >&2; exit 1; }
done
profile=${ICHSEG_PROFILE:-debug}
cargo_flags=()
[[ $profile == release ]] && cargo_flags=(--release)
target=${CARGO_TARGET_DIR:-target}
if [[ -z ${ICHSEG_PREFIX:-} ]]; then
  ICHSEG_PREFIX=$target/orthanc/prefix
  scripts/install.sh --prefix "$ICHSEG_PREFIX" --profile "$profile" >/dev/null
fi
if [[ -z ${ICHSEG_BIN:-} ]]; then
  # debug: the test build's CLI, which install.sh built (`cargo build --bin` would compile tract again)
  if [[ $profile == debug ]]; then cargo test --locked --no-run -q; else cargo build --locked --bin ichseg -q "${cargo_flags[@]}"; fi
  ICHSEG_BIN=$target/$profile/ichseg
fi
ICHSEG_PREFIX=$(cd "$ICHSEG_PREFIX" && pwd) ICHSEG_BIN=$ICHSEG_BIN ICHSEG_PROFILE=$profile ICHSEG_REQUIRE_ORTHANC=1 \
  python3 -m pytest tests/orthanc -q "$@"
