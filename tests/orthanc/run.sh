#!/usr/bin/env bash
# Builds the Orthanc plugin against an installed libichseg and runs tests/orthanc against real
# Orthanc servers (docs/ORTHANC.md):
#
#   tests/orthanc/run.sh [PYTEST ARGS...]
#
# libichseg is installed with scripts/install.sh (debug profile, or ICHSEG_PROFILE=release to
# reuse a release build) into target/orthanc/prefix, the plugin built with CMake into
# target/orthanc/build (both kept: later runs only rebuild what changed), and the `ichseg` CLI of
# the same profile is the reference the plugin's SEG must equal. Needs Orthanc and its SDK header
# (Debian: orthanc orthanc-dev), JsonCpp (libjsoncpp-dev), cmake, pkg-config, and Python with
# pytest, numpy and pydicom (scripts/test-deps.sh installs all of them).
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in cmake pkg-config c++ Orthanc; do
  command -v $tool >/dev/null || { echo "orthanc: $tool missing (scripts/test-deps.sh installs it)" >&2; exit 1; }
done
profile=${ICHSEG_PROFILE:-debug}
cargo_flags=()
[[ $profile == release ]] && cargo_flags=(--release)
target=${CARGO_TARGET_DIR:-target}
work=$target/orthanc
scripts/install.sh --prefix "$work/prefix" --profile "$profile" >/dev/null
cmake -S bindings/orthanc -B "$work/build" -DCMAKE_PREFIX_PATH="$(cd "$work/prefix" && pwd)" \
  -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/build" -j 2 >/dev/null
cargo build --locked --bin ichseg -q "${cargo_flags[@]}"
plugin=$(cd "$work/build" && pwd)/libichseg_orthanc.so
# Only the Orthanc entry points leave the plugin.
exports=$(nm -D --defined-only "$plugin" | awk '$2 == "T" {print $3}' | sort | tr '\n' ' ')
[[ $exports == "OrthancPluginFinalize OrthancPluginGetName OrthancPluginGetVersion OrthancPluginInitialize " ]] ||
  { echo "orthanc: the plugin exports more than the Orthanc entry points: $exports" >&2; exit 1; }
ICHSEG_ORTHANC_PLUGIN=$plugin ICHSEG_BIN=$target/$profile/ichseg ICHSEG_REQUIRE_ORTHANC=1 \
  python3 -m pytest tests/orthanc -q "$@"
